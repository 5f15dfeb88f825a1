//! Grouped pipelines: many executions of one statement with one Sync per group of statements
//! instead of one per statement — a read-only statement outside a transaction, or any statement
//! inside an `atomic` pipeline's own transaction.
//!
//! tokio-postgres ends every query with a Sync, and each Sync costs PostgreSQL a transaction
//! commit plus a flush of its output (a send, and a wakeup of whoever reads it). For a pipeline
//! of a small read-only statement that is close to half of the server's CPU per query. Here the
//! daemon borrows the connection's socket (`pg::socket`) and writes the Bind/Execute messages
//! itself, with one Sync per [`GROUP`] statements; rows come back as raw DataRow messages that
//! are encoded straight to JSON later.
//!
//! Invariants that keep the answers identical to a Sync per statement (outside a transaction;
//! inside one, see [`Grouping::InTransaction`]):
//! - Each group first makes its implicit transaction read-only
//!   (`set_config('transaction_read_only', 'on', true)`), so nothing a statement does can be
//!   undone by a neighbour's failure: a statement that would write fails instead.
//! - A statement that fails inside a group, and those PostgreSQL then skipped up to the Sync,
//!   are run again one by one through tokio-postgres, which gives them exactly the semantics
//!   (and errors) of the ungrouped path. A statement the server cancelled itself
//!   (`statement_timeout`, `57014`) is not run again: that error is its answer. When the daemon
//!   cancelled the request (its `timeout_ms` is up), the burst ends at once: every statement not
//!   yet answered reports the timeout, and the connection is dropped with what it still had
//!   to send.
//! - The socket is borrowed only while tokio-postgres has nothing in flight (`pg::socket`
//!   follows its requests and answers; when something is in flight, one round trip behind it
//!   settles the connection first, a few times at most before the statements run the ordinary
//!   way). If the burst is abandoned half-way the socket is poisoned (tokio-postgres' own
//!   requests on it fail instead of reading the rest of the burst's answers) and the pool
//!   discards the connection.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;

use bytes::{BufMut, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use postgres_protocol::IsNull;
use tokio::io::AsyncWriteExt;
use tokio_postgres::{Column, Statement};

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::catalog::Entry;
use crate::error::{Code, Error, ServerError};
use crate::pg::by_column::ColumnWriter;
use crate::pg::conn::PgConn;
use crate::pg::exec::{mark_broken_on_disconnect, run_statements, Outcome};
use crate::pg::socket::Borrowed;
use crate::sql::Classified;
use crate::upstream::GroupedCounters;
use crate::values::TextParam;

/// Statements per Sync. Past a few hundred the server's saving is flat, while a failure costs
/// re-running the rest of its group.
pub const GROUP: usize = 256;

/// Below this many statements on one connection the settling round trip costs more than
/// grouping saves.
pub const MIN_STATEMENTS: usize = 32;

const READ_ONLY: &str = "SELECT set_config('transaction_read_only', 'on', true)";

/// SQLSTATE of a statement cancelled by a cancel request.
const QUERY_CANCELED: &str = "57014";

/// How a burst's groups relate to transactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grouping {
    /// Outside a transaction: each group is its own read-only implicit transaction, and a
    /// statement that fails (or is skipped) in a group runs again on its own.
    ReadOnly,
    /// Inside an `atomic` pipeline's transaction, any statement: the first failure aborts the
    /// transaction, so it is the answer and nothing runs again.
    InTransaction,
}

/// Whether a pipeline of this statement may be grouped: it must read (a statement that turns
/// out to write only costs a fallback) and leave no session state behind.
pub fn eligible(class: &Classified) -> bool {
    matches!(
        class.verb.as_str(),
        "SELECT" | "VALUES" | "TABLE" | "WITH" | "SHOW"
    ) && !class.leaves_session_state
        && !class.transaction_control
}

