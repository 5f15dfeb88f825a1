//! One handler per endpoint, the bearer-token extractor for the mutating ones, and the JSON
//! views they answer with.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::Json;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use super::{AdminError, AdminState};
use crate::app::ReloadReport;
use crate::ipc::ops::session_ops::PROTOCOL;
use crate::upstream::{Health, PoolStats};

/// Longest SQL text shown by `/cache`, in characters.
const SQL_SHOWN: usize = 160;
/// Statements listed per upstream by `/cache` unless `?top=` says otherwise, and the most.
const TOP_DEFAULT: usize = 10;
const TOP_MAX: usize = 100;

/// Proof that the request carried the admin bearer token. Extracting it fails with 403 when no
/// token is configured and 401 when the header is missing or wrong.
pub struct Authorized;

impl FromRequestParts<AdminState> for Authorized {
    type Rejection = AdminError;

    async fn from_request_parts(parts: &mut Parts, state: &AdminState) -> Result<Self, AdminError> {
        let expected = state.inner.token.as_ref().ok_or(AdminError::Disabled)?;
        let given = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer)
            .ok_or(AdminError::MissingToken)?;
        if bool::from(expected.expose().as_bytes().ct_eq(given.as_bytes())) {
            Ok(Authorized)
        } else {
            Err(AdminError::WrongToken)
        }
    }
}

/// The token of an `Authorization: Bearer <token>` value (scheme case-insensitive).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

#[derive(Serialize)]
pub struct LiveView {
    status: &'static str,
    uptime_seconds: u64,
}

/// `GET /live`: the process runs and its runtime answers.
pub async fn live(State(state): State<AdminState>) -> Json<LiveView> {
    Json(LiveView {
        status: "live",
        uptime_seconds: state.inner.started.elapsed().as_secs(),
    })
}

#[derive(Serialize)]
pub struct UpstreamState {
    name: String,
    state: Health,
    required: bool,
    paused: bool,
}

#[derive(Serialize)]
pub struct ReadyView {
    ready: bool,
    /// Whether the client socket's accept loop runs.
    accepting: bool,
    upstreams: Vec<UpstreamState>,
}

/// `GET /ready`: 200 while the socket accepts and every required upstream is up, else 503;
/// the body lists every upstream's state either way.
pub async fn ready(State(state): State<AdminState>) -> (StatusCode, Json<ReadyView>) {
    let shared = &state.inner.shared;
    let upstreams: Vec<UpstreamState> = shared
        .supervisor
        .all()
        .iter()
        .map(|up| UpstreamState {
            name: up.name().to_string(),
            state: up.health(),
            required: up.config.required,
            paused: up.is_paused(),
        })
        .collect();
    let accepting = shared.is_accepting();
    let ready = accepting
        && upstreams
            .iter()
            .all(|u| !u.required || u.state == Health::Up);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(ReadyView {
            ready,
            accepting,
            upstreams,
        }),
    )
}

/// `GET /metrics`: the Prometheus text format.
pub async fn metrics(State(state): State<AdminState>) -> Result<impl IntoResponse, AdminError> {
    let shared = &state.inner.shared;
    let text = shared.metrics.render(&shared.supervisor)?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    ))
}

#[derive(Deserialize)]
pub struct CacheQuery {
    top: Option<usize>,
}

#[derive(Serialize)]
pub struct StatementView {
    handle: String,
    sql: String,
    uses: u64,
    params: usize,
    columns: usize,
}

#[derive(Serialize)]
pub struct CatalogView {
    upstream: String,
    entries: usize,
    capacity: usize,
    hits: u64,
    misses: u64,
    evictions: u64,
    top: Vec<StatementView>,
}

#[derive(Serialize)]
pub struct CacheView {
    catalogs: Vec<CatalogView>,
}

/// `GET /cache?top=N`: each upstream's catalogue counters and its most used statements.
pub async fn cache(
    State(state): State<AdminState>,
    query: Result<Query<CacheQuery>, QueryRejection>,
) -> Result<Json<CacheView>, AdminError> {
    let Query(query) = query.map_err(|e| AdminError::BadRequest(e.body_text()))?;
    let top = query.top.unwrap_or(TOP_DEFAULT).min(TOP_MAX);
    let catalogs = state
        .inner
        .shared
        .supervisor
        .all()
        .iter()
        .map(|up| {
            let stats = up.catalog.stats();
            CatalogView {
                upstream: up.name().to_string(),
                entries: stats.entries,
                capacity: stats.capacity,
                hits: stats.hits,
                misses: stats.misses,
                evictions: stats.evictions,
                top: up
                    .catalog
                    .top(top)
                    .iter()
                    .map(|e| {
                        let shape = e.shape();
                        StatementView {
                            handle: e.handle.to_string(),
                            sql: shorten_sql(&e.sql, SQL_SHOWN),
                            uses: e.uses(),
                            params: shape.params.len(),
                            columns: shape.columns.len(),
                        }
                    })
                    .collect(),
            }
        })
        .collect();
    Ok(Json(CacheView { catalogs }))
}

/// SQL on one line (whitespace runs collapsed), cut to `max` characters with an ellipsis.
pub(crate) fn shorten_sql(sql: &str, max: usize) -> String {
    let mut out = String::with_capacity(sql.len().min(max * 4));
    let mut shown = 0;
    for word in sql.split_whitespace() {
        if shown > 0 {
            if shown + 1 > max {
                out.push('…');
                return out;
            }
            out.push(' ');
            shown += 1;
        }
        for c in word.chars() {
            if shown == max {
                out.push('…');
                return out;
            }
            out.push(c);
            shown += 1;
        }
    }
    out
}

