//! One physical PostgreSQL connection as the pool holds it, and the bb8 manager that makes them.
//!
//! A [`PgConn`] owns the tokio-postgres `Client` plus the statements prepared on *this*
//! connection, keyed by catalogue entry id (tokio-postgres statements belong to the connection
//! that prepared them). Statements are prepared lazily on first use here; entries the catalogue
//! evicted are closed when the map grows past the catalogue's capacity.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio_postgres::error::DbError;
use tokio_postgres::tls::TlsConnect;
use tokio_postgres::{CancelToken, Client, NoTls, Statement};
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::catalog::Entry;
use crate::config::{ChannelBinding, SslMode, UpstreamConfig};
use crate::error::Error;
use crate::pg::socket::{Endpoint, PgStream, SocketHandle};
use crate::pg::tls::Tls;

/// SQL that puts a connection's session back the way a fresh one is, except for the daemon's
/// own prepared statements (what `DISCARD ALL` does minus `DEALLOCATE ALL` and `DISCARD PLANS`).
const RESET_SESSION: &str = "CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; UNLISTEN *; \
     SELECT pg_advisory_unlock_all(); DISCARD TEMP; DISCARD SEQUENCES";

/// A pooled PostgreSQL connection.
pub struct PgConn {
    pub client: Client,
    /// The socket under `client`, lent to `pg::burst` for grouped pipelines.
    pub socket: SocketHandle,
    cancel: CancelToken,
    endpoint: Endpoint,
    connect_timeout: Duration,
    /// The TLS settings cancel requests use too.
    tls: Option<Tls>,
    /// Held only for map operations, never across an await: concurrent requests sharing this
    /// connection (see `upstream::Lease`) prepare and look up statements through it.
    statements: Mutex<HashMap<u64, (Arc<Entry>, Statement)>>,
    statement_limit: usize,
    broken: AtomicBool,
    /// A request was dropped half-way on this connection (see [`PgConn::abandon`]).
    abandoned: AtomicBool,
    /// The daemon asked PostgreSQL to cancel what this connection runs (a request timed out),
    /// and the request has not wound down yet.
    cancel_sent: AtomicBool,
    /// Statements `pg::burst` prepared itself (tokio-postgres does not expose its names).
    pub burst: Mutex<BurstStatements>,
}

/// The statements grouped pipelines prepared on one connection, by catalogue entry id.
#[derive(Default)]
pub struct BurstStatements {
    prepared: HashMap<u64, (Arc<Entry>, String)>,
    /// Server-side statements to close at the start of the next burst.
    pub to_close: Vec<String>,
    made: u64,
}

impl BurstStatements {
    /// The statement name for `entry`, and whether it still has to be prepared.
    pub fn name_for(&mut self, entry: &Entry) -> (String, bool) {
        if let Some((_, name)) = self.prepared.get(&entry.id) {
            return (name.clone(), false);
        }
        self.made += 1;
        (format!("qail_b{}", self.made), true)
    }

    /// Records a statement the server has prepared and described as expected.
    pub fn adopt(&mut self, entry: &Arc<Entry>, name: String, limit: usize) {
        if self.prepared.len() >= limit {
            let evicted: Vec<u64> = self
                .prepared
                .iter()
                .filter(|(_, (e, _))| e.is_evicted())
                .map(|(id, _)| *id)
                .collect();
            for id in evicted {
                self.forget(id);
            }
        }
        self.prepared.insert(entry.id, (entry.clone(), name));
    }

    /// Drops a statement (stale or evicted); the server's copy is closed by the next burst.
    pub fn forget(&mut self, entry_id: u64) {
        if let Some((_, name)) = self.prepared.remove(&entry_id) {
            self.to_close.push(name);
        }
    }
}

impl PgConn {
    /// The prepared statement for `entry` on this connection, preparing it on first use.
    pub async fn statement(&self, entry: &Arc<Entry>) -> Result<Statement, Error> {
        if let Some((_, stmt)) = self.statements().get(&entry.id) {
            return Ok(stmt.clone());
        }
        // A miss is rare and tokio-postgres' prepare future large: boxed, so that the futures
        // of the requests that hit carry no room for it.
        let stmt = Box::pin(self.client.prepare(&entry.sql)).await?;
        self.adopt(entry, stmt.clone());
        Ok(stmt)
    }

    /// Records a statement prepared on this connection for `entry`.
    pub fn adopt(&self, entry: &Arc<Entry>, stmt: Statement) {
        let mut statements = self.statements();
        if statements.len() >= self.statement_limit {
            // Dropping a tokio-postgres Statement closes it on the server (once no request
            // still holds a clone of it).
            statements.retain(|_, (e, _)| !e.is_evicted());
        }
        statements.insert(entry.id, (entry.clone(), stmt));
    }

    /// Drops this connection's copy of a statement (it went stale).
    pub fn forget(&self, entry_id: u64) {
        self.statements().remove(&entry_id);
    }

