//! Running statements on one PostgreSQL connection and writing their results as JSON.
//!
//! Every statement goes through the upstream's catalogue (by SQL text or by handle) and the
//! connection's lazily prepared copy. Many executions on one connection are *pipelined*: all
//! requests are issued before the first answer is awaited (tokio-postgres sends concurrently
//! polled queries back to back), each with its own Sync, so outside a transaction they are
//! independent. Rows are encoded from PostgreSQL's binary values straight into the response
//! buffer — no intermediate JSON tree.

use std::pin::{pin, Pin};
use std::sync::Arc;
use std::time::Duration;

use fallible_iterator::FallibleIterator;
use futures_util::stream::{FuturesOrdered, StreamExt, TryStreamExt};
use postgres_protocol::message::backend::DataRowBody;
use serde_json::value::RawValue;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, Column, Row, Statement};

use crate::catalog::{Entry, Shape};
use crate::error::{Code, Error};
use crate::ipc::request::Target;
use crate::pg::burst;
use crate::pg::by_column::ByColumn;
use crate::pg::coalesce::{self, Work};
use crate::pg::conn::PgConn;
use crate::upstream::{Lease, Upstream};
use crate::values::{param_text, type_name, write_json_str, write_value, RawCell, TextParam};

/// How long a cancelled statement may take to wind down before its connection is discarded.
const CANCEL_GRACE: Duration = Duration::from_secs(5);

/// How often the cancel is sent again while the cancelled work goes on. PostgreSQL ignores a
/// cancel that reaches a backend waiting for its next message (a burst not written yet, the
/// gap between two statements), so one cancel can miss a request that then runs on.
const CANCEL_RESEND: Duration = Duration::from_millis(250);

/// The catalogue entry a request names, if the catalogue has it. A handle that is not there is
/// an error; SQL that is not there is `None` (it will be prepared).
pub fn lookup(up: &Upstream, target: Target<'_>) -> Result<Option<Arc<Entry>>, Error> {
    match target {
        Target::Handle(h) => up.catalog.get_by_handle(h).map(Some).ok_or_else(|| {
            Error::new(
                Code::UnknownHandle,
                format!(
                    "unknown statement handle \"{h}\" for upstream \"{}\" (evicted, from another upstream, or from before a daemon restart): prepare the SQL again",
                    up.name()
                ),
            )
        }),
        Target::Sql(sql) => match up.catalog.get_by_sql(sql) {
            // Catalogued statements were checked when they were prepared.
            Some(entry) => Ok(Some(entry)),
            None => refuse_transaction_control(sql).map(|()| None),
        },
    }
}

fn refuse_transaction_control(sql: &str) -> Result<(), Error> {
    let class = crate::sql::classify(sql);
    if class.transaction_control {
        return Err(Error::bad_request(format!(
            "{} is transaction control: use the begin, commit and rollback ops so the daemon keeps the transaction on one connection",
            class.verb
        )));
    }
    Ok(())
}

/// The catalogue entry and this connection's prepared statement for `target`.
pub async fn prepare_on(
    up: &Upstream,
    conn: &PgConn,
    target: Target<'_>,
) -> Result<(Arc<Entry>, Statement), Error> {
    match (lookup(up, target)?, target) {
        (Some(entry), _) => {
            let stmt = conn.statement(&entry).await?;
            Ok((entry, stmt))
        }
        (None, Target::Sql(sql)) => {
            let stmt = Box::pin(conn.client.prepare(sql)).await?;
            let entry = up.catalog.insert(sql, Shape::of(&stmt));
            conn.adopt(&entry, stmt.clone());
            Ok((entry, stmt))
        }
        (None, Target::Handle(_)) => {
            Err(Error::new(Code::Internal, "handle lookup returned nothing"))
        }
    }
}

/// Turns JSON parameters into text parameters for `stmt`.
pub fn convert_params(stmt: &Statement, raw: &[&RawValue]) -> Result<Vec<TextParam>, Error> {
    let types = stmt.params();
    if types.len() != raw.len() {
        return Err(Error::new(
            Code::BadParameter,
            format!(
                "the statement takes {} parameter{}, got {}",
                types.len(),
                if types.len() == 1 { "" } else { "s" },
                raw.len()
            ),
        ));
    }
    types
        .iter()
        .zip(raw)
        .enumerate()
        .map(|(i, (ty, value))| {
            param_text(value, ty).map_err(|e| {
                Error::new(
                    Code::BadParameter,
                    format!("${} ({}): {e}", i + 1, type_name(ty)),
                )
            })
        })
        .collect()
}

