//! Sessions: what a client connection owns and what it must never leave behind — transactions
//! rolled back on disconnect, session state reset before a connection is reused, requests
//! answered in order, handles shared between clients, upstream switching rules.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{extra_upstream, RawClient, TestDaemon, TestDb};

/// Waits (at most 5 s) until no backend of `db` is "idle in transaction".
async fn wait_no_idle_in_transaction(db: &TestDb) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let open = db
            .count(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND state LIKE 'idle in transaction%'",
                &[&db.name],
            )
            .await;
        if open == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{open} connection(s) of {} stay idle in transaction after the client left",
            db.name
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_mid_transaction_rolls_back() {
    let db = TestDb::new().await;
    db.setup("CREATE TABLE t (id int PRIMARY KEY)").await;
    let daemon = db.daemon().await;

    let mut leaver = daemon.connected().await;
    leaver.call_ok(json!({"op": "begin"})).await;
    leaver.execute("INSERT INTO t VALUES (42)", json!([])).await;
    drop(leaver);

    wait_no_idle_in_transaction(&db).await;
    let mut other = daemon.connected().await;
    assert_eq!(
        other
            .scalar("SELECT count(*) FROM t WHERE id = 42", json!([]))
            .await,
        json!(0),
        "the disconnected client's insert must be rolled back"
    );
    // The row's lock is gone too: inserting the same key does not block.
    let r = other
        .call_ok(json!({"op": "execute", "sql": "INSERT INTO t VALUES (42)", "timeout_ms": 3000}))
        .await;
    assert_eq!(r["rows_affected"], json!(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_mid_transaction_rolls_back() {
    let db = TestDb::new().await;
    db.setup("CREATE TABLE t (id int PRIMARY KEY)").await;
    let daemon = db.daemon().await;
    let mut c = daemon.connected().await;
    c.call_ok(json!({"op": "begin"})).await;
    c.execute("INSERT INTO t VALUES (1)", json!([])).await;
    c.call_ok(json!({"op": "close"})).await;
    c.expect_closed().await;
    wait_no_idle_in_transaction(&db).await;
    assert_eq!(db.count("SELECT count(*) FROM t", &[]).await, 0);
}

/// A new client, checked to be served by `backend` (the daemon's only pooled connection).
async fn client_on(daemon: &TestDaemon, backend: &Value) -> RawClient {
    let mut c = daemon.connected().await;
    assert_eq!(
        &c.scalar("SELECT pg_backend_pid()", json!([])).await,
        backend,
        "premise: with pool_max 1 both clients use the same backend"
    );
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_state_does_not_leak_between_clients() {
    let db = TestDb::new().await;
    // One pooled connection, so the second client surely gets the first one's backend.
    let daemon = db.daemon_with(|cfg| cfg.upstreams[0].pool_max = 1).await;

    let mut first = daemon.connected().await;
    let default_path = first.scalar("SHOW search_path", json!([])).await;
    let backend = first.scalar("SELECT pg_backend_pid()", json!([])).await;
    first
        .execute("SET search_path TO pg_catalog", json!([]))
        .await;
    first
        .execute("SET application_name TO 'leaky'", json!([]))
        .await;
    first
        .execute("CREATE TEMP TABLE scratch (x int)", json!([]))
        .await;
    // A session-level advisory lock taken outside a transaction is released with the request:
    // the connection goes back to the pool, where another client would hold it.
    first
        .query("SELECT pg_try_advisory_lock(4243)", json!([]))
        .await;
    let held = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 4243";
    assert_eq!(
        db.count(held, &[]).await,
        0,
        "the autocommit advisory lock leaked"
    );
    // And inside a transaction: SET (session-wide) plus a session-level advisory lock.
    first.call_ok(json!({"op": "begin"})).await;
    first
        .execute("SET statement_timeout TO '1234ms'", json!([]))
        .await;
    first
        .query("SELECT pg_advisory_lock(4242)", json!([]))
        .await;
    first.call_ok(json!({"op": "commit"})).await;
    drop(first);

    let mut second = client_on(&daemon, &backend).await;
    assert_eq!(
        second.scalar("SHOW search_path", json!([])).await,
        default_path
    );
    assert_ne!(
        second.scalar("SHOW application_name", json!([])).await,
        json!("leaky")
    );
    assert_eq!(
        second.scalar("SHOW statement_timeout", json!([])).await,
        json!("0")
    );
    assert_eq!(
        second
            .scalar("SELECT to_regclass('pg_temp.scratch')::text", json!([]))
            .await,
        Value::Null,
        "temporary tables are dropped"
    );
    let locks = db
        .count(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 4242",
            &[],
        )
        .await;
    assert_eq!(locks, 0, "advisory locks are released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_pipelined_requests_are_answered_in_order() {
    let db = TestDb::new().await;
    let daemon = db.daemon().await;
    let mut c = daemon.connected().await;
    // Earlier requests sleep longer, so answers finished out of order must be re-ordered.
    let requests: Vec<Value> = (0..50)
        .map(|i| {
            if i == 25 {
                json!({"id": 1000 + i, "op": "query", "sql": "SELECT nope FROM nowhere"})
            } else {
                json!({
                    "id": 1000 + i,
                    "op": "query",
                    "sql": "SELECT $1::int AS n FROM pg_sleep($2::float8)",
                    "params": [i, format!("{}", f64::from(50 - i) * 0.002)],
                })
            }
        })
        .collect();
    for request in &requests {
        c.send(request).await;
    }
    for i in 0..50 {
        let r = c.recv().await;
        assert_eq!(r["id"], json!(1000 + i), "answer {i} out of order: {r}");
        if i == 25 {
            assert_eq!(r["ok"], json!(false), "{r}");
            assert_eq!(r["error"]["code"], json!("42P01"), "{r}");
        } else {
            assert_eq!(r["ok"], json!(true), "{r}");
            assert_eq!(r["rows"], json!([[i]]), "{r}");
        }
    }
    c.call_ok(json!({"op": "ping"})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_writing_still_gets_its_answers() {
    // Shutting down the writing side ends the requests, not the answers: what was sent runs
    // and is answered, and then the daemon closes. (A client that closes the connection
    // instead has its requests dropped at once: `coalesce.rs`, the leaver test.)
    let db = TestDb::new().await;
    let daemon = db.daemon().await;
    let mut c = daemon.connected().await;
    for i in 0..5 {
        let id = c.next_id();
        c.send(&json!({
            "id": id,
            "op": "query",
            "sql": "SELECT $1::int AS n FROM pg_sleep(0.05)",
            "params": [i],
        }))
        .await;
    }
    c.shutdown_write().await;
    for i in 0..5 {
        let answer = c.recv().await;
        assert_eq!(answer["rows"], json!([[i]]), "{answer}");
    }
    c.expect_closed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_share_one_handle() {
    let db = TestDb::new().await;
    db.setup("CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 10);")
        .await;
    let daemon = db.daemon().await;
    let mut a = daemon.connected().await;
    let mut b = daemon.connected().await;
    let handle = a.prepare("SELECT count(*) FROM t WHERE id <= $1").await;
    let r = b
        .call_ok(json!({"op": "query", "handle": handle, "params": [4]}))
        .await;
    assert_eq!(r["rows"], json!([[4]]));
    let r = a
        .call_ok(json!({"op": "query", "handle": handle, "params": ["7"]}))
        .await;
    assert_eq!(r["rows"], json!([[7]]));
    assert_eq!(
        b.prepare("SELECT count(*) FROM t WHERE id <= $1").await,
        handle,
        "the same SQL on the same upstream has one catalogue entry"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_switching_is_allowed_outside_a_transaction_only() {
    let db = TestDb::new().await;
    let other = TestDb::new().await;
    let other_name = other.name.clone();
    let daemon = db
        .daemon_with(|cfg| {
            let up = extra_upstream(cfg, "reports", &other_name);
            cfg.upstreams.push(up);
        })
        .await;
    let mut c = daemon.connected().await;
    c.connect_to("reports").await;
    assert_eq!(
        c.scalar("SELECT current_database()", json!([])).await,
        json!(other.name)
    );
    c.call_ok(json!({"op": "begin"})).await;
    c.expect_error(json!({"op": "connect", "upstream": "main"}), "forbidden")
        .await;
    assert_eq!(
        c.scalar("SELECT current_database()", json!([])).await,
        json!(other.name),
        "the refused switch left the transaction where it was"
    );
    c.call_ok(json!({"op": "commit"})).await;
    c.connect_to("main").await;
    assert_eq!(
        c.scalar("SELECT current_database()", json!([])).await,
        json!(db.name)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_share_a_small_pool() {
    let db = TestDb::new().await;
    let daemon = db.daemon_with(|cfg| cfg.upstreams[0].pool_max = 2).await;
    let mut tasks = Vec::new();
    for n in 0..20 {
        let mut c = daemon.connected().await;
        tasks.push(tokio::spawn(async move {
            c.scalar("SELECT $1::int + 1000 FROM pg_sleep(0.01)", json!([n]))
                .await
        }));
    }
    for (n, task) in tasks.into_iter().enumerate() {
        let value = tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .expect("client task timed out")
            .expect("client task panicked");
        assert_eq!(value, json!(n + 1000));
    }
    let backends = db
        .count(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND application_name <> 'qail-tests'",
            &[&db.name],
        )
        .await;
    assert!(
        backends <= 2,
        "20 clients used {backends} backends with pool_max 2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_that_changes_the_session_leaves_nothing_behind() {
    let db = TestDb::new().await;
    let daemon = db.daemon_with(|cfg| cfg.upstreams[0].pool_max = 1).await;
    let mut first = daemon.connected().await;
    let backend = first.scalar("SELECT pg_backend_pid()", json!([])).await;
    let batch: Vec<Value> = (0..40).map(|i| json!([format!("v{i}"), i])).collect();
    let r = first
        .call_ok(json!({"op": "pipeline", "sql": "SELECT set_config('qail.leak', $1, false), pg_try_advisory_lock(4300 + $2::int)", "params_batch": batch, "count_only": true}))
        .await;
    assert_eq!(r["count"], json!(40));
    drop(first);

    let mut second = client_on(&daemon, &backend).await;
    assert_eq!(
        second
            .scalar("SELECT current_setting('qail.leak', true)", json!([]))
            .await,
        json!(""),
        "the setting was reset"
    );
    let held = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid >= 4300";
    assert_eq!(
        db.count(held, &[]).await,
        0,
        "the advisory locks were released"
    );
}
