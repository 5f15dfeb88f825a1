//! Wiring: binds the socket, starts the supervisor, serves until the shutdown future resolves,
//! then stops in order — stop accepting, let sessions finish in-flight work within the grace
//! period (rolling back open transactions), stop the upstream workers.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::ipc::{self, BindError, BoundSocket, Shared};
use crate::supervisor::Supervisor;

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

/// A daemon whose socket is bound and whose upstream workers are running.
pub struct Daemon {
    config: Config,
    socket: BoundSocket,
    supervisor: Arc<Supervisor>,
    workers: TaskTracker,
    workers_cancel: CancellationToken,
}

impl Daemon {
    /// Binds the client socket and starts one worker per upstream. Fails when another daemon
    /// is listening on the socket path.
    pub async fn bind(config: Config) -> Result<Daemon, AppError> {
        config.admin.addr()?;
        let socket = ipc::bind(&config.ipc.socket, config.ipc.socket_mode.0)?;
        let workers = TaskTracker::new();
        let workers_cancel = CancellationToken::new();
        let supervisor = Supervisor::start(&config, workers.clone(), workers_cancel.clone());
        tracing::info!(
            socket = %socket.path.display(),
            upstreams = ?supervisor.names(),
            version = env!("CARGO_PKG_VERSION"),
            "qail-daemon listening"
        );
        Ok(Daemon {
            config,
            socket,
            supervisor,
            workers,
            workers_cancel,
        })
    }

    pub fn socket_path(&self) -> &Path {
        &self.socket.path
    }

    /// The admin HTTP address, when the admin server runs (not part of this build yet).
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        None
    }

    pub fn supervisor(&self) -> &Arc<Supervisor> {
        &self.supervisor
    }

    /// Serves clients until `shutdown` resolves, then shuts down gracefully.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), AppError> {
        let Daemon {
            config,
            socket,
            supervisor,
            workers,
            workers_cancel,
        } = self;
        let socket_path: PathBuf = socket.path.clone();
        let shared = Arc::new(Shared::new(&config, supervisor.clone()));
        let sessions = TaskTracker::new();
        let sessions_cancel = CancellationToken::new();
        let accept = tokio::spawn(ipc::serve(
            socket,
            shared,
            sessions.clone(),
            sessions_cancel.clone(),
            config.ipc.max_clients,
        ));

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
                "sessions still busy after the grace period; their PostgreSQL connections will be closed"
            );
        }
        supervisor.shutdown();
        workers_cancel.cancel();
        workers.close();
        if tokio::time::timeout(Duration::from_secs(2), workers.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                workers = workers.len(),
                "upstream workers did not stop in time"
            );
        }
        tracing::info!(socket = %socket_path.display(), "qail-daemon stopped");
        Ok(())
    }
}
