//! The supervisor: owns the set of upstreams and one worker task per upstream.
//!
//! Each worker runs under a small guard loop that restarts it with exponential backoff if it
//! panics. Upstreams live in a map behind a std `RwLock` that is only held for lookups and
//! inserts, never across an await. Dynamic upstreams (from `connect_pg`) are added only after
//! PostgreSQL accepted their credentials.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::catalog::HandleGen;
use crate::config::{Config, PoolDefaults, Secret, UpstreamConfig};
use crate::error::{Code, Error};
use crate::pg::conn::describe_connect_error;
use crate::upstream::Upstream;

/// Credentials as `connect_pg` gives them.
#[derive(Debug)]
pub struct Credentials<'a> {
    pub host: &'a str,
    pub port: u16,
    pub user: &'a str,
    pub database: &'a str,
    pub password: &'a str,
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
}

impl Supervisor {
    /// Starts one worker per configured upstream.
    pub fn start(config: &Config, tracker: TaskTracker, cancel: CancellationToken) -> Arc<Self> {
        let sup = Arc::new(Supervisor {
            upstreams: RwLock::new(HashMap::new()),
            handles: Arc::new(HandleGen::from_clock()),
            catalog_capacity: config.catalog.capacity,
            dynamic: config
                .allow_dynamic_upstreams
                .then(|| config.dynamic_defaults.clone()),
            dynamic_lock: tokio::sync::Mutex::new(()),
            tracker,
            cancel,
        });
        for up in &config.upstreams {
            sup.add(up.clone());
        }
        sup
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<Upstream>>> {
        self.upstreams.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates an upstream and spawns its supervised worker.
    fn add(&self, config: UpstreamConfig) -> Arc<Upstream> {
        let up = Upstream::new(
            config,
            self.catalog_capacity,
            self.handles.clone(),
            self.cancel.child_token(),
        );
        let name = up.name().to_string();
        self.upstreams
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.clone(), up.clone());
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
    /// with the same address, user and database and the same password, or — when allowed — a new
    /// dynamic upstream once PostgreSQL accepted the credentials.
    pub async fn resolve_credentials(&self, c: &Credentials<'_>) -> Result<Arc<Upstream>, Error> {
        if let Some(up) = self.find(c) {
            return check_password(&up, c.password).map(|()| up);
        }
        let Some(defaults) = &self.dynamic else {
            return Err(Error::new(
                Code::UnknownUpstream,
                format!(
                    "no configured upstream for {}@{}:{}/{} (configured: {}); add it to the config or set allow_dynamic_upstreams = true",
                    c.user, c.host, c.port, c.database, self.names().join(", ")
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
            defaults,
        );
        let candidate = Upstream::new(
            config.clone(),
            1,
            self.handles.clone(),
            CancellationToken::new(),
        );
        if let Err(e) = candidate.probe().await {
            let reason = describe_connect_error(&e);
            return Err(match e.as_db_error() {
                Some(_) => Error::new(
                    Code::AuthFailed,
                    format!(
                        "PostgreSQL refused {}@{}:{}/{}: {reason}",
                        c.user, c.host, c.port, c.database
                    ),
                ),
                None => Error::new(
                    Code::UpstreamUnavailable,
                    format!("cannot reach {}:{}: {reason}", c.host, c.port),
                ),
            });
        }
        tracing::info!(upstream = %config.name, "starting dynamic upstream");
        Ok(self.add(config))
    }

    fn find(&self, c: &Credentials<'_>) -> Option<Arc<Upstream>> {
        self.read()
            .values()
            .find(|up| {
                let u = &up.config;
                u.port == c.port
                    && u.user == c.user
                    && u.database == c.database
                    && same_host(&u.host, c.host)
            })
            .cloned()
    }

    /// Stops every worker (pools close when the last session lets go of them).
    pub fn shutdown(&self) {
        self.cancel.cancel();
    }
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
    use super::same_host;

    #[test]
    fn loopback_names_are_one_host() {
        assert!(same_host("localhost", "127.0.0.1"));
        assert!(same_host("::1", "LOCALHOST"));
        assert!(same_host("/tmp/pg/", "/tmp/pg"));
        assert!(!same_host("db1", "db2"));
        assert!(!same_host("localhost", "10.0.0.1"));
    }
}
