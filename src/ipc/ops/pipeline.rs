//! `pipeline` (one statement, many parameter lists) and `batch` (different statements).
//!
//! Both convert every parameter list before anything runs, so a bad parameter fails the request
//! without executing half of it. Without `atomic`, each statement is its own implicit
//! transaction and all of them run even when one fails; the answer is then the first failure,
//! with its index and the succeeded/failed counts. With `atomic`, the statements run inside one
//! transaction (a savepoint when the client already has one open) that a failure rolls back.

use serde_json::value::RawValue;
use tokio_postgres::Statement;

use std::sync::Arc;

use crate::catalog::Entry;
use crate::error::{BatchPosition, Code, Error};
use crate::ipc::reply::Reply;
use crate::ipc::request::{Request, Target};
use crate::pg::burst::{self, Grouping, Rows};
use crate::pg::by_column::{ByColumn, ColumnWriter};
use crate::pg::conn::PgConn;
use crate::pg::exec::{
    convert_params, mark_broken_on_disconnect, prepare_on, run_pipelined, run_statements,
    write_columns, write_query_fields, write_result_fields, write_rows, Outcome,
};
use crate::upstream::{GroupedCounters, Upstream};
use crate::values::{write_json_str, TextParam};

use super::statements::missing;
use super::Unfinished;

const SAVEPOINT: &str = "qail_atomic";

/// A pipeline is spread over several pooled connections only when each gets at least this many
/// statements; below that, extra round trips to prepare cost more than the parallelism gains.
const MIN_PER_CONNECTION: usize = 256;

