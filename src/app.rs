//! Wiring: binds the socket and the admin port, starts the supervisor, serves until the shutdown
//! future resolves, then stops in order — stop accepting (readiness turns false), let sessions
//! finish in-flight work within the grace period (rolling back open transactions), stop the admin
//! server, stop the upstream workers and close their PostgreSQL connections (each tells the server
//! goodbye) before returning.
//!
//! Reloads ([`Reloader`], driven by SIGHUP in `main` and by `POST /reload`) re-read the config
//! file, validate it completely, and only then apply its upstream changes; settings that need a
//! restart are reported, not applied.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::admin::{self, AdminState};
use crate::config::{Config, ConfigError};
use crate::ipc::{self, BindError, BoundSocket, Shared};
use crate::metrics::{Metrics, MetricsError};
use crate::supervisor::{Supervisor, UpstreamChanges};

/// How long shutdown waits for admin HTTP connections, and for upstream workers and their
/// PostgreSQL connections.
const STOP_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on [admin] listen = {addr}: {source} (set another address, or \"\" to turn the admin server off)")]
    AdminBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Metrics(#[from] MetricsError),
}

/// A daemon whose socket is bound and whose upstream workers are running.
pub struct Daemon {
    config: Config,
    socket: BoundSocket,
    admin: Option<tokio::net::TcpListener>,
    admin_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    reloader: Reloader,
    workers: TaskTracker,
    workers_cancel: CancellationToken,
}

impl Daemon {
    /// Binds the client socket and the admin port and starts one worker per upstream. Fails
    /// when another daemon is listening on the socket path or the admin port is taken.
    pub async fn bind(config: Config) -> Result<Daemon, AppError> {
        let admin_at = config.admin.addr()?;
        let metrics = Arc::new(Metrics::new()?);
        let socket = ipc::bind(&config.ipc.socket, config.ipc.socket_mode.0)?;
        let (admin, admin_addr) = match admin_at {
            Some(addr) => {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| AppError::AdminBind { addr, source })?;
                let local = listener
                    .local_addr()
                    .map_err(|source| AppError::AdminBind { addr, source })?;
                (Some(listener), Some(local))
            }
            None => (None, None),
        };
        let workers = TaskTracker::new();
        let workers_cancel = CancellationToken::new();
        let supervisor = Supervisor::start(
            &config,
            workers.clone(),
            workers_cancel.clone(),
            metrics.clone(),
        );
        let shared = Arc::new(Shared::new(&config, supervisor.clone(), metrics));
        let reloader = Reloader::new(supervisor.clone(), config.clone());
        tracing::info!(
            socket = %socket.path.display(),
            admin = %admin_addr.map(|a| a.to_string()).unwrap_or_else(|| "off".into()),
            upstreams = ?supervisor.names(),
            version = env!("CARGO_PKG_VERSION"),
            "qail-daemon listening"
        );
        Ok(Daemon {
            config,
            socket,
            admin,
            admin_addr,
            shared,
            reloader,
            workers,
            workers_cancel,
        })
    }

    /// Lets reloads re-read `path` (layered with `env`, as at start-up). Without it, a reload
    /// request is refused: there is nothing to re-read.
    pub fn with_config_file(self, path: Option<PathBuf>, env: HashMap<String, String>) -> Self {
        self.reloader
            .set_source(path.map(|path| ConfigSource { path, env }));
        self
    }

    pub fn socket_path(&self) -> &Path {
        &self.socket.path
    }

    /// The admin HTTP address actually bound (port 0 resolved), or None when it is off.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    pub fn supervisor(&self) -> &Arc<Supervisor> {
        &self.shared.supervisor
    }

    /// A handle that reloads the configuration (for SIGHUP).
    pub fn reloader(&self) -> Reloader {
        self.reloader.clone()
    }

    /// Serves clients until `shutdown` resolves, then shuts down gracefully.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), AppError> {
        let Daemon {
            config,
            socket,
            admin,
            admin_addr: _,
            shared,
            reloader,
            workers,
            workers_cancel,
        } = self;
        let socket_path: PathBuf = socket.path.clone();
        let supervisor = shared.supervisor.clone();
        let sessions = TaskTracker::new();
        let sessions_cancel = CancellationToken::new();
        let accept = tokio::spawn(ipc::serve(
            socket,
            shared.clone(),
            sessions.clone(),
            sessions_cancel.clone(),
            config.ipc.max_clients,
        ));
        let admin_cancel = CancellationToken::new();
        let admin_task = admin.map(|listener| {
            let state = AdminState::new(
                shared.clone(),
                config.admin.token.clone(),
                Some(reloader.clone()),
            );
            tokio::spawn(
                admin::serve(listener, admin::router(state), admin_cancel.clone())
                    .instrument(tracing::info_span!("admin")),
            )
        });

        shutdown.await;
        tracing::info!("shutting down: no new clients, finishing in-flight requests");
        sessions_cancel.cancel();
        let _ = accept.await;
        sessions.close();
        let grace = config.limits.shutdown_grace();
        if tokio::time::timeout(grace, sessions.wait()).await.is_err() {
            tracing::warn!(
                sessions = sessions.len(),
                grace_ms = grace.as_millis() as u64,
                "sessions still busy after the grace period; ending them and closing their PostgreSQL connections"
            );
            shared.hard_stop.cancel();
            if tokio::time::timeout(Duration::from_secs(2), sessions.wait())
                .await
                .is_err()
            {
                tracing::warn!(
                    sessions = sessions.len(),
                    "sessions did not end after a hard stop"
                );
            }
        }
        admin_cancel.cancel();
        if let Some(task) = admin_task {
            let abort = task.abort_handle();
            if tokio::time::timeout(STOP_TIMEOUT, task).await.is_err() {
                tracing::warn!("admin server did not stop in time; closing its connections");
                abort.abort();
            }
        }
        supervisor.shutdown();
        workers_cancel.cancel();
        workers.close();
        if tokio::time::timeout(STOP_TIMEOUT, workers.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                tasks = workers.len(),
                "upstream tasks (health workers, PostgreSQL connections, coalescing runners) did not stop in time"
            );
        }
        tracing::info!(socket = %socket_path.display(), "qail-daemon stopped");
        Ok(())
    }
}

