//! Prometheus metrics: one registry per daemon (no process-wide registry, so tests can run
//! daemons side by side), rendered in the text format by the admin server's `/metrics`.
//!
//! Hot-path metrics are resolved once at start-up: recording a request is a few atomic adds on
//! counters and a histogram picked by op index, with no lock and no label lookup. Only failed
//! requests look their error code up in a labelled vector (the code is open-ended: SQLSTATEs).
//! Pool, upstream and catalogue figures are sampled from the supervisor at scrape time, so the
//! request path never updates them. Names follow the Prometheus conventions: `qail_` prefix,
//! `_total` counters, base units (`_seconds`, `_bytes`).

use std::time::Instant;

use prometheus::proto::{self, MetricFamily, MetricType};
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::error::Error;
use crate::ipc::ops::Op;
use crate::supervisor::Supervisor;
use crate::upstream::Health;

/// Label value for requests whose op could not be read.
const UNKNOWN_OP: &str = "unknown";

/// Every op, in [`op_index`] order.
const OPS: [Op; 13] = [
    Op::Hello,
    Op::Connect,
    Op::ConnectPg,
    Op::Prepare,
    Op::Query,
    Op::Execute,
    Op::Pipeline,
    Op::Batch,
    Op::Begin,
    Op::Commit,
    Op::Rollback,
    Op::Ping,
    Op::Close,
];

/// Position of `op` in the pre-resolved tables; the unknown op comes last.
fn op_index(op: Option<Op>) -> usize {
    match op {
        Some(Op::Hello) => 0,
        Some(Op::Connect) => 1,
        Some(Op::ConnectPg) => 2,
        Some(Op::Prepare) => 3,
        Some(Op::Query) => 4,
        Some(Op::Execute) => 5,
        Some(Op::Pipeline) => 6,
        Some(Op::Batch) => 7,
        Some(Op::Begin) => 8,
        Some(Op::Commit) => 9,
        Some(Op::Rollback) => 10,
        Some(Op::Ping) => 11,
        Some(Op::Close) => 12,
        None => OPS.len(),
    }
}