/// `pipeline`.
pub async fn pipeline(
    up: &Upstream,
    conn: &PgConn,
    in_transaction: bool,
    req: &Request<'_>,
    reply: &mut Reply,
) -> Result<(), Error> {
    let target = Target::from_fields(&req.sql, &req.handle, "pipeline")?;
    let batch = req
        .params_batch
        .as_ref()
        .ok_or_else(|| missing("params_batch", "pipeline"))?;
    if req.params.is_some() {
        return Err(Error::bad_request(
            "op \"pipeline\" takes \"params_batch\" (a list of parameter lists), not \"params\"",
        ));
    }
    let count_only = req.count_only.unwrap_or(false);
    let atomic = req.atomic.unwrap_or(false);
    let (entry, stmt) = prepare_on(up, conn, target).await?;
    let texts = convert_all(&stmt, batch)?;

    let mut extra = Vec::new();
    if !in_transaction && !atomic && texts.len() >= 2 * MIN_PER_CONNECTION {
        let wanted = (texts.len() / MIN_PER_CONNECTION).min(up.config.pool_max as usize);
        extra = up.checkout_idle(wanted.saturating_sub(1)).await;
    }
    let mut conns: Vec<&PgConn> = Vec::with_capacity(1 + extra.len());
    conns.push(conn);
    conns.extend(extra.iter().map(|c| &**c));
    // The connections borrowed for the spread are this request's alone: if it is dropped
    // half-way, what they still run is cancelled (the first one is guarded by `run_sql`).
    let spread: Vec<Unfinished<'_>> = extra.iter().map(|c| Unfinished::new(up, c, None)).collect();
    let result = async {
        open_atomic(conns[0], atomic, in_transaction).await?;
        let grouped = match (in_transaction, atomic) {
            (false, false) if burst::eligible(&entry.class) => {
                Some((&up.grouped, Grouping::ReadOnly))
            }
            // An atomic pipeline's own transaction: any statement, the first failure is final.
            (false, true) => Some((&up.grouped, Grouping::InTransaction)),
            _ => None,
        };
        let by_column = req.column_major.unwrap_or(false);
        let mut results = run_spread(&entry, &conns, &texts, !count_only, by_column, grouped).await;
        let stale: Vec<bool> = results
            .iter()
            .map(|r| r.as_ref().err().is_some_and(Error::is_stale_statement))
            .collect();
        if stale.contains(&true) && !in_transaction && !atomic {
            // A schema change invalidated the statement: prepare it again and run once more the
            // statements that failed for it (a stale statement never started executing; the
            // others ran and keep their answers).
            for c in &conns {
                c.forget(entry.id);
                c.burst_statements().forget(entry.id);
            }
            let fresh = conns[0].statement(&entry).await?;
            entry.set_shape(crate::catalog::Shape::of(&fresh));
            let again: Vec<Vec<TextParam>> = convert_all(&fresh, batch)?
                .into_iter()
                .zip(&stale)
                .filter_map(|(p, &s)| s.then_some(p))
                .collect();
            let answers = run_spread(&entry, &conns, &again, !count_only, by_column, grouped).await;
            let slots = stale.iter().enumerate().filter(|(_, &s)| s).map(|(i, _)| i);
            for (i, answer) in slots.zip(answers) {
                results[i] = answer;
            }
        }
        let failure = first_failure(&mut results);
        close_atomic(conns[0], atomic, in_transaction, failure.is_none()).await?;
        if !in_transaction && entry.class.leaves_session_state {
            // `set_config(…, false)`, a session-level advisory lock …: nothing of it may reach the
            // next client of these connections.
            for c in &conns {
                c.reset_session().await?;
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        let stmt = conns[0].statement(&entry).await.unwrap_or(stmt);

        if count_only {
            reply.int_field("count", results.len() as u64);
            return Ok(());
        }
        let mut columns = Vec::with_capacity(64);
        write_columns(&mut columns, stmt.columns());
        if req.column_major.unwrap_or(false) {
            reply.key("columns").extend_from_slice(&columns);
            return write_column_major(reply, &entry, stmt.columns(), &results);
        }
        if req.columnar.unwrap_or(false) {
            reply.key("columns").extend_from_slice(&columns);
            return write_columnar(reply, &entry, stmt.columns(), &results);
        }
        let compact = req.compact.unwrap_or(false);
        if compact {
            reply.key("columns").extend_from_slice(&columns);
        }
        let out = reply.key("results");
        let per_result = if compact { 48 } else { columns.len() + 48 };
        out.reserve(results.len() * per_result);
        out.push(b'[');
        for (i, r) in results.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.push(b'{');
            if let Ok(outcome) = r {
                if compact {
                    write_result_fields(out, stmt.columns(), &entry, outcome)?;
                } else {
                    write_query_fields(out, &columns, stmt.columns(), &entry, outcome)?;
                }
            }
            out.push(b'}');
        }
        out.push(b']');
        Ok(())
    }
    .await;
    spread.into_iter().for_each(Unfinished::done);
    result
}

/// The results of a successful pipeline as three lists — `rows`, `rows_affected` and
/// `commands`, one entry per statement — which a client decodes with far fewer objects than
/// one `{rows, command, rows_affected}` object per statement.
fn write_columnar(
    reply: &mut Reply,
    entry: &Entry,
    columns: &[tokio_postgres::Column],
    results: &[Result<Outcome, Error>],
) -> Result<(), Error> {
    let outcomes = || results.iter().filter_map(|r| r.as_ref().ok());
    let out = reply.key("rows");
    out.reserve(results.len() * 48);
    write_list(out, outcomes(), |out, o| write_rows(out, o, columns))?;
    write_outcome_lists(reply, entry, results)
}

/// The results of a successful pipeline with their rows turned around: `values` holds one list
/// per column with that column's values of every row of every statement, in order, and
/// `counts` how many of those rows each statement returned; then `rows_affected` and
/// `commands` as in [`write_columnar`]. A client rebuilds the rows by zipping the columns, so
/// it never decodes one JSON list per row.
fn write_column_major(
    reply: &mut Reply,
    entry: &Entry,
    columns: &[tokio_postgres::Column],
    results: &[Result<Outcome, Error>],
) -> Result<(), Error> {
    // Grouped statements had their rows written while they arrived; the others are written now.
    let mut writer = ColumnWriter::new(columns);
    let written = results
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(|o| ByColumn::of(o, &mut writer))
        .collect::<Result<Vec<_>, Error>>()?;
    write_list(reply.key("counts"), written.iter(), |out, w| {
        out.extend_from_slice(itoa::Buffer::new().format(w.rows()).as_bytes());
        Ok(())
    })?;
    let out = reply.key("values");
    out.reserve(written.iter().map(|w| w.size() + 1).sum::<usize>() + 3 * columns.len());
    write_list(out, 0..columns.len(), |out, k| {
        out.push(b'[');
        let mut first = true;
        for segment in written.iter().map(|w| w.column(k)) {
            if !segment.is_empty() {
                if !std::mem::take(&mut first) {
                    out.push(b',');
                }
                out.extend_from_slice(segment);
            }
        }
        out.push(b']');
        Ok(())
    })?;
    write_outcome_lists(reply, entry, results)
}

/// `rows_affected` and `commands`: one entry per statement of a successful pipeline.
fn write_outcome_lists(
    reply: &mut Reply,
    entry: &Entry,
    results: &[Result<Outcome, Error>],
) -> Result<(), Error> {
    let outcomes = || results.iter().filter_map(|r| r.as_ref().ok());
    write_list(reply.key("rows_affected"), outcomes(), |out, o| {
        out.extend_from_slice(itoa::Buffer::new().format(o.affected).as_bytes());
        Ok(())
    })?;
    write_list(reply.key("commands"), outcomes(), |out, o| {
        write_json_str(out, &entry.class.tag(o.affected));
        Ok(())
    })
}

/// `[a,b,...]`, each item written by `write`.
fn write_list<T>(
    out: &mut Vec<u8>,
    items: impl Iterator<Item = T>,
    mut write: impl FnMut(&mut Vec<u8>, T) -> Result<(), Error>,
) -> Result<(), Error> {
    out.push(b'[');
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write(out, item)?;
    }
    out.push(b']');
    Ok(())
}