    fn statements(&self) -> MutexGuard<'_, HashMap<u64, (Arc<Entry>, Statement)>> {
        self.statements.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn burst_statements(&self) -> MutexGuard<'_, BurstStatements> {
        self.burst.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn statement_limit(&self) -> usize {
        self.statement_limit
    }

    /// Asks PostgreSQL (over a new socket) to cancel whatever this connection is running.
    pub async fn cancel_query(&self) -> Result<(), ConnectError> {
        self.cancel_sent.store(true, Ordering::Relaxed);
        send_cancel(
            &self.endpoint,
            self.connect_timeout,
            self.tls.as_ref(),
            &self.cancel,
        )
        .await
    }

    /// A cancel request for whatever this connection runs, to be sent by a task of its own:
    /// the request that started the statement is gone (see [`PgConn::abandon`]).
    pub fn cancel_in_background(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let (endpoint, timeout, tls, token) = (
            self.endpoint.clone(),
            self.connect_timeout,
            self.tls.clone(),
            self.cancel.clone(),
        );
        async move {
            if let Err(e) = send_cancel(&endpoint, timeout, tls.as_ref(), &token).await {
                tracing::warn!(error = %e.describe(), "could not cancel an abandoned statement");
            }
        }
    }

    /// Records that a request was dropped before its work on this connection ended (a client
    /// that left, the end of the shutdown grace period): the pool discards the connection,
    /// and whatever it still runs is cancelled once no request uses it any more.
    pub fn abandon(&self) {
        self.abandoned.store(true, Ordering::Relaxed);
        self.mark_broken();
    }

    pub fn is_abandoned(&self) -> bool {
        self.abandoned.load(Ordering::Relaxed)
    }

    /// Whether a cancel from [`PgConn::cancel_query`] may be what stopped a statement (so a
    /// `57014` means the request's time is up, not a server-side `statement_timeout`).
    pub fn cancel_sent(&self) -> bool {
        self.cancel_sent.load(Ordering::Relaxed)
    }

    /// The cancelled request has wound down.
    pub fn forget_cancel(&self) {
        self.cancel_sent.store(false, Ordering::Relaxed);
    }

    /// Marks the connection unusable: the pool discards it instead of reusing it.
    pub fn mark_broken(&self) {
        self.broken.store(true, Ordering::Relaxed);
    }

    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Relaxed) || self.client.is_closed()
    }

    /// Resets session state before the connection serves another client.
    pub async fn reset_session(&self) -> Result<(), Error> {
        let result = self.client.batch_execute(RESET_SESSION).await;
        if result.is_err() {
            self.mark_broken();
        }
        result.map_err(Error::from)
    }
}

/// Makes [`PgConn`]s for one upstream. Clones share the last-error record.
#[derive(Clone)]
pub struct PgManager {
    config: tokio_postgres::Config,
    endpoint: Endpoint,
    connect_timeout: Duration,
    statement_limit: usize,
    last_error: Arc<Mutex<Option<(Instant, String)>>>,
    /// Owns the task that drives each connection's socket; it ends once the connection's
    /// client is dropped (its pool closed), so shutdown waits for PostgreSQL to be told.
    tasks: TaskTracker,
    upstream: String,
    /// TLS over TCP (`pg::tls`); the reason when the upstream's TLS settings cannot be used.
    tls: Result<Option<Tls>, String>,
}

impl PgManager {
    pub fn new(up: &UpstreamConfig, statement_limit: usize, tasks: TaskTracker) -> Self {
        let mut config = tokio_postgres::Config::new();
        config
            .user(&up.user)
            .dbname(&up.database)
            .application_name(&up.application_name)
            .connect_timeout(up.connect_timeout());
        if !up.password().is_empty() {
            config.password(up.password().expose());
        }
        let tls = crate::pg::tls::connector(up).map_err(|e| e.to_string());
        config.ssl_mode(match (&tls, up.sslmode) {
            (Ok(Some(_)), SslMode::Prefer) => tokio_postgres::config::SslMode::Prefer,
            (Ok(Some(_)), _) => tokio_postgres::config::SslMode::Require,
            _ => tokio_postgres::config::SslMode::Disable,
        });
        config.channel_binding(match up.channel_binding {
            ChannelBinding::Disable => tokio_postgres::config::ChannelBinding::Disable,
            ChannelBinding::Prefer => tokio_postgres::config::ChannelBinding::Prefer,
            ChannelBinding::Require => tokio_postgres::config::ChannelBinding::Require,
        });
        PgManager {
            config,
            endpoint: Endpoint::new(&up.host, up.port, up.is_socket_dir()),
            connect_timeout: up.connect_timeout(),
            statement_limit: statement_limit.max(16),
            last_error: Arc::new(Mutex::new(None)),
            tasks,
            upstream: up.name.clone(),
            tls,
        }
    }

    /// The most recent connection failure, if it happened within `window`.
    pub fn recent_error(&self, window: Duration) -> Option<String> {
        let guard = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
        guard
            .as_ref()
            .filter(|(at, _)| at.elapsed() <= window)
            .map(|(_, msg)| msg.clone())
    }

