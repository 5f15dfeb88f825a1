//! Fault tests: each has a PostgreSQL cluster of its own that it stops and starts under a
//! running daemon.

use std::time::{Duration, Instant};

use qail_daemon::config::SslMode;
use serde_json::{json, Value};

use crate::support::{base_config, temp_dir, PgCluster, RawClient, TestDaemon};
use crate::tls::on_tls;

/// Error codes a daemon may give while PostgreSQL is unreachable.
const UNAVAILABLE: [&str; 2] = ["upstream_unavailable", "pool_timeout"];

/// Runs blocking cluster control off the runtime's threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("cluster control panicked")
}

/// Repeats `SELECT 1` until it succeeds (at most 30 s); returns the errors seen meanwhile.
async fn query_until_ok(c: &mut RawClient) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut errors = Vec::new();
    loop {
        let r = c
            .call(json!({"op": "query", "sql": "SELECT 1 AS up"}))
            .await;
        if r["ok"] == json!(true) {
            assert_eq!(r["rows"], json!([[1]]));
            return errors;
        }
        errors.push(r["error"].clone());
        assert!(
            Instant::now() < deadline,
            "the daemon did not recover within 30 s; errors: {errors:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn config_for(cluster: &PgCluster, dir: &tempfile::TempDir) -> qail_daemon::config::Config {
    let mut cfg = base_config(cluster, "postgres", &dir.path().join("qail.sock"));
    cfg.upstreams[0].connect_timeout_ms = 1000;
    cfg.upstreams[0].checkout_timeout_ms = 1500;
    cfg.upstreams[0].health_interval_ms = 200;
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_started_while_postgresql_is_down_serves_once_it_is_up() {
    let mut cluster = blocking(PgCluster::start_private).await;
    let cluster_port = cluster.port();
    cluster = blocking(move || {
        cluster.stop();
        cluster
    })
    .await;

    let dir = temp_dir();
    let cfg = config_for(&cluster, &dir);
    let daemon = TestDaemon::start_config(cfg, dir).await;
    let mut c = daemon.connected().await;
    let started = Instant::now();
    let r = c.call(json!({"op": "query", "sql": "SELECT 1"})).await;
    assert_eq!(r["ok"], json!(false), "PostgreSQL is down: {r}");
    let code = r["error"]["code"].as_str().unwrap_or_default().to_string();
    assert!(UNAVAILABLE.contains(&code.as_str()), "{r}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "the failure came after {:?}",
        started.elapsed()
    );

    let cluster = blocking(move || {
        cluster.start().expect("restart the private cluster");
        cluster
    })
    .await;
    assert_eq!(cluster.port(), cluster_port, "the cluster kept its port");
    cluster.wait_ready().await;
    query_until_ok(&mut c).await;
    daemon.shutdown().await;
    blocking(move || drop(cluster)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgresql_restart_is_survived() {
    restart_is_survived(SslMode::Disable).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgresql_restart_is_survived_over_tls() {
    restart_is_survived(SslMode::Require).await;
}

/// Serves, survives a restart of PostgreSQL under it, and serves again: single statements on
/// a prepared handle, and a grouped pipeline on the new connections.
async fn restart_is_survived(sslmode: SslMode) {
    let cluster = blocking(PgCluster::start_private).await;
    cluster.wait_ready().await;
    let dir = temp_dir();
    let mut cfg = config_for(&cluster, &dir);
    cfg.upstreams[0].sslmode = sslmode;
    let daemon = TestDaemon::start_config(cfg, dir).await;
    let mut c = daemon.connected().await;
    let handle = c.prepare("SELECT 40 + $1::int AS n").await;
    let r = c
        .call_ok(json!({"op": "query", "handle": handle, "params": [2]}))
        .await;
    assert_eq!(r["rows"], json!([[42]]));

    let mut cluster = cluster;
    cluster = blocking(move || {
        cluster.restart();
        cluster
    })
    .await;
    cluster.wait_ready().await;

    let errors = query_until_ok(&mut c).await;
    for e in &errors {
        let code = e["code"].as_str().unwrap_or_default();
        assert!(
            UNAVAILABLE.contains(&code),
            "while reconnecting only unavailability errors are expected: {e}"
        );
    }
    // Statements are prepared again on the new connections; the handle still works.
    let r = c
        .call_ok(json!({"op": "query", "handle": handle, "params": [3]}))
        .await;
    assert_eq!(r["rows"], json!([[43]]));
    let batch: Vec<Value> = (0..600).map(|i| json!([i])).collect();
    let r = c
        .call_ok(
            json!({"op": "pipeline", "handle": handle, "params_batch": batch, "compact": true}),
        )
        .await;
    let results = r["results"].as_array().expect("results");
    assert_eq!(results.len(), 600);
    assert_eq!(results[599]["rows"], json!([[639]]), "{}", results[599]);
    assert_eq!(on_tls(&mut c).await, sslmode != SslMode::Disable);
    daemon.shutdown().await;
    blocking(move || drop(cluster)).await;
}

/// Reads queued on a shared connection (`pg::coalesce`) while PostgreSQL goes away each get an
/// answer — an error, never a hang — and the daemon serves again once PostgreSQL is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalesced_reads_waiting_when_postgresql_stops_are_answered() {
    let cluster = blocking(PgCluster::start_private).await;
    cluster.wait_ready().await;
    let dir = temp_dir();
    let mut cfg = config_for(&cluster, &dir);
    cfg.upstreams[0].pool_max = 1;
    let daemon = TestDaemon::start_config(cfg, dir).await;
    let mut slow = daemon.connected().await;
    assert_eq!(slow.scalar("SELECT 1", json!([])).await, json!(1));
    let mut waiting = daemon.connected().await;
    // Prepared on the one connection beforehand, so the six reads below go straight to its
    // queue instead of waiting to prepare.
    assert_eq!(
        waiting.scalar("SELECT $1::int AS queued", json!([7])).await,
        json!(7)
    );

    // A long read holds the one connection; six more queue behind it.
    let slow_id = slow.next_id();
    slow.send(&json!({"id": slow_id, "op": "query", "sql": "SELECT true AS woke FROM pg_sleep($1::float8)", "params": [30]}))
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut frames = Vec::new();
    let ids: Vec<i64> = (0..6).map(|_| waiting.next_id()).collect();
    for (i, id) in ids.iter().enumerate() {
        frames.extend(crate::support::client::encode(
            &json!({"id": id, "op": "query", "sql": "SELECT $1::int AS queued", "params": [i]}),
        ));
    }
    waiting.send_raw(&frames).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut cluster = cluster;
    cluster = blocking(move || {
        cluster.stop();
        cluster
    })
    .await;
    let answer = slow.recv().await;
    assert_eq!(answer["id"], json!(slow_id));
    assert_eq!(answer["ok"], json!(false), "{answer}");
    for id in &ids {
        // The connection was lost under each queued read: an unavailability error for each.
        let answer = waiting.recv().await;
        assert_eq!(answer["id"], json!(id), "{answer}");
        let code = answer["error"]["code"].as_str().unwrap_or_default();
        assert!(UNAVAILABLE.contains(&code) || code == "57P01", "{answer}");
    }

    cluster = blocking(move || {
        cluster.start().unwrap_or_else(|e| panic!("{e}"));
        cluster
    })
    .await;
    cluster.wait_ready().await;
    query_until_ok(&mut waiting).await;
    daemon.shutdown().await;
    blocking(move || drop(cluster)).await;
}

/// `sslmode = "prefer"` against a server with TLS turned off talks in the clear, grouped
/// pipelines included; `require` refuses that server. (Every other test cluster has TLS on.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefer_talks_in_the_clear_to_a_server_without_tls() {
    let cluster = blocking(PgCluster::start_private).await;
    cluster.wait_ready().await;
    let admin = cluster.client("postgres").await;
    for sql in ["ALTER SYSTEM SET ssl = off", "SELECT pg_reload_conf()"] {
        admin.batch_execute(sql).await.expect("turn TLS off");
    }
    drop(admin);
    let dir = temp_dir();
    let mut cfg = config_for(&cluster, &dir);
    cfg.upstreams[0].sslmode = SslMode::Prefer;
    let daemon = TestDaemon::start_config(cfg, dir).await;
    let mut c = daemon.connected().await;
    // The reload reaches every new backend at once; the first connections may predate it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = c.call_ok(json!({"op": "query", "sql": "SHOW ssl"})).await;
        if r["rows"] == json!([["off"]]) {
            break;
        }
        assert!(Instant::now() < deadline, "ssl stayed on: {r}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let batch: Vec<Value> = (0..600).map(|i| json!([i])).collect();
    let r = c
        .call_ok(json!({"op": "pipeline", "sql": "SELECT $1::int + 1 AS n", "params_batch": batch, "compact": true}))
        .await;
    assert_eq!(r["results"][599]["rows"], json!([[600]]), "{r}");
    assert!(!on_tls(&mut c).await);
    daemon.shutdown().await;

    let dir = temp_dir();
    let mut cfg = config_for(&cluster, &dir);
    cfg.upstreams[0].sslmode = SslMode::Require;
    let daemon = TestDaemon::start_config(cfg, dir).await;
    let mut c = daemon.connected().await;
    let r = c.call(json!({"op": "query", "sql": "SELECT 1"})).await;
    assert_eq!(r["ok"], json!(false), "{r}");
    let message = r["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("TLS") || message.contains("SSL"), "{r}");
    daemon.shutdown().await;
    blocking(move || drop(cluster)).await;
}