/// `batch`.
pub async fn batch(
    up: &Upstream,
    conn: &PgConn,
    in_transaction: bool,
    req: &Request<'_>,
    reply: &mut Reply,
) -> Result<(), Error> {
    let specs = req
        .statements
        .as_ref()
        .ok_or_else(|| missing("statements", "batch"))?;
    if req.sql.is_some() || req.handle.is_some() || req.params.is_some() {
        return Err(Error::bad_request(
            "op \"batch\" takes \"statements\" (a list of {sql or handle, params}); use \"query\" for one statement",
        ));
    }
    let atomic = req.atomic.unwrap_or(false);
    let mut work = Vec::with_capacity(specs.len());
    let mut entries = Vec::with_capacity(specs.len());
    for (index, spec) in specs.iter().enumerate() {
        let prepared = async {
            let target = Target::from_fields(&spec.sql, &spec.handle, "batch")?;
            let (entry, stmt) = prepare_on(up, conn, target).await?;
            let params = convert_params(&stmt, spec.params.as_deref().unwrap_or(&[]))?;
            Ok::<_, Error>((entry, stmt, params))
        }
        .await
        .map_err(|e| at(index, 0, 1, e))?;
        let (entry, stmt, params) = prepared;
        entries.push(entry);
        work.push((stmt, params));
    }

    open_atomic(conn, atomic, in_transaction).await?;
    let mut results = run_statements(
        &conn.client,
        work.iter().map(|(stmt, p)| (stmt, p.as_slice())),
        true,
    )
    .await;
    mark_broken_on_disconnect(conn, &results);
    let failure = first_failure(&mut results);
    close_atomic(conn, atomic, in_transaction, failure.is_none()).await?;
    if let Some(e) = failure {
        return Err(e);
    }

    let out = reply.key("results");
    out.push(b'[');
    let mut columns = Vec::with_capacity(64);
    for (i, r) in results.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'{');
        if let Ok(outcome) = r {
            columns.clear();
            write_columns(&mut columns, work[i].0.columns());
            write_query_fields(out, &columns, work[i].0.columns(), &entries[i], outcome)?;
        }
        out.push(b'}');
    }
    out.push(b']');
    if !in_transaction && entries.iter().any(|e| e.class.leaves_session_state) {
        conn.reset_session().await?;
    }
    Ok(())
}

