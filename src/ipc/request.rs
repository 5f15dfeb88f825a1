//! Request parsing. Requests borrow from the frame: SQL text, handles and parameters are not
//! copied (parameters stay `RawValue`s until they are turned into PostgreSQL text input).

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::error::Error;

/// Every protocol-1 op name, for messages.
pub const OPS: &[&str] = &[
    "hello",
    "connect",
    "connect_pg",
    "prepare",
    "query",
    "execute",
    "pipeline",
    "batch",
    "begin",
    "commit",
    "rollback",
    "ping",
    "close",
];

/// Just the op and the id, read without validating the other fields.
#[derive(Deserialize)]
pub struct Peek<'a> {
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub op: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub id: Option<&'a RawValue>,
}

/// Just the id, read from a request that failed to parse.
#[derive(Deserialize)]
struct IdOnly<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
}

/// Deserializes an optional string, borrowing it from the frame unless it contains escapes
/// (serde's own `Cow` support only borrows a bare `Cow<str>`, never one inside an `Option`).
fn opt_cow<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Cow<'de, str>>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Option<Cow<'de, str>>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a string")
        }
        fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
            Ok(Some(Cow::Borrowed(v)))
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(Cow::Owned(v.to_owned())))
        }
        fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
            Ok(Some(Cow::Owned(v)))
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D2: serde::Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
            d.deserialize_str(self)
        }
    }
    d.deserialize_option(V)
}

/// One request, as the union of every op's fields.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Request<'a> {
    #[serde(borrow)]
    pub id: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub op: Option<Cow<'a, str>>,
    pub protocol: Option<u32>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub client: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub token: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub upstream: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub host: Option<Cow<'a, str>>,
    pub port: Option<u16>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub user: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub database: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub password: Option<Cow<'a, str>>,
    /// `connect_pg`: "disable" (default), "prefer" or "require".
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub sslmode: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub sql: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub handle: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub params: Option<Vec<&'a RawValue>>,
    #[serde(borrow)]
    pub params_batch: Option<Vec<Vec<&'a RawValue>>>,
    pub count_only: Option<bool>,
    /// `pipeline`: send the columns once at the top instead of in every result.
    pub compact: Option<bool>,
    /// `pipeline`: answer with one list per field (`rows`, `rows_affected`, `commands`)
    /// instead of one object per statement; implies `compact`.
    pub columnar: Option<bool>,
    /// `pipeline`: answer with one list of values per column (`values`), every statement's
    /// rows in order, plus `counts`, `rows_affected` and `commands`; implies `compact`.
    pub column_major: Option<bool>,
    pub atomic: Option<bool>,
    #[serde(borrow)]
    pub statements: Option<Vec<StatementSpec<'a>>>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub isolation: Option<Cow<'a, str>>,
    pub read_only: Option<bool>,
    pub timeout_ms: Option<u64>,
}

/// One statement of a `batch`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatementSpec<'a> {
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub sql: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub handle: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub params: Option<Vec<&'a RawValue>>,
}

/// What a statement is named by.
#[derive(Debug, Clone, Copy)]
pub enum Target<'r> {
    Sql(&'r str),
    Handle(&'r str),
}

impl Target<'_> {
    /// `sql` xor `handle`, as the ops require.
    pub fn from_fields<'r>(
        sql: &'r Option<Cow<'_, str>>,
        handle: &'r Option<Cow<'_, str>>,
        op: &str,
    ) -> Result<Target<'r>, Error> {
        match (sql, handle) {
            (Some(s), None) => Ok(Target::Sql(s)),
            (None, Some(h)) => Ok(Target::Handle(h)),
            (Some(_), Some(_)) => Err(Error::bad_request(format!(
                "op \"{op}\" takes \"sql\" or \"handle\", not both"
            ))),
            (None, None) => Err(Error::bad_request(format!(
                "missing field \"sql\" or \"handle\" for op \"{op}\""
            ))),
        }
    }
}

/// A parsed request, or why it is not one (with whatever id could be recovered).
pub fn parse(frame: &[u8]) -> Result<Request<'_>, (Option<&RawValue>, Error)> {
    let req: Request<'_> = match serde_json::from_slice(frame) {
        Ok(r) => r,
        Err(e) => {
            let id = serde_json::from_slice::<IdOnly<'_>>(frame)
                .ok()
                .and_then(|i| i.id)
                .filter(|id| is_integer(id.get()));
            return Err((id, Error::bad_request(describe_json_error(&e, frame))));
        }
    };
    match req.id {
        Some(id) if is_integer(id.get()) => {}
        Some(id) => {
            return Err((
                None,
                Error::bad_request(format!("\"id\" must be an integer, got {}", id.get())),
            ))
        }
        None => return Err((None, Error::bad_request("missing field \"id\""))),
    }
    if req.op.is_none() {
        return Err((req.id, Error::bad_request("missing field \"op\"")));
    }
    Ok(req)
}

fn describe_json_error(e: &serde_json::Error, frame: &[u8]) -> String {
    if frame.is_empty() {
        return "empty frame: a request is one JSON object".into();
    }
    match e.classify() {
        serde_json::error::Category::Data => format!("invalid request: {e}"),
        _ => format!("request is not valid JSON: {e}"),
    }
}

/// Whether raw JSON text is an integer literal (ids are echoed verbatim, so they must be plain).
fn is_integer(text: &str) -> bool {
    let digits = text.strip_prefix('-').unwrap_or(text);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_borrows() {
        let frame = br#"{"id":7,"op":"query","sql":"SELECT $1","params":["10",10,null,{"a":1}]}"#;
        let req = parse(frame).unwrap_or_else(|_| panic!("parse"));
        assert_eq!(req.id.unwrap().get(), "7");
        assert!(matches!(req.sql, Some(Cow::Borrowed(_))));
        let escaped = parse(br#"{"id":1,"op":"query","sql":"SELECT\n1"}"#)
            .unwrap_or_else(|_| panic!("parse"));
        assert_eq!(escaped.sql.as_deref(), Some("SELECT\n1"));
        let null_sql =
            parse(br#"{"id":1,"op":"query","sql":null}"#).unwrap_or_else(|_| panic!("parse"));
        assert!(null_sql.sql.is_none());
        let params: Vec<&str> = req.params.unwrap().iter().map(|p| p.get()).collect();
        assert_eq!(params, ["\"10\"", "10", "null", "{\"a\":1}"]);
    }

    #[test]
    fn unknown_field_is_named_and_id_recovered() {
        let (id, err) = parse(br#"{"id":3,"op":"query","sql":"x","param":[]}"#)
            .err()
            .unwrap();
        assert_eq!(id.unwrap().get(), "3");
        assert!(err.to_string().contains("param"), "{err}");
    }

    #[test]
    fn bad_json_and_bad_ids() {
        let (id, err) = parse(b"{not json").err().unwrap();
        assert!(id.is_none());
        assert!(err.to_string().contains("not valid JSON"), "{err}");
        assert!(parse(br#"{"id":"7","op":"ping"}"#).is_err());
        assert!(parse(br#"{"id":1.5,"op":"ping"}"#).is_err());
        assert!(parse(br#"{"op":"ping"}"#).is_err());
        let (id, _) = parse(br#"{"id":-4}"#).err().unwrap();
        assert_eq!(id.unwrap().get(), "-4");
    }
}
