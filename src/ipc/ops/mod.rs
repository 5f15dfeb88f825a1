//! The protocol-1 ops, one file per family, and the runner that gives SQL ops a connection and
//! a time limit.

pub mod pipeline;
pub mod session_ops;
pub mod statements;
pub mod transaction;

use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Code, Error};
use crate::ipc::reply::Reply;
use crate::ipc::request::{Request, OPS};
use crate::pg::burst;
use crate::pg::conn::PgConn;
use crate::pg::exec::{bounded, timeout_error, Bounded};
use crate::upstream::{Lease, Upstream};

pub use transaction::Tx;

/// A protocol-1 op.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Hello,
    Connect,
    ConnectPg,
    Prepare,
    Query,
    Execute,
    Pipeline,
    Batch,
    Begin,
    Commit,
    Rollback,
    Ping,
    Close,
}

impl Op {
    pub fn parse(name: &str) -> Result<Op, Error> {
        Ok(match name {
            "hello" => Op::Hello,
            "connect" => Op::Connect,
            "connect_pg" => Op::ConnectPg,
            "prepare" => Op::Prepare,
            "query" => Op::Query,
            "execute" => Op::Execute,
            "pipeline" => Op::Pipeline,
            "batch" => Op::Batch,
            "begin" => Op::Begin,
            "commit" => Op::Commit,
            "rollback" => Op::Rollback,
            "ping" => Op::Ping,
            "close" => Op::Close,
            other => {
                let shown: String = other.chars().take(64).collect();
                return Err(Error::new(
                    Code::UnknownOp,
                    format!("unknown op \"{shown}\"; ops are: {}", OPS.join(", ")),
                ));
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Hello => "hello",
            Op::Connect => "connect",
            Op::ConnectPg => "connect_pg",
            Op::Prepare => "prepare",
            Op::Query => "query",
            Op::Execute => "execute",
            Op::Pipeline => "pipeline",
            Op::Batch => "batch",
            Op::Begin => "begin",
            Op::Commit => "commit",
            Op::Rollback => "rollback",
            Op::Ping => "ping",
            Op::Close => "close",
        }
    }

    /// Ops that run SQL on an upstream.
    pub fn is_sql(self) -> bool {
        matches!(
            self,
            Op::Prepare | Op::Query | Op::Execute | Op::Pipeline | Op::Batch
        )
    }

    /// Ops that may run concurrently with their neighbours (outside a transaction): they do
    /// not change the session.
    pub fn is_independent(self) -> bool {
        self.is_sql() || self == Op::Ping
    }

    /// Ops allowed before a token-protected session said hello.
    pub fn needs_no_auth(self) -> bool {
        matches!(self, Op::Hello | Op::Ping | Op::Close)
    }
}

/// Whether an autocommit request may run on a connection shared with other requests (an
/// [`crate::upstream::Lease`]), and if so whether its statement can be coalesced with theirs
/// (`pg::coalesce`): `None` for a request that needs a connection of its own. Single
/// statements that leave no session state behind may share. Time limits need an exclusive
/// connection (a cancel request hits whatever the connection runs), and pipelines and batches
/// spread or pipeline on connections of their own.
fn sharing(op: Op, up: &Upstream, req: &Request<'_>) -> Option<bool> {
    if !matches!(op, Op::Query | Op::Execute | Op::Prepare) {
        return None;
    }
    let shares = |class: &crate::sql::Classified| {
        (!class.leaves_session_state).then(|| op != Op::Prepare && burst::eligible(class))
    };
    match (&req.sql, &req.handle) {
        (Some(sql), None) => shares(&crate::sql::classify(sql)),
        (None, Some(handle)) => up
            .catalog
            .peek_by_handle(handle)
            .and_then(|e| shares(&e.class)),
        _ => None,
    }
}

/// Runs a SQL op: on the pinned transaction connection when there is one, else on a connection
/// borrowed from the pool for this request only (shared with other requests when
/// `may_share` allows). `limit` bounds the work on PostgreSQL.
pub async fn run_sql(
    op: Op,
    up: &Arc<Upstream>,
    tx: Option<&mut Tx>,
    req: &Request<'_>,
    limit: Option<Duration>,
    reply: &mut Reply,
) -> Result<(), Error> {
    if op == Op::Prepare && statements::prepare_cached(up, req, reply)? {
        return Ok(());
    }
    let borrowed;
    let leased;
    let share = match (&tx, limit) {
        (None, None) => sharing(op, up, req),
        _ => None,
    };
    let (conn, failed, shared): (&PgConn, _, _) = match tx {
        Some(tx) => {
            if !Arc::ptr_eq(&tx.up, up) {
                return Err(Error::new(Code::Internal, "transaction upstream mismatch"));
            }
            let (conn, failed) = tx.parts();
            (conn, Some(failed), None)
        }
        None if share.is_some() => {
            leased = up.lease(share == Some(true)).await?;
            (&*leased, None, Some(&leased))
        }
        None => {
            borrowed = up.checkout().await?;
            (&*borrowed, None, None)
        }
    };
    let in_tx = failed.is_some();
    let unfinished = Unfinished::new(up, conn, shared);
    // The single-statement ops run inline; the others are boxed, so that the future of every
    // request (`ipc::session`) does not carry room for the largest op's.
    let work = pin!(async {
        match op {
            Op::Query => statements::query(up, conn, in_tx, req, reply, true, shared).await,
            Op::Execute => statements::query(up, conn, in_tx, req, reply, false, shared).await,
            Op::Prepare => Box::pin(statements::prepare(up, conn, req, reply)).await,
            Op::Pipeline => Box::pin(pipeline::pipeline(up, conn, in_tx, req, reply)).await,
            Op::Batch => Box::pin(pipeline::batch(up, conn, in_tx, req, reply)).await,
            _ => Err(Error::new(
                Code::Internal,
                format!("{} is not a SQL op", op.as_str()),
            )),
        }
    });
    let result = match bounded(limit, conn, work).await {
        Bounded::Done(result) => result,
        Bounded::TimedOut { limit, clean } => {
            if !clean {
                conn.mark_broken();
            }
            Err(timeout_error(limit))
        }
    };
    unfinished.done();
    if let (Err(e), Some(failed)) = (&result, failed) {
        // Any error PostgreSQL saw inside a transaction may have aborted it; commit checks.
        if e.from_server() || e.code() == Code::Timeout.as_str() {
            *failed = true;
        }
    }
    if result.is_err() {
        up.count_error();
    }
    result
}

/// Guards a request's work on its connection. Dropped while armed, the request was abandoned
/// half-way — its client left, or the shutdown grace period ended — and PostgreSQL may still be
/// running its statement: the connection is marked abandoned (the pool discards it) and the
/// statement is cancelled, at once on a connection of its own, or when the last request sharing
/// the connection has let go of it (a cancel hits whatever the connection runs). A request on
/// a shared connection that only waits abandons nothing (`upstream::Lease::is_waiting`): its
/// statement is in a coalescing queue, whose runner drops it or finishes the group it is in
/// (`pg::coalesce`), or is being prepared.
pub(super) struct Unfinished<'a> {
    up: &'a Upstream,
    conn: &'a PgConn,
    shared: Option<&'a Lease>,
    armed: bool,
}

impl<'a> Unfinished<'a> {
    /// Armed until [`Unfinished::done`]; `shared` when `conn` is a lease other requests use too.
    pub(super) fn new(up: &'a Upstream, conn: &'a PgConn, shared: Option<&'a Lease>) -> Self {
        Unfinished {
            up,
            conn,
            shared,
            armed: true,
        }
    }

    /// The work ended (well or not): nothing to cancel.
    pub(super) fn done(mut self) {
        self.armed = false;
    }
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if !self.armed || self.shared.is_some_and(Lease::is_waiting) {
            return;
        }
        tracing::debug!("request abandoned before its work ended; cancelling it in PostgreSQL");
        self.conn.abandon();
        if self.shared.is_none() {
            self.up.spawn(self.conn.cancel_in_background());
        }
    }
}