/// Rows (unless not kept) and the affected-row count of one execution. Rows come either
/// decoded by tokio-postgres or, from a grouped pipeline (`pg::burst`), as PostgreSQL's raw
/// DataRow messages or already written by column (`pg::by_column`).
#[derive(Debug, Default)]
pub struct Outcome {
    pub rows: Vec<Row>,
    pub wire_rows: Vec<DataRowBody>,
    /// The rows already written as JSON by column (a grouped `column_major` pipeline); then
    /// `rows` and `wire_rows` are empty.
    pub by_column: Option<ByColumn>,
    pub affected: u64,
}

/// Runs one statement once through tokio-postgres.
pub async fn run_outcome(
    client: &Client,
    stmt: &Statement,
    params: &[TextParam],
    keep_rows: bool,
) -> Result<Outcome, Error> {
    run_raw(client, stmt, params, keep_rows)
        .await
        .map_err(Error::from)
}

async fn run_raw(
    client: &Client,
    stmt: &Statement,
    params: &[TextParam],
    keep_rows: bool,
) -> Result<Outcome, tokio_postgres::Error> {
    let stream = client.query_raw(stmt, params.iter()).await?;
    let mut stream = pin!(stream);
    let mut rows = Vec::new();
    let mut seen = 0u64;
    while let Some(row) = stream.try_next().await? {
        seen += 1;
        if keep_rows {
            rows.push(row);
        }
    }
    let affected = stream.rows_affected().unwrap_or(seen);
    Ok(Outcome {
        rows,
        affected,
        ..Outcome::default()
    })
}

/// Runs one statement once. Outside a transaction a stale prepared statement (schema change) is
/// prepared again and the statement retried once; inside one, PostgreSQL has already aborted
/// the transaction, so the error is returned (the next use re-prepares). On a connection
/// shared with other requests (`shared`), a read-only statement may run grouped with theirs
/// (`pg::coalesce`).
pub async fn run_one(
    up: &Upstream,
    conn: &PgConn,
    target: Target<'_>,
    params: &[&RawValue],
    keep_rows: bool,
    in_transaction: bool,
    shared: Option<&Lease>,
) -> Result<(Arc<Entry>, Statement, Outcome), Error> {
    let (entry, stmt) = match shared {
        // On a shared connection a request dropped while its statement is prepared abandons
        // nothing (`Lease::is_waiting`).
        Some(lease) => lease.waiting_on(prepare_on(up, conn, target)).await?,
        None => prepare_on(up, conn, target).await?,
    };
    let text = convert_params(&stmt, params)?;
    let first = match shared {
        Some(lease) if !in_transaction && burst::eligible(&entry.class) => {
            let work = Work {
                entry: entry.clone(),
                stmt: stmt.clone(),
                params: text,
                keep_rows,
            };
            coalesce::run(lease, work).await
        }
        _ => run_outcome(&conn.client, &stmt, &text, keep_rows).await,
    };
    match first {
        Ok(outcome) => Ok((entry, stmt, outcome)),
        Err(e) => {
            if !e.is_stale_statement() {
                if e.is_disconnect() {
                    conn.mark_broken();
                }
                return Err(e);
            }
            conn.forget(entry.id);
            if in_transaction {
                return Err(e);
            }
            Box::pin(run_again(conn, entry, params, keep_rows)).await
        }
    }
}

/// `run_one` after its statement went stale (its definition changed): prepares it again and
/// runs it once more. Rare, so boxed: every request's future does not carry room for it.
async fn run_again(
    conn: &PgConn,
    entry: Arc<Entry>,
    params: &[&RawValue],
    keep_rows: bool,
) -> Result<(Arc<Entry>, Statement, Outcome), Error> {
    tracing::debug!(handle = %entry.handle, "statement went stale; preparing again");
    let stmt = conn.statement(&entry).await?;
    entry.set_shape(Shape::of(&stmt));
    let text = convert_params(&stmt, params)?;
    let outcome = run_raw(&conn.client, &stmt, &text, keep_rows)
        .await
        .map_err(|e| after_failure(conn, e))?;
    Ok((entry, stmt, outcome))
}

fn after_failure(conn: &PgConn, e: tokio_postgres::Error) -> Error {
    let e = Error::from(e);
    if e.is_disconnect() {
        conn.mark_broken();
    }
    e
}

/// Marks `conn` broken when any of `results` lost the connection, so the pool discards it.
pub fn mark_broken_on_disconnect(conn: &PgConn, results: &[Result<Outcome, Error>]) {
    if results
        .iter()
        .any(|r| r.as_ref().err().is_some_and(Error::is_disconnect))
    {
        conn.mark_broken();
    }
}

