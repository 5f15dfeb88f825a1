//! The admin HTTP API against a real daemon and a real PostgreSQL: every endpoint, metrics that
//! move with traffic (parsed with a Prometheus text parser), operator actions, reloads,
//! readiness following PostgreSQL down and up, and logs that never show a secret.
//!
//! `AdminDaemon` is like `support::TestDaemon` but keeps the admin address (and can be given a
//! config file to reload); `http` is a minimal HTTP/1.1 client, so no HTTP client crate is needed.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_parse::{Scrape, Value as PromValue};
use qail_daemon::app::Daemon;
use qail_daemon::config::{Config, LogConfig, LogFormat, Secret};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::support::pg::{PG_PASSWORD, PG_USER};
use crate::support::{base_config, temp_dir, PgCluster, RawClient, TestDb};

/// Bound on every wait for a state change (readiness, gauges).
const WAIT: Duration = Duration::from_secs(30);
/// Bound on one HTTP exchange.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
pub(crate) const ADMIN_TOKEN: &str = "admin-token-5f1c9d";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A daemon running in this process with its admin server on 127.0.0.1 and a free port.
pub(crate) struct AdminDaemon {
    admin: SocketAddr,
    socket: PathBuf,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), String>>>,
    _dir: tempfile::TempDir,
}

impl AdminDaemon {
    /// Binds `cfg` (its admin address replaced by 127.0.0.1:0) and runs it. With `file`, reloads
    /// re-read that config file.
    pub(crate) async fn start(
        mut cfg: Config,
        dir: tempfile::TempDir,
        file: Option<PathBuf>,
    ) -> AdminDaemon {
        cfg.admin.listen = "127.0.0.1:0".into();
        let daemon = tokio::time::timeout(Duration::from_secs(20), Daemon::bind(cfg))
            .await
            .expect("Daemon::bind timed out")
            .unwrap_or_else(|e| panic!("Daemon::bind failed: {e}"))
            .with_config_file(file, HashMap::new());
        let admin = daemon.admin_addr().expect("the admin server is on");
        assert_ne!(admin.port(), 0, "admin_addr reports the bound port");
        let socket = daemon.socket_path().to_path_buf();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            daemon
                .run(async move {
                    let _ = rx.await;
                })
                .await
                .map_err(|e| e.to_string())
        });
        AdminDaemon {
            admin,
            socket,
            shutdown: Some(tx),
            task: Some(task),
            _dir: dir,
        }
    }

    /// A daemon serving `db` as `main`, with `tweak` applied to its configuration.
    pub(crate) async fn for_db(db: &TestDb, tweak: impl FnOnce(&mut Config)) -> AdminDaemon {
        let dir = temp_dir();
        let mut cfg = base_config(db.cluster, &db.name, &dir.path().join("qail.sock"));
        tweak(&mut cfg);
        AdminDaemon::start(cfg, dir, None).await
    }

    pub(crate) async fn client(&self) -> RawClient {
        RawClient::connect(&self.socket).await
    }

    pub(crate) async fn connected(&self) -> RawClient {
        let mut c = self.client().await;
        c.connect_main().await;
        c
    }

    pub(crate) async fn get(&self, path: &str) -> (u16, Value) {
        json_of(http(self.admin, "GET", path, None).await)
    }

    pub(crate) async fn post(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        json_of(http(self.admin, "POST", path, token).await)
    }

    pub(crate) async fn scrape(&self) -> Metrics {
        let (status, text) = http(self.admin, "GET", "/metrics", None).await;
        assert_eq!(status, 200, "{text}");
        let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
            .unwrap_or_else(|e| panic!("/metrics is not valid Prometheus text ({e}):\n{text}"));
        Metrics(scrape)
    }

    /// Polls `path` until `done(status, body)` holds; fails after [`WAIT`].
    pub(crate) async fn wait_for(
        &self,
        path: &str,
        what: &str,
        done: impl Fn(u16, &Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let (status, body) = self.get(path).await;
            if done(status, &body) {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: still not the case after {WAIT:?}; last {path}: {status} {body}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_ready(&self) -> Value {
        self.wait_for("/ready", "ready", |s, _| s == 200).await
    }

    async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let task = self.task.take().expect("the daemon task is present");
        let result = tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .expect("the daemon did not shut down in time")
            .expect("the daemon task panicked");
        assert_eq!(result, Ok(()));
    }
}

impl Drop for AdminDaemon {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// One HTTP/1.1 request with `Connection: close`; returns the status and the (de-chunked) body.
async fn http(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(HTTP_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: no answer within {HTTP_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let text = String::from_utf8(raw).expect("the admin server answers UTF-8");
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("{method} {path}: no header end in {text:?}"));
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{method} {path}: bad status line in {head:?}"));
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, body)
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).expect("chunk size");
        if n == 0 {
            break;
        }
        out.push_str(&after[..n]);
        rest = &after[n + 2..];
    }
    out
}

