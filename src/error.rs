//! Request errors and their one mapping to the wire (`docs/protocol.md`, "Errors").
//!
//! Every failure a request can meet becomes an [`Error`]; [`Error::write_wire`] is the only place
//! that turns one into the `{"code", "message", ...}` object a client sees.

use std::fmt;

use tokio_postgres::error::{DbError, ErrorPosition, SqlState};

use crate::values::write_json_str;

/// Daemon error codes (PostgreSQL errors carry their SQLSTATE instead).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    BadRequest,
    UnknownOp,
    FrameTooLarge,
    UnsupportedProtocol,
    NotConnected,
    UnknownUpstream,
    UnknownHandle,
    BadParameter,
    AuthFailed,
    Forbidden,
    TransactionState,
    TransactionAborted,
    UpstreamUnavailable,
    PoolTimeout,
    Timeout,
    ShuttingDown,
    Internal,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::BadRequest => "bad_request",
            Code::UnknownOp => "unknown_op",
            Code::FrameTooLarge => "frame_too_large",
            Code::UnsupportedProtocol => "unsupported_protocol",
            Code::NotConnected => "not_connected",
            Code::UnknownUpstream => "unknown_upstream",
            Code::UnknownHandle => "unknown_handle",
            Code::BadParameter => "bad_parameter",
            Code::AuthFailed => "auth_failed",
            Code::Forbidden => "forbidden",
            Code::TransactionState => "transaction_state",
            Code::TransactionAborted => "transaction_aborted",
            Code::UpstreamUnavailable => "upstream_unavailable",
            Code::PoolTimeout => "pool_timeout",
            Code::Timeout => "timeout",
            Code::ShuttingDown => "shutting_down",
            Code::Internal => "internal",
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where inside a `pipeline` or `batch` a failure happened.
#[derive(Debug, Clone, Copy)]
pub struct BatchPosition {
    pub index: usize,
    pub succeeded: usize,
    pub failed: usize,
}

/// A failed request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A daemon-side failure with a snake_case code.
    #[error("{code}: {message}")]
    Daemon { code: Code, message: String },
    /// PostgreSQL (or the connection to it) failed.
    #[error("{0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// PostgreSQL raised an error on a socket the daemon drove itself (`pg::burst`).
    #[error("{0}")]
    Server(Box<ServerError>),
    /// One statement of a pipeline or batch failed.
    #[error("statement {} failed: {inner}", .at.index)]
    InBatch {
        at: BatchPosition,
        inner: Box<Error>,
    },
}

impl Error {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Error::Daemon {
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Error::new(Code::BadRequest, message)
    }

    /// The database error behind this error, if PostgreSQL raised one.
    pub fn db_error(&self) -> Option<&DbError> {
        match self {
            Error::Postgres(e) => e.as_db_error(),
            Error::InBatch { inner, .. } => inner.db_error(),
            Error::Daemon { .. } | Error::Server(_) => None,
        }
    }

    /// Whether PostgreSQL raised this error (rather than the daemon or the connection).
    pub fn from_server(&self) -> bool {
        match self {
            Error::Server(_) => true,
            Error::InBatch { inner, .. } => inner.from_server(),
            _ => self.db_error().is_some(),
        }
    }

    /// The SQLSTATE, if PostgreSQL raised this error.
    pub fn sqlstate(&self) -> Option<&SqlState> {
        self.db_error().map(DbError::code)
    }

    /// The connection to PostgreSQL is gone: the pooled connection must not be reused.
    pub fn is_disconnect(&self) -> bool {
        match self {
            Error::Postgres(e) => e.as_db_error().is_none() && (e.is_closed() || is_io(e)),
            Error::InBatch { inner, .. } => inner.is_disconnect(),
            Error::Daemon { code, .. } => *code == Code::UpstreamUnavailable,
            Error::Server(_) => false,
        }
    }

    /// A prepared statement went stale on its connection (schema change, or the statement was
    /// deallocated); preparing it again and retrying once is safe.
    pub fn is_stale_statement(&self) -> bool {
        match self {
            Error::Server(e) => e.is_stale_statement(),
            Error::InBatch { inner, .. } => inner.is_stale_statement(),
            _ => self
                .db_error()
                .is_some_and(|db| stale_statement(db.code().code(), db.message())),
        }
    }

    /// The code a client sees.
    pub fn code(&self) -> &str {
        match self {
            Error::Daemon { code, .. } => code.as_str(),
            Error::Postgres(e) => match e.as_db_error() {
                Some(db) => db.code().code(),
                None => Code::UpstreamUnavailable.as_str(),
            },
            Error::InBatch { inner, .. } => inner.code(),
            Error::Server(e) => &e.code,
        }
    }

    /// Writes the wire error object (`{"code": ..., "message": ..., ...}`) to `out`.
    pub fn write_wire(&self, out: &mut Vec<u8>) {
        match self {
            Error::Daemon { code, message } => {
                out.extend_from_slice(b"{\"code\":\"");
                out.extend_from_slice(code.as_str().as_bytes());
                out.extend_from_slice(b"\",\"message\":");
                write_json_str(out, message);
                out.push(b'}');
            }
            Error::Postgres(e) => match e.as_db_error() {
                Some(db) => write_db_error(out, db, None),
                None => {
                    out.extend_from_slice(b"{\"code\":\"upstream_unavailable\",\"message\":");
                    write_json_str(out, &format!("PostgreSQL connection failed: {e}"));
                    out.push(b'}');
                }
            },
            Error::Server(e) => e.write_wire(out),
            Error::InBatch { at, inner } => {
                let mut inner_buf = Vec::with_capacity(128);
                match inner.db_error() {
                    Some(db) => write_db_error(&mut inner_buf, db, Some(at)),
                    None => {
                        inner.write_wire(&mut inner_buf);
                        // Re-open the object to append the position fields.
                        inner_buf.pop();
                        write_position(&mut inner_buf, at);
                        inner_buf.push(b'}');
                    }
                }
                out.extend_from_slice(&inner_buf);
            }
        }
    }
}