/// Runs `stmt` once per parameter list, pipelined on this connection, answers in order.
pub async fn run_pipelined(
    client: &Client,
    stmt: &Statement,
    params: &[Vec<TextParam>],
    keep_rows: bool,
) -> Vec<Result<Outcome, Error>> {
    run_statements(
        client,
        params.iter().map(|p| (stmt, p.as_slice())),
        keep_rows,
    )
    .await
}

/// Runs statements with their parameters, all issued before the first answer is awaited
/// (pipelined on this connection); answers in order.
pub async fn run_statements<'a>(
    client: &Client,
    work: impl ExactSizeIterator<Item = (&'a Statement, &'a [TextParam])>,
    keep_rows: bool,
) -> Vec<Result<Outcome, Error>> {
    let mut results = Vec::with_capacity(work.len());
    let mut pending: FuturesOrdered<_> = work
        .map(|(stmt, p)| run_outcome(client, stmt, p, keep_rows))
        .collect();
    while let Some(r) = pending.next().await {
        results.push(r);
    }
    results
}

/// Result of running a future under a request timeout.
pub enum Bounded<T> {
    Done(Result<T, Error>),
    /// The timeout expired and the statement was cancelled. `clean` is false when the
    /// connection did not settle within the grace period and must be discarded.
    TimedOut {
        limit: Duration,
        clean: bool,
    },
}

/// Runs `work` (which uses `conn`) with an optional time limit. On expiry a cancel request is
/// sent to PostgreSQL, again every `CANCEL_RESEND` while the work goes on, and the work is
/// allowed to wind down, so the connection is idle again (or known broken) before anyone reuses
/// it. A connection that needed more than one cancel is discarded even when the work wound
/// down: a cancel sent last may still reach it after the next request started.
///
/// `work` comes pinned by the caller: a future passed by value would be stored twice, once as
/// the argument and once as the pinned local.
pub async fn bounded<T>(
    limit: Option<Duration>,
    conn: &PgConn,
    mut work: Pin<&mut impl std::future::Future<Output = Result<T, Error>>>,
) -> Bounded<T> {
    let Some(limit) = limit else {
        return Bounded::Done(work.await);
    };
    match tokio::time::timeout(limit, work.as_mut()).await {
        Ok(result) => Bounded::Done(result),
        // Rare, and its futures (a cancel request connects to PostgreSQL) are large: boxed, so
        // every request's future does not carry room for them.
        Err(_) => Box::pin(cancel_and_settle(limit, conn, work)).await,
    }
}

/// After `bounded`'s limit expired: cancels the statement, again every `CANCEL_RESEND`, until
/// `work` winds down or `CANCEL_GRACE` ends.
async fn cancel_and_settle<T>(
    limit: Duration,
    conn: &PgConn,
    mut work: Pin<&mut impl std::future::Future<Output = Result<T, Error>>>,
) -> Bounded<T> {
    let deadline = tokio::time::Instant::now() + CANCEL_GRACE;
    let mut sent = 0;
    let clean = loop {
        if let Err(e) = conn.cancel_query().await {
            tracing::warn!(error = %e.describe(), "could not send a cancel request to PostgreSQL");
        }
        sent += 1;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if tokio::time::timeout(CANCEL_RESEND.min(left), work.as_mut())
            .await
            .is_ok()
        {
            break sent == 1;
        }
        if left <= CANCEL_RESEND {
            break false;
        }
    };
    conn.forget_cancel();
    Bounded::TimedOut { limit, clean }
}

/// The error a timed-out request answers with.
pub fn timeout_error(limit: Duration) -> Error {
    Error::new(
        Code::Timeout,
        format!("request cancelled after {} ms", limit.as_millis()),
    )
}

/// `[{"name":..,"type":..},...]` for result columns.
pub fn write_columns(out: &mut Vec<u8>, columns: &[Column]) {
    write_named_types(out, columns.iter().map(|c| (c.name(), c.type_())));
}

/// `[{"name":..,"type":..}]` from a catalogue shape.
pub fn write_shape_columns(out: &mut Vec<u8>, columns: &[(String, tokio_postgres::types::Type)]) {
    write_named_types(out, columns.iter().map(|(name, ty)| (name.as_str(), ty)));
}

fn write_named_types<'a>(
    out: &mut Vec<u8>,
    columns: impl Iterator<Item = (&'a str, &'a tokio_postgres::types::Type)>,
) {
    out.push(b'[');
    for (i, (name, ty)) in columns.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"name\":");
        write_json_str(out, name);
        out.extend_from_slice(b",\"type\":");
        write_json_str(out, type_name(ty));
        out.push(b'}');
    }
    out.push(b']');
}

