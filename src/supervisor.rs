//! The supervisor: owns the set of upstreams and one worker task per upstream.
//!
//! Each worker runs under a small guard loop that restarts it with exponential backoff if it
//! panics. Upstreams live in a map behind a std `RwLock` that is only held for lookups and
//! inserts, never across an await. Dynamic upstreams (from `connect_pg`) are added only after
//! PostgreSQL accepted their credentials.
//!
//! A reload ([`Supervisor::reconcile`]) compares the configured upstreams with the running ones
//! by name: new names are started, missing names are removed, names whose settings changed are
//! replaced by a fresh pool that keeps the catalogue (so handles stay valid), and the rest are
//! left alone. Dynamic upstreams are never touched by a reload.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::catalog::{HandleGen, StatementCache};
use crate::config::{Config, PoolDefaults, Secret, SslMode, UpstreamConfig};
use crate::error::{Code, Error};
use crate::metrics::Metrics;
use crate::upstream::{Lifecycle, Upstream};

/// What a reload did to the configured upstreams (names, sorted).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct UpstreamChanges {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Settings changed: a new pool replaced the old one, keeping the catalogue.
    pub changed: Vec<String>,
    pub unchanged: Vec<String>,
}

/// Credentials as `connect_pg` gives them.
#[derive(Debug)]
pub struct Credentials<'a> {
    pub host: &'a str,
    pub port: u16,
    pub user: &'a str,
    pub database: &'a str,
    pub password: &'a str,
    /// The weakest TLS setting the client accepts (a Unix socket needs none).
    pub sslmode: SslMode,
}

impl Credentials<'_> {
    /// How the credentials read in messages: `user@host:port/database`, and the sslmode
    /// asked for when it is not `disable`.
    fn describe(&self) -> String {
        let mut s = format!(
            "{}@{}:{}/{}",
            self.user, self.host, self.port, self.database
        );
        if self.sslmode != SslMode::Disable {
            s.push_str(&format!(
                " with sslmode {} or stricter",
                self.sslmode.as_str()
            ));
        }
        s
    }
}

/// Owner of all upstreams.
pub struct Supervisor {
    upstreams: RwLock<HashMap<String, Arc<Upstream>>>,
    handles: Arc<HandleGen>,
    catalog_capacity: usize,
    dynamic: Option<PoolDefaults>,
    /// Serialises dynamic upstream creation so two clients cannot start the same one twice.
    dynamic_lock: tokio::sync::Mutex<()>,
    tracker: TaskTracker,
    cancel: CancellationToken,
    metrics: Arc<Metrics>,
}

impl Supervisor {
    /// Starts one worker per configured upstream.
    pub fn start(
        config: &Config,
        tracker: TaskTracker,
        cancel: CancellationToken,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let sup = Self::empty(config, tracker, cancel, metrics);
        for up in &config.upstreams {
            sup.add(up.clone(), None);
        }
        sup
    }