/// Request duration buckets, seconds: 100 µs … 30 s.
const REQUEST_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// Checkout wait buckets, seconds: 10 µs … 10 s (a free connection is a few µs away).
const CHECKOUT_BUCKETS: &[f64] = &[
    0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Why metrics could not be set up or rendered.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics: {0}")]
    Prometheus(#[from] prometheus::Error),
    #[error("metrics: the text encoder produced invalid UTF-8: {0}")]
    Utf8(#[from] std::string::FromUtf8Error),
}

/// The pre-resolved metrics of one op.
struct OpMetrics {
    ok: IntCounter,
    error: IntCounter,
    duration: Histogram,
}

/// All metrics of one daemon.
pub struct Metrics {
    registry: Registry,
    ops: Vec<OpMetrics>,
    errors: IntCounterVec,
    frame_in: IntCounter,
    frame_out: IntCounter,
    clients: IntGauge,
    clients_accepted: IntCounter,
    checkout_wait: HistogramVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Result<Metrics, MetricsError> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "qail_requests_total",
                "Requests answered, by op and outcome (ok or error).",
            ),
            &["op", "outcome"],
        )?;
        let durations = HistogramVec::new(
            HistogramOpts::new(
                "qail_request_duration_seconds",
                "Time from reading a request to its answer being ready, by op.",
            )
            .buckets(REQUEST_BUCKETS.to_vec()),
            &["op"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "qail_errors_total",
                "Failed requests by error code (daemon code or PostgreSQL SQLSTATE).",
            ),
            &["code"],
        )?;
        let frames = IntCounterVec::new(
            Opts::new(
                "qail_frame_bytes_total",
                "Bytes of protocol frames (length prefix included), by direction (in or out).",
            ),
            &["direction"],
        )?;
        let clients = IntGauge::new(
            "qail_clients_connected",
            "Client connections currently open on the socket.",
        )?;
        let clients_accepted = IntCounter::new(
            "qail_clients_accepted_total",
            "Client connections accepted since start.",
        )?;
        let checkout_wait = HistogramVec::new(
            HistogramOpts::new(
                "qail_pool_checkout_wait_seconds",
                "Time a request waited for a pooled PostgreSQL connection, by upstream.",
            )
            .buckets(CHECKOUT_BUCKETS.to_vec()),
            &["upstream"],
        )?;
        let build_info = IntGaugeVec::new(
            Opts::new(
                "qail_build_info",
                "Always 1; the labels say which build is running.",
            ),
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);

        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(durations.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(frames.clone()))?;
        registry.register(Box::new(clients.clone()))?;
        registry.register(Box::new(clients_accepted.clone()))?;
        registry.register(Box::new(checkout_wait.clone()))?;
        registry.register(Box::new(build_info))?;

        let names = OPS
            .iter()
            .map(|op| op.as_str())
            .chain(std::iter::once(UNKNOWN_OP));
        let ops = names
            .map(|name| OpMetrics {
                ok: requests.with_label_values(&[name, "ok"]),
                error: requests.with_label_values(&[name, "error"]),
                duration: durations.with_label_values(&[name]),
            })
            .collect();
        Ok(Metrics {
            registry,
            ops,
            errors,
            frame_in: frames.with_label_values(&["in"]),
            frame_out: frames.with_label_values(&["out"]),
            clients,
            clients_accepted,
            checkout_wait,
        })
    }

    /// Records one answered request: `op` as parsed (`None` when unreadable), when it started,
    /// and its error if it failed.
    pub fn record(&self, op: Option<Op>, started: Instant, error: Option<&Error>) {
        let Some(m) = self.ops.get(op_index(op)) else {
            return;
        };
        m.duration.observe(started.elapsed().as_secs_f64());
        match error {
            None => m.ok.inc(),
            Some(e) => {
                m.error.inc();
                self.count_error(e.code());
            }
        }
    }

    /// Counts an error that is not tied to an answered request (a refused frame).
    pub fn count_error(&self, code: &str) {
        self.errors.with_label_values(&[code]).inc();
    }

    pub fn frame_in(&self, bytes: usize) {
        self.frame_in.inc_by(bytes as u64);
    }

    pub fn frame_out(&self, bytes: usize) {
        self.frame_out.inc_by(bytes as u64);
    }

    pub fn client_connected(&self) {
        self.clients.inc();
        self.clients_accepted.inc();
    }

    pub fn client_disconnected(&self) {
        self.clients.dec();
    }

    /// The checkout wait histogram of one upstream.
    pub fn checkout_wait(&self, upstream: &str) -> Histogram {
        self.checkout_wait.with_label_values(&[upstream])
    }

    /// Drops the series of an upstream that no longer exists.
    pub fn forget_upstream(&self, upstream: &str) {
        let _ = self.checkout_wait.remove_label_values(&[upstream]);
    }

    /// Everything, registered and sampled, sorted by name.
    pub fn gather(&self, supervisor: &Supervisor) -> Vec<MetricFamily> {
        let mut families = self.registry.gather();
        families.extend(sample(supervisor));
        families.sort_by(|a, b| a.name().cmp(b.name()));
        families
    }

    /// The Prometheus text exposition of [`Metrics::gather`].
    pub fn render(&self, supervisor: &Supervisor) -> Result<String, MetricsError> {
        let mut out = Vec::with_capacity(16 * 1024);
        TextEncoder::new().encode(&self.gather(supervisor), &mut out)?;
        Ok(String::from_utf8(out)?)
    }
}

/// A family being filled with one sample per upstream.
struct Family {
    family: MetricFamily,
    kind: MetricType,
}

impl Family {
    fn new(name: &str, help: &str, kind: MetricType) -> Family {
        let mut family = MetricFamily::default();
        family.set_name(name.to_string());
        family.set_help(help.to_string());
        family.set_field_type(kind);
        Family { family, kind }
    }