/// What a burst keeps of each statement's rows.
#[derive(Clone, Copy)]
pub enum Rows<'a> {
    /// Only how many there were.
    Skip,
    /// PostgreSQL's DataRow messages, written as JSON later.
    Keep,
    /// Written by column as they arrive (`pg::by_column`); every statement of the burst must
    /// have these columns.
    ByColumn(&'a [Column]),
}

impl Rows<'_> {
    fn kept(self) -> bool {
        !matches!(self, Rows::Skip)
    }
}

/// One execution in a burst: a catalogued statement, tokio-postgres' copy of it on the
/// burst's connection, and its parameters.
#[derive(Clone, Copy)]
pub struct Item<'a> {
    pub entry: &'a Arc<Entry>,
    pub stmt: &'a Statement,
    pub params: &'a [TextParam],
}

/// Runs `stmt` once per parameter list on `conn`, grouped; answers in order. `stmt` must be
/// prepared on `conn`, and the caller must hold `conn` alone: outside a transaction for
/// [`Grouping::ReadOnly`], inside the atomic pipeline's transaction for the other.
pub async fn run(
    conn: &PgConn,
    entry: &Arc<Entry>,
    stmt: &Statement,
    params: &[Vec<TextParam>],
    rows: Rows<'_>,
    counters: &GroupedCounters,
    grouping: Grouping,
) -> Vec<Result<Outcome, Error>> {
    let items: Vec<Item<'_>> = params
        .iter()
        .map(|p| Item {
            entry,
            stmt,
            params: p,
        })
        .collect();
    run_items(conn, &items, rows, counters, grouping).await
}

/// Runs each item once on `conn`, grouped; answers in order. Every item's statement must be
/// prepared on `conn` through tokio-postgres, and the caller must hold `conn` as for [`run`]
/// (statements of different clients sharing a connection qualify for
/// [`Grouping::ReadOnly`] when each is [`eligible`]).
pub async fn run_items(
    conn: &PgConn,
    items: &[Item<'_>],
    rows: Rows<'_>,
    counters: &GroupedCounters,
    grouping: Grouping,
) -> Vec<Result<Outcome, Error>> {
    if items.is_empty() {
        return Vec::new();
    }
    let keep_rows = rows.kept();
    let mut slots = match run_grouped(conn, items, rows, grouping).await {
        Ok(Some(slots)) => {
            counters
                .statements
                .fetch_add(items.len() as u64, Ordering::Relaxed);
            slots
        }
        // The connection never fell idle (requests sharing it kept it busy).
        Ok(None) => return run_ungrouped(conn, items, keep_rows).await,
        Err(e) => {
            conn.mark_broken();
            let message = e.to_string();
            return items
                .iter()
                .map(|_| Err(Error::new(Code::UpstreamUnavailable, message.clone())))
                .collect();
        }
    };
    let redo: Vec<usize> = (0..slots.len())
        .filter(|&i| matches!(slots[i], Slot::Redo))
        .collect();
    if !redo.is_empty() {
        counters
            .reruns
            .fetch_add(redo.len() as u64, Ordering::Relaxed);
        tracing::debug!(
            statements = redo.len(),
            "running statements of a grouped pipeline again one by one"
        );
        let again = run_statements(
            &conn.client,
            redo.iter().map(|&i| (items[i].stmt, items[i].params)),
            keep_rows,
        )
        .await;
        for (i, result) in redo.into_iter().zip(again) {
            slots[i] = Slot::Done(result);
        }
    }
    slots
        .into_iter()
        .map(|slot| match slot {
            Slot::Done(result) => result,
            Slot::Pending | Slot::Redo => Err(Error::new(
                Code::Internal,
                "a grouped pipeline lost track of a statement",
            )),
        })
        .collect()
}

/// One statement's answer as the burst goes.
enum Slot {
    Pending,
    /// Skipped or failed inside its group: to be run again on its own.
    Redo,
    Done(Result<Outcome, Error>),
}

/// Marks the connection broken unless the burst finished cleanly.
struct Settled<'a> {
    conn: &'a PgConn,
    clean: bool,
}