    /// A supervisor with no upstream yet.
    fn empty(
        config: &Config,
        tracker: TaskTracker,
        cancel: CancellationToken,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Supervisor {
            upstreams: RwLock::new(HashMap::new()),
            handles: Arc::new(HandleGen::from_clock()),
            catalog_capacity: config.catalog.capacity,
            dynamic: config
                .allow_dynamic_upstreams
                .then(|| config.dynamic_defaults.clone()),
            dynamic_lock: tokio::sync::Mutex::new(()),
            tracker,
            cancel,
            metrics,
        })
    }

    /// Test helper: a supervisor whose upstreams have no worker, so their health stays where
    /// the test puts it.
    #[cfg(test)]
    pub(crate) fn without_workers(config: &Config, metrics: Arc<Metrics>) -> Arc<Self> {
        let sup = Self::empty(
            config,
            TaskTracker::new(),
            CancellationToken::new(),
            metrics,
        );
        for c in &config.upstreams {
            let up = Upstream::new(
                c.clone(),
                sup.catalog_capacity,
                sup.handles.clone(),
                sup.tracker.clone(),
                sup.cancel.child_token(),
                Some(sup.metrics.checkout_wait(&c.name)),
            );
            sup.upstreams
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(c.name.clone(), up);
        }
        sup
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<Upstream>>> {
        self.upstreams.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates an upstream (around `catalog` when given) and spawns its supervised worker. An
    /// upstream of the same name is replaced and retired.
    fn add(&self, config: UpstreamConfig, catalog: Option<Arc<StatementCache>>) -> Arc<Upstream> {
        let checkout_wait = Some(self.metrics.checkout_wait(&config.name));
        let up = match catalog {
            Some(catalog) => Upstream::with_catalog(
                config,
                catalog,
                self.tracker.clone(),
                self.cancel.child_token(),
                checkout_wait,
            ),
            None => Upstream::new(
                config,
                self.catalog_capacity,
                self.handles.clone(),
                self.tracker.clone(),
                self.cancel.child_token(),
                checkout_wait,
            ),
        };
        let name = up.name().to_string();
        let old = self
            .upstreams
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.clone(), up.clone());
        if let Some(old) = old {
            old.retire(Lifecycle::Replaced);
        }
        let span = tracing::info_span!("upstream", upstream = %name);
        let guarded = up.clone();
        let worker_span = span.clone();
        self.tracker.spawn(
            async move {
                let mut backoff = Duration::from_millis(100);
                loop {
                    let worker =
                        tokio::spawn(guarded.clone().run_worker().instrument(worker_span.clone()));
                    match worker.await {
                        Ok(()) => return,
                        Err(e) if e.is_panic() => {
                            tracing::error!(
                                backoff_ms = backoff.as_millis() as u64,
                                "upstream worker crashed; restarting"
                            );
                        }
                        Err(_) => return,
                    }
                    tokio::select! {
                        _ = guarded.cancel.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
            .instrument(span),
        );
        up
    }

    /// Removes an upstream: its checkouts fail from now on and its worker stops.
    fn remove(&self, name: &str) -> Option<Arc<Upstream>> {
        let old = self
            .upstreams
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        if let Some(up) = &old {
            up.retire(Lifecycle::Removed);
            self.metrics.forget_upstream(name);
        }
        old
    }

    /// Brings the configured upstreams in line with `wanted` (already validated); see the
    /// module docs. Dynamic upstreams are kept.
    pub fn reconcile(&self, wanted: &[UpstreamConfig]) -> UpstreamChanges {
        let mut changes = UpstreamChanges::default();
        let running: Vec<Arc<Upstream>> = self
            .all()
            .into_iter()
            .filter(|up| !is_dynamic(up.name()))
            .collect();
        for up in &running {
            if !wanted.iter().any(|w| w.name == up.name()) {
                tracing::info!(upstream = %up.name(), "reload: removing upstream");
                self.remove(up.name());
                changes.removed.push(up.name().to_string());
            }
        }
        for w in wanted {
            match running.iter().find(|up| up.name() == w.name) {
                None => {
                    tracing::info!(upstream = %w.name, "reload: adding upstream");
                    self.add(w.clone(), None);
                    changes.added.push(w.name.clone());
                }
                Some(up) if same_settings(&up.config, w) => {
                    changes.unchanged.push(w.name.clone());
                }
                Some(up) => {
                    tracing::info!(upstream = %w.name, "reload: settings changed; replacing the pool, keeping the catalogue");
                    self.add(w.clone(), Some(up.catalog.clone()));
                    changes.changed.push(w.name.clone());
                }
            }
        }
        for list in [
            &mut changes.added,
            &mut changes.removed,
            &mut changes.changed,
            &mut changes.unchanged,
        ] {
            list.sort();
        }
        changes
    }

    pub fn get(&self, name: &str) -> Option<Arc<Upstream>> {
        self.read().get(name).cloned()
    }

    /// Names of all upstreams, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.read().keys().cloned().collect();
        names.sort();
        names
    }

    pub fn all(&self) -> Vec<Arc<Upstream>> {
        let mut all: Vec<Arc<Upstream>> = self.read().values().cloned().collect();
        all.sort_by(|a, b| a.name().cmp(b.name()));
        all
    }

    /// Resolves `connect_pg` credentials to an upstream: a configured (or earlier dynamic) one
    /// with the same address, user and database, the same password and a TLS setting at least
    /// as strict as asked, or — when allowed — a new dynamic upstream once PostgreSQL accepted
    /// the credentials.
    pub async fn resolve_credentials(&self, c: &Credentials<'_>) -> Result<Arc<Upstream>, Error> {
        if let Some(up) = self.find(c) {
            return check_password(&up, c.password).map(|()| up);
        }
        let Some(defaults) = &self.dynamic else {
            return Err(Error::new(
                Code::UnknownUpstream,
                format!(
                    "no configured upstream for {} (configured: {}); add it to the config or set allow_dynamic_upstreams = true",
                    c.describe(),
                    self.names().join(", ")
                ),
            ));
        };
        let _guard = self.dynamic_lock.lock().await;
        if let Some(up) = self.find(c) {
            return check_password(&up, c.password).map(|()| up);
        }
        let config = UpstreamConfig::dynamic(
            c.host,
            c.port,
            c.user,
            c.database,
            Secret::new(c.password),
            c.sslmode,
            defaults,
        );
        let candidate = Upstream::new(
            config.clone(),
            1,
            self.handles.clone(),
            self.tracker.clone(),
            CancellationToken::new(),
            None,
        );
        if let Err(e) = candidate.probe().await {
            let reason = e.describe();
            return Err(match e.as_db_error() {
                Some(_) => Error::new(
                    Code::AuthFailed,
                    format!("PostgreSQL refused {}: {reason}", c.describe()),
                ),
                None => Error::new(
                    Code::UpstreamUnavailable,
                    format!("cannot reach {}:{}: {reason}", c.host, c.port),
                ),
            });
        }
        tracing::info!(upstream = %config.name, "starting dynamic upstream");
        Ok(self.add(config, None))
    }

    /// The upstream serving `c`: configured ones before dynamic ones, then the least TLS
    /// that satisfies the request.
    fn find(&self, c: &Credentials<'_>) -> Option<Arc<Upstream>> {
        self.read()
            .values()
            .filter(|up| {
                let u = &up.config;
                u.port == c.port
                    && u.user == c.user
                    && u.database == c.database
                    && same_host(&u.host, c.host)
                    && (u.is_socket_dir() || u.sslmode >= c.sslmode)
            })
            .min_by_key(|up| {
                (
                    is_dynamic(up.name()),
                    up.config.sslmode,
                    up.name().to_string(),
                )
            })
            .cloned()
    }

    /// Stops every worker and lets go of every upstream: each pool closes (its connections
    /// say goodbye to PostgreSQL) once the last session has let go of it too.
    pub fn shutdown(&self) {
        self.cancel.cancel();
        self.upstreams
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

/// Upstreams started by `connect_pg` (configured names may not start with `dyn:`).
fn is_dynamic(name: &str) -> bool {
    name.starts_with("dyn:")
}

/// Whether two configurations of one upstream would build the same pool. Compares the
/// serialised settings (every field, present and future) plus the resolved password, which
/// serialisation redacts, and the contents of the TLS files.
fn same_settings(a: &UpstreamConfig, b: &UpstreamConfig) -> bool {
    let settings = |c: &UpstreamConfig| serde_json::to_value(c).ok();
    let (sa, sb) = (settings(a), settings(b));
    sa.is_some()
        && sa == sb
        && a.password().expose() == b.password().expose()
        && a.tls_files == b.tls_files
}

fn check_password(up: &Upstream, given: &str) -> Result<(), Error> {
    let expected = up.config.password().expose().as_bytes();
    if bool::from(expected.ct_eq(given.as_bytes())) {
        Ok(())
    } else {
        Err(Error::new(
            Code::AuthFailed,
            format!("password does not match upstream \"{}\"", up.name()),
        ))
    }
}

/// Host names that mean the same server: loopback spellings are one host; socket directories
/// compare without a trailing slash.
fn same_host(a: &str, b: &str) -> bool {
    const LOOPBACK: [&str; 4] = ["localhost", "127.0.0.1", "::1", "[::1]"];
    let norm = |h: &str| -> String {
        let h = h.trim();
        if LOOPBACK.contains(&h.to_ascii_lowercase().as_str()) {
            "localhost".into()
        } else if h.len() > 1 {
            h.trim_end_matches('/').to_ascii_lowercase()
        } else {
            h.to_ascii_lowercase()
        }
    };
    norm(a) == norm(b)
}

#[cfg(test)]
mod tests {
    use super::{same_host, same_settings};
    use crate::config::{PoolDefaults, Secret, SslMode, UpstreamConfig};

    #[test]
    fn settings_comparison_sees_passwords_and_sizes() {
        let pool = PoolDefaults::default();
        let a = UpstreamConfig::dynamic(
            "h",
            5432,
            "u",
            "d",
            Secret::new("one"),
            SslMode::Disable,
            &pool,
        );
        let mut b = a.clone();
        assert!(same_settings(&a, &b));
        b.password = Some(Secret::new("two"));
        assert!(!same_settings(&a, &b), "a password change is a change");
        let mut c = a.clone();
        c.pool_max += 1;
        assert!(!same_settings(&a, &c));
    }

    #[test]
    fn loopback_names_are_one_host() {
        assert!(same_host("localhost", "127.0.0.1"));
        assert!(same_host("::1", "LOCALHOST"));
        assert!(same_host("/tmp/pg/", "/tmp/pg"));
        assert!(!same_host("db1", "db2"));
        assert!(!same_host("localhost", "10.0.0.1"));
    }
}
