//! Parameters: one JSON value → PostgreSQL *text* input for a parameter of a known type.
//!
//! PostgreSQL's input functions do the actual parsing, so every type (enums, domains,
//! extension types) accepts whatever its text syntax accepts. This module only decides which
//! text to send: strings as their content, numbers as written, booleans as `true`/`false`,
//! arrays as array literals (or JSON text for json/jsonb), objects as JSON text for json/jsonb.

use std::borrow::Cow;
use std::error::Error as StdError;

use bytes::BytesMut;
use serde_json::value::RawValue;
use tokio_postgres::types::{to_sql_checked, Format, IsNull, Kind, ToSql, Type};

use super::oid;

/// Nesting limit for JSON arrays turned into PostgreSQL array literals (PostgreSQL's own
/// MAXDIM is 6, so anything deeper would be refused anyway).
const MAX_ARRAY_DEPTH: u32 = 6;

/// A parameter in text format; `None` is SQL NULL.
///
/// Implements `ToSql` for every type with `Format::Text`, so the server parses the text with
/// the parameter type's input function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextParam(Option<String>);

impl TextParam {
    /// The SQL NULL parameter.
    pub fn null() -> Self {
        TextParam(None)
    }

    /// The text that will be sent, `None` for NULL.
    pub fn as_str(&self) -> Option<&str> {
        self.0.as_deref()
    }
}

impl ToSql for TextParam {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        match &self.0 {
            None => Ok(IsNull::Yes),
            Some(text) => {
                out.extend_from_slice(text.as_bytes());
                Ok(IsNull::No)
            }
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    fn encode_format(&self, _ty: &Type) -> Format {
        Format::Text
    }

    to_sql_checked!();
}

/// A JSON parameter that cannot be turned into input for its PostgreSQL type.
#[derive(Debug, thiserror::Error)]
pub enum ParamError {
    /// The JSON kind (array, object) does not fit the parameter type.
    #[error("parameter is a JSON {found}, but type {ty} {why}")]
    Shape {
        /// The JSON kind found, e.g. `array`.
        found: &'static str,
        /// The parameter type (or array element type).
        ty: String,
        /// Why it does not fit and what to send instead.
        why: &'static str,
    },
    /// PostgreSQL text values cannot contain the NUL character.
    #[error(
        "parameter of type {ty} contains the character U+0000, which PostgreSQL text cannot hold"
    )]
    NulChar {
        /// The parameter type.
        ty: String,
    },
    /// A JSON array nested deeper than PostgreSQL arrays can be.
    #[error("parameter of type {ty} nests JSON arrays deeper than {max} levels")]
    TooDeep {
        /// The parameter type.
        ty: String,
        /// The limit.
        max: u32,
    },
    /// The raw value holds no JSON value at all.
    #[error("parameter is empty, not a JSON value")]
    Empty,
    /// The raw value is not valid JSON (cannot happen for a `RawValue` parsed by serde_json).
    #[error("parameter is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
}

const WHY_ARRAY: &str = "is not an array type: a JSON array needs an array, json or jsonb \
     parameter (or pass a string in PostgreSQL's input syntax)";
const WHY_OBJECT: &str = "expects no JSON object: a JSON object needs a json or jsonb \
     parameter; pass other values, composites included, as a string in PostgreSQL's input \
     syntax, e.g. \"(1,abc)\"";
const WHY_ELEMENT_OBJECT: &str = "cannot take a JSON object as an array element: only json and \
     jsonb elements can; pass other values as strings in PostgreSQL's input syntax";
const WHY_VECTOR: &str = "takes only numbers or strings as elements (no NULL, nesting or objects)";

/// Looks through domains to the type whose kind decides how JSON arrays/objects are sent.
fn base_type(mut ty: &Type) -> &Type {
    while let Kind::Domain(base) = ty.kind() {
        ty = base;
    }
    ty
}

fn is_json(ty: &Type) -> bool {
    matches!(ty.oid(), oid::JSON | oid::JSONB)
}

