//! Pool checkout (`upstream`): requests waiting for a pooled connection are served first come,
//! first served, whether they need a connection of their own or share one, and a stream of
//! shared requests cannot keep a waiting request from its turn. Connections are retired by
//! age (`max_lifetime_ms`) and idleness (`idle_timeout_ms`).

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::admin::AdminDaemon;
use crate::support::TestDb;

/// Waits until `/pools` shows `n` requests waiting for a connection of upstream main.
async fn wait_for_waiters(daemon: &AdminDaemon, n: u64) {
    daemon
        .wait_for("/pools", &format!("{n} request(s) waiting"), |_, body| {
            body["pools"][0]["waiters"] == json!(n)
        })
        .await;
}

/// Takes the next value of sequence `turns`; with a time limit the request needs a connection
/// of its own, without one it may share.
fn next_turn(timeout_ms: Option<u64>) -> Value {
    let mut request = json!({"op": "query", "sql": "SELECT nextval('turns')::int AS turn"});
    if let Some(ms) = timeout_ms {
        request["timeout_ms"] = json!(ms);
    }
    request
}

/// With the only connection held by a transaction, requests queue one by one; when it ends
/// they run in the order they arrived. Sequence values show the order PostgreSQL ran them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_requests_are_served_in_arrival_order() {
    let db = TestDb::new().await;
    db.setup("CREATE SEQUENCE turns").await;
    let daemon = AdminDaemon::for_db(&db, |cfg| cfg.upstreams[0].pool_max = 1).await;

    let mut holder = daemon.connected().await;
    holder.call_ok(json!({"op": "begin"})).await;
    holder.scalar("SELECT 1", json!([])).await;

    // Four requests that need a connection of their own (a time limit), then one that could
    // share a connection: each is queued before the next is sent.
    let mut waiters = Vec::new();
    for i in 0..5u64 {
        let mut c = daemon.connected().await;
        let timeout = (i < 4).then_some(30_000);
        let mut request = next_turn(timeout);
        request["id"] = json!(c.next_id());
        c.send(&request).await;
        wait_for_waiters(&daemon, i + 1).await;
        waiters.push(c);
    }
    holder.call_ok(json!({"op": "commit"})).await;

    for (i, c) in waiters.iter_mut().enumerate() {
        let answer = c.recv().await;
        assert_eq!(answer["ok"], json!(true), "{answer}");
        assert_eq!(
            answer["rows"],
            json!([[i + 1]]),
            "request {i} ran out of turn: {answer}"
        );
    }
    wait_for_waiters(&daemon, 0).await;
}

/// Clients that keep one shared connection busy (eight requests share it) must not keep a
/// request that needs the connection to itself waiting until they stop: once it waits, no new
/// request joins the busy connection, which drains and goes to the waiter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_traffic_does_not_starve_a_waiting_checkout() {
    let db = TestDb::new().await;
    let daemon = AdminDaemon::for_db(&db, |cfg| {
        cfg.upstreams[0].pool_max = 1;
        cfg.upstreams[0].checkout_timeout_ms = 20_000;
    })
    .await;

    let busy_for = Duration::from_secs(4);
    let mut busy = Vec::new();
    for _ in 0..12 {
        let mut c = daemon.connected().await;
        busy.push(tokio::spawn(async move {
            let until = Instant::now() + busy_for;
            let mut done = 0u32;
            while Instant::now() < until {
                let answer = c
                    .call(json!({"op": "query", "sql": "SELECT pg_sleep(0.02)"}))
                    .await;
                assert_eq!(answer["ok"], json!(true), "{answer}");
                done += 1;
            }
            done
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut exclusive = daemon.connected().await;
    let started = Instant::now();
    let answer = exclusive
        .call(json!({"op": "query", "sql": "SELECT 1", "timeout_ms": 30_000}))
        .await;
    let waited = started.elapsed();
    assert_eq!(answer["ok"], json!(true), "{answer}");
    // Served once the requests already on the connection end (a few rounds of 20 ms), long
    // before the shared traffic stops.
    assert!(
        waited < Duration::from_secs(2),
        "the exclusive request waited {waited:?} behind shared traffic"
    );
    for task in busy {
        assert!(task.await.expect("client task") > 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_retired_by_age_and_by_idleness() {
    let db = TestDb::new().await;
    // max_lifetime_ms: the one connection is replaced once it is half a second old.
    let daemon = AdminDaemon::for_db(&db, |cfg| {
        let up = &mut cfg.upstreams[0];
        up.pool_max = 1;
        up.pool_min_idle = 0;
        up.max_lifetime_ms = 500;
        up.idle_timeout_ms = 0;
    })
    .await;
    let mut c = daemon.connected().await;
    let first = c.scalar("SELECT pg_backend_pid()", json!([])).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = c.scalar("SELECT pg_backend_pid()", json!([])).await;
        if now != first {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "backend {first} still served after 5 s with max_lifetime_ms = 500"
        );
    }
    let (_, pools) = daemon.get("/pools").await;
    let pool = &pools["pools"][0];
    assert!(pool["connections_opened"].as_u64() >= Some(2), "{pool}");
    assert!(
        pool["connections_closed"]["max_lifetime"].as_u64() >= Some(1),
        "{pool}"
    );

    // idle_timeout_ms: an idle connection above pool_min_idle is closed.
    let daemon = AdminDaemon::for_db(&db, |cfg| {
        let up = &mut cfg.upstreams[0];
        up.pool_min_idle = 0;
        up.idle_timeout_ms = 300;
        up.health_interval_ms = 60_000;
    })
    .await;
    let mut c = daemon.connected().await;
    assert_eq!(c.scalar("SELECT 1", json!([])).await, json!(1));
    let (_, pools) = daemon.get("/pools").await;
    assert!(pools["pools"][0]["size"].as_u64() >= Some(1), "{pools}");
    daemon
        .wait_for("/pools", "the idle connection closed", |_, body| {
            body["pools"][0]["size"] == json!(0)
        })
        .await;
    let closed = daemon.scrape().await.get(
        "qail_pool_connections_closed_total",
        &[("upstream", "main"), ("reason", "idle_timeout")],
    );
    assert!(closed >= Some(1.0), "{closed:?}");
    // The next request opens a connection again.
    assert_eq!(c.scalar("SELECT 2", json!([])).await, json!(2));
}