/// `[[v, v], [v, v]]` for an outcome's rows, values encoded by column type.
pub fn write_rows(out: &mut Vec<u8>, outcome: &Outcome, columns: &[Column]) -> Result<(), Error> {
    out.push(b'[');
    let mut first = true;
    for_each_row(outcome, columns.len(), |cells| {
        if !std::mem::take(&mut first) {
            out.push(b',');
        }
        out.push(b'[');
        for (i, (col, cell)) in columns.iter().zip(cells).enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_cell(out, col, *cell)?;
        }
        out.push(b']');
        Ok(())
    })?;
    out.push(b']');
    Ok(())
}

/// Hands `visit` the values of each row of `outcome` in order (decoded rows first, then wire
/// rows), `width` of them (a row with another number of values is an error), in a buffer
/// reused from row to row.
pub(crate) fn for_each_row<'a>(
    outcome: &'a Outcome,
    width: usize,
    mut visit: impl FnMut(&[Option<&'a [u8]>]) -> Result<(), Error>,
) -> Result<(), Error> {
    if outcome.by_column.is_some() {
        return Err(Error::new(
            Code::Internal,
            "the rows were written by column as they arrived",
        ));
    }
    let uneven = |n: usize| uneven_row(n, width);
    let mut cells: Vec<Option<&'a [u8]>> = Vec::with_capacity(width);
    for row in &outcome.rows {
        if row.len() != width {
            return Err(uneven(row.len()));
        }
        cells.clear();
        for (i, col) in row.columns().iter().enumerate() {
            let cell: RawCell<'a> = row.try_get(i).map_err(|e| {
                Error::new(
                    Code::Internal,
                    format!("cannot read column {}: {e}", col.name()),
                )
            })?;
            cells.push(cell.0);
        }
        visit(&cells)?;
    }
    for row in &outcome.wire_rows {
        cells.clear();
        let buf = row.buffer();
        let mut ranges = row.ranges();
        while let Some(range) = ranges.next().map_err(|e| {
            Error::new(
                Code::Internal,
                format!("malformed row from PostgreSQL: {e}"),
            )
        })? {
            cells.push(range.map(|r| &buf[r]));
        }
        if cells.len() != width {
            return Err(uneven(cells.len()));
        }
        visit(&cells)?;
    }
    Ok(())
}

fn write_cell(out: &mut Vec<u8>, col: &Column, cell: Option<&[u8]>) -> Result<(), Error> {
    write_named_cell(out, col.name(), col.type_(), cell)
}

/// One value of column `name` (named in the error when PostgreSQL's bytes are not a `ty`).
pub(crate) fn write_named_cell(
    out: &mut Vec<u8>,
    name: &str,
    ty: &Type,
    cell: Option<&[u8]>,
) -> Result<(), Error> {
    write_value(out, ty, cell).map_err(|e| {
        Error::new(
            Code::Internal,
            format!("cannot encode column \"{name}\" ({}): {e}", type_name(ty)),
        )
    })
}

/// A row of `n` values for a statement of another number of columns.
pub(crate) fn uneven_row(n: usize, columns: usize) -> Error {
    Error::new(
        Code::Internal,
        format!("PostgreSQL sent a row of {n} values for a statement of {columns} columns"),
    )
}

/// `,"columns":..,"rows":..,"command":..,"rows_affected":..` for one query result.
/// `columns_json` is the pre-encoded column list (shared by all results of a pipeline).
pub fn write_query_fields(
    out: &mut Vec<u8>,
    columns_json: &[u8],
    columns: &[Column],
    entry: &Entry,
    outcome: &Outcome,
) -> Result<(), Error> {
    out.extend_from_slice(b"\"columns\":");
    out.extend_from_slice(columns_json);
    out.push(b',');
    write_result_fields(out, columns, entry, outcome)
}

/// `"rows":..,"command":..,"rows_affected":..` — a result without its columns (compact
/// pipelines send the columns once).
pub fn write_result_fields(
    out: &mut Vec<u8>,
    columns: &[Column],
    entry: &Entry,
    outcome: &Outcome,
) -> Result<(), Error> {
    out.extend_from_slice(b"\"rows\":");
    write_rows(out, outcome, columns)?;
    out.extend_from_slice(b",\"command\":");
    write_json_str(out, &entry.class.tag(outcome.affected));
    out.extend_from_slice(b",\"rows_affected\":");
    out.extend_from_slice(itoa::Buffer::new().format(outcome.affected).as_bytes());
    Ok(())
}

/// `["int4","text"]` for parameter types.
pub fn write_type_names(out: &mut Vec<u8>, types: &[tokio_postgres::types::Type]) {
    out.push(b'[');
    for (i, t) in types.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_json_str(out, type_name(t));
    }
    out.push(b']');
}