/// Converts one JSON parameter into PostgreSQL text input for a parameter of type `ty`.
pub fn param_text(raw: &RawValue, ty: &Type) -> Result<TextParam, ParamError> {
    let text = trim_json_ws(raw.get());
    let base = base_type(ty);
    let value = match text.as_bytes().first() {
        None => return Err(ParamError::Empty),
        Some(b'n') => return Ok(TextParam(None)),
        Some(b'"') => {
            let s = json_string(text)?;
            check_nul(&s, ty)?;
            s.into_owned()
        }
        Some(b'[') if is_json(base) => text.to_owned(),
        Some(b'[') => match base.kind() {
            Kind::Array(elem) if matches!(base.oid(), oid::INT2VECTOR | oid::OIDVECTOR) => {
                vector_literal(text, elem)?
            }
            Kind::Array(elem) => {
                let mut lit = String::with_capacity(text.len() + 2);
                array_literal(&mut lit, text, elem, 1)?;
                lit
            }
            _ => {
                return Err(ParamError::Shape {
                    found: "array",
                    ty: ty.to_string(),
                    why: WHY_ARRAY,
                })
            }
        },
        Some(b'{') if is_json(base) => text.to_owned(),
        Some(b'{') => {
            return Err(ParamError::Shape {
                found: "object",
                ty: ty.to_string(),
                why: WHY_OBJECT,
            })
        }
        // Numbers exactly as written (lossless for numeric), `true`, `false`.
        Some(_) => text.to_owned(),
    };
    Ok(TextParam(Some(value)))
}

fn trim_json_ws(s: &str) -> &str {
    s.trim_matches([' ', '\t', '\n', '\r'])
}

/// The content of a JSON string literal; borrowed when it has no escapes.
fn json_string(text: &str) -> Result<Cow<'_, str>, ParamError> {
    if !text.contains('\\') {
        if let Some(inner) = text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
            return Ok(Cow::Borrowed(inner));
        }
    }
    Ok(Cow::Owned(serde_json::from_str::<String>(text)?))
}

fn check_nul(s: &str, ty: &Type) -> Result<(), ParamError> {
    if s.contains('\0') {
        return Err(ParamError::NulChar { ty: ty.to_string() });
    }
    Ok(())
}

/// Appends `s` double-quoted for an array literal: `"` and `\` get a backslash.
fn push_quoted(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

/// Builds `{e1,e2,…}` from a JSON array. Elements: null → NULL, strings always quoted,
/// numbers and booleans as written, nested arrays → nested braces (dimensions). For json and
/// jsonb elements every array or object is one element, sent as quoted JSON text.
fn array_literal(out: &mut String, text: &str, elem: &Type, depth: u32) -> Result<(), ParamError> {
    let items: Vec<&RawValue> = serde_json::from_str(text)?;
    let elem_base = base_type(elem);
    let json_elems = is_json(elem_base);
    // box is the one built-in type whose array delimiter is ';' (its text contains commas).
    let delim = if elem_base.oid() == oid::BOX {
        ';'
    } else {
        ','
    };
    out.push('{');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(delim);
        }
        let t = trim_json_ws(item.get());
        match t.as_bytes().first() {
            Some(b'n') => out.push_str("NULL"),
            Some(b'"') => {
                let s = json_string(t)?;
                check_nul(&s, elem)?;
                push_quoted(out, &s);
            }
            Some(b'[' | b'{') if json_elems => push_quoted(out, t),
            Some(b'[') => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(ParamError::TooDeep {
                        ty: elem.to_string(),
                        max: MAX_ARRAY_DEPTH,
                    });
                }
                array_literal(out, t, elem, depth + 1)?;
            }
            Some(b'{') => {
                return Err(ParamError::Shape {
                    found: "object inside an array",
                    ty: elem.to_string(),
                    why: WHY_ELEMENT_OBJECT,
                })
            }
            _ => out.push_str(t),
        }
    }
    out.push('}');
    Ok(())
}