/// Every parameter list converted for `stmt`; the first bad one fails the whole request.
fn convert_all(stmt: &Statement, batch: &[Vec<&RawValue>]) -> Result<Vec<Vec<TextParam>>, Error> {
    batch
        .iter()
        .enumerate()
        .map(|(i, params)| convert_params(stmt, params).map_err(|e| at(i, 0, 1, e)))
        .collect()
}

fn at(index: usize, succeeded: usize, failed: usize, inner: Error) -> Error {
    Error::InBatch {
        at: BatchPosition {
            index,
            succeeded,
            failed,
        },
        inner: Box::new(inner),
    }
}

/// The first failed result as an [`Error::InBatch`], taken out of `results`.
fn first_failure(results: &mut [Result<Outcome, Error>]) -> Option<Error> {
    let failed = results.iter().filter(|r| r.is_err()).count();
    if failed == 0 {
        return None;
    }
    let index = results.iter().position(Result::is_err)?;
    let succeeded = results.len() - failed;
    let inner = std::mem::replace(&mut results[index], Ok(Outcome::default())).err()?;
    Some(at(index, succeeded, failed, inner))
}

/// Runs the parameter lists split into contiguous chunks, one per connection, all chunks at
/// once and each chunk pipelined (`grouped`: with one Sync per group, see `pg::burst`);
/// answers in the original order. A connection that fails to prepare the statement answers its
/// whole chunk with that failure (the other chunks ran).
async fn run_spread(
    entry: &Arc<Entry>,
    conns: &[&PgConn],
    texts: &[Vec<TextParam>],
    keep_rows: bool,
    by_column: bool,
    grouped: Option<(&GroupedCounters, Grouping)>,
) -> Vec<Result<Outcome, Error>> {
    let per = texts.len().div_ceil(conns.len().max(1)).max(1);
    let chunks = conns
        .iter()
        .zip(texts.chunks(per))
        .map(|(c, part)| async move {
            let results = match (c.statement(entry).await, grouped) {
                (Ok(stmt), Some((counters, grouping))) if part.len() >= burst::MIN_STATEMENTS => {
                    let rows = match (keep_rows, by_column) {
                        (false, _) => Rows::Skip,
                        (true, false) => Rows::Keep,
                        (true, true) => Rows::ByColumn(stmt.columns()),
                    };
                    burst::run(c, entry, &stmt, part, rows, counters, grouping).await
                }
                (Ok(stmt), _) => run_pipelined(&c.client, &stmt, part, keep_rows).await,
                (Err(e), _) => {
                    let mut all = Vec::with_capacity(part.len());
                    all.push(Err(e));
                    all.extend((1..part.len()).map(|_| {
                        Err(Error::new(
                            Code::UpstreamUnavailable,
                            "not run: the statement could not be prepared on its connection",
                        ))
                    }));
                    all
                }
            };
            mark_broken_on_disconnect(c, &results);
            results
        });
    let parts = futures_util::future::join_all(chunks).await;
    let mut all = Vec::with_capacity(texts.len());
    for part in parts {
        all.extend(part);
    }
    all
}

async fn open_atomic(conn: &PgConn, atomic: bool, in_transaction: bool) -> Result<(), Error> {
    match (atomic, in_transaction) {
        (false, _) => Ok(()),
        (true, false) => Ok(conn.client.batch_execute("BEGIN").await?),
        (true, true) => Ok(conn
            .client
            .batch_execute(&format!("SAVEPOINT {SAVEPOINT}"))
            .await?),
    }
}

async fn close_atomic(
    conn: &PgConn,
    atomic: bool,
    in_transaction: bool,
    success: bool,
) -> Result<(), Error> {
    let sql = match (atomic, in_transaction, success) {
        (false, _, _) => return Ok(()),
        (true, false, true) => "COMMIT".to_string(),
        (true, false, false) => "ROLLBACK".to_string(),
        (true, true, true) => format!("RELEASE SAVEPOINT {SAVEPOINT}"),
        (true, true, false) => {
            format!("ROLLBACK TO SAVEPOINT {SAVEPOINT}; RELEASE SAVEPOINT {SAVEPOINT}")
        }
    };
    let result = conn.client.batch_execute(&sql).await;
    if result.is_err() {
        conn.mark_broken();
    }
    Ok(result?)
}
