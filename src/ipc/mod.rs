//! The client-facing Unix socket: binding it safely, the accept loop, and one session task per
//! client connection.

pub mod codec;
pub mod ops;
pub mod reply;
pub mod request;
pub mod session;

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::{Config, Secret};
use crate::supervisor::Supervisor;

/// What every session shares.
pub struct Shared {
    pub supervisor: Arc<Supervisor>,
    pub token: Option<Secret>,
    /// `qail-daemon <version>`, sent in `hello`.
    pub server: String,
    pub max_frame: usize,
    pub max_in_flight: usize,
    pub statement_timeout: Option<Duration>,
    next_session: AtomicU64,
}

impl Shared {
    pub fn new(config: &Config, supervisor: Arc<Supervisor>) -> Shared {
        Shared {
            supervisor,
            token: config.ipc.token.clone(),
            server: format!("qail-daemon {}", env!("CARGO_PKG_VERSION")),
            max_frame: config.ipc.max_frame_bytes,
            max_in_flight: config.ipc.max_in_flight,
            statement_timeout: config.limits.statement_timeout(),
            next_session: AtomicU64::new(1),
        }
    }
}

/// Why the socket could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("another qail-daemon is already listening on {0}; stop it first or choose another [ipc] socket")]
    AlreadyRunning(PathBuf),
    #[error("{0} exists and is not a socket; refusing to replace it (remove it or choose another [ipc] socket)")]
    NotASocket(PathBuf),
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io_err<'p>(
    action: &'static str,
    path: &'p Path,
) -> impl FnOnce(std::io::Error) -> BindError + 'p {
    move |source| BindError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// A bound client socket; the file is removed on drop if it is still the one we created.
pub struct BoundSocket {
    pub listener: UnixListener,
    pub path: PathBuf,
    inode: u64,
}

impl Drop for BoundSocket {
    fn drop(&mut self) {
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.inode) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Binds the client socket at `path` with permission bits `mode`. Creates the parent directory
/// (mode 0755, or 0700 under /tmp) when missing, replaces a stale socket left by a dead daemon,
/// and refuses to start next to a live one or to replace anything that is not a socket.
pub fn bind(path: &Path, mode: u32) -> Result<BoundSocket, BindError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
            let dir_mode = if dir.starts_with("/tmp") {
                0o700
            } else {
                0o755
            };
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(dir_mode))
                .map_err(io_err("set permissions on", dir))?;
        } else if let Ok(meta) = std::fs::metadata(dir) {
            if meta.mode() & 0o002 != 0 && meta.mode() & 0o1000 == 0 {
                tracing::warn!(dir = %dir.display(), "socket directory is writable by every user; anyone could replace the socket");
            }
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => return Err(BindError::AlreadyRunning(path.to_path_buf())),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    tracing::info!(socket = %path.display(), "replacing a stale socket left by a stopped daemon");
                    std::fs::remove_file(path).map_err(io_err("remove stale socket", path))?;
                }
                Err(e) => return Err(io_err("probe existing socket", path)(e)),
            }
        }
        Ok(_) => return Err(BindError::NotASocket(path.to_path_buf())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("inspect", path)(e)),
    }
    let listener = UnixListener::bind(path).map_err(io_err("bind", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io_err("set permissions on", path))?;
    let inode = std::fs::symlink_metadata(path)
        .map_err(io_err("inspect", path))?
        .ino();
    Ok(BoundSocket {
        listener,
        path: path.to_path_buf(),
        inode,
    })
}

/// Accepts clients until `cancel` fires; each session runs as a tracked task. At most
/// `max_clients` sessions run at once; further clients wait in the listen backlog.
pub async fn serve(
    socket: BoundSocket,
    shared: Arc<Shared>,
    tracker: TaskTracker,
    cancel: CancellationToken,
    max_clients: usize,
) {
    let slots = Arc::new(Semaphore::new(max_clients));
    loop {
        let permit = tokio::select! {
            _ = cancel.cancelled() => break,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = socket.listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let n = shared.next_session.fetch_add(1, Ordering::Relaxed);
        let id = format!("s{n}");
        let (pid, uid) = match stream.peer_cred() {
            Ok(c) => (c.pid().unwrap_or(0), c.uid()),
            Err(_) => (0, u32::MAX),
        };
        let span = tracing::info_span!("client", session = %id, pid, uid);
        let session = session::Session::new(shared.clone(), id, cancel.clone());
        tracker.spawn(
            async move {
                tracing::debug!("client connected");
                session.run(stream).await;
                tracing::debug!("client disconnected");
                drop(permit);
            }
            .instrument(span),
        );
    }
    tracing::debug!("accept loop stopped");
    drop(socket);
}