/// int2vector and oidvector read space-separated numbers, not `{…}`.
fn vector_literal(text: &str, elem: &Type) -> Result<String, ParamError> {
    let items: Vec<&RawValue> = serde_json::from_str(text)?;
    let mut out = String::with_capacity(text.len());
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let t = trim_json_ws(item.get());
        match t.as_bytes().first() {
            Some(b'"') => {
                let s = json_string(t)?;
                check_nul(&s, elem)?;
                out.push_str(&s);
            }
            Some(b'-' | b'0'..=b'9') => out.push_str(t),
            _ => {
                return Err(ParamError::Shape {
                    found: "array with a non-number element",
                    ty: elem.to_string(),
                    why: WHY_VECTOR,
                })
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_postgres::types::Field;

    fn raw(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.to_owned()).expect("valid json")
    }

    fn p(json: &str, ty: &Type) -> Option<String> {
        param_text(&raw(json), ty).expect("param accepted").0
    }

    fn err(json: &str, ty: &Type) -> String {
        param_text(&raw(json), ty)
            .expect_err("param refused")
            .to_string()
    }

    fn domain(name: &str, base: Type) -> Type {
        Type::new(name.into(), 90001, Kind::Domain(base), "public".into())
    }

    #[test]
    fn scalars() {
        assert_eq!(p("null", &Type::INT4), None);
        assert_eq!(p("\"10\"", &Type::INT4).as_deref(), Some("10"));
        assert_eq!(p("10", &Type::INT4).as_deref(), Some("10"));
        assert_eq!(
            p("12345678901234567890.5", &Type::NUMERIC).as_deref(),
            Some("12345678901234567890.5")
        );
        assert_eq!(p("-1.5e300", &Type::NUMERIC).as_deref(), Some("-1.5e300"));
        assert_eq!(p("true", &Type::BOOL).as_deref(), Some("true"));
        assert_eq!(p("false", &Type::BOOL).as_deref(), Some("false"));
        assert_eq!(p(r#""\\x0102""#, &Type::BYTEA).as_deref(), Some("\\x0102"));
        assert_eq!(
            p(r#""a \"q\" \u00e9 \n""#, &Type::TEXT).as_deref(),
            Some("a \"q\" é \n")
        );
        assert_eq!(p(" 7 ", &Type::INT8).as_deref(), Some("7"));
        let mood = Type::new(
            "mood".into(),
            90000,
            Kind::Enum(vec!["happy".into()]),
            "public".into(),
        );
        assert_eq!(p("\"happy\"", &mood).as_deref(), Some("happy"));
    }

    #[test]
    fn nul_is_refused() {
        let e = err(r#""a\u0000b""#, &Type::TEXT);
        assert!(e.contains("U+0000"), "{e}");
        assert!(param_text(&raw(r#"["\u0000"]"#), &Type::TEXT_ARRAY).is_err());
    }

    #[test]
    fn json_params() {
        for ty in [Type::JSON, Type::JSONB, domain("doc", Type::JSONB)] {
            assert_eq!(
                p(r#"{"a": [1, "x"]}"#, &ty).as_deref(),
                Some(r#"{"a": [1, "x"]}"#)
            );
            assert_eq!(p("[1,2]", &ty).as_deref(), Some("[1,2]"));
            assert_eq!(p("1.50", &ty).as_deref(), Some("1.50"));
            assert_eq!(p("true", &ty).as_deref(), Some("true"));
            // A JSON string is PostgreSQL input text, as for every type.
            assert_eq!(p(r#""{\"a\":1}""#, &ty).as_deref(), Some(r#"{"a":1}"#));
            assert_eq!(p("null", &ty), None);
        }
    }

    #[test]
    fn arrays() {
        assert_eq!(
            p(
                r#"[1, 2, null, "a \"q\"", "x", "NULL", "b\\c"]"#,
                &Type::TEXT_ARRAY
            )
            .as_deref(),
            Some(r#"{1,2,NULL,"a \"q\"","x","NULL","b\\c"}"#)
        );
        assert_eq!(
            p("[[1,2],[3,4]]", &Type::INT4_ARRAY).as_deref(),
            Some("{{1,2},{3,4}}")
        );
        assert_eq!(p("[]", &Type::INT4_ARRAY).as_deref(), Some("{}"));
        assert_eq!(
            p("[true,false]", &Type::BOOL_ARRAY).as_deref(),
            Some("{true,false}")
        );
        assert_eq!(
            p(r#"["(1,2),(3,4)", null]"#, &Type::BOX_ARRAY).as_deref(),
            Some(r#"{"(1,2),(3,4)";NULL}"#)
        );
        // json elements: arrays and objects are values, not dimensions
        assert_eq!(
            p(r#"[{"a":"\"x\""}, [1,2], 3, null]"#, &Type::JSONB_ARRAY).as_deref(),
            Some(r#"{"{\"a\":\"\\\"x\\\"\"}","[1,2]",3,NULL}"#)
        );
        // array of a domain, domain over an array
        let posint = domain("posint", Type::INT4);
        let posints = Type::new(
            "_posint".into(),
            90002,
            Kind::Array(posint),
            "public".into(),
        );
        assert_eq!(p("[1,2]", &posints).as_deref(), Some("{1,2}"));
        let list = domain("intlist", Type::INT4_ARRAY);
        assert_eq!(p("[1,[2]]", &list).as_deref(), Some("{1,{2}}"));
        // int2vector / oidvector use spaces
        assert_eq!(
            p("[1,2,\"3\"]", &Type::INT2_VECTOR).as_deref(),
            Some("1 2 3")
        );
        assert_eq!(p("[]", &Type::OID_VECTOR).as_deref(), Some(""));
        assert!(param_text(&raw("[null]"), &Type::OID_VECTOR).is_err());
        // A string is still PostgreSQL array input.
        assert_eq!(p(r#""{1,2}""#, &Type::INT4_ARRAY).as_deref(), Some("{1,2}"));
    }

    #[test]
    fn depth_limit() {
        let ok = "[[[[[[1]]]]]]";
        assert_eq!(p(ok, &Type::INT4_ARRAY).as_deref(), Some("{{{{{{1}}}}}}"));
        let deep = format!("{}1{}", "[".repeat(7), "]".repeat(7));
        assert!(err(&deep, &Type::INT4_ARRAY).contains("deeper"));
        let very_deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(param_text(&raw(&very_deep), &Type::INT4_ARRAY).is_err());
    }

    #[test]
    fn shape_errors() {
        let e = err("[1]", &Type::INT4);
        assert!(e.contains("JSON array") && e.contains("int4"), "{e}");
        let e = err(r#"{"a":1}"#, &Type::INT4);
        assert!(e.contains("JSON object") && e.contains("int4"), "{e}");
        let comp = Type::new(
            "pair".into(),
            90003,
            Kind::Composite(vec![Field::new("a".into(), Type::INT4)]),
            "app".into(),
        );
        let e = err(r#"{"a":1}"#, &comp);
        assert!(e.contains("app.pair") && e.contains("string"), "{e}");
        let e = err(r#"[{"a":1}]"#, &Type::INT4_ARRAY);
        assert!(
            e.contains("object inside an array") && e.contains("int4"),
            "{e}"
        );
    }

    #[test]
    fn to_sql_is_text() {
        let t = TextParam(Some("42".into()));
        let mut buf = BytesMut::new();
        assert!(matches!(t.to_sql(&Type::INT4, &mut buf), Ok(IsNull::No)));
        assert_eq!(&buf[..], b"42");
        assert!(matches!(t.encode_format(&Type::INT4), Format::Text));
        assert!(<TextParam as ToSql>::accepts(&Type::POINT));
        let mut buf = BytesMut::new();
        assert!(matches!(
            TextParam::null().to_sql_checked(&Type::TEXT, &mut buf),
            Ok(IsNull::Yes)
        ));
        assert!(buf.is_empty());
    }
}
