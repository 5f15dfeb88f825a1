//! Router tests through `oneshot`: no socket, no PostgreSQL. Upstreams have no worker, so their
//! health stays where a test puts it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use super::handlers::{rfc3339, shorten_sql};
use super::{router, AdminState};
use crate::catalog::Shape;
use crate::config::{Config, Secret};
use crate::ipc::{ClientInfo, Shared};
use crate::metrics::Metrics;
use crate::supervisor::Supervisor;
use crate::upstream::Health;

const TOKEN: &str = "admin-test-token";

fn config() -> Config {
    let text = r#"
        [ipc]
        socket = "/tmp/qail-admin-unit/q.sock"
        [admin]
        listen = ""
        [[upstreams]]
        name = "main"
        user = "app"
        password = "pw"
        [[upstreams]]
        name = "reports"
        user = "app"
        password = "pw"
        required = false
    "#;
    Config::from_toml_str(text, &HashMap::new()).unwrap()
}

struct Fixture {
    shared: Arc<Shared>,
    app: Router,
}

fn fixture(token: Option<&str>) -> Fixture {
    let cfg = config();
    let metrics = Arc::new(Metrics::new().unwrap());
    let supervisor = Supervisor::without_workers(&cfg, metrics.clone());
    let shared = Arc::new(Shared::new(&cfg, supervisor, metrics));
    let state = AdminState::new(shared.clone(), token.map(Secret::new), None);
    Fixture {
        shared,
        app: router(state),
    }
}

impl Fixture {
    fn set_health(&self, name: &str, h: Health) {
        self.shared.supervisor.get(name).unwrap().set_health(h);
    }

    async fn call(&self, method: Method, uri: &str, token: Option<&str>) -> (StatusCode, String) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let resp = self
            .app
            .clone()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }

    async fn json(&self, method: Method, uri: &str, token: Option<&str>) -> (StatusCode, Value) {
        let (status, body) = self.call(method, uri, token).await;
        let value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{uri} answered non-JSON ({e}): {body}"));
        (status, value)
    }

    async fn get(&self, uri: &str) -> (StatusCode, Value) {
        self.json(Method::GET, uri, None).await
    }
}

#[tokio::test]
async fn live_and_version() {
    let f = fixture(None);
    let (status, body) = f.get("/live").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "live");
    let (status, body) = f.get("/version").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(body["protocol"], 1);
}

#[tokio::test]
async fn ready_needs_the_socket_and_every_required_upstream() {
    let f = fixture(None);
    let (status, body) = f.get("/ready").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["ready"], false);
    assert_eq!(body["accepting"], false);
    assert_eq!(
        body["upstreams"][0],
        json!({"name": "main", "state": "unknown", "required": true, "paused": false})
    );

    f.shared.set_accepting(true);
    f.set_health("main", Health::Up);
    f.set_health("reports", Health::Down);
    let (status, body) = f.get("/ready").await;
    assert_eq!(status, StatusCode::OK, "reports is not required: {body}");
    assert_eq!(body["ready"], true);
    assert_eq!(body["upstreams"][1]["state"], "down");

    f.set_health("main", Health::Down);
    let (status, body) = f.get("/ready").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["upstreams"][0]["state"], "down");

    f.set_health("main", Health::Up);
    f.shared.set_accepting(false);
    let (status, _) = f.get("/ready").await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "socket not accepting"
    );
}

#[tokio::test]
async fn metrics_are_prometheus_text_with_sampled_upstream_series() {
    let f = fixture(None);
    f.set_health("main", Health::Up);
    let (status, text) = f.call(Method::GET, "/metrics", None).await;
    assert_eq!(status, StatusCode::OK);
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    let find = |name: &str, label: Option<(&str, &str)>| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && label.map_or(true, |(k, v)| s.labels.get(k) == Some(v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
    };
    assert_eq!(
        find("qail_upstream_up", Some(("upstream", "main"))),
        Some(1.0)
    );
    assert_eq!(
        find("qail_upstream_up", Some(("upstream", "reports"))),
        Some(0.0)
    );
    assert_eq!(
        find("qail_pool_max_connections", Some(("upstream", "main"))),
        Some(8.0)
    );
    assert_eq!(
        find("qail_catalog_capacity", Some(("upstream", "main"))),
        Some(4096.0)
    );
    assert_eq!(
        find(
            "qail_build_info",
            Some(("version", env!("CARGO_PKG_VERSION")))
        ),
        Some(1.0)
    );
    assert_eq!(find("qail_clients_connected", None), Some(0.0));
}

#[tokio::test]
async fn cache_lists_top_statements_with_short_sql() {
    let f = fixture(None);
    let main = f.shared.supervisor.get("main").unwrap();
    let shape = || Shape {
        params: vec![],
        columns: vec![],
    };
    let long = format!("SELECT {}\n  FROM t", "x, ".repeat(100));
    main.catalog.insert("SELECT 1", shape());
    main.catalog.insert(&long, shape());
    main.catalog.get_by_sql(&long);
    let (status, body) = f.get("/cache?top=1").await;
    assert_eq!(status, StatusCode::OK);
    let cat = &body["catalogs"][0];
    assert_eq!(cat["upstream"], "main");
    assert_eq!(cat["entries"], 2);
    assert_eq!(cat["hits"], 1);
    let top = cat["top"].as_array().unwrap();
    assert_eq!(top.len(), 1);
    let sql = top[0]["sql"].as_str().unwrap();
    assert!(
        sql.starts_with("SELECT x, x,") && sql.ends_with('…'),
        "{sql}"
    );
    assert_eq!(sql.chars().count(), 161);
    assert_eq!(top[0]["uses"], 2);

    let (status, body) = f.get("/cache?top=many").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "bad_request");
}

