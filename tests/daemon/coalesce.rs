//! Coalescing (`pg::coalesce`): single read-only statements of concurrent requests that share
//! one pooled connection run together as one group. Each test sends many requests at once over
//! a pool of one connection, checks that every client gets exactly the answer it would have
//! had alone, and reads the daemon's metrics to make sure the statements really were coalesced.

use std::time::Duration;

use serde_json::{json, Value};

use crate::admin::{AdminDaemon, Metrics};
use crate::grouped::remembering_log;
use crate::support::client::encode;
use crate::support::{RawClient, TestDb};

const MAIN: [(&str, &str); 1] = [("upstream", "main")];

async fn one_connection(db: &TestDb) -> AdminDaemon {
    AdminDaemon::for_db(db, |cfg| cfg.upstreams[0].pool_max = 1).await
}

/// Requests that share one connection at most (`upstream::LANE_DEPTH`); more wait for the
/// pool instead, one by one.
const LANE: usize = 8;

/// Sends the requests in rounds of [`LANE`], each in one write, and reads each round's answers
/// before the next; returns the answers by request.
async fn send_all(c: &mut RawClient, requests: &[Value]) -> Vec<Value> {
    let mut answers = Vec::with_capacity(requests.len());
    for round in requests.chunks(LANE) {
        let mut ids = Vec::with_capacity(round.len());
        let mut frames = Vec::new();
        for request in round {
            let mut request = request.clone();
            let id = c.next_id();
            request["id"] = json!(id);
            ids.push(id);
            frames.extend(encode(&request));
        }
        c.send_raw(&frames).await;
        for id in ids {
            let answer = c.recv().await;
            assert_eq!(answer["id"], json!(id), "{answer}");
            answers.push(answer);
        }
    }
    answers
}

/// A client whose upstream has its one connection open (a cold pool serves the first
/// requests one by one while it connects).
async fn warm_client(daemon: &AdminDaemon) -> RawClient {
    let mut c = daemon.connected().await;
    assert_eq!(c.scalar("SELECT 1", json!([])).await, json!(1));
    c
}

pub(crate) fn delta(before: &Metrics, after: &Metrics, name: &str) -> f64 {
    after.value(name, &MAIN) - before.value(name, &MAIN)
}

/// Request `i` of client `k`: two different statements, `query` and `execute`.
fn request(k: usize, i: usize) -> Value {
    match i % 3 {
        0 => json!({"op": "query", "sql": "SELECT $1::int * 2 AS v", "params": [k * 1000 + i]}),
        1 => {
            json!({"op": "query", "sql": "SELECT 'c' || $1::text AS s, $2::int AS n", "params": [k, i]})
        }
        _ => json!({"op": "execute", "sql": "SELECT $1::int * 2 AS v", "params": [i]}),
    }
}