impl Drop for Settled<'_> {
    fn drop(&mut self) {
        if !self.clean {
            self.conn.mark_broken();
        }
    }
}

/// Runs each item once through tokio-postgres, pipelined, each with its own Sync; answers in
/// order.
pub async fn run_ungrouped(
    conn: &PgConn,
    items: &[Item<'_>],
    keep_rows: bool,
) -> Vec<Result<Outcome, Error>> {
    let results = run_statements(
        &conn.client,
        items.iter().map(|i| (i.stmt, i.params)),
        keep_rows,
    )
    .await;
    mark_broken_on_disconnect(conn, &results);
    results
}

/// A statement this burst prepares under its own name, and what its Describe said.
struct Prepared<'a> {
    entry: &'a Arc<Entry>,
    stmt: &'a Statement,
    name: String,
    /// Whether the server described it as tokio-postgres' copy is (None: not answered yet,
    /// or the Parse failed).
    described: Option<bool>,
}

/// Settling round trips a burst waits through for the connection to fall idle before it runs
/// its statements the ordinary way instead.
const SETTLE_ATTEMPTS: usize = 4;

/// The burst itself; `None` when the socket could not be borrowed (see [`SETTLE_ATTEMPTS`]).
async fn run_grouped(
    conn: &PgConn,
    items: &[Item<'_>],
    rows: Rows<'_>,
    grouping: Grouping,
) -> Result<Option<Vec<Slot>>, Error> {
    let mut socket = conn.socket.borrow_if_idle();
    for _ in 0..SETTLE_ATTEMPTS {
        if socket.is_some() {
            break;
        }
        // tokio-postgres still has a request in flight: a round trip behind it settles the
        // connection. Requests sharing the connection may start new ones meanwhile, so the
        // check is repeated; the borrow itself is taken only while nothing is in flight.
        conn.client.simple_query("").await?;
        socket = conn.socket.borrow_if_idle();
    }
    let Some(socket) = socket else {
        return Ok(None);
    };
    let mut settled = Settled { conn, clean: false };
    // Each item's statement name; the ones not yet prepared on the server are parsed and
    // described first, in order.
    let mut prepared: Vec<Prepared<'_>> = Vec::new();
    let mut names: Vec<String> = Vec::with_capacity(items.len());
    let to_close = {
        let mut burst = conn.burst_statements();
        let mut last: Option<(u64, String)> = None;
        for item in items {
            let id = item.entry.id;
            let name = match &last {
                Some((last_id, name)) if *last_id == id => name.clone(),
                _ => match prepared.iter().find(|p| p.entry.id == id) {
                    Some(p) => p.name.clone(),
                    None => {
                        let (name, parse) = burst.name_for(item.entry);
                        if parse {
                            prepared.push(Prepared {
                                entry: item.entry,
                                stmt: item.stmt,
                                name: name.clone(),
                                described: None,
                            });
                        }
                        name
                    }
                },
            };
            last = Some((id, name.clone()));
            names.push(name);
        }
        std::mem::take(&mut burst.to_close)
    };
    let mut out = BytesMut::new();
    for closing in &to_close {
        frontend::close(b'S', closing, &mut out).map_err(protocol)?;
    }
    for p in &prepared {
        let types = p.stmt.params().iter().map(|t| t.oid());
        frontend::parse(&p.name, &p.entry.sql, types, &mut out).map_err(protocol)?;
        frontend::describe(b'S', &p.name, &mut out).map_err(protocol)?;
    }
    let params: Vec<&[TextParam]> = items.iter().map(|i| i.params).collect();
    encode(&mut out, &params, &names, grouping == Grouping::ReadOnly)?;
    let mut reader = Reader::new(conn, items, prepared, rows, grouping);
    let mut written = false;
    {
        // Reading goes on while writing, so neither side blocks on a full socket buffer; a
        // cancelled burst stops at once, with what it had still to write.
        let write = async {
            (&socket).write_all(&out).await.map_err(lost)?;
            (&socket).flush().await.map_err(lost)
        };
        let read = reader.read_all(&socket);
        tokio::pin!(write, read);
        loop {
            tokio::select! {
                result = &mut write, if !written => {
                    result?;
                    written = true;
                }
                result = &mut read => {
                    result?;
                    break;
                }
            }
        }
    }
    if !written && !reader.aborted {
        return Err(protocol("answers came before the burst was written"));
    }
    if reader.aborted || reader.unfinished {
        // The server still has answers to send (a cancelled burst), or part of an
        // asynchronous message is still in the socket: the answers read stand, the
        // connection does not. The socket stays unreleased (poisoned) and `settled`
        // discards the connection.
        tracing::debug!(
            cancelled = reader.aborted,
            "a grouped burst ended before its socket was drained; discarding the connection"
        );
    } else {
        socket.release();
        settled.clean = true;
    }

    let mut burst = conn.burst_statements();
    let misshapen = reader.prepared.iter().any(|p| p.described == Some(false));
    for p in reader.prepared {
        match p.described {
            // Prepared and shaped as tokio-postgres' copy: keep it for the next bursts.
            Some(true) if !reader.stale => burst.adopt(p.entry, p.name, conn.statement_limit()),
            // Prepared, but unusable: close it next time.
            Some(_) => burst.to_close.push(p.name),
            None => {}
        }
    }
    if reader.stale {
        for item in items {
            burst.forget(item.entry.id);
        }
    }
    drop(burst);
    let mut slots = reader.slots;
    if reader.aborted {
        // Nothing runs again on a connection whose request was cancelled.
        for slot in &mut slots {
            if matches!(slot, Slot::Redo | Slot::Pending) {
                *slot = Slot::Done(Err(Error::new(
                    Code::Timeout,
                    "not run: the request was cancelled when its time was up",
                )));
            }
        }
    } else if misshapen || reader.stale {
        // Rows of another shape than the statement's columns: run everything the usual way
        // (inside a transaction, PostgreSQL has aborted it already).
        for slot in &mut slots {
            *slot = match grouping {
                Grouping::ReadOnly => Slot::Redo,
                Grouping::InTransaction if matches!(slot, Slot::Done(Err(_))) => continue,
                Grouping::InTransaction => Slot::Done(Err(Error::new(
                    Code::TransactionAborted,
                    "the statement changed shape during the pipeline (schema change): run it again",
                ))),
            };
        }
    }
    Ok(Some(slots))
}

fn lost(e: io::Error) -> Error {
    Error::new(
        Code::UpstreamUnavailable,
        format!("lost the connection to PostgreSQL during a pipeline: {e}"),
    )
}

fn protocol(what: impl std::fmt::Display) -> Error {
    Error::new(
        Code::Internal,
        format!("unexpected answer from PostgreSQL during a grouped pipeline: {what}"),
    )
}

/// Every group: make it read-only (when asked), Bind/Execute each statement (`names[i]` names
/// the statement `params[i]` are for), Sync.
fn encode(
    buf: &mut BytesMut,
    params: &[&[TextParam]],
    names: &[String],
    read_only: bool,
) -> Result<(), Error> {
    let per = params.first().map_or(0, |p| p.iter().map(param_len).sum()) + 48;
    buf.reserve(params.len() * per + params.len() / GROUP * 96 + 96);
    for (group, group_names) in params.chunks(GROUP).zip(names.chunks(GROUP)) {
        if read_only {
            frontend::parse("", READ_ONLY, std::iter::empty(), buf).map_err(protocol)?;
            bind(buf, "", &[], false)?;
            frontend::execute("", 0, buf).map_err(protocol)?;
        }
        for (p, name) in group.iter().zip(group_names) {
            bind(buf, name, p, true)?;
            frontend::execute("", 0, buf).map_err(protocol)?;
        }
        frontend::sync(buf);
    }
    Ok(())
}

fn param_len(p: &TextParam) -> usize {
    p.as_str().map_or(0, str::len) + 4
}

/// Bind to the unnamed portal: text parameters, binary results (as tokio-postgres asks).
fn bind(buf: &mut BytesMut, stmt: &str, params: &[TextParam], binary: bool) -> Result<(), Error> {
    let result_formats: &[i16] = if binary { &[1] } else { &[] };
    let param_formats: &[i16] = if params.is_empty() { &[] } else { &[0] };
    frontend::bind(
        "",
        stmt,
        param_formats.iter().copied(),
        params,
        |p, out| match p.as_str() {
            None => Ok(IsNull::Yes),
            Some(text) => {
                out.put_slice(text.as_bytes());
                Ok(IsNull::No)
            }
        },
        result_formats.iter().copied(),
        buf,
    )
    .map_err(|e| match e {
        frontend::BindError::Conversion(e) => protocol(e),
        frontend::BindError::Serialization(e) => protocol(e),
    })
}

/// Follows PostgreSQL's answers group by group and fills the slots.
struct Reader<'a> {
    grouping: Grouping,
    /// The statements this burst prepares, described in this order.
    prepared: Vec<Prepared<'a>>,
    /// How many of them have been described.
    described: usize,
    /// PostgreSQL said the prepared statement no longer matches the schema, or is gone.
    stale: bool,
    slots: Vec<Slot>,
    keep_rows: bool,
    /// Writes the rows by column as they arrive, instead of keeping them in `rows`.
    by_column: Option<ColumnWriter<'a>>,
    /// The next statement to be answered, and the end of its group.
    next: usize,
    group_end: usize,
    /// The group's read-only switch has answered.
    ready: bool,
    /// Bytes of a message were left after the last ReadyForQuery.
    unfinished: bool,
    /// The connection, to tell the daemon's own cancel (the request's time is up, which ends
    /// the burst) from a server-side `statement_timeout` (which fails one statement).
    conn: &'a PgConn,
    /// The burst ended before its last answer: the request was cancelled.
    aborted: bool,
    rows: Vec<postgres_protocol::message::backend::DataRowBody>,
}

