//! TLS to PostgreSQL (`sslmode`, `sslrootcert`, `sslcert`/`sslkey`, `channel_binding`, and
//! `connect_pg`'s `sslmode`): the
//! shared test cluster listens with a certificate a test authority signed for `localhost` (not
//! `127.0.0.1`), and signs the role `CERT_USER` in by client certificate (`support::pg`).

use std::collections::HashMap;

use qail_daemon::config::{ChannelBinding, Config, SslMode};
use serde_json::{json, Value};

use crate::admin::{write_config, AdminDaemon, ADMIN_TOKEN};
use crate::coalesce::{delta, four_clients_at_once};
use crate::ops::{connect_pg, wait_until_not_running};
use crate::support::pg::{CERT_USER, PG_PASSWORD};
use crate::support::{temp_dir, RawClient, TestDb};

/// Whether the backend answering `c` runs over TLS, as PostgreSQL reports it.
pub(crate) async fn on_tls(c: &mut RawClient) -> bool {
    let r = c
        .query(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            json!([]),
        )
        .await;
    r["rows"][0][0]
        .as_bool()
        .unwrap_or_else(|| panic!("pg_stat_ssl answered {r}"))
}

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
    assert!(on_tls(&mut c).await);

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
    let (_, pools) = daemon.get("/pools").await;
    assert_eq!(
        pools["pools"][0]["sslmode"],
        json!("verify-full"),
        "{pools}"
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
    assert!(on_tls(&mut c).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_encrypts_without_checking_and_disable_stays_in_the_clear() {
    let db = TestDb::new().await;
    let daemon = db
        .daemon_with(|cfg| cfg.upstreams[0].sslmode = SslMode::Require)
        .await;
    let mut c = daemon.connected().await;
    assert!(on_tls(&mut c).await);

    let daemon = db.daemon().await;
    let mut c = daemon.connected().await;
    assert!(!on_tls(&mut c).await);
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
    assert!(on_tls(&mut c).await);
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

/// `connect_pg` with `sslmode`: the request for `db` as the superuser.
fn connect_pg_with(db: &TestDb, sslmode: &str) -> Value {
    let mut request = connect_pg("127.0.0.1", db, PG_PASSWORD);
    request["sslmode"] = json!(sslmode);
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_pg_gets_tls_when_it_asks_and_never_less() {
    let db = TestDb::new().await;
    // The configured upstream talks in the clear: a client asking for TLS gets a dynamic one.
    let daemon = db
        .daemon_with(|cfg| cfg.allow_dynamic_upstreams = true)
        .await;
    let mut c = daemon.client().await;
    let r = c.call_ok(connect_pg_with(&db, "require")).await;
    let name = r["upstream"].as_str().unwrap_or_default().to_string();
    assert!(name.ends_with("?sslmode=require"), "{r}");
    assert!(on_tls(&mut c).await);
    // Without sslmode: the configured upstream, in the clear.
    let r = c.call_ok(connect_pg("127.0.0.1", &db, PG_PASSWORD)).await;
    assert_eq!(r["upstream"], json!("main"), "{r}");
    assert!(!on_tls(&mut c).await);
    for (mode, says) in [
        ("verify-full", "configure the upstream with sslrootcert"),
        ("allow", "unknown sslmode"),
    ] {
        let e = c
            .expect_error(connect_pg_with(&db, mode), "bad_request")
            .await;
        let message = e["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{e}");
    }

    // Without dynamic upstreams, asking for more than the configured upstream does is refused.
    let daemon = db.daemon().await;
    let mut c = daemon.client().await;
    let e = c
        .expect_error(connect_pg_with(&db, "require"), "unknown_upstream")
        .await;
    let message = e["message"].as_str().unwrap_or_default();
    assert!(message.contains("with sslmode require or stricter"), "{e}");
    // A stricter configured upstream serves a client asking for less.
    let daemon = db
        .daemon_with(|cfg| cfg.upstreams[0].sslmode = SslMode::Require)
        .await;
    let mut c = daemon.client().await;
    let r = c.call_ok(connect_pg_with(&db, "prefer")).await;
    assert_eq!(r["upstream"], json!("main"), "{r}");
    assert!(on_tls(&mut c).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_cancels_the_statement_over_tls_too() {
    let db = TestDb::new().await;
    let daemon = db
        .daemon_with(|cfg| cfg.upstreams[0].sslmode = SslMode::Require)
        .await;
    let mut c = daemon.connected().await;
    let started = std::time::Instant::now();
    c.expect_error(
        json!({"op": "query", "sql": "SELECT pg_sleep(30) AS slept_over_tls", "timeout_ms": 300}),
        "timeout",
    )
    .await;
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    // The cancel request itself went over TLS (tokio-postgres refuses it in the clear when
    // sslmode requires TLS), and PostgreSQL stopped the statement.
    wait_until_not_running(&db, "slept_over_tls").await;
    assert_eq!(c.scalar("SELECT 2", json!([])).await, json!(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_picks_up_certificates_rotated_behind_the_same_path() {
    let db = TestDb::new().await;
    let dir = temp_dir();
    let (file, socket, ca) = (
        dir.path().join("qail.toml"),
        dir.path().join("qail.sock"),
        dir.path().join("pg-ca.pem"),
    );
    // The file first holds an authority that did not sign the server's certificate.
    std::fs::copy(db.cluster.other_ca_cert(), &ca).expect("copy the CA file");
    write_config(&file, &socket, db.cluster, &[("main", &db.name, 2)]);
    let mut text = std::fs::read_to_string(&file).expect("read the config file");
    text.push_str(&format!(
        "checkout_timeout_ms = 1000\nsslmode = \"verify-ca\"\nsslrootcert = \"{}\"\n",
        ca.display()
    ));
    std::fs::write(&file, text).expect("write the config file");
    let cfg = Config::load(Some(&file), &HashMap::new()).expect("the config file is valid");
    let daemon = AdminDaemon::start(cfg, dir, Some(file.clone())).await;
    let mut c = daemon.connected().await;
    let e = c
        .expect_error(
            json!({"op": "query", "sql": "SELECT 1"}),
            "upstream_unavailable",
        )
        .await;
    assert!(
        e["message"]
            .as_str()
            .unwrap_or_default()
            .contains("UnknownIssuer"),
        "{e}"
    );

    let (status, report) = daemon.post("/reload", Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(
        report["upstreams"]["unchanged"],
        json!(["main"]),
        "{report}"
    );
    // The right authority, same path: the reload sees the new contents and rebuilds the pool.
    std::fs::copy(db.cluster.ca_cert(), &ca).expect("copy the CA file");
    let (status, report) = daemon.post("/reload", Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["upstreams"]["changed"], json!(["main"]), "{report}");
    assert!(on_tls(&mut c).await);
}
