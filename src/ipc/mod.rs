//! The client-facing Unix socket: binding it safely, the accept loop, and one session task per
//! client connection.
//!
//! [`Shared`] is what every session (and the admin server) reads: the supervisor, the metrics,
//! the registry of connected clients, and whether the accept loop is running (readiness). A
//! client is in the registry exactly while its session task runs.

pub mod codec;
pub mod ops;
pub mod reply;
pub mod request;
pub mod session;

use std::collections::HashMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures_util::FutureExt;
use tokio::net::UnixListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::{Config, Secret};
use crate::metrics::Metrics;
use crate::net::UnixConn;
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
    pub metrics: Arc<Metrics>,
    /// The clients connected right now.
    pub clients: Arc<Clients>,
    /// True while the accept loop runs.
    accepting: AtomicBool,
    next_session: AtomicU64,
    /// Fired when the shutdown grace period is over: sessions end at once, and an open
    /// transaction's connection is discarded (PostgreSQL rolls it back).
    pub hard_stop: CancellationToken,
}

impl Shared {
    pub fn new(config: &Config, supervisor: Arc<Supervisor>, metrics: Arc<Metrics>) -> Shared {
        Shared {
            supervisor,
            token: config.ipc.token.clone(),
            server: format!("qail-daemon {}", env!("CARGO_PKG_VERSION")),
            max_frame: config.ipc.max_frame_bytes,
            max_in_flight: config.ipc.max_in_flight,
            statement_timeout: config.limits.statement_timeout(),
            metrics,
            clients: Arc::new(Clients::default()),
            accepting: AtomicBool::new(false),
            next_session: AtomicU64::new(1),
            hard_stop: CancellationToken::new(),
        }
    }

    /// Whether the socket is accepting clients (the accept loop runs).
    pub fn is_accepting(&self) -> bool {
        self.accepting.load(Ordering::Relaxed)
    }

    /// Test helper: pretend the accept loop runs (or stopped).
    #[cfg(test)]
    pub(crate) fn set_accepting(&self, on: bool) {
        self.accepting.store(on, Ordering::Relaxed);
    }
}

/// One connected client, as `/clients` shows it. Counters are atomics updated by its session;
/// the name and upstream change only on `hello` / `connect`, behind a short lock.
#[derive(Debug)]
pub struct ClientInfo {
    /// The session id sent in `hello` (`s<n>`).
    pub session: String,
    /// Peer process id and user id from the socket's credentials (0 / u32::MAX when unknown).
    pub pid: i32,
    pub uid: u32,
    pub connected_at: SystemTime,
    labels: Mutex<ClientLabels>,
    in_flight: AtomicU32,
    requests: AtomicU64,
}

#[derive(Debug, Default)]
struct ClientLabels {
    name: Option<String>,
    upstream: Option<String>,
}

/// A point-in-time copy of a [`ClientInfo`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct ClientView {
    pub session: String,
    pub pid: i32,
    pub uid: u32,
    /// The `client` name given in `hello`, if any.
    pub client: Option<String>,
    pub upstream: Option<String>,
    pub in_flight: u32,
    pub requests: u64,
    pub connected_at: SystemTime,
}

impl ClientInfo {
    pub(crate) fn new(session: String, pid: i32, uid: u32) -> ClientInfo {
        ClientInfo {
            session,
            pid,
            uid,
            connected_at: SystemTime::now(),
            labels: Mutex::new(ClientLabels::default()),
            in_flight: AtomicU32::new(0),
            requests: AtomicU64::new(0),
        }
    }

    fn labels(&self) -> std::sync::MutexGuard<'_, ClientLabels> {
        self.labels.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the name the client gave in `hello`.
    pub fn set_name(&self, name: &str) {
        self.labels().name = Some(name.chars().take(128).collect());
    }

    /// Records the upstream the session is connected to.
    pub fn set_upstream(&self, upstream: &str) {
        self.labels().upstream = Some(upstream.to_string());
    }

    /// Counts a request as in flight until the returned guard drops.
    pub fn begin_request(self: &Arc<Self>) -> InFlight {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    pub fn view(&self) -> ClientView {
        let labels = self.labels();
        ClientView {
            session: self.session.clone(),
            pid: self.pid,
            uid: self.uid,
            client: labels.name.clone(),
            upstream: labels.upstream.clone(),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            connected_at: self.connected_at,
        }
    }
}

/// A request in flight; see [`ClientInfo::begin_request`].
pub struct InFlight(Arc<ClientInfo>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The registry of connected clients, keyed by session number.
#[derive(Debug, Default)]
pub struct Clients {
    map: Mutex<HashMap<u64, Arc<ClientInfo>>>,
}

impl Clients {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<ClientInfo>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a client; it stays listed (and counted in `metrics`) until the returned guard
    /// drops, however its session ends.
    pub fn register(
        self: &Arc<Self>,
        n: u64,
        info: Arc<ClientInfo>,
        metrics: Arc<Metrics>,
    ) -> Registered {
        self.map().insert(n, info);
        metrics.client_connected();
        Registered {
            clients: self.clone(),
            metrics,
            n,
        }
    }

    /// Every connected client, oldest first.
    pub fn list(&self) -> Vec<ClientView> {
        let mut all: Vec<(u64, ClientView)> =
            self.map().iter().map(|(n, c)| (*n, c.view())).collect();
        all.sort_by_key(|(n, _)| *n);
        all.into_iter().map(|(_, v)| v).collect()
    }

    pub fn len(&self) -> usize {
        self.map().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Keeps a client listed in [`Clients`]; removes it on drop.
pub struct Registered {
    clients: Arc<Clients>,
    metrics: Arc<Metrics>,
    n: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.clients.map().remove(&self.n);
        self.metrics.client_disconnected();
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
    shared.accepting.store(true, Ordering::Relaxed);
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
        let (pid, uid) = match stream.peer_cred() {
            Ok(c) => (c.pid().unwrap_or(0), c.uid()),
            Err(_) => (0, u32::MAX),
        };
        let stream = match UnixConn::try_from(stream) {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "could not register an accepted connection");
                continue;
            }
        };
        let n = shared.next_session.fetch_add(1, Ordering::Relaxed);
        let id = format!("s{n}");
        let span = tracing::info_span!(
            "client",
            session = %id,
            pid,
            uid,
            client = tracing::field::Empty,
            upstream = tracing::field::Empty,
        );
        let info = Arc::new(ClientInfo::new(id.clone(), pid, uid));
        let registered = shared
            .clients
            .register(n, info.clone(), shared.metrics.clone());
        let session = session::Session::new(shared.clone(), id, info, cancel.clone());
        span.in_scope(|| tracing::debug!("client connected"));
        // A combinator rather than an async block, which would keep the session a second time
        // beside the future that owns it, for as long as the client stays.
        let task = session.run(stream).map(move |()| {
            tracing::debug!("client disconnected");
            drop(registered);
            drop(permit);
        });
        tracker.spawn(task.instrument(span));
    }
    shared.accepting.store(false, Ordering::Relaxed);
    tracing::debug!("accept loop stopped");
    drop(socket);
}