/// Where a reload reads the configuration from.
#[derive(Clone)]
struct ConfigSource {
    path: PathBuf,
    env: HashMap<String, String>,
}

/// Why a reload did not happen. Nothing was changed in either case.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("the daemon was started without a config file: there is nothing to re-read")]
    NoConfigFile,
    #[error("the new configuration was rejected; nothing was changed: {0}")]
    Invalid(#[from] ConfigError),
    #[error("reading the configuration failed: {0}")]
    Task(String),
}

/// What a reload did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadReport {
    pub upstreams: UpstreamChanges,
    /// Settings that differ in the file but only take effect after a restart (`ipc`, `admin`,
    /// `catalog`, `limits`, `log`, `allow_dynamic_upstreams`, `dynamic_defaults`).
    pub restart_required: Vec<String>,
}

/// Re-reads and applies the configuration; cheap to clone. Reloads run one at a time.
#[derive(Clone)]
pub struct Reloader {
    inner: Arc<ReloadInner>,
}

struct ReloadInner {
    supervisor: Arc<Supervisor>,
    source: Mutex<Option<ConfigSource>>,
    /// The configuration in force; also serialises reloads.
    current: tokio::sync::Mutex<Config>,
}

impl Reloader {
    fn new(supervisor: Arc<Supervisor>, config: Config) -> Reloader {
        Reloader {
            inner: Arc::new(ReloadInner {
                supervisor,
                source: Mutex::new(None),
                current: tokio::sync::Mutex::new(config),
            }),
        }
    }

    fn set_source(&self, source: Option<ConfigSource>) {
        *self.inner.source.lock().unwrap_or_else(|p| p.into_inner()) = source;
    }

    /// Whether there is a config file to re-read.
    pub fn has_source(&self) -> bool {
        self.inner
            .source
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Re-reads the config file; if it is valid, applies its upstream changes.
    pub async fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let source = self
            .inner
            .source
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or(ReloadError::NoConfigFile)?;
        let mut current = self.inner.current.lock().await;
        let next =
            tokio::task::spawn_blocking(move || Config::load(Some(&source.path), &source.env))
                .await
                .map_err(|e| ReloadError::Task(e.to_string()))??;
        let upstreams = self.inner.supervisor.reconcile(&next.upstreams);
        let restart_required = restart_required(&current, &next);
        if !restart_required.is_empty() {
            tracing::warn!(
                sections = ?restart_required,
                "reload: these settings changed but only take effect after a restart"
            );
        }
        tracing::info!(
            added = ?upstreams.added,
            removed = ?upstreams.removed,
            changed = ?upstreams.changed,
            "configuration reloaded"
        );
        *current = next;
        Ok(ReloadReport {
            upstreams,
            restart_required,
        })
    }
}

/// Sections other than `upstreams` that differ between two configurations.
fn restart_required(old: &Config, new: &Config) -> Vec<String> {
    let (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) =
        (serde_json::to_value(old), serde_json::to_value(new))
    else {
        return Vec::new();
    };
    let mut changed: Vec<String> = a
        .iter()
        .filter(|(k, v)| k.as_str() != "upstreams" && b.get(k.as_str()) != Some(v))
        .map(|(k, _)| k.clone())
        .collect();
    // Serialisation redacts secrets; compare the tokens themselves.
    let token = |s: &Option<crate::config::Secret>| s.as_ref().map(|t| t.expose().to_string());
    for (section, differs) in [
        ("ipc", token(&old.ipc.token) != token(&new.ipc.token)),
        ("admin", token(&old.admin.token) != token(&new.admin.token)),
    ] {
        if differs && !changed.iter().any(|c| c == section) {
            changed.push(section.to_string());
        }
    }
    changed.sort();
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
        [ipc]
        socket = "/tmp/qail-app-test/q.sock"
        [[upstreams]]
        name = "main"
        user = "app"
    "#;

    #[test]
    fn restart_required_names_changed_sections() {
        let env = HashMap::new();
        let a = Config::from_toml_str(BASE, &env).unwrap();
        let b = Config::from_toml_str(
            &format!("{BASE}\n[catalog]\ncapacity = 7\n[admin]\ntoken = \"t\"\n"),
            &env,
        )
        .unwrap();
        assert_eq!(restart_required(&a, &a), Vec::<String>::new());
        assert_eq!(restart_required(&a, &b), vec!["admin", "catalog"]);
    }
}