#[tokio::test]
async fn pools_and_clients() {
    let f = fixture(None);
    let (status, body) = f.get("/pools").await;
    assert_eq!(status, StatusCode::OK);
    let main = &body["pools"][0];
    assert_eq!(main["name"], "main");
    for field in ["size", "idle", "in_use", "max", "waiters", "errors"] {
        assert!(main[field].is_u64(), "{field} missing: {main}");
    }
    assert_eq!(main["health"], "unknown");

    let info = Arc::new(ClientInfo::new("s7".into(), 4242, 1000));
    let _listed = f
        .shared
        .clients
        .register(7, info.clone(), f.shared.metrics.clone());
    info.set_name("worker-1");
    info.set_upstream("main");
    let _req = info.begin_request();
    let (status, body) = f.get("/clients").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["count"], 1);
    let c = &body["clients"][0];
    assert_eq!(c["session"], "s7");
    assert_eq!(c["pid"], 4242);
    assert_eq!(c["uid"], 1000);
    assert_eq!(c["client"], "worker-1");
    assert_eq!(c["upstream"], "main");
    assert_eq!(c["in_flight"], 1);
    assert!(c["connected_at"].as_str().unwrap().ends_with('Z'), "{c}");
}

#[tokio::test]
async fn mutations_are_off_without_a_token() {
    let f = fixture(None);
    for uri in ["/reload", "/cache/flush", "/upstreams/main/pause"] {
        let (status, body) = f.json(Method::POST, uri, Some("anything")).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{uri}");
        assert_eq!(body["error"]["code"], "disabled");
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("[admin] token"));
    }
    assert!(!f.shared.supervisor.get("main").unwrap().is_paused());
}

#[tokio::test]
async fn mutations_need_the_right_bearer_token() {
    let f = fixture(Some(TOKEN));
    let (status, body) = f.json(Method::POST, "/upstreams/main/pause", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["code"], "unauthorized");
    let (status, _) = f
        .json(Method::POST, "/upstreams/main/pause", Some("wrong"))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let main = f.shared.supervisor.get("main").unwrap();
    assert!(!main.is_paused());

    let (status, body) = f
        .json(Method::POST, "/upstreams/main/pause", Some(TOKEN))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"upstream": "main", "paused": true, "was_paused": false})
    );
    assert!(main.is_paused());
    let err = main.checkout().await.err().unwrap();
    assert_eq!(err.code(), "upstream_unavailable");
    assert!(err.to_string().contains("paused"), "{err}");

    let (status, _) = f
        .json(Method::POST, "/upstreams/main/resume", Some(TOKEN))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(!main.is_paused());

    let (status, body) = f
        .json(Method::POST, "/upstreams/nope/pause", Some(TOKEN))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "unknown_upstream");
}

#[tokio::test]
async fn flush_and_reload() {
    let f = fixture(Some(TOKEN));
    let main = f.shared.supervisor.get("main").unwrap();
    main.catalog.insert(
        "SELECT 1",
        Shape {
            params: vec![],
            columns: vec![],
        },
    );
    let (status, body) = f
        .json(Method::POST, "/cache/flush?upstream=main", Some(TOKEN))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"flushed": {"main": 1}}));
    let (status, body) = f.json(Method::POST, "/cache/flush", Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"flushed": {"main": 0, "reports": 0}}));

    let (status, body) = f.json(Method::POST, "/reload", Some(TOKEN)).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"]["code"], "no_config_file");
}

#[tokio::test]
async fn unknown_paths_and_methods_are_json_errors() {
    let f = fixture(Some(TOKEN));
    let (status, body) = f.get("/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "not_found");
    let (status, body) = f.json(Method::GET, "/reload", None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(body["error"]["code"], "method_not_allowed");
    let (status, _) = f.json(Method::POST, "/live", None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}

#[test]
fn sql_is_shortened_on_one_line() {
    assert_eq!(shorten_sql("SELECT  1\n FROM\tt", 100), "SELECT 1 FROM t");
    assert_eq!(shorten_sql("SELECT 123456", 8), "SELECT 1…");
    assert_eq!(shorten_sql("SELECT 1", 6), "SELECT…");
    assert_eq!(shorten_sql("", 6), "");
}

#[test]
fn timestamps_are_rfc3339_utc() {
    let at = |s: u64| rfc3339(UNIX_EPOCH + std::time::Duration::from_secs(s));
    assert_eq!(at(0), "1970-01-01T00:00:00Z");
    assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
    assert_eq!(at(1_700_000_000), "2023-11-14T22:13:20Z");
    assert_eq!(at(4_107_542_399), "2100-02-28T23:59:59Z");
}
