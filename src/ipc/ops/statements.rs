//! `prepare`, `query` and `execute`.

use crate::catalog::Entry;
use crate::error::{Code, Error};
use crate::ipc::reply::Reply;
use crate::ipc::request::{Request, Target};
use crate::pg::conn::PgConn;
use crate::pg::exec::{self, lookup, prepare_on, run_one, write_columns, write_query_fields};
use crate::upstream::{Lease, Upstream};

/// The SQL of a `prepare` request.
pub fn prepare_sql<'r>(req: &'r Request<'_>) -> Result<&'r str, Error> {
    if req.handle.is_some() {
        return Err(Error::bad_request(
            "op \"prepare\" takes \"sql\", not \"handle\"",
        ));
    }
    req.sql.as_deref().ok_or_else(|| missing("sql", "prepare"))
}

/// `prepare` answered from the catalogue alone, when the statement is already there.
pub fn prepare_cached(up: &Upstream, req: &Request<'_>, reply: &mut Reply) -> Result<bool, Error> {
    match lookup(up, Target::Sql(prepare_sql(req)?))? {
        Some(entry) => {
            write_prepared(&entry, reply);
            Ok(true)
        }
        None => Ok(false),
    }
}

/// `prepare` on a connection: prepares the statement and adds it to the shared catalogue.
pub async fn prepare(
    up: &Upstream,
    conn: &PgConn,
    req: &Request<'_>,
    reply: &mut Reply,
) -> Result<(), Error> {
    let (entry, _) = prepare_on(up, conn, Target::Sql(prepare_sql(req)?)).await?;
    write_prepared(&entry, reply);
    Ok(())
}

fn write_prepared(entry: &Entry, reply: &mut Reply) {
    let shape = entry.shape();
    reply.str_field("handle", &entry.handle);
    exec::write_type_names(reply.key("params"), &shape.params);
    exec::write_shape_columns(reply.key("columns"), &shape.columns);
}

/// `query` (rows returned) and `execute` (only the count).
pub async fn query(
    up: &Upstream,
    conn: &PgConn,
    in_transaction: bool,
    req: &Request<'_>,
    reply: &mut Reply,
    with_rows: bool,
    shared: Option<&Lease>,
) -> Result<(), Error> {
    let op = if with_rows { "query" } else { "execute" };
    if req.params_batch.is_some() || req.statements.is_some() {
        return Err(Error::bad_request(format!(
            "op \"{op}\" takes \"params\"; use \"pipeline\" for \"params_batch\" and \"batch\" for \"statements\""
        )));
    }
    let target = Target::from_fields(&req.sql, &req.handle, op)?;
    let params = req.params.as_deref().unwrap_or(&[]);
    let (entry, stmt, outcome) =
        run_one(up, conn, target, params, with_rows, in_transaction, shared).await?;
    if with_rows {
        let mut columns = Vec::with_capacity(64);
        write_columns(&mut columns, stmt.columns());
        reply.body().push(b',');
        write_query_fields(reply.body(), &columns, stmt.columns(), &entry, &outcome)?;
    } else {
        reply.int_field("rows_affected", outcome.affected);
        reply.str_field("command", &entry.class.tag(outcome.affected));
    }
    if !in_transaction && entry.class.leaves_session_state {
        Box::pin(conn.reset_session()).await?;
    }
    Ok(())
}

/// The error for an op that needs parameters in a shape it did not get.
pub fn missing(field: &str, op: &str) -> Error {
    Error::new(
        Code::BadRequest,
        format!("missing field \"{field}\" for op \"{op}\""),
    )
}