    fn push(&mut self, labels: &[(&str, &str)], value: f64) {
        let mut metric = proto::Metric::default();
        metric.set_label(
            labels
                .iter()
                .map(|(name, value)| {
                    let mut pair = proto::LabelPair::default();
                    pair.set_name((*name).to_string());
                    pair.set_value((*value).to_string());
                    pair
                })
                .collect(),
        );
        if self.kind == MetricType::COUNTER {
            let mut c = proto::Counter::default();
            c.set_value(value);
            metric.set_counter(c);
        } else {
            let mut g = proto::Gauge::default();
            g.set_value(value);
            metric.set_gauge(g);
        }
        self.family.mut_metric().push(metric);
    }
}

/// Pool, upstream and catalogue figures, read now.
fn sample(supervisor: &Supervisor) -> Vec<MetricFamily> {
    use MetricType::{COUNTER, GAUGE};
    let mut up = Family::new(
        "qail_upstream_up",
        "1 when the last health check of the upstream succeeded, else 0.",
        GAUGE,
    );
    let mut paused = Family::new(
        "qail_upstream_paused",
        "1 while an operator has paused the upstream.",
        GAUGE,
    );
    let mut upstream_errors = Family::new(
        "qail_upstream_errors_total",
        "Failed requests on the upstream (any error code).",
        COUNTER,
    );
    let mut connections = Family::new(
        "qail_pool_connections",
        "PostgreSQL connections of the pool, by state (idle or in_use).",
        GAUGE,
    );
    let mut max = Family::new(
        "qail_pool_max_connections",
        "Configured pool size (pool_max).",
        GAUGE,
    );
    let mut waiters = Family::new(
        "qail_pool_waiters",
        "Requests waiting for a pooled connection right now.",
        GAUGE,
    );
    let mut checkouts = Family::new(
        "qail_pool_checkouts_total",
        "Connections requested from the pool.",
        COUNTER,
    );
    let mut timeouts = Family::new(
        "qail_pool_checkout_timeouts_total",
        "Checkouts that gave up waiting for a connection.",
        COUNTER,
    );
    let mut opened = Family::new(
        "qail_pool_connections_opened_total",
        "PostgreSQL connections the pool opened.",
        COUNTER,
    );
    let mut closed = Family::new(
        "qail_pool_connections_closed_total",
        "PostgreSQL connections the pool closed, by reason (broken, max_lifetime, idle_timeout).",
        COUNTER,
    );
    let mut entries = Family::new(
        "qail_catalog_entries",
        "Statements in the upstream's catalogue.",
        GAUGE,
    );
    let mut capacity = Family::new(
        "qail_catalog_capacity",
        "Most statements the catalogue keeps.",
        GAUGE,
    );
    let mut hits = Family::new(
        "qail_catalog_hits_total",
        "Catalogue lookups that found the statement.",
        COUNTER,
    );
    let mut misses = Family::new(
        "qail_catalog_misses_total",
        "Catalogue lookups that did not find the statement.",
        COUNTER,
    );
    let mut evictions = Family::new(
        "qail_catalog_evictions_total",
        "Statements evicted to make room (least recently used first).",
        COUNTER,
    );
    let mut grouped = Family::new(
        "qail_pipeline_grouped_statements_total",
        "Statements sent in read-only groups with one Sync per group (pipelines, and single statements coalesced on a shared connection).",
        COUNTER,
    );
    let mut reruns = Family::new(
        "qail_pipeline_grouped_reruns_total",
        "Grouped statements run again one by one (failed or skipped inside their group).",
        COUNTER,
    );
    let mut coalesced = Family::new(
        "qail_coalesced_statements_total",
        "Single statements that waited on a shared connection and ran together with others.",
        COUNTER,
    );
    let mut coalesced_groups = Family::new(
        "qail_coalesced_groups_total",
        "Runs of coalesced statements (statements per run = qail_coalesced_statements_total / this).",
        COUNTER,
    );
    for upstream in supervisor.all() {
        let name = upstream.name();
        let label = [("upstream", name)];
        let pool = upstream.stats();
        let cache = upstream.catalog.stats();
        up.push(&label, f64::from(u8::from(pool.health == Health::Up)));
        paused.push(&label, f64::from(u8::from(pool.paused)));
        upstream_errors.push(&label, pool.errors as f64);
        connections.push(
            &[("upstream", name), ("state", "idle")],
            f64::from(pool.idle),
        );
        connections.push(
            &[("upstream", name), ("state", "in_use")],
            f64::from(pool.in_use),
        );
        max.push(&label, f64::from(pool.max));
        waiters.push(&label, pool.waiters as f64);
        checkouts.push(&label, pool.checkouts as f64);
        timeouts.push(&label, pool.checkout_timeouts as f64);
        opened.push(&label, pool.connections_opened as f64);
        let gone = pool.connections_closed;
        for (reason, n) in [
            ("broken", gone.broken),
            ("max_lifetime", gone.max_lifetime),
            ("idle_timeout", gone.idle_timeout),
        ] {
            closed.push(&[("upstream", name), ("reason", reason)], n as f64);
        }
        entries.push(&label, cache.entries as f64);
        capacity.push(&label, cache.capacity as f64);
        hits.push(&label, cache.hits as f64);
        misses.push(&label, cache.misses as f64);
        evictions.push(&label, cache.evictions as f64);
        grouped.push(&label, pool.grouped_statements as f64);
        reruns.push(&label, pool.grouped_reruns as f64);
        coalesced.push(&label, pool.coalesced_statements as f64);
        coalesced_groups.push(&label, pool.coalesced_groups as f64);
    }
    [
        up,
        paused,
        upstream_errors,
        connections,
        max,
        waiters,
        checkouts,
        timeouts,
        opened,
        closed,
        entries,
        capacity,
        hits,
        misses,
        evictions,
        grouped,
        reruns,
        coalesced,
        coalesced_groups,
    ]
    .into_iter()
    .map(|f| f.family)
    // The text encoder refuses empty families (a daemon with no upstream yet).
    .filter(|f| !f.get_metric().is_empty())
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Code;

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
    }

    #[test]
    fn every_op_has_its_own_series() {
        for (i, op) in OPS.iter().enumerate() {
            assert_eq!(op_index(Some(*op)), i, "{op:?}");
        }
        assert_eq!(op_index(None), OPS.len());
    }

    #[test]
    fn recording_moves_counters_and_histograms() {
        let m = Metrics::new().unwrap();
        let started = Instant::now();
        m.record(Some(Op::Query), started, None);
        m.record(Some(Op::Query), started, None);
        m.record(
            Some(Op::Execute),
            started,
            Some(&Error::new(Code::BadRequest, "x")),
        );
        m.record(None, started, Some(&Error::new(Code::UnknownOp, "x")));
        m.frame_in(10);
        m.frame_out(25);
        m.client_connected();
        let families = m.registry.gather();
        let mut out = Vec::new();
        TextEncoder::new().encode(&families, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            value(&text, r#"qail_requests_total{op="query",outcome="ok"}"#),
            Some(2.0)
        );
        assert_eq!(
            value(
                &text,
                r#"qail_requests_total{op="execute",outcome="error"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            value(
                &text,
                r#"qail_requests_total{op="unknown",outcome="error"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            value(&text, r#"qail_errors_total{code="bad_request"}"#),
            Some(1.0)
        );
        assert_eq!(
            value(&text, r#"qail_request_duration_seconds_count{op="query"}"#),
            Some(2.0)
        );
        assert_eq!(
            value(&text, r#"qail_frame_bytes_total{direction="out"}"#),
            Some(25.0)
        );
        assert_eq!(value(&text, "qail_clients_connected"), Some(1.0));
        assert_eq!(
            value(
                &text,
                &format!(
                    "qail_build_info{{version=\"{}\"}}",
                    env!("CARGO_PKG_VERSION")
                )
            ),
            Some(1.0)
        );
    }
}
