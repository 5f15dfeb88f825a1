//! TLS to PostgreSQL (`sslmode`, `sslrootcert`): the shared test cluster listens with a
//! certificate signed by a test authority (`support::pg`), on 127.0.0.1.

use qail_daemon::config::SslMode;
use serde_json::{json, Value};

use crate::support::TestDb;

/// Whether the backend answering runs over TLS, as PostgreSQL reports it.
const SSL_IN_USE: &str = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_encrypts_and_checks_the_servers_certificate() {
    let db = TestDb::new().await;
    db.setup("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 10)")
        .await;
    let daemon = db
        .daemon_with(|cfg| {
            cfg.upstreams[0].sslmode = SslMode::VerifyFull;
            cfg.upstreams[0].sslrootcert = Some(db.cluster.ca_cert());
        })
        .await;
    let mut c = daemon.connected().await;
    let r = c.query(SSL_IN_USE, json!([])).await;
    assert_eq!(r["rows"], json!([[true]]), "{r}");

    // Grouped pipelines and coalescing write into the socket themselves, which TLS rules out:
    // under TLS they run through tokio-postgres, with the same answers.
    let batch: Vec<Value> = (0..600).map(|i| json!([i % 12])).collect();
    let r = c
        .call_ok(json!({"op": "pipeline", "sql": "SELECT count(*) FROM t WHERE id <= $1", "params_batch": batch}))
        .await;
    let results = r["results"].as_array().expect("results");
    assert_eq!(results.len(), 600);
    for (i, result) in results.iter().enumerate() {
        assert_eq!(result["rows"], json!([[(i % 12).min(10)]]), "result {i}");
    }
    let r = c
        .call_ok(json!({"op": "execute", "sql": "INSERT INTO t VALUES (11)"}))
        .await;
    assert_eq!(r["rows_affected"], json!(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_encrypts_without_checking_and_disable_stays_in_the_clear() {
    let db = TestDb::new().await;
    let daemon = db
        .daemon_with(|cfg| cfg.upstreams[0].sslmode = SslMode::Require)
        .await;
    let mut c = daemon.connected().await;
    assert_eq!(
        c.query(SSL_IN_USE, json!([])).await["rows"],
        json!([[true]])
    );

    let daemon = db.daemon().await;
    let mut c = daemon.connected().await;
    assert_eq!(
        c.query(SSL_IN_USE, json!([])).await["rows"],
        json!([[false]])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_refuses_a_certificate_another_authority_signed() {
    let db = TestDb::new().await;
    let daemon = db
        .daemon_with(|cfg| {
            cfg.upstreams[0].sslmode = SslMode::VerifyFull;
            cfg.upstreams[0].sslrootcert = Some(db.cluster.other_ca_cert());
            cfg.upstreams[0].checkout_timeout_ms = 1000;
        })
        .await;
    let mut c = daemon.connected().await;
    let r = c.call(json!({"op": "query", "sql": "SELECT 1"})).await;
    assert_eq!(r["ok"], json!(false), "{r}");
    assert_eq!(r["error"]["code"], json!("upstream_unavailable"), "{r}");
    let message = r["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("invalid peer certificate: UnknownIssuer"),
        "the error names the certificate problem: {r}"
    );
}