fn json_of((status, body): (u16, String)) -> (u16, Value) {
    let value = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("answer ({status}) is not JSON ({e}): {body}"));
    (status, value)
}

/// A parsed scrape with lookups by name and labels.
pub(crate) struct Metrics(Scrape);

impl Metrics {
    /// The value of the series `name{labels}`, if present. Histograms give their sample count.
    pub(crate) fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.0
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match &s.value {
                PromValue::Counter(v) | PromValue::Gauge(v) | PromValue::Untyped(v) => *v,
                PromValue::Histogram(buckets) => {
                    buckets.iter().map(|b| b.count).fold(0.0, f64::max)
                }
                PromValue::Summary(_) => f64::NAN,
            })
    }

    /// Like [`Metrics::get`], 0 when the series does not exist yet.
    pub(crate) fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }
}

/// Runs blocking cluster control off the runtime's threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("cluster control panicked")
}

// ---------------------------------------------------------------------------------------------
// Read-only endpoints
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_endpoints_describe_the_running_daemon() {
    let db = TestDb::new().await;
    let daemon = AdminDaemon::for_db(&db, |_| {}).await;

    let (status, live) = daemon.get("/live").await;
    assert_eq!((status, &live["status"]), (200, &json!("live")));
    let (status, version) = daemon.get("/version").await;
    assert_eq!(status, 200);
    assert_eq!(version["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(version["protocol"], 1);

    let ready = daemon.wait_ready().await;
    assert_eq!(ready["accepting"], true);
    assert_eq!(
        ready["upstreams"],
        json!([{"name": "main", "state": "up", "required": true, "paused": false}])
    );

    let mut c = daemon.connected().await;
    let sql = "SELECT 1 + $1::int AS two";
    let handle = c.prepare(sql).await;
    c.call_ok(json!({"op": "query", "handle": handle, "params": [1]}))
        .await;

    let (status, cache) = daemon.get("/cache").await;
    assert_eq!(status, 200);
    let main = &cache["catalogs"][0];
    assert_eq!(main["upstream"], "main");
    assert_eq!(main["entries"], 1);
    assert_eq!(main["capacity"], 4096);
    assert!(main["hits"].as_u64() >= Some(1), "{main}");
    assert_eq!(main["top"][0]["sql"], sql);
    assert_eq!(main["top"][0]["handle"], json!(handle));
    assert_eq!(main["top"][0]["params"], 1);

    // A slow request shows up as in flight in /clients and as a busy connection in /pools.
    c.send(&json!({"id": 99, "op": "query", "sql": "SELECT pg_sleep(1.5)"}))
        .await;
    let clients = daemon
        .wait_for("/clients", "the sleeping request is in flight", |_, b| {
            b["clients"][0]["in_flight"] == json!(1)
        })
        .await;
    assert_eq!(clients["count"], 1);
    let me = &clients["clients"][0];
    assert_eq!(me["pid"], json!(std::process::id()));
    assert_eq!(me["uid"], json!(nix::unistd::geteuid().as_raw()));
    assert_eq!(me["client"], "tests");
    assert_eq!(me["upstream"], "main");
    assert!(me["requests"].as_u64() >= Some(4), "{me}");
    assert!(me["connected_at"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
    let (status, pools) = daemon.get("/pools").await;
    assert_eq!(status, 200);
    let pool = &pools["pools"][0];
    assert_eq!(pool["name"], "main");
    assert_eq!(pool["health"], "up");
    assert_eq!(pool["max"], 4);
    assert_eq!(pool["sslmode"], "disable");
    assert!(pool["in_use"].as_u64() >= Some(1), "{pool}");
    assert_eq!(pool["waiters"], 0);
    assert_eq!(c.recv().await["ok"], json!(true));

    drop(c);
    daemon
        .wait_for("/clients", "the client is gone", |_, b| {
            b["count"] == json!(0)
        })
        .await;
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_traffic() {
    let db = TestDb::new().await;
    let daemon = AdminDaemon::for_db(&db, |_| {}).await;
    daemon.wait_ready().await;
    let before = daemon.scrape().await;

    let mut c = daemon.connected().await;
    let handle = c.prepare("SELECT $1::int AS n").await;
    for i in 0..3 {
        c.call_ok(json!({"op": "query", "handle": handle, "params": [i]}))
            .await;
    }
    let batch: Vec<Value> = (0..100).map(|i| json!([i])).collect();
    let r = c
        .call_ok(
            json!({"op": "pipeline", "handle": handle, "params_batch": batch, "count_only": true}),
        )
        .await;
    assert_eq!(r["count"], 100);
    // One grouped pipeline that fails half-way: statement 50 and the 49 after it in its group
    // run again one by one.
    let batch: Vec<Value> = (0..100)
        .map(|i| json!([if i == 50 { 0 } else { i + 1 }]))
        .collect();
    let e = c
        .call_err(json!({"op": "pipeline", "sql": "SELECT 10 / $1::int", "params_batch": batch}))
        .await;
    assert_eq!(e["index"], json!(50), "{e}");
    c.expect_error(
        json!({"op": "query", "sql": "SELECT * FROM no_such_table"}),
        "42P01",
    )
    .await;
    c.expect_error(json!({"op": "frobnicate"}), "unknown_op")
        .await;

    let after = daemon.scrape().await;
    let delta = |name: &str, labels: &[(&str, &str)]| {
        after.value(name, labels) - before.value(name, labels)
    };
    let req = "qail_requests_total";
    assert_eq!(delta(req, &[("op", "query"), ("outcome", "ok")]), 3.0);
    assert_eq!(delta(req, &[("op", "query"), ("outcome", "error")]), 1.0);
    assert_eq!(delta(req, &[("op", "pipeline"), ("outcome", "error")]), 1.0);
    assert_eq!(
        delta(req, &[("op", "pipeline"), ("outcome", "ok")]),
        1.0,
        "a pipeline is one request"
    );
    let main = [("upstream", "main")];
    assert_eq!(
        delta("qail_pipeline_grouped_statements_total", &main),
        200.0
    );
    assert_eq!(delta("qail_pipeline_grouped_reruns_total", &main), 50.0);
    assert_eq!(delta(req, &[("op", "prepare"), ("outcome", "ok")]), 1.0);
    assert_eq!(delta(req, &[("op", "hello"), ("outcome", "ok")]), 1.0);
    assert_eq!(delta(req, &[("op", "unknown"), ("outcome", "error")]), 1.0);
    assert_eq!(delta("qail_errors_total", &[("code", "42P01")]), 1.0);
    assert_eq!(delta("qail_errors_total", &[("code", "22012")]), 1.0);
    assert_eq!(delta("qail_errors_total", &[("code", "unknown_op")]), 1.0);
    assert_eq!(
        delta("qail_request_duration_seconds_count", &[("op", "query")]),
        4.0
    );
    assert_eq!(
        after.value("qail_request_duration_seconds", &[("op", "query")])
            - before.value("qail_request_duration_seconds", &[("op", "query")]),
        4.0,
        "the +Inf bucket counts every query"
    );
    let bytes_in = delta("qail_frame_bytes_total", &[("direction", "in")]);
    let bytes_out = delta("qail_frame_bytes_total", &[("direction", "out")]);
    assert!(
        bytes_in > 500.0,
        "the pipeline frame alone is > 500 bytes: {bytes_in}"
    );
    assert!(bytes_out > 100.0, "{bytes_out}");

    assert_eq!(after.get("qail_upstream_up", &main), Some(1.0));
    assert_eq!(after.get("qail_upstream_paused", &main), Some(0.0));
    assert_eq!(after.get("qail_clients_connected", &[]), Some(1.0));
    assert!(delta("qail_clients_accepted_total", &[]) >= 1.0);
    assert!(delta("qail_catalog_hits_total", &main) >= 4.0);
    assert_eq!(
        after.get("qail_catalog_entries", &main),
        Some(2.0),
        "the two pipelines' statements; the failed one is not catalogued"
    );
    assert_eq!(after.get("qail_catalog_capacity", &main), Some(4096.0));
    assert!(delta("qail_pool_checkout_wait_seconds_count", &main) >= 5.0);
    assert!(delta("qail_pool_checkouts_total", &main) >= 5.0);
    assert!(delta("qail_upstream_errors_total", &main) >= 1.0);
    let idle = after.value(
        "qail_pool_connections",
        &[("upstream", "main"), ("state", "idle")],
    );
    let busy = after.value(
        "qail_pool_connections",
        &[("upstream", "main"), ("state", "in_use")],
    );
    assert!(idle + busy >= 1.0, "idle {idle} in use {busy}");
    assert_eq!(after.get("qail_pool_max_connections", &main), Some(4.0));
    assert_eq!(after.get("qail_pool_waiters", &main), Some(0.0));
    assert_eq!(
        after.get("qail_build_info", &[("version", env!("CARGO_PKG_VERSION"))]),
        Some(1.0)
    );

    // Every metric the Grafana dashboard queries is exported.
    for name in dashboard_metrics() {
        assert!(
            after.0.docs.contains_key(&name),
            "deploy/grafana/qail-daemon.json queries {name}, which /metrics does not export"
        );
    }

    drop(c);
    let deadline = Instant::now() + WAIT;
    while daemon.scrape().await.get("qail_clients_connected", &[]) != Some(0.0) {
        assert!(
            Instant::now() < deadline,
            "qail_clients_connected stayed above 0"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    daemon.shutdown().await;
}

/// The `qail_*` metric names the Grafana dashboard uses (histogram suffixes removed).
fn dashboard_metrics() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/qail-daemon.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert!(dashboard["panels"].as_array().is_some_and(|p| p.len() > 5));
    let mut names: Vec<String> = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("qail_"))
        .map(|w| {
            w.trim_end_matches("_bucket")
                .trim_end_matches("_count")
                .trim_end_matches("_sum")
                .to_string()
        })
        .collect();
    names.sort();
    names.dedup();
    assert!(names.len() > 10, "{names:?}");
    names
}

#[test]
fn the_kubernetes_configmap_is_a_valid_config() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes/qail-daemon-sidecar.yaml");
    let yaml = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let toml: String = yaml
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("qail-daemon.toml: |"))
        .skip(1)
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| format!("{}\n", l.get(4..).unwrap_or("")))
        .collect();
    assert!(
        toml.contains("[[upstreams]]"),
        "no config found in {}",
        path.display()
    );
    let env = HashMap::from([
        ("APP_DB_PASSWORD".to_string(), "pw".to_string()),
        ("QAIL_ADMIN__TOKEN".to_string(), "tok".to_string()),
    ]);
    let cfg = Config::from_toml_str(&toml, &env)
        .unwrap_or_else(|e| panic!("the ConfigMap's config is invalid: {e}\n{toml}"));
    assert_eq!(cfg.admin.listen, "0.0.0.0:9930");
    assert!(
        cfg.admin.token.is_some(),
        "the token comes from the environment"
    );
    assert!(
        yaml.contains("restartPolicy: Always") && yaml.contains("path: /ready"),
        "the manifest runs a native sidecar with a readiness probe"
    );
}

// ---------------------------------------------------------------------------------------------
// Operator actions
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutations_are_disabled_without_a_token() {
    let db = TestDb::new().await;
    let daemon = AdminDaemon::for_db(&db, |_| {}).await;
    for path in ["/reload", "/cache/flush", "/upstreams/main/pause"] {
        let (status, body) = daemon.post(path, Some("guess")).await;
        assert_eq!(status, 403, "{path}: {body}");
        assert_eq!(body["error"]["code"], "disabled");
    }
    let mut c = daemon.connected().await;
    c.scalar("SELECT 1", json!([])).await;
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_and_flush() {
    let db = TestDb::new().await;
    let daemon = AdminDaemon::for_db(&db, |cfg| {
        cfg.admin.token = Some(Secret::new(ADMIN_TOKEN));
    })
    .await;
    daemon.wait_ready().await;
    let mut c = daemon.connected().await;
    let handle = c.prepare("SELECT 7 AS seven").await;

    let (status, body) = daemon.post("/upstreams/main/pause", None).await;
    assert_eq!(status, 401, "{body}");
    let (status, _) = daemon.post("/upstreams/main/pause", Some("wrong")).await;
    assert_eq!(status, 401);
    c.scalar("SELECT 1", json!([])).await;

    let (status, body) = daemon
        .post("/upstreams/main/pause", Some(ADMIN_TOKEN))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["paused"], true);
    let started = Instant::now();
    let err = c
        .expect_error(
            json!({"op": "query", "sql": "SELECT 1"}),
            "upstream_unavailable",
        )
        .await;
    assert!(
        err["message"]
            .as_str()
            .unwrap_or_default()
            .contains("paused"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "a paused upstream fails at once"
    );
    let (status, ready) = daemon.get("/ready").await;
    assert_eq!(
        status, 200,
        "pausing does not make the daemon unready: {ready}"
    );
    assert_eq!(ready["upstreams"][0]["paused"], true);

    let (status, _) = daemon
        .post("/upstreams/main/resume", Some(ADMIN_TOKEN))
        .await;
    assert_eq!(status, 200);
    c.scalar("SELECT 1", json!([])).await;

    let (status, body) = daemon
        .post("/upstreams/nope/pause", Some(ADMIN_TOKEN))
        .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (404, &json!("unknown_upstream"))
    );

    let (status, body) = daemon.post("/cache/flush", Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["flushed"]["main"].as_u64() >= Some(1), "{body}");
    c.expect_error(json!({"op": "query", "handle": handle}), "unknown_handle")
        .await;
    let (_, cache) = daemon.get("/cache").await;
    assert_eq!(cache["catalogs"][0]["entries"], 0);
    daemon.shutdown().await;
}

/// A config file serving `upstreams` (name, database, pool_max) from `cluster`.
pub(crate) fn write_config(
    path: &Path,
    socket: &Path,
    cluster: &PgCluster,
    upstreams: &[(&str, &str, u32)],
) {
    let mut text = format!(
        "[ipc]\nsocket = \"{}\"\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{ADMIN_TOKEN}\"\n",
        socket.display()
    );
    for (name, database, pool_max) in upstreams {
        text.push_str(&format!(
            "[[upstreams]]\nname = \"{name}\"\nhost = \"127.0.0.1\"\nport = {port}\nuser = \"{PG_USER}\"\n\
             database = \"{database}\"\npassword = \"{PG_PASSWORD}\"\npool_max = {pool_max}\n\
             pool_min_idle = 0\nconnect_timeout_ms = 3000\nhealth_interval_ms = 500\n",
            port = cluster.port(),
        ));
    }
    std::fs::write(path, text).expect("write the config file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_resizes_and_removes_upstreams() {
    let db = TestDb::new().await;
    let other_db = db.cluster.create_database().await;
    let dir = temp_dir();
    let file = dir.path().join("qail.toml");
    let socket = dir.path().join("qail.sock");
    write_config(
        &file,
        &socket,
        db.cluster,
        &[("main", &db.name, 4), ("old", &db.name, 2)],
    );
    let cfg = Config::load(Some(&file), &HashMap::new()).expect("the config file is valid");
    let daemon = AdminDaemon::start(cfg, dir, Some(file.clone())).await;
    daemon.wait_ready().await;

    let mut on_main = daemon.connected().await;
    let handle = on_main.prepare("SELECT 40 + $1::int AS n").await;
    let mut on_old = daemon.client().await;
    on_old.call_ok(json!({"op": "hello", "protocol": 1})).await;
    on_old.connect_to("old").await;
    on_old.scalar("SELECT 1", json!([])).await;

    let (status, _) = daemon.post("/reload", None).await;
    assert_eq!(status, 401);

    write_config(
        &file,
        &socket,
        db.cluster,
        &[("main", &db.name, 6), ("second", &other_db, 2)],
    );
    let (status, report) = daemon.post("/reload", Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(
        report["upstreams"],
        json!({"added": ["second"], "removed": ["old"], "changed": ["main"], "unchanged": []})
    );
    assert_eq!(report["restart_required"], json!([]));

    // The session on the resized upstream moves to the new pool; its handle still works.
    let r = on_main
        .call_ok(json!({"op": "query", "handle": handle, "params": [2]}))
        .await;
    assert_eq!(r["rows"], json!([[42]]));
    // The session on the removed upstream is told so.
    let err = on_old
        .expect_error(
            json!({"op": "query", "sql": "SELECT 1"}),
            "upstream_unavailable",
        )
        .await;
    assert!(
        err["message"]
            .as_str()
            .unwrap_or_default()
            .contains("removed"),
        "{err}"
    );
    let mut on_second = daemon.client().await;
    on_second
        .call_ok(json!({"op": "hello", "protocol": 1}))
        .await;
    on_second.connect_to("second").await;
    assert_eq!(
        on_second
            .scalar("SELECT current_database()", json!([]))
            .await,
        json!(other_db)
    );
    let (_, pools) = daemon.get("/pools").await;
    let names: Vec<&str> = pools["pools"]
        .as_array()
        .map(|a| a.iter().filter_map(|p| p["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, ["main", "second"]);
    assert_eq!(pools["pools"][0]["max"], 6);
    daemon
        .wait_for("/ready", "the new upstream is up", |s, _| s == 200)
        .await;

    // An invalid file changes nothing.
    std::fs::write(
        &file,
        "[[upstreams]]\nname = \"main\"\nuser = \"x\"\npool_max = 0\n",
    )
    .expect("write the config file");
    let (status, body) = daemon.post("/reload", Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "invalid_config");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("pool_max"),
        "{body}"
    );
    let (_, pools) = daemon.get("/pools").await;
    assert_eq!(pools["pools"].as_array().map(Vec::len), Some(2));
    on_main.scalar("SELECT 1", json!([])).await;
    daemon.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Readiness follows PostgreSQL
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_turns_false_when_postgresql_stops_and_true_when_it_is_back() {
    let mut cluster = blocking(PgCluster::start_private).await;
    cluster.wait_ready().await;
    let dir = temp_dir();
    let mut cfg = base_config(&cluster, "postgres", &dir.path().join("qail.sock"));
    cfg.upstreams[0].connect_timeout_ms = 1000;
    cfg.upstreams[0].checkout_timeout_ms = 1500;
    cfg.upstreams[0].health_interval_ms = 200;
    let daemon = AdminDaemon::start(cfg, dir, None).await;
    daemon.wait_ready().await;

    cluster = blocking(move || {
        cluster.stop();
        cluster
    })
    .await;
    let body = daemon
        .wait_for("/ready", "503 once PostgreSQL is down", |s, _| s == 503)
        .await;
    assert_eq!(body["ready"], false);
    assert_eq!(body["accepting"], true);
    assert_eq!(body["upstreams"][0]["state"], "down");
    let (status, live) = daemon.get("/live").await;
    assert_eq!(
        (status, &live["status"]),
        (200, &json!("live")),
        "liveness is separate"
    );
    let m = daemon.scrape().await;
    assert_eq!(
        m.get("qail_upstream_up", &[("upstream", "main")]),
        Some(0.0)
    );

    let cluster = blocking(move || {
        cluster.start().expect("restart the private cluster");
        cluster
    })
    .await;
    cluster.wait_ready().await;
    let body = daemon.wait_ready().await;
    assert_eq!(body["upstreams"][0]["state"], "up");
    daemon.shutdown().await;
    blocking(move || drop(cluster)).await;
}

// ---------------------------------------------------------------------------------------------
// Logs never show a secret
// ---------------------------------------------------------------------------------------------

/// A writer into a shared buffer, for a test-local tracing subscriber.
#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogBuffer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}

/// Runs a daemon with trace logging captured in `format`, uses every secret (right and wrong),
/// and returns the log.
async fn secret_traffic_log(db: &TestDb, format: LogFormat) -> String {
    const IPC_TOKEN: &str = "ipc-token-8e2a41";
    let buffer = LogBuffer::default();
    let writer = buffer.clone();
    let log = LogConfig {
        format,
        level: "trace".into(),
    };
    let subscriber = qail_daemon::telemetry::subscriber(&log, None, move || writer.clone(), false);
    // The test runs on a current-thread runtime, so every daemon task runs on this thread and
    // logs through this thread-local subscriber. While only one dispatcher exists, tracing lets
    // whichever thread first reaches a log statement decide for good whether it is enabled, and
    // other tests' threads have no subscriber: a second (silent) dispatcher makes tracing ask
    // the current thread's subscriber at every event instead.
    let _second = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
    let _guard = tracing::subscriber::set_default(subscriber);

    let daemon = AdminDaemon::for_db(db, |cfg| {
        cfg.ipc.token = Some(Secret::new(IPC_TOKEN));
        cfg.admin.token = Some(Secret::new(ADMIN_TOKEN));
        cfg.allow_dynamic_upstreams = true;
    })
    .await;
    daemon.wait_ready().await;
    let port = db.cluster.port();
    let mut c = daemon.client().await;
    c.expect_error(
        json!({"op": "hello", "protocol": 1, "client": "secrets", "token": "wrong-ipc-token-77"}),
        "auth_failed",
    )
    .await;
    c.call_ok(json!({"op": "hello", "protocol": 1, "client": "secrets", "token": IPC_TOKEN}))
        .await;
    let pg = |database: &str, password: &str| {
        json!({"op": "connect_pg", "host": "127.0.0.1", "port": port, "user": PG_USER,
               "database": database, "password": password})
    };
    c.expect_error(pg(&db.name, "wrong-pg-password-77"), "auth_failed")
        .await;
    c.call_ok(pg(&db.name, PG_PASSWORD)).await;
    c.scalar("SELECT 1", json!([])).await;
    // A database no upstream is configured for: a dynamic upstream is started.
    c.call_ok(pg("postgres", PG_PASSWORD)).await;
    c.scalar("SELECT 2", json!([])).await;
    c.expect_error(pg("postgres", "wrong-pg-password-78"), "auth_failed")
        .await;
    let (status, _) = daemon
        .post("/upstreams/main/pause", Some("wrong-admin-token-77"))
        .await;
    assert_eq!(status, 401);
    let (status, _) = daemon
        .post("/upstreams/main/pause", Some(ADMIN_TOKEN))
        .await;
    assert_eq!(status, 200);
    let (status, _) = daemon
        .post("/upstreams/main/resume", Some(ADMIN_TOKEN))
        .await;
    assert_eq!(status, 200);
    drop(c);
    daemon.shutdown().await;

    let text = buffer.text();
    for secret in [
        PG_PASSWORD,
        IPC_TOKEN,
        ADMIN_TOKEN,
        "wrong-ipc-token-77",
        "wrong-pg-password-77",
        "wrong-pg-password-78",
        "wrong-admin-token-77",
    ] {
        assert!(
            !text.contains(secret),
            "a secret ({secret}) appears in the {format:?} log:\n{text}"
        );
    }
    text
}

#[tokio::test]
async fn logs_never_contain_passwords_or_tokens() {
    let db = TestDb::new().await;

    let text = secret_traffic_log(&db, LogFormat::Text).await;
    for expected in [
        "qail-daemon listening",
        "client connected",
        "starting dynamic upstream",
        "upstream paused by an operator",
    ] {
        assert!(
            text.contains(expected),
            "the log lacks {expected:?}:\n{text}"
        );
    }
    assert!(
        text.contains("client=secrets"),
        "the client span names the client:\n{text}"
    );

    let json_log = secret_traffic_log(&db, LogFormat::Json).await;
    let mut lines = 0;
    for line in json_log.lines() {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("a JSON log line does not parse ({e}): {line}"));
        assert!(v["level"].is_string() && v["message"].is_string(), "{line}");
        lines += 1;
    }
    assert!(lines > 10, "too few log lines captured: {json_log}");
}
