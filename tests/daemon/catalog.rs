//! The shared statement catalogue seen from clients: handles are per upstream, bounded with
//! LRU eviction, and survive schema changes by being prepared again.

use serde_json::json;

use crate::support::{extra_upstream, TestDb};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handle_from_one_upstream_is_unknown_on_another() {
    let db = TestDb::new().await;
    let other = TestDb::new().await;
    let other_name = other.name.clone();
    let daemon = db
        .daemon_with(|cfg| {
            let up = extra_upstream(cfg, "other", &other_name);
            cfg.upstreams.push(up);
        })
        .await;
    let mut c = daemon.connected().await;
    let handle = c.prepare("SELECT 1 AS one").await;
    c.connect_to("other").await;
    let e = c
        .expect_error(json!({"op": "query", "handle": handle}), "unknown_handle")
        .await;
    assert!(
        e["message"].as_str().unwrap().contains(&handle),
        "the message names the handle: {e}"
    );
    // The same SQL prepared on the other upstream is a different handle that works there.
    let there = c.prepare("SELECT 1 AS one").await;
    assert_ne!(there, handle, "handles are per upstream");
    let r = c.call_ok(json!({"op": "query", "handle": there})).await;
    assert_eq!(r["rows"], json!([[1]]));
    // And the first handle still works back on its own upstream.
    c.connect_to("main").await;
    let r = c.call_ok(json!({"op": "query", "handle": handle})).await;
    assert_eq!(r["rows"], json!([[1]]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_least_recently_used_statement_is_evicted() {
    let db = TestDb::new().await;
    let daemon = db.daemon_with(|cfg| cfg.catalog.capacity = 2).await;
    let mut c = daemon.connected().await;
    let first = c.prepare("SELECT 1 AS n").await;
    let second = c.prepare("SELECT 2 AS n").await;
    let third = c.prepare("SELECT 3 AS n").await;
    let e = c
        .expect_error(json!({"op": "query", "handle": first}), "unknown_handle")
        .await;
    assert!(
        e["message"].as_str().unwrap().contains("prepare"),
        "the message says how to heal: {e}"
    );
    for (handle, n) in [(&second, 2), (&third, 3)] {
        let r = c.call_ok(json!({"op": "query", "handle": handle})).await;
        assert_eq!(r["rows"], json!([[n]]));
    }
    // Preparing the evicted SQL again gives a working handle (and evicts `second`, now the
    // least recently used).
    let again = c.prepare("SELECT 1 AS n").await;
    let r = c.call_ok(json!({"op": "query", "handle": again})).await;
    assert_eq!(r["rows"], json!([[1]]));
    c.expect_error(json!({"op": "query", "handle": second}), "unknown_handle")
        .await;
    let r = c.call_ok(json!({"op": "query", "handle": third})).await;
    assert_eq!(r["rows"], json!([[3]]));
    // SQL sent directly still works when the catalogue is full.
    assert_eq!(c.scalar("SELECT 4 AS n", json!([])).await, json!(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_change_is_healed_by_preparing_again() {
    let db = TestDb::new().await;
    db.setup("CREATE TABLE t (a int); INSERT INTO t VALUES (1);")
        .await;
    // One pooled connection: the statement prepared on it is surely the stale one.
    let daemon = db.daemon_with(|cfg| cfg.upstreams[0].pool_max = 1).await;
    let mut c = daemon.connected().await;
    let handle = c.prepare("SELECT * FROM t").await;
    let r = c.call_ok(json!({"op": "query", "handle": handle})).await;
    assert_eq!(r["rows"], json!([[1]]));

    db.setup("ALTER TABLE t ADD COLUMN b text DEFAULT 'new'")
        .await;

    let r = c.call_ok(json!({"op": "query", "handle": handle})).await;
    assert_eq!(
        r["columns"],
        json!([{"name": "a", "type": "int4"}, {"name": "b", "type": "text"}])
    );
    assert_eq!(r["rows"], json!([[1, "new"]]));
    // By SQL too (same catalogue entry).
    let r = c.query("SELECT * FROM t", json!([])).await;
    assert_eq!(r["rows"], json!([[1, "new"]]));
    let r = c
        .call_ok(json!({"op": "pipeline", "handle": handle, "params_batch": [[], []]}))
        .await;
    assert_eq!(r["results"][1]["rows"], json!([[1, "new"]]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_made_up_handle_is_unknown() {
    let db = TestDb::new().await;
    let daemon = db.daemon().await;
    let mut c = daemon.connected().await;
    for handle in ["nope", "h0-0"] {
        c.expect_error(json!({"op": "query", "handle": handle}), "unknown_handle")
            .await;
    }
    c.expect_error(
        json!({"op": "pipeline", "handle": "nope", "params_batch": [[]]}),
        "unknown_handle",
    )
    .await;
}