#[derive(Serialize)]
pub struct PoolsView {
    pools: Vec<PoolStats>,
}

/// `GET /pools`: each upstream's pool figures and state.
pub async fn pools(State(state): State<AdminState>) -> Json<PoolsView> {
    let pools = state
        .inner
        .shared
        .supervisor
        .all()
        .iter()
        .map(|up| up.stats())
        .collect();
    Json(PoolsView { pools })
}

#[derive(Serialize)]
pub struct ClientEntry {
    session: String,
    pid: i32,
    uid: u32,
    client: Option<String>,
    upstream: Option<String>,
    in_flight: u32,
    requests: u64,
    connected_at: String,
    connected_seconds: u64,
}

#[derive(Serialize)]
pub struct ClientsView {
    count: usize,
    clients: Vec<ClientEntry>,
}

/// `GET /clients`: the connected clients, oldest first.
pub async fn clients(State(state): State<AdminState>) -> Json<ClientsView> {
    let now = SystemTime::now();
    let clients: Vec<ClientEntry> = state
        .inner
        .shared
        .clients
        .list()
        .into_iter()
        .map(|c| ClientEntry {
            connected_at: rfc3339(c.connected_at),
            connected_seconds: now
                .duration_since(c.connected_at)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            session: c.session,
            pid: c.pid,
            uid: c.uid,
            client: c.client,
            upstream: c.upstream,
            in_flight: c.in_flight,
            requests: c.requests,
        })
        .collect();
    Json(ClientsView {
        count: clients.len(),
        clients,
    })
}

#[derive(Serialize)]
pub struct VersionView {
    name: &'static str,
    version: &'static str,
    protocol: u32,
}

/// `GET /version`.
pub async fn version() -> Json<VersionView> {
    Json(VersionView {
        name: env!("CARGO_PKG_NAME"),
        version: env!("CARGO_PKG_VERSION"),
        protocol: PROTOCOL,
    })
}

/// `POST /reload`: re-read the config file and apply its upstream changes.
pub async fn reload(
    _: Authorized,
    State(state): State<AdminState>,
) -> Result<Json<ReloadReport>, AdminError> {
    let reloader = state
        .inner
        .reloader
        .as_ref()
        .ok_or(AdminError::Reload(crate::app::ReloadError::NoConfigFile))?;
    tracing::info!("reload requested on the admin port");
    Ok(Json(reloader.reload().await?))
}

#[derive(Deserialize)]
pub struct FlushQuery {
    upstream: Option<String>,
}

#[derive(Serialize)]
pub struct FlushView {
    /// Statements dropped, per upstream.
    flushed: BTreeMap<String, usize>,
}

/// `POST /cache/flush[?upstream=NAME]`: empty one catalogue or all.
pub async fn flush_cache(
    _: Authorized,
    State(state): State<AdminState>,
    query: Result<Query<FlushQuery>, QueryRejection>,
) -> Result<Json<FlushView>, AdminError> {
    let Query(query) = query.map_err(|e| AdminError::BadRequest(e.body_text()))?;
    let supervisor = &state.inner.shared.supervisor;
    let targets = match &query.upstream {
        Some(name) => vec![supervisor
            .get(name)
            .ok_or_else(|| AdminError::UnknownUpstream(shown(name)))?],
        None => supervisor.all(),
    };
    let flushed: BTreeMap<String, usize> = targets
        .iter()
        .map(|up| (up.name().to_string(), up.catalog.flush()))
        .collect();
    tracing::info!(?flushed, "statement catalogue flushed by an operator");
    Ok(Json(FlushView { flushed }))
}

#[derive(Serialize)]
pub struct PauseView {
    upstream: String,
    paused: bool,
    /// The setting before this request.
    was_paused: bool,
}

/// `POST /upstreams/{name}/pause`: checkouts on the upstream fail at once until resumed.
pub async fn pause(
    auth: Authorized,
    state: State<AdminState>,
    name: Path<String>,
) -> Result<Json<PauseView>, AdminError> {
    set_paused(auth, state, name, true)
}

/// `POST /upstreams/{name}/resume`.
pub async fn resume(
    auth: Authorized,
    state: State<AdminState>,
    name: Path<String>,
) -> Result<Json<PauseView>, AdminError> {
    set_paused(auth, state, name, false)
}

fn set_paused(
    _: Authorized,
    State(state): State<AdminState>,
    Path(name): Path<String>,
    paused: bool,
) -> Result<Json<PauseView>, AdminError> {
    let up = state
        .inner
        .shared
        .supervisor
        .get(&name)
        .ok_or_else(|| AdminError::UnknownUpstream(shown(&name)))?;
    let was_paused = up.set_paused(paused);
    if was_paused != paused {
        let span = tracing::info_span!("upstream", upstream = %up.name());
        let _enter = span.enter();
        if paused {
            tracing::warn!("upstream paused by an operator: requests fail until it is resumed");
        } else {
            tracing::info!("upstream resumed by an operator");
        }
    }
    Ok(Json(PauseView {
        upstream: up.name().to_string(),
        paused,
        was_paused,
    }))
}

/// Any other path.
pub async fn not_found(uri: Uri) -> AdminError {
    AdminError::NotFound(shown(uri.path()))
}

/// A known path with the wrong method.
pub async fn method_not_allowed() -> AdminError {
    AdminError::MethodNotAllowed
}

/// Client-given text as it may appear in a message: at most 64 characters.
fn shown(text: &str) -> String {
    text.chars().take(64).collect()
}

/// `t` as RFC 3339 in UTC, whole seconds (`2024-05-01T12:00:00Z`).
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (era-based: 400-year cycles of
/// 146,097 days, years starting in March so the leap day comes last).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month as u32, day as u32)
}