fn check(k: usize, i: usize, answer: &Value) {
    assert_eq!(
        answer["ok"],
        json!(true),
        "client {k} request {i}: {answer}"
    );
    match i % 3 {
        0 => {
            assert_eq!(answer["rows"], json!([[2 * (k * 1000 + i)]]), "{answer}");
            assert_eq!(answer["columns"], json!([{"name": "v", "type": "int4"}]));
            assert_eq!(answer["command"], json!("SELECT 1"));
        }
        1 => {
            assert_eq!(answer["rows"], json!([[format!("c{k}"), i]]), "{answer}");
            assert_eq!(answer["columns"][1], json!({"name": "n", "type": "int4"}));
        }
        _ => assert_eq!(answer["rows_affected"], json!(1), "{answer}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reads_on_a_shared_connection_run_together_and_each_gets_its_answer() {
    let db = TestDb::new().await;
    let daemon = one_connection(&db).await;
    let before = daemon.scrape().await;
    let coalesced = four_clients_at_once(&daemon).await;
    let after = daemon.scrape().await;
    let (_, pools) = daemon.get("/pools").await;
    let pool = &pools["pools"][0];
    assert_eq!(
        pool["coalesced_statements"],
        json!(coalesced as u64),
        "{pools}"
    );
    // Runs of them: at least one, and fewer than statements, since some ran as groups.
    let groups = delta(&before, &after, "qail_coalesced_groups_total");
    assert_eq!(pool["coalesced_groups"], json!(groups as u64), "{pools}");
    assert!(
        groups >= 1.0 && groups < coalesced,
        "{groups} runs of {coalesced}"
    );
}

/// Four clients send [`request`]s in rounds over `daemon`, whose pool has one connection, and
/// check every answer; asserts that statements were coalesced and ran as groups, and returns
/// how many were coalesced.
pub(crate) async fn four_clients_at_once(daemon: &AdminDaemon) -> f64 {
    let before = daemon.scrape().await;
    let clients = (0..4).map(|k| async move {
        let mut c = warm_client(daemon).await;
        for _ in 0..2 {
            let requests: Vec<Value> = (0..60).map(|i| request(k, i)).collect();
            let answers = send_all(&mut c, &requests).await;
            for (i, answer) in answers.iter().enumerate() {
                check(k, i, answer);
            }
        }
    });
    futures_util::future::join_all(clients).await;
    let after = daemon.scrape().await;
    let coalesced = delta(&before, &after, "qail_coalesced_statements_total");
    assert!(coalesced > 0.0, "no statement was coalesced");
    assert!(
        delta(&before, &after, "qail_pipeline_grouped_statements_total") > 0.0,
        "no coalesced statements ran as a group"
    );
    coalesced
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_read_fails_alone_and_its_group_runs_again() {
    let db = TestDb::new().await;
    let daemon = one_connection(&db).await;
    let mut c = warm_client(&daemon).await;
    let before = daemon.scrape().await;
    // Division by zero in requests 0 and 20 of 60, and text PostgreSQL cannot read as an
    // integer in request 40.
    let requests: Vec<Value> = (0..60)
        .map(|i| match i {
            20 => json!({"op": "query", "sql": "SELECT 600 / $1::int AS q", "params": [0]}),
            40 => json!({"op": "query", "sql": "SELECT 600 / $1::int AS q", "params": ["x"]}),
            _ => json!({"op": "query", "sql": "SELECT 600 / $1::int AS q", "params": [i]}),
        })
        .collect();
    let answers = send_all(&mut c, &requests).await;
    for (i, answer) in answers.iter().enumerate() {
        match i {
            20 => assert_eq!(answer["error"]["code"], json!("22012"), "{answer}"),
            40 => assert_eq!(answer["error"]["code"], json!("22P02"), "{answer}"),
            0 => assert_eq!(answer["error"]["code"], json!("22012"), "{answer}"),
            _ => assert_eq!(answer["rows"], json!([[600 / i]]), "request {i}: {answer}"),
        }
    }
    let after = daemon.scrape().await;
    assert!(delta(&before, &after, "qail_coalesced_statements_total") > 0.0);
    // The connection is clean: a statement on its own answers.
    assert_eq!(c.scalar("SELECT 6 * 7", json!([])).await, json!(42));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coalesced_select_whose_function_writes_runs_each_write_once() {
    let db = TestDb::new().await;
    db.setup(&remembering_log(25)).await;
    let daemon = one_connection(&db).await;
    let mut c = warm_client(&daemon).await;
    let before = daemon.scrape().await;
    let requests: Vec<Value> = (0..50)
        .map(|i| json!({"op": "query", "sql": "SELECT remember($1) AS v", "params": [i]}))
        .collect();
    let answers = send_all(&mut c, &requests).await;
    for (i, answer) in answers.iter().enumerate() {
        if i == 25 {
            assert_eq!(answer["error"]["code"], json!("23505"), "{answer}");
        } else {
            assert_eq!(answer["rows"], json!([[i]]), "request {i}: {answer}");
        }
    }
    // 49 new rows and the one that was there: every write happened exactly once.
    assert_eq!(db.count("SELECT count(*) FROM log", &[]).await, 50);
    let after = daemon.scrape().await;
    assert!(delta(&before, &after, "qail_coalesced_statements_total") > 0.0);
    assert!(
        delta(&before, &after, "qail_pipeline_grouped_reruns_total") > 0.0,
        "the writes failed in their read-only group and ran again alone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_while_its_reads_wait_does_not_disturb_the_others() {
    let db = TestDb::new().await;
    let daemon = one_connection(&db).await;
    let mut slow = warm_client(&daemon).await;
    let mut leaver = daemon.connected().await;
    let mut stayer = daemon.connected().await;
    let backend = slow.scalar("SELECT pg_backend_pid()", json!([])).await;
    // Prepared on the connection beforehand, so that behind the slow statement the others only
    // queue (a request still preparing when its client leaves abandons nothing either: the
    // next test).
    let left_behind = "SELECT $1::int AS left_behind";
    let stayed = "SELECT $1::int + 100 AS stayed";
    assert_eq!(leaver.scalar(left_behind, json!([0])).await, json!(0));
    assert_eq!(stayer.scalar(stayed, json!([0])).await, json!(100));
    // The slow statement holds the connection; the others queue behind it.
    let slow_id = slow.next_id();
    slow.send(&json!({"id": slow_id, "op": "query", "sql": "SELECT true AS slept FROM pg_sleep($1::float8)", "params": [0.4]}))
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    for i in 0..5 {
        let id = leaver.next_id();
        leaver
            .send(&json!({"id": id, "op": "query", "sql": left_behind, "params": [i]}))
            .await;
    }
    let requests: Vec<Value> = (0..5)
        .map(|i| json!({"op": "query", "sql": stayed, "params": [i]}))
        .collect();
    let ids: Vec<i64> = (0..5).map(|_| stayer.next_id()).collect();
    for (id, request) in ids.iter().zip(&requests) {
        let mut request = request.clone();
        request["id"] = json!(id);
        stayer.send(&request).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(leaver);
    for (i, id) in ids.iter().enumerate() {
        let answer = stayer.recv().await;
        assert_eq!(answer["id"], json!(id));
        assert_eq!(answer["rows"], json!([[i + 100]]), "{answer}");
    }
    let answer = slow.recv().await;
    assert_eq!(answer["rows"], json!([[true]]), "{answer}");
    // The one connection is still healthy, and still the same: the leaver's statements only
    // waited in the queue, so nothing of them had to be cancelled or the connection dropped.
    assert_eq!(stayer.scalar("SELECT 1 + 1", json!([])).await, json!(2));
    assert_eq!(
        stayer.scalar("SELECT pg_backend_pid()", json!([])).await,
        backend
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_while_its_statement_is_prepared_does_not_cost_the_connection() {
    let db = TestDb::new().await;
    let daemon = one_connection(&db).await;
    let mut slow = warm_client(&daemon).await;
    let backend = slow.scalar("SELECT pg_backend_pid()", json!([])).await;
    let slow_id = slow.next_id();
    slow.send(&json!({"id": slow_id, "op": "query", "sql": "SELECT true AS slept FROM pg_sleep($1::float8)", "params": [0.6]}))
        .await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    // A statement the daemon has not seen: its Parse waits in PostgreSQL behind the sleep on
    // the one connection, and its client leaves meanwhile.
    let mut leaver = daemon.connected().await;
    let id = leaver.next_id();
    leaver
        .send(&json!({"id": id, "op": "query", "sql": "SELECT $1::int AS first_seen_here", "params": [1]}))
        .await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    drop(leaver);
    let answer = slow.recv().await;
    assert_eq!(answer["rows"], json!([[true]]), "{answer}");
    // Preparing has no effect anyone could see, and tokio-postgres reads the answer to a
    // Parse nobody waits for: the connection was neither cancelled nor dropped.
    assert_eq!(
        slow.scalar("SELECT pg_backend_pid()", json!([])).await,
        backend
    );
    assert_eq!(
        slow.scalar("SELECT $1::int AS first_seen_here", json!([2]))
            .await,
        json!(2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalesced_reads_after_a_schema_change_answer_in_the_new_shape() {
    let db = TestDb::new().await;
    db.setup("CREATE TABLE t (id int); INSERT INTO t SELECT g FROM generate_series(1, 10) g;")
        .await;
    let daemon = one_connection(&db).await;
    let mut c = warm_client(&daemon).await;
    let handle = c.prepare("SELECT * FROM t WHERE id = $1").await;
    let requests: Vec<Value> = (1..=LANE)
        .map(|i| json!({"op": "query", "handle": handle, "params": [i]}))
        .collect();
    let before = daemon.scrape().await;
    for (i, answer) in send_all(&mut c, &requests).await.iter().enumerate() {
        assert_eq!(answer["rows"], json!([[i + 1]]), "{answer}");
    }

    // The connection's prepared copies (tokio-postgres' and the group's own) are now stale.
    db.setup("ALTER TABLE t ADD COLUMN label text DEFAULT 'x'")
        .await;
    for _ in 0..2 {
        for (i, answer) in send_all(&mut c, &requests).await.iter().enumerate() {
            assert_eq!(answer["rows"], json!([[i + 1, "x"]]), "{answer}");
            assert_eq!(
                answer["columns"],
                json!([{"name": "id", "type": "int4"}, {"name": "label", "type": "text"}])
            );
        }
    }
    let after = daemon.scrape().await;
    assert!(delta(&before, &after, "qail_coalesced_statements_total") > 0.0);
}

/// Everything that may share a connection at once, over and over on a pool of two: grouped
/// reads by handle, reads of SQL never seen before (prepared through tokio-postgres while
/// groups run), writes (pipelined through tokio-postgres between groups) and `execute`.
/// Every answer must be its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_writes_and_prepares_interleave_on_shared_connections() {
    const CLIENTS: usize = 6;
    const ROUNDS: usize = 40;
    let db = TestDb::new().await;
    db.setup(
        "CREATE TABLE kv (k int PRIMARY KEY, v text);
         INSERT INTO kv SELECT g, 'v' || g FROM generate_series(1, 100) g;
         CREATE TABLE log (client int, round int, slot int);",
    )
    .await;
    let daemon = AdminDaemon::for_db(&db, |cfg| cfg.upstreams[0].pool_max = 2).await;
    let before = daemon.scrape().await;
    let clients = (0..CLIENTS).map(|k| {
        let daemon = &daemon;
        async move {
            let mut c = warm_client(daemon).await;
            let read = c.prepare("SELECT k, v FROM kv WHERE k = $1").await;
            for round in 0..ROUNDS {
                let fresh = format!("SELECT $1::int + {} AS n", k * 1000 + round);
                let requests: Vec<Value> = (0..LANE)
                    .map(|slot| match slot % 4 {
                        0 | 1 => json!({"op": "query", "handle": read, "params": [slot + round + 1]}),
                        2 => json!({"op": "query", "sql": fresh, "params": [slot]}),
                        _ => json!({"op": "execute", "sql": "INSERT INTO log VALUES ($1, $2, $3)", "params": [k, round, slot]}),
                    })
                    .collect();
                let answers = send_all(&mut c, &requests).await;
                for (slot, answer) in answers.iter().enumerate() {
                    let context = format!("client {k} round {round} slot {slot}: {answer}");
                    assert_eq!(answer["ok"], json!(true), "{context}");
                    match slot % 4 {
                        0 | 1 => {
                            let key = slot + round + 1;
                            assert_eq!(answer["rows"], json!([[key, format!("v{key}")]]), "{context}");
                        }
                        2 => assert_eq!(answer["rows"], json!([[k * 1000 + round + slot]]), "{context}"),
                        _ => assert_eq!(answer["rows_affected"], json!(1), "{context}"),
                    }
                }
            }
        }
    });
    futures_util::future::join_all(clients).await;
    let writes = CLIENTS * ROUNDS * LANE / 4;
    assert_eq!(
        db.count("SELECT count(*) FROM log", &[]).await,
        writes as i64
    );
    assert_eq!(
        db.count("SELECT count(DISTINCT (client, round, slot)) FROM log", &[])
            .await,
        writes as i64,
        "every write happened exactly once"
    );
    let after = daemon.scrape().await;
    assert!(delta(&before, &after, "qail_coalesced_statements_total") > 0.0);
}

/// With idle connections to spare, a read that arrives while another client's statement has
/// just started joins that connection and runs in the group after it, instead of taking an idle
/// connection of its own (`upstream::JOIN_WINDOW`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_join_a_connection_whose_group_just_started_before_an_idle_one() {
    let db = TestDb::new().await;
    let daemon = AdminDaemon::for_db(&db, |cfg| {
        cfg.upstreams[0].pool_max = 8;
        cfg.upstreams[0].pool_min_idle = 8;
    })
    .await;
    crate::lifecycle::wait_for_backends(&db, 8).await;
    let before = daemon.scrape().await;
    // Four clients, one request at a time each: never more in flight than idle connections.
    let clients = (0..4).map(|k| {
        let daemon = &daemon;
        async move {
            let mut c = warm_client(daemon).await;
            for i in 0..60 {
                let n = k * 1000 + i;
                let sql = "SELECT $1::int AS n, pg_sleep(0.001)::text AS slept";
                assert_eq!(c.rows(sql, json!([n])).await, vec![json!([n, ""])]);
            }
        }
    });
    futures_util::future::join_all(clients).await;
    let after = daemon.scrape().await;
    assert!(
        delta(&before, &after, "qail_coalesced_statements_total") > 0.0,
        "no read joined a busy connection"
    );
}

/// A read does not queue behind a statement that has been running for longer than the join
/// window when an idle connection is free: a slow query holds up only itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_do_not_queue_behind_a_slow_statement_while_a_connection_is_idle() {
    let db = TestDb::new().await;
    let daemon = AdminDaemon::for_db(&db, |cfg| {
        cfg.upstreams[0].pool_max = 2;
        cfg.upstreams[0].pool_min_idle = 2;
    })
    .await;
    crate::lifecycle::wait_for_backends(&db, 2).await;
    let mut slow = daemon.connected().await;
    slow.send(&json!({"id": 1, "op": "query", "sql": "SELECT pg_sleep(1.5)::text AS slept"}))
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut fast = daemon.connected().await;
    let started = std::time::Instant::now();
    for i in 0..5 {
        assert_eq!(fast.scalar("SELECT $1::int", json!([i])).await, json!(i));
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(700),
        "the reads waited for the slow statement: {took:?}"
    );
    let answer = slow.recv().await;
    assert_eq!(answer["ok"], json!(true), "{answer}");
}
