//! `begin`, `commit`, `rollback`, and the clean-up of a transaction a client abandoned.
//!
//! A transaction pins one pooled connection to the client session ([`Tx`]). However it ends, the
//! connection's session state is reset before it goes back to the pool; if that fails the
//! connection is discarded instead, so state never leaks to another client.

use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::error::SqlState;

use crate::error::{Code, Error};
use crate::ipc::reply::Reply;
use crate::ipc::request::Request;
use crate::pg::conn::PgConn;
use crate::upstream::{Checkout, Upstream};

/// How long rolling back an abandoned transaction may take before the connection is dropped.
const ABANDON_LIMIT: Duration = Duration::from_secs(5);

/// An open transaction: the pinned connection and whether an error may have aborted it.
pub struct Tx {
    pub up: Arc<Upstream>,
    conn: Checkout,
    maybe_aborted: bool,
    /// Set once the transaction ended and the session was reset; until then, dropping the
    /// `Tx` (a session torn down at the end of the shutdown grace period, a panic) discards the
    /// connection, so PostgreSQL rolls the transaction back and nobody inherits it.
    ended: bool,
}

impl Drop for Tx {
    fn drop(&mut self) {
        if !self.ended {
            self.conn.mark_broken();
        }
    }
}

impl Tx {
    /// The connection, and the flag ops set when PostgreSQL reported an error.
    pub fn parts(&mut self) -> (&PgConn, &mut bool) {
        (&mut self.conn, &mut self.maybe_aborted)
    }
}

/// `begin`: checks out and pins a connection, then starts the transaction on it.
pub async fn begin(up: &Arc<Upstream>, req: &Request<'_>, reply: &mut Reply) -> Result<Tx, Error> {
    let mut sql = String::from("BEGIN");
    if let Some(level) = req.isolation.as_deref() {
        let level = level.trim().to_ascii_lowercase().replace(['_', '-'], " ");
        match level.as_str() {
            "read committed" | "repeatable read" | "serializable" | "read uncommitted" => {
                sql.push_str(" ISOLATION LEVEL ");
                sql.push_str(&level.to_ascii_uppercase());
            }
            _ => {
                return Err(Error::bad_request(format!(
                    "isolation \"{level}\" is not one of: read committed, repeatable read, serializable"
                )))
            }
        }
    }
    match req.read_only {
        Some(true) => sql.push_str(" READ ONLY"),
        Some(false) => sql.push_str(" READ WRITE"),
        None => {}
    }
    let conn = up.checkout().await?;
    if let Err(e) = conn.client.batch_execute(&sql).await {
        let e = Error::from(e);
        if e.is_disconnect() {
            conn.mark_broken();
        }
        return Err(e);
    }
    reply.str_field("command", "BEGIN");
    Ok(Tx {
        up: up.clone(),
        conn,
        maybe_aborted: false,
        ended: false,
    })
}

/// `commit`. A transaction an earlier error aborted is rolled back and answered with
/// `transaction_aborted` (PostgreSQL itself would silently answer COMMIT with ROLLBACK).
pub async fn commit(mut tx: Tx, reply: &mut Reply) -> Result<(), Error> {
    if tx.maybe_aborted {
        // ROLLBACK TO SAVEPOINT can revive a transaction, so ask PostgreSQL whether it is alive.
        if let Err(e) = tx.conn.client.simple_query("SELECT 1").await {
            if e.code() == Some(&SqlState::IN_FAILED_SQL_TRANSACTION) {
                finish(&mut tx, "ROLLBACK").await?;
                return Err(Error::new(
                    Code::TransactionAborted,
                    "the transaction was aborted by an earlier error and has been rolled back",
                ));
            }
            tx.conn.mark_broken();
            return Err(e.into());
        }
    }
    finish(&mut tx, "COMMIT").await?;
    reply.str_field("command", "COMMIT");
    Ok(())
}

/// `rollback`.
pub async fn rollback(mut tx: Tx, reply: &mut Reply) -> Result<(), Error> {
    finish(&mut tx, "ROLLBACK").await?;
    reply.str_field("command", "ROLLBACK");
    Ok(())
}

/// Rolls back the transaction of a client that went away, within a time limit.
pub async fn abandon(mut tx: Tx) {
    let name = tx.up.name().to_string();
    match tokio::time::timeout(ABANDON_LIMIT, finish(&mut tx, "ROLLBACK")).await {
        Ok(Ok(())) => tracing::debug!(upstream = %name, "rolled back an abandoned transaction"),
        Ok(Err(e)) => {
            tracing::warn!(upstream = %name, error = %e, "rollback of an abandoned transaction failed; connection discarded")
        }
        Err(_) => {
            tx.conn.mark_broken();
            tracing::warn!(upstream = %name, "rollback of an abandoned transaction timed out; connection discarded");
        }
    }
}

/// Ends the transaction with `sql` and resets the session before the connection is released.
async fn finish(tx: &mut Tx, sql: &str) -> Result<(), Error> {
    if let Err(e) = tx.conn.client.batch_execute(sql).await {
        let e = Error::from(e);
        if e.from_server() {
            // PostgreSQL ends the transaction when COMMIT fails (serialization failure,
            // deferred constraint); the connection itself is fine once reset.
            tx.conn.reset_session().await?;
            tx.ended = true;
        } else {
            tx.conn.mark_broken();
        }
        return Err(e);
    }
    tx.conn.reset_session().await?;
    tx.ended = true;
    Ok(())
}