fn is_io(e: &tokio_postgres::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<std::io::Error>() {
            return true;
        }
        source = s.source();
    }
    false
}

fn write_position(out: &mut Vec<u8>, at: &BatchPosition) {
    out.extend_from_slice(b",\"index\":");
    out.extend_from_slice(itoa::Buffer::new().format(at.index).as_bytes());
    out.extend_from_slice(b",\"succeeded\":");
    out.extend_from_slice(itoa::Buffer::new().format(at.succeeded).as_bytes());
    out.extend_from_slice(b",\"failed\":");
    out.extend_from_slice(itoa::Buffer::new().format(at.failed).as_bytes());
}

/// PostgreSQL's ErrorResponse fields, as the daemon read them from the wire itself. Written to
/// the client exactly like a tokio-postgres `DbError`.
#[derive(Debug, Clone, Default)]
pub struct ServerError {
    pub code: String,
    pub message: String,
    pub severity: String,
    /// detail, hint, schema, table, column, constraint, where — when PostgreSQL sent them.
    pub optional: Vec<(&'static str, String)>,
    pub position: Option<u32>,
}

/// "cached plan must not change result type" (the schema changed) or "prepared statement does
/// not exist" (someone ran DEALLOCATE).
fn stale_statement(code: &str, message: &str) -> bool {
    (code == SqlState::FEATURE_NOT_SUPPORTED.code()
        && message.contains("cached plan must not change result type"))
        || code == SqlState::INVALID_SQL_STATEMENT_NAME.code()
}

impl ServerError {
    /// See [`Error::is_stale_statement`].
    pub fn is_stale_statement(&self) -> bool {
        stale_statement(&self.code, &self.message)
    }

    /// Reads an ErrorResponse's fields.
    pub fn parse(body: &postgres_protocol::message::backend::ErrorResponseBody) -> ServerError {
        use fallible_iterator::FallibleIterator;
        let mut e = ServerError::default();
        let mut fields = body.fields();
        while let Ok(Some(field)) = fields.next() {
            let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
            let key = match field.type_() {
                b'C' => {
                    e.code = value;
                    continue;
                }
                b'M' => {
                    e.message = value;
                    continue;
                }
                b'S' => {
                    e.severity = value;
                    continue;
                }
                b'P' => {
                    e.position = value.parse().ok();
                    continue;
                }
                b'D' => "detail",
                b'H' => "hint",
                b's' => "schema",
                b't' => "table",
                b'c' => "column",
                b'n' => "constraint",
                b'W' => "where",
                _ => continue,
            };
            e.optional.push((key, value));
        }
        e
    }

    fn write_wire(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"code\":");
        write_json_str(out, &self.code);
        out.extend_from_slice(b",\"message\":");
        write_json_str(out, &self.message);
        out.extend_from_slice(b",\"severity\":");
        write_json_str(out, &self.severity);
        for (key, value) in &self.optional {
            out.extend_from_slice(b",\"");
            out.extend_from_slice(key.as_bytes());
            out.extend_from_slice(b"\":");
            write_json_str(out, value);
        }
        if let Some(pos) = self.position {
            out.extend_from_slice(b",\"position\":");
            out.extend_from_slice(itoa::Buffer::new().format(pos).as_bytes());
        }
        out.push(b'}');
    }
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} ({})", self.severity, self.message, self.code)
    }
}

fn write_db_error(out: &mut Vec<u8>, db: &DbError, at: Option<&BatchPosition>) {
    out.extend_from_slice(b"{\"code\":");
    write_json_str(out, db.code().code());
    out.extend_from_slice(b",\"message\":");
    write_json_str(out, db.message());
    out.extend_from_slice(b",\"severity\":");
    write_json_str(out, db.severity());
    let optional = [
        ("detail", db.detail()),
        ("hint", db.hint()),
        ("schema", db.schema()),
        ("table", db.table()),
        ("column", db.column()),
        ("constraint", db.constraint()),
        ("where", db.where_()),
    ];
    for (key, value) in optional {
        if let Some(v) = value {
            out.extend_from_slice(b",\"");
            out.extend_from_slice(key.as_bytes());
            out.extend_from_slice(b"\":");
            write_json_str(out, v);
        }
    }
    if let Some(ErrorPosition::Original(pos)) = db.position() {
        out.extend_from_slice(b",\"position\":");
        out.extend_from_slice(itoa::Buffer::new().format(*pos).as_bytes());
    }
    if let Some(at) = at {
        write_position(out, at);
    }
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(e: &Error) -> serde_json::Value {
        let mut out = Vec::new();
        e.write_wire(&mut out);
        serde_json::from_slice(&out).expect("valid JSON")
    }

    #[test]
    fn daemon_error_shape() {
        let v = wire(&Error::new(Code::NotConnected, "no upstream \"x\""));
        assert_eq!(v["code"], "not_connected");
        assert_eq!(v["message"], "no upstream \"x\"");
    }

    #[test]
    fn batch_position_is_added() {
        let e = Error::InBatch {
            at: BatchPosition {
                index: 2,
                succeeded: 2,
                failed: 1,
            },
            inner: Box::new(Error::new(Code::BadParameter, "bad")),
        };
        let v = wire(&e);
        assert_eq!(v["code"], "bad_parameter");
        assert_eq!(v["index"], 2);
        assert_eq!(v["succeeded"], 2);
        assert_eq!(v["failed"], 1);
    }
}