impl<'a> Reader<'a> {
    fn new(
        conn: &'a PgConn,
        items: &[Item<'_>],
        prepared: Vec<Prepared<'a>>,
        rows: Rows<'a>,
        grouping: Grouping,
    ) -> Reader<'a> {
        let n = items.len();
        let mut slots = Vec::with_capacity(n);
        slots.resize_with(n, || Slot::Pending);
        Reader {
            grouping,
            prepared,
            described: 0,
            stale: false,
            slots,
            keep_rows: rows.kept(),
            by_column: match rows {
                Rows::ByColumn(columns) => Some(ColumnWriter::new(columns)),
                Rows::Skip | Rows::Keep => None,
            },
            next: 0,
            group_end: n.min(GROUP),
            ready: grouping == Grouping::InTransaction,
            unfinished: false,
            conn,
            aborted: false,
            rows: Vec::new(),
        }
    }

    async fn read_all(&mut self, socket: &Borrowed<'_>) -> Result<(), Error> {
        let mut buf = BytesMut::with_capacity(64 * 1024);
        loop {
            while let Some(message) = Message::parse(&mut buf).map_err(protocol)? {
                if self.on_message(message)? {
                    if self.aborted {
                        return Ok(());
                    }
                    return self.after_end(&mut buf);
                }
            }
            if buf.capacity() - buf.len() < 8 * 1024 {
                buf.reserve(64 * 1024);
            }
            let mut io = socket;
            let n = poll_fn(|cx| tokio_util::io::poll_read_buf(Pin::new(&mut io), cx, &mut buf))
                .await
                .map_err(lost)?;
            if n == 0 {
                return Err(lost(io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }

    /// What was read past the last ReadyForQuery: only asynchronous messages may be there
    /// (dropped, as tokio-postgres drops them when idle).
    fn after_end(&mut self, buf: &mut BytesMut) -> Result<(), Error> {
        while let Some(message) = Message::parse(buf).map_err(protocol)? {
            match message {
                Message::NoticeResponse(_)
                | Message::ParameterStatus(_)
                | Message::NotificationResponse(_) => {}
                _ => return Err(protocol("a message after the last answer")),
            }
        }
        self.unfinished = !buf.is_empty();
        Ok(())
    }

    /// Takes one message; true once the last group is over.
    fn on_message(&mut self, message: Message) -> Result<bool, Error> {
        match message {
            Message::RowDescription(body) => {
                let p = self.describing()?;
                let mut oids = Vec::with_capacity(p.stmt.columns().len());
                let mut fields = body.fields();
                while let Some(field) = fields.next().map_err(protocol)? {
                    oids.push(field.type_oid());
                }
                let expected = p.stmt.columns().iter().map(|c| c.type_().oid());
                p.described = Some(oids.iter().copied().eq(expected));
            }
            Message::NoData => {
                let p = self.describing()?;
                p.described = Some(p.stmt.columns().is_empty());
            }
            Message::ParseComplete
            | Message::BindComplete
            | Message::CloseComplete
            | Message::ParameterDescription(_)
            | Message::NoticeResponse(_)
            | Message::ParameterStatus(_)
            | Message::NotificationResponse(_) => {}
            Message::DataRow(row) => {
                if self.ready && self.keep_rows {
                    match &mut self.by_column {
                        Some(writer) => writer.push(&row),
                        None => self.rows.push(row),
                    }
                }
            }
            Message::CommandComplete(body) => {
                let tag = body.tag().map_err(protocol)?;
                let affected = tag
                    .rsplit(' ')
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                self.complete(affected)?;
            }
            Message::EmptyQueryResponse => self.complete(0)?,
            Message::ErrorResponse(body) => {
                self.forget_rows();
                let error = ServerError::parse(&body);
                if self.described < self.prepared.len() {
                    // A Parse failed: PostgreSQL skips everything up to the first Sync, the
                    // other Describes included, so none of these statements is kept.
                    self.described = self.prepared.len();
                }
                self.stale |= error.is_stale_statement();
                if self.grouping == Grouping::InTransaction {
                    // The transaction is aborted: this is the answer, and PostgreSQL skips
                    // the rest of the group (later groups fail with 25P02 on their own).
                    if self.next < self.group_end {
                        self.slots[self.next] = Slot::Done(Err(Error::Server(Box::new(error))));
                        self.next += 1;
                    }
                    for slot in &mut self.slots[self.next..self.group_end] {
                        *slot = Slot::Done(Err(Error::new(
                            Code::TransactionAborted,
                            "not run: an earlier statement of the transaction failed",
                        )));
                    }
                    self.next = self.group_end;
                    return Ok(false);
                }
                if error.code == QUERY_CANCELED && self.conn.cancel_sent() {
                    // The request's time is up: nothing more runs. The groups already sent
                    // are not waited for; the socket is dropped with them.
                    for slot in &mut self.slots[self.next..] {
                        *slot = Slot::Done(Err(Error::new(
                            Code::Timeout,
                            "not run: the request was cancelled when its time was up",
                        )));
                    }
                    self.aborted = true;
                    return Ok(true);
                }
                if self.ready && self.next < self.group_end && error.code == QUERY_CANCELED {
                    // Cancelled by the server itself (`statement_timeout`): that statement's
                    // answer, exactly as it would be alone; the rest of the group runs again.
                    self.slots[self.next] = Slot::Done(Err(Error::Server(Box::new(error))));
                    self.next += 1;
                }
                // PostgreSQL skips everything up to the Sync.
                for slot in &mut self.slots[self.next..self.group_end] {
                    *slot = Slot::Redo;
                }
                self.next = self.group_end;
            }
            Message::ReadyForQuery(_) => {
                if self.next != self.group_end {
                    return Err(protocol("ReadyForQuery before the group was answered"));
                }
                if self.next == self.slots.len() {
                    return Ok(true);
                }
                self.group_end = (self.next + GROUP).min(self.slots.len());
                self.ready = self.grouping == Grouping::InTransaction;
            }
            _ => return Err(protocol("a message the pipeline did not ask for")),
        }
        Ok(false)
    }

    /// The prepared statement whose Describe answers now.
    fn describing(&mut self) -> Result<&mut Prepared<'a>, Error> {
        let i = self.described;
        self.described += 1;
        self.prepared
            .get_mut(i)
            .ok_or_else(|| protocol("a description nobody asked for"))
    }

    fn complete(&mut self, affected: u64) -> Result<(), Error> {
        if !self.ready {
            self.ready = true;
            self.forget_rows();
            return Ok(());
        }
        if self.next >= self.group_end {
            return Err(protocol("more results than statements"));
        }
        let outcome = match &mut self.by_column {
            Some(writer) => writer.finish().map(|written| Outcome {
                by_column: Some(written),
                affected,
                ..Outcome::default()
            }),
            None => Ok(Outcome {
                wire_rows: std::mem::take(&mut self.rows),
                affected,
                ..Outcome::default()
            }),
        };
        self.slots[self.next] = Slot::Done(outcome);
        self.next += 1;
        Ok(())
    }

    /// Drops the rows read for the statement being answered (it failed, or they were the
    /// read-only switch's).
    fn forget_rows(&mut self) {
        self.rows.clear();
        if let Some(writer) = &mut self.by_column {
            writer.discard();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(json: &str) -> Box<serde_json::value::RawValue> {
        serde_json::value::RawValue::from_string(json.to_string()).unwrap()
    }

    fn classified(sql: &str) -> Classified {
        crate::sql::classify(sql)
    }

    #[test]
    fn only_reads_without_session_effects_are_grouped() {
        assert!(eligible(&classified("SELECT id FROM users LIMIT $1")));
        assert!(eligible(&classified(
            "with t as (select 1) select * from t"
        )));
        assert!(!eligible(&classified("INSERT INTO t VALUES ($1)")));
        assert!(!eligible(&classified("UPDATE t SET x = $1")));
        assert!(!eligible(&classified("SET search_path = x")));
    }

    #[test]
    fn encode_sends_one_sync_per_group() {
        let params: Vec<Vec<TextParam>> = (0..(GROUP + 3))
            .map(|i| {
                vec![crate::values::param_text(
                    &raw(&i.to_string()),
                    &tokio_postgres::types::Type::INT4,
                )
                .unwrap()]
            })
            .collect();
        let params: Vec<&[TextParam]> = params.iter().map(Vec::as_slice).collect();
        let names = vec!["s1".to_string(); params.len()];
        let mut buf = BytesMut::new();
        encode(&mut buf, &params, &names, true).unwrap();
        let mut counts = std::collections::HashMap::new();
        let mut at = 0;
        while at < buf.len() {
            let len = u32::from_be_bytes(buf[at + 1..at + 5].try_into().unwrap()) as usize;
            *counts.entry(buf[at]).or_insert(0) += 1;
            at += 1 + len;
        }
        assert_eq!(counts[&b'S'], 2, "one Sync per group");
        assert_eq!(counts[&b'P'], 2, "one read-only switch per group");
        assert_eq!(counts[&b'B'], GROUP + 3 + 2);
        assert_eq!(counts[&b'E'], GROUP + 3 + 2);
    }
}