    fn record_error(&self, e: &ConnectError) {
        let mut guard = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
        *guard = Some((Instant::now(), e.describe()));
    }

    fn clear_error(&self) {
        let mut guard = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
        *guard = None;
    }

    /// Opens one connection (also used to check `connect_pg` credentials). The daemon opens
    /// the socket itself so it can borrow it for grouped pipelines (`pg::socket`).
    pub async fn open(&self) -> Result<PgConn, ConnectError> {
        let result = self.open_once().await;
        match &result {
            Ok(_) => self.clear_error(),
            Err(e) => self.record_error(e),
        }
        result
    }

    /// The startup exchange over `stream`, then the task that drives the connection; from
    /// then on `socket` follows tokio-postgres' requests, so bursts know when to borrow it.
    async fn start<T>(
        &self,
        stream: PgStream,
        tls: T,
        socket: &SocketHandle,
    ) -> Result<Client, ConnectError>
    where
        T: TlsConnect<PgStream>,
        T::Stream: Send + 'static,
        T::Future: Send,
    {
        let startup = self.config.connect_raw(stream, tls);
        let (client, connection) = match tokio::time::timeout(self.connect_timeout, startup).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(ConnectError::Socket(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "{}: no answer to the startup within {} ms",
                        self.endpoint,
                        self.connect_timeout.as_millis()
                    ),
                )))
            }
        };
        // The startup exchange is over and nothing is in flight.
        socket.track();
        // The connection future drives the socket; it ends when the client is dropped (after
        // telling the server) or when the server goes away.
        let span = tracing::debug_span!("postgres", upstream = %self.upstream);
        self.tasks.spawn(
            async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "postgres connection ended");
                }
            }
            .instrument(span),
        );
        Ok(client)
    }

    async fn open_once(&self) -> Result<PgConn, ConnectError> {
        let sock = self
            .endpoint
            .connect(self.connect_timeout)
            .await
            .map_err(ConnectError::Socket)?;
        let (socket, stream) = SocketHandle::new(sock);
        let tls = self
            .tls
            .clone()
            .map_err(|reason| ConnectError::Socket(std::io::Error::other(reason)))?;
        let client = match &tls {
            None => self.start(stream, NoTls, &socket).await?,
            Some(tls) => self.start(stream, tls.upgrade(), &socket).await?,
        };
        Ok(PgConn {
            cancel: client.cancel_token(),
            client,
            socket,
            endpoint: self.endpoint.clone(),
            connect_timeout: self.connect_timeout,
            tls,
            statements: Mutex::new(HashMap::new()),
            statement_limit: self.statement_limit,
            broken: AtomicBool::new(false),
            abandoned: AtomicBool::new(false),
            cancel_sent: AtomicBool::new(false),
            burst: Mutex::new(BurstStatements::default()),
        })
    }
}

/// Sends a cancel request on a connection of its own, over TLS when the connection it cancels
/// runs TLS (tokio-postgres insists on it when `sslmode` requires it).
async fn send_cancel(
    endpoint: &Endpoint,
    timeout: Duration,
    tls: Option<&Tls>,
    token: &CancelToken,
) -> Result<(), ConnectError> {
    let sock = endpoint
        .connect(timeout)
        .await
        .map_err(ConnectError::Socket)?;
    match tls {
        None => Ok(token.cancel_query_raw(sock, NoTls).await?),
        Some(tls) => {
            let (_, stream) = SocketHandle::new(sock);
            Ok(token.cancel_query_raw(stream, tls.upgrade()).await?)
        }
    }
}

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The socket could not be opened (the message names the endpoint).
    #[error("{0}")]
    Socket(std::io::Error),
    /// PostgreSQL refused the startup, or the connection broke during it.
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
}

impl ConnectError {
    /// PostgreSQL's own error (bad password, unknown database, ...), if it sent one.
    pub fn as_db_error(&self) -> Option<&DbError> {
        match self {
            ConnectError::Socket(_) => None,
            ConnectError::Postgres(e) => e.as_db_error(),
        }
    }

    /// The error in one line.
    pub fn describe(&self) -> String {
        match self {
            ConnectError::Socket(e) => format!("cannot connect to {e}"),
            ConnectError::Postgres(e) => describe_connect_error(e),
        }
    }
}

/// A connection error in one line, with the underlying cause (tokio-postgres' Display of an
/// io error is just "error connecting to server").
pub fn describe_connect_error(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} ({})", db.message(), db.code().code());
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

impl bb8::ManageConnection for PgManager {
    type Connection = PgConn;
    type Error = ConnectError;

    async fn connect(&self) -> Result<PgConn, ConnectError> {
        self.open().await
    }

    async fn is_valid(&self, conn: &mut PgConn) -> Result<(), ConnectError> {
        Ok(conn.client.simple_query("").await.map(|_| ())?)
    }

    fn has_broken(&self, conn: &mut PgConn) -> bool {
        conn.is_broken()
    }
}
