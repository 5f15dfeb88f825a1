//! Whole-daemon behaviour under load and at shutdown: large pipelines spread over the pool keep
//! their order; a graceful shutdown closes idle clients, lets an open transaction finish and
//! closes the PostgreSQL connections before `run()` returns.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::oneshot;

use crate::support::{base_config, temp_dir, RawClient, TestDb};

/// Backends of the daemon's pool.
const POOLED: &str = "application_name = 'qail-daemon'";
/// Statements running `pg_sleep`.
const SLEEPING: &str = "state = 'active' AND query LIKE 'SELECT pg_sleep%'";

/// Polls the number of `db`'s backends in `pg_stat_activity` matching `filter` (an SQL
/// condition) every 20 ms until `done` holds; fails with `what` and the count after `limit`.
async fn wait_for_activity(
    db: &TestDb,
    filter: &str,
    limit: Duration,
    done: impl Fn(i64) -> bool,
    what: &str,
) {
    let admin = db.admin().await;
    let sql = format!("SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND {filter}");
    let deadline = Instant::now() + limit;
    loop {
        let n: i64 = admin
            .query_one(&sql, &[&db.name])
            .await
            .expect("pg_stat_activity")
            .get(0);
        if done(n) {
            return;
        }
        assert!(Instant::now() < deadline, "{what} (count: {n})");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (at most 10 s) until the pool of `db` holds at least `n` connections.
pub(crate) async fn wait_for_backends(db: &TestDb, n: i64) {
    let what = format!("the pool never opened {n} connections");
    wait_for_activity(db, POOLED, Duration::from_secs(10), |open| open >= n, &what).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_pipeline_is_spread_over_idle_connections_and_keeps_order() {
    let db = TestDb::new().await;
    let daemon = db
        .daemon_with(|cfg| {
            cfg.upstreams[0].pool_max = 4;
            cfg.upstreams[0].pool_min_idle = 4;
        })
        .await;
    wait_for_backends(&db, 4).await;
    let mut c = daemon.connected().await;
    let handle = c
        .prepare("SELECT $1::int AS n, pg_backend_pid() AS pid")
        .await;
    let batch: Vec<Value> = (0..2000).map(|i| json!([i])).collect();

    let r = c
        .call_ok(json!({"op": "pipeline", "handle": handle, "params_batch": batch}))
        .await;
    let results = r["results"].as_array().expect("results");
    assert_eq!(results.len(), 2000);
    let mut pids = HashSet::new();
    for (i, result) in results.iter().enumerate() {
        assert_eq!(
            result["rows"][0][0],
            json!(i),
            "result {i} answers params_batch[{i}]"
        );
        assert_eq!(result["command"], "SELECT 1");
        pids.insert(result["rows"][0][1].as_i64().expect("pid"));
    }
    assert!(
        pids.len() > 1,
        "2000 statements with 4 idle connections ran on one backend only"
    );

    // Three sent at once by one client (a chunked pipeline) compete for the same idle
    // connections; the answers still keep their order and their statements.
    for k in 0..3 {
        c.send(&json!({"id": 100 + k, "op": "pipeline", "handle": handle, "params_batch": batch}))
            .await;
    }
    for k in 0..3 {
        let r = c.recv().await;
        assert_eq!(r["id"], json!(100 + k), "{r}");
        let results = r["results"].as_array().expect("results");
        assert_eq!(results.len(), 2000);
        for (i, result) in results.iter().enumerate() {
            assert_eq!(result["rows"][0][0], json!(i), "pipeline {k}, result {i}");
        }
    }

    let r = c
        .call_ok(
            json!({"op": "pipeline", "handle": handle, "params_batch": batch, "count_only": true}),
        )
        .await;
    assert_eq!(r["count"], 2000);

    // A failure in one chunk is reported with its position in the whole batch.
    let mut bad = batch.clone();
    bad[1500] = json!(["not a number"]);
    let e = c
        .call_err(json!({"op": "pipeline", "handle": handle, "params_batch": bad}))
        .await;
    assert_eq!(e["code"], "22P02", "{e}");
    assert_eq!(e["index"], 1500, "{e}");
    assert_eq!(e["failed"], 1, "{e}");
    assert_eq!(e["succeeded"], 1999, "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_an_open_transaction_finish() {
    let db = TestDb::new().await;
    db.setup("CREATE TABLE t (id int PRIMARY KEY)").await;
    let dir = temp_dir();
    let cfg = base_config(db.cluster, &db.name, &dir.path().join("qail.sock"));
    let daemon = qail_daemon::app::Daemon::bind(cfg).await.expect("bind");
    let socket = daemon.socket_path().to_path_buf();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(daemon.run(async move {
        let _ = stopped.await;
    }));

    let mut in_tx = RawClient::connect(&socket).await;
    in_tx.connect_main().await;
    in_tx.call_ok(json!({"op": "begin"})).await;
    in_tx.execute("INSERT INTO t VALUES (1)", json!([])).await;
    let mut idle = RawClient::connect(&socket).await;
    idle.connect_main().await;
    let mut other_tx = RawClient::connect(&socket).await;
    other_tx.connect_main().await;

    // A request that arrived just as shutdown began is answered, not dropped.
    let mut late = RawClient::connect(&socket).await;
    late.connect_main().await;
    stop.send(()).expect("daemon task alive");
    let sent = late
        .try_send(&json!({"id": 99, "op": "query", "sql": "SELECT 1"}))
        .await;
    if let (Ok(()), Some(answer)) = (sent, late.try_recv().await) {
        // Depending on timing it ran before the stop or was refused; never silently lost.
        assert!(
            answer["ok"] == json!(true) || answer["error"]["code"] == "shutting_down",
            "{answer}"
        );
        assert_eq!(answer["id"], 99);
    }
    idle.expect_closed().await;
    // Still inside its transaction: the client may finish it; then its connection closes.
    in_tx.execute("INSERT INTO t VALUES (2)", json!([])).await;
    in_tx.call_ok(json!({"op": "commit"})).await;
    in_tx.expect_closed().await;
    other_tx.expect_closed().await;

    let result = tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("the daemon stopped")
        .expect("the daemon task did not panic");
    assert!(result.is_ok(), "run() returned {result:?}");
    assert!(!socket.exists(), "the socket file is removed on shutdown");
    // run() waited for its PostgreSQL connections to close: their backends are going away.
    let gone = |n| n == 0;
    let what = "backends of the stopped daemon are still there";
    wait_for_activity(&db, POOLED, Duration::from_secs(2), gone, what).await;
    let admin = db.admin().await;
    let committed: i64 = admin
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(
        committed, 2,
        "the transaction finished during shutdown is committed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cancels_statements_still_running_when_the_grace_period_ends() {
    let db = TestDb::new().await;
    let dir = temp_dir();
    let mut cfg = base_config(db.cluster, &db.name, &dir.path().join("qail.sock"));
    cfg.limits.shutdown_grace_ms = 300;
    cfg.upstreams[0].pool_max = 8;
    cfg.upstreams[0].pool_min_idle = 8;
    let daemon = qail_daemon::app::Daemon::bind(cfg).await.expect("bind");
    let socket = daemon.socket_path().to_path_buf();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(daemon.run(async move {
        let _ = stopped.await;
    }));
    // Idle connections for the pipeline to spread over.
    wait_for_backends(&db, 8).await;

    // One sleep on a shared connection (no time limit), one on a connection of its own (a time
    // limit), one inside a transaction, and a pipeline of them spread over two connections.
    let mut shared = RawClient::connect(&socket).await;
    shared.connect_main().await;
    shared
        .send(&json!({"id": 1, "op": "query", "sql": "SELECT pg_sleep(30)"}))
        .await;
    let mut own = RawClient::connect(&socket).await;
    own.connect_main().await;
    own.send(&json!({"id": 2, "op": "query", "sql": "SELECT pg_sleep(30)", "timeout_ms": 60_000}))
        .await;
    let mut in_tx = RawClient::connect(&socket).await;
    in_tx.connect_main().await;
    in_tx.call_ok(json!({"op": "begin"})).await;
    in_tx
        .send(&json!({"id": 3, "op": "query", "sql": "SELECT pg_sleep(30)"}))
        .await;
    let mut spread = RawClient::connect(&socket).await;
    spread.connect_main().await;
    let batch: Vec<Value> = (0..600).map(|_| json!([30])).collect();
    spread
        .send(&json!({"id": 4, "op": "pipeline", "sql": "SELECT pg_sleep($1)", "params_batch": batch}))
        .await;
    let started = |n| n >= 5;
    let what = "the five sleeps never started";
    wait_for_activity(&db, SLEEPING, Duration::from_secs(10), started, what).await;

    let stopping = Instant::now();
    stop.send(()).expect("daemon task alive");
    let result = tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("the daemon stopped")
        .expect("the daemon task did not panic");
    assert!(result.is_ok(), "run() returned {result:?}");
    assert!(
        stopping.elapsed() < Duration::from_secs(6),
        "shutdown took {:?} with a 300 ms grace period",
        stopping.elapsed()
    );
    // Each client learns why its request got no result.
    for (id, client) in [
        (1, &mut shared),
        (2, &mut own),
        (3, &mut in_tx),
        (4, &mut spread),
    ] {
        let answer = client
            .try_recv_within(Duration::from_secs(2))
            .await
            .unwrap_or_else(|| panic!("request {id} got no answer before the connection closed"));
        assert_eq!(answer["id"], json!(id), "{answer}");
        assert_eq!(answer["error"]["code"], json!("shutting_down"), "{answer}");
        client.expect_closed().await;
    }
    // Nothing of the stopped daemon keeps running in PostgreSQL.
    let what = "statements still run after the daemon stopped";
    wait_for_activity(&db, SLEEPING, Duration::from_secs(3), |n| n == 0, what).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_share_a_small_pool_with_correct_answers() {
    let db = TestDb::new().await;
    let daemon = db
        .daemon_with(|cfg| {
            cfg.upstreams[0].pool_max = 2;
            cfg.upstreams[0].pool_min_idle = 0;
        })
        .await;
    let mut tasks = Vec::new();
    for client in 0..24i64 {
        let socket = daemon.socket_path().to_path_buf();
        tasks.push(tokio::spawn(async move {
            let mut c = RawClient::connect(&socket).await;
            c.connect_main().await;
            let mut pids = HashSet::new();
            for i in 0..40i64 {
                let n = client * 1000 + i;
                let r = c
                    .call_ok(json!({"op": "query", "sql": "SELECT $1::int8 * 2, pg_backend_pid()", "params": [n]}))
                    .await;
                assert_eq!(r["rows"][0][0], json!(n * 2), "client {client} query {i}");
                pids.insert(r["rows"][0][1].as_i64().expect("pid"));
            }
            pids
        }));
    }
    let mut backends = HashSet::new();
    for t in tasks {
        let pids = tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("clients finish")
            .expect("client task");
        backends.extend(pids);
    }
    assert!(
        backends.len() <= 2,
        "24 clients on pool_max 2 used {} backends",
        backends.len()
    );
}
