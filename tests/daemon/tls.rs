//! TLS to PostgreSQL (`sslmode`, `sslrootcert`, `sslcert`/`sslkey`, `channel_binding`): the
//! shared test cluster listens with a certificate a test authority signed for `localhost` (not
//! `127.0.0.1`), and signs the role `CERT_USER` in by client certificate (`support::pg`).

use qail_daemon::config::{ChannelBinding, Config, SslMode};
use serde_json::{json, Value};

use crate::admin::AdminDaemon;
use crate::coalesce::{delta, four_clients_at_once};
use crate::support::pg::CERT_USER;
use crate::support::TestDb;

/// Whether the backend answering runs over TLS, as PostgreSQL reports it.
const SSL_IN_USE: &str = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_checks_the_certificate_binds_the_channel_and_groups_pipelines() {
    let db = TestDb::new().await;
    db.setup("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 10)")
        .await;
    let daemon = AdminDaemon::for_db(&db, |cfg| {
        let up = &mut cfg.upstreams[0];
        up.host = "localhost".into();
        up.sslmode = SslMode::VerifyFull;
        up.sslrootcert = Some(db.cluster.ca_cert());
        // SCRAM-SHA-256-PLUS or nothing: the session's binding must match the server's.
        up.channel_binding = ChannelBinding::Require;
    })
    .await;
    let mut c = daemon.connected().await;
    let r = c.query(SSL_IN_USE, json!([])).await;
    assert_eq!(r["rows"], json!([[true]]), "{r}");

    // The daemon writes grouped pipelines into the TLS session itself, with one Sync per group.
    let before = daemon.scrape().await;
    let batch: Vec<Value> = (0..600).map(|i| json!([i % 12])).collect();
    let r = c
        .call_ok(json!({"op": "pipeline", "sql": "SELECT count(*) FROM t WHERE id <= $1", "params_batch": batch}))
        .await;
    let results = r["results"].as_array().expect("results");
    assert_eq!(results.len(), 600);
    for (i, result) in results.iter().enumerate() {
        assert_eq!(result["rows"], json!([[(i % 12).min(10)]]), "result {i}");
    }
    let after = daemon.scrape().await;
    assert_eq!(
        delta(&before, &after, "qail_pipeline_grouped_statements_total"),
        600.0,
        "every statement ran grouped"
    );
    // tokio-postgres carries on in the same session afterwards.
    let r = c
        .call_ok(json!({"op": "execute", "sql": "INSERT INTO t VALUES (11)"}))
        .await;
    assert_eq!(r["rows_affected"], json!(1));
    assert_eq!(
        c.scalar("SELECT count(*) FROM t", json!([])).await,
        json!(11)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reads_coalesce_under_tls() {
    let db = TestDb::new().await;
    let daemon = AdminDaemon::for_db(&db, |cfg| {
        cfg.upstreams[0].pool_max = 1;
        cfg.upstreams[0].sslmode = SslMode::Require;
    })
    .await;
    four_clients_at_once(&daemon).await;
    let mut c = daemon.connected().await;
    assert_eq!(
        c.query(SSL_IN_USE, json!([])).await["rows"],
        json!([[true]])
    );
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

/// The error a daemon whose upstream cannot connect answers a query with.
async fn connect_failure(db: &TestDb, tweak: impl FnOnce(&mut Config)) -> String {
    let daemon = db
        .daemon_with(|cfg| {
            cfg.upstreams[0].checkout_timeout_ms = 1000;
            tweak(cfg);
        })
        .await;
    let mut c = daemon.connected().await;
    let r = c.call(json!({"op": "query", "sql": "SELECT 1"})).await;
    assert_eq!(r["ok"], json!(false), "{r}");
    assert_eq!(r["error"]["code"], json!("upstream_unavailable"), "{r}");
    r["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_certificate_is_checked_as_each_sslmode_says() {
    let db = TestDb::new().await;
    let (ca, other_ca) = (db.cluster.ca_cert(), db.cluster.other_ca_cert());
    let message = connect_failure(&db, |cfg| {
        cfg.upstreams[0].sslmode = SslMode::VerifyFull;
        cfg.upstreams[0].sslrootcert = Some(other_ca.clone());
    })
    .await;
    assert!(
        message.contains("invalid peer certificate: UnknownIssuer"),
        "the error names the certificate problem: {message}"
    );
    // The certificate names localhost, the upstream is 127.0.0.1.
    let message = connect_failure(&db, |cfg| {
        cfg.upstreams[0].sslmode = SslMode::VerifyFull;
        cfg.upstreams[0].sslrootcert = Some(ca.clone());
    })
    .await;
    assert!(
        message.contains("not valid for name \"127.0.0.1\""),
        "verify-full wants the host named: {message}"
    );
    // verify-ca checks the authority only.
    let daemon = db
        .daemon_with(|cfg| {
            cfg.upstreams[0].sslmode = SslMode::VerifyCa;
            cfg.upstreams[0].sslrootcert = Some(ca.clone());
        })
        .await;
    let mut c = daemon.connected().await;
    assert_eq!(
        c.query(SSL_IN_USE, json!([])).await["rows"],
        json!([[true]])
    );
    let message = connect_failure(&db, |cfg| {
        cfg.upstreams[0].sslmode = SslMode::VerifyCa;
        cfg.upstreams[0].sslrootcert = Some(other_ca.clone());
    })
    .await;
    assert!(message.contains("UnknownIssuer"), "{message}");
    // `require` with `sslrootcert` checks like verify-ca, as libpq does.
    let message = connect_failure(&db, |cfg| {
        cfg.upstreams[0].sslmode = SslMode::Require;
        cfg.upstreams[0].sslrootcert = Some(other_ca.clone());
    })
    .await;
    assert!(message.contains("UnknownIssuer"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_signs_in_where_pg_hba_asks_for_one() {
    let db = TestDb::new().await;
    db.setup(&format!(
        "DO $$ BEGIN
           IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{CERT_USER}') THEN
             CREATE ROLE {CERT_USER} LOGIN;
           END IF;
         END $$"
    ))
    .await;
    let (cert, key) = db.cluster.client_cert();
    let as_cert_user = |cfg: &mut Config| {
        let up = &mut cfg.upstreams[0];
        up.user = CERT_USER.into();
        up.password = None;
        up.sslmode = SslMode::VerifyCa;
        up.sslrootcert = Some(db.cluster.ca_cert());
    };
    let daemon = db
        .daemon_with(|cfg| {
            as_cert_user(cfg);
            cfg.upstreams[0].sslcert = Some(cert.clone());
            cfg.upstreams[0].sslkey = Some(key.clone());
        })
        .await;
    let mut c = daemon.connected().await;
    let r = c
        .query(
            "SELECT current_user::text, client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            json!([]),
        )
        .await;
    assert_eq!(
        r["rows"],
        json!([[CERT_USER, format!("/CN={CERT_USER}")]]),
        "{r}"
    );

    let message = connect_failure(&db, as_cert_user).await;
    assert!(
        message.contains("certificate"),
        "PostgreSQL's refusal is passed on: {message}"
    );
}
