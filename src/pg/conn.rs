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

use tokio_postgres::{CancelToken, Client, NoTls, Statement};

use crate::catalog::Entry;
use crate::config::UpstreamConfig;
use crate::error::Error;

/// SQL that puts a connection's session back the way a fresh one is, except for the daemon's
/// own prepared statements (what `DISCARD ALL` does minus `DEALLOCATE ALL` and `DISCARD PLANS`).
const RESET_SESSION: &str = "CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; UNLISTEN *; \
     SELECT pg_advisory_unlock_all(); DISCARD TEMP; DISCARD SEQUENCES";

/// A pooled PostgreSQL connection.
pub struct PgConn {
    pub client: Client,
    cancel: CancelToken,
    /// Held only for map operations, never across an await: concurrent requests sharing this
    /// connection (see `upstream::Lease`) prepare and look up statements through it.
    statements: Mutex<HashMap<u64, (Arc<Entry>, Statement)>>,
    statement_limit: usize,
    broken: AtomicBool,
}

impl PgConn {
    /// The prepared statement for `entry` on this connection, preparing it on first use.
    pub async fn statement(&self, entry: &Arc<Entry>) -> Result<Statement, Error> {
        if let Some((_, stmt)) = self.statements().get(&entry.id) {
            return Ok(stmt.clone());
        }
        let stmt = self.client.prepare(&entry.sql).await?;
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

    pub fn cancel_token(&self) -> CancelToken {
        self.cancel.clone()
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
    statement_limit: usize,
    last_error: Arc<Mutex<Option<(Instant, String)>>>,
}

impl PgManager {
    pub fn new(up: &UpstreamConfig, statement_limit: usize) -> Self {
        let mut config = tokio_postgres::Config::new();
        if up.is_socket_dir() {
            config.host_path(&up.host);
        } else {
            config.host(&up.host);
        }
        config
            .port(up.port)
            .user(&up.user)
            .dbname(&up.database)
            .application_name(&up.application_name)
            .connect_timeout(up.connect_timeout());
        if !up.password().is_empty() {
            config.password(up.password().expose());
        }
        PgManager {
            config,
            statement_limit: statement_limit.max(16),
            last_error: Arc::new(Mutex::new(None)),
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

    fn record_error(&self, e: &tokio_postgres::Error) {
        let mut guard = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
        *guard = Some((Instant::now(), describe_connect_error(e)));
    }

    fn clear_error(&self) {
        let mut guard = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
        *guard = None;
    }

    /// Opens one connection (also used to check `connect_pg` credentials).
    pub async fn open(&self) -> Result<PgConn, tokio_postgres::Error> {
        match self.config.connect(NoTls).await {
            Ok((client, connection)) => {
                self.clear_error();
                // The connection future drives the socket; it ends when the client is dropped
                // or the server goes away, so it needs no other owner.
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(error = %e, "postgres connection ended");
                    }
                });
                Ok(PgConn {
                    cancel: client.cancel_token(),
                    client,
                    statements: Mutex::new(HashMap::new()),
                    statement_limit: self.statement_limit,
                    broken: AtomicBool::new(false),
                })
            }
            Err(e) => {
                self.record_error(&e);
                Err(e)
            }
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
    type Error = tokio_postgres::Error;

    async fn connect(&self) -> Result<PgConn, tokio_postgres::Error> {
        self.open().await
    }

    async fn is_valid(&self, conn: &mut PgConn) -> Result<(), tokio_postgres::Error> {
        conn.client.simple_query("").await.map(|_| ())
    }

    fn has_broken(&self, conn: &mut PgConn) -> bool {
        conn.is_broken()
    }
}
