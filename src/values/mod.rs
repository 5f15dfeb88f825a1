//! Value mapping between PostgreSQL and protocol-1 JSON.
//!
//! Owns both directions: result values arrive in PostgreSQL's *binary* format (tokio-postgres
//! always asks for binary results) and are written as JSON straight into an output buffer;
//! parameters arrive as JSON (borrowed `RawValue`s) and are sent to PostgreSQL in *text* format,
//! so PostgreSQL's own input rules decide every type (enums, domains, extension types included).
//!
//! The mapping is documented in `docs/values.md`; this module and that page must agree.
//!
//! Interface used by the rest of the daemon:
//!
//! ```ignore
//! pub fn write_value(out: &mut Vec<u8>, ty: &Type, raw: Option<&[u8]>) -> Result<(), ValueError>;
//! pub fn type_name(ty: &Type) -> &str;
//! pub fn param_text(raw: &RawValue, ty: &Type) -> Result<TextParam, ParamError>;
//! pub fn write_json_str(out: &mut Vec<u8>, s: &str);
//! pub struct TextParam(..);        // ToSql in Format::Text, accepts every type
//! pub struct RawCell<'a>(pub Option<&'a [u8]>);   // FromSql, accepts every type
//! ```
//!
//! Invariants of the result side:
//! - Every decoder checks lengths before reading and never indexes past its input, so arbitrary
//!   bytes give `Err(ValueError)`, never a panic.
//! - Recursion follows the *type* (array → element, composite → fields), except for anonymous
//!   `record` values whose field types come from the data; a depth limit bounds both.
//! - On error, `write_value` truncates `out` back to its length on entry, so a caller never
//!   sees half a value.

mod datetime;
mod json;
mod misc;
mod numeric;
mod params;
mod read;

#[cfg(test)]
mod live_tests;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::error::Error as StdError;

use tokio_postgres::types::{FromSql, Kind, Type};

pub use json::write_json_str;
pub use params::{param_text, ParamError, TextParam};

use read::{Bad, Reader};

/// Nesting limit for result values (array in composite in range …). Real types nest a few
/// levels; the limit exists because anonymous records carry their field types in the data.
const MAX_DEPTH: u32 = 32;

/// Upper bound on array dimensions accepted from the wire (PostgreSQL's own MAXDIM is 6).
const MAX_ARRAY_DIMS: usize = 32;

/// Built-in type OIDs (fixed in PostgreSQL's catalog, `pg_type.dat`). Extension types get OIDs
/// of 16384 and up, so they can never collide with these.
mod oid {
    pub const BOOL: u32 = 16;
    pub const BYTEA: u32 = 17;
    pub const CHAR: u32 = 18;
    pub const NAME: u32 = 19;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT2VECTOR: u32 = 22;
    pub const INT4: u32 = 23;
    pub const REGPROC: u32 = 24;
    pub const TEXT: u32 = 25;
    pub const OID: u32 = 26;
    pub const TID: u32 = 27;
    pub const XID: u32 = 28;
    pub const CID: u32 = 29;
    pub const OIDVECTOR: u32 = 30;
    pub const JSON: u32 = 114;
    pub const XML: u32 = 142;
    pub const POINT: u32 = 600;
    pub const LSEG: u32 = 601;
    pub const PATH: u32 = 602;
    pub const BOX: u32 = 603;
    pub const POLYGON: u32 = 604;
    pub const LINE: u32 = 628;
    pub const CIDR: u32 = 650;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const UNKNOWN: u32 = 705;
    pub const CIRCLE: u32 = 718;
    pub const MACADDR8: u32 = 774;
    pub const MONEY: u32 = 790;
    pub const MACADDR: u32 = 829;
    pub const INET: u32 = 869;
    pub const BPCHAR: u32 = 1042;
    pub const VARCHAR: u32 = 1043;
    pub const DATE: u32 = 1082;
    pub const TIME: u32 = 1083;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
    pub const INTERVAL: u32 = 1186;
    pub const TIMETZ: u32 = 1266;
    pub const BIT: u32 = 1560;
    pub const VARBIT: u32 = 1562;
    pub const NUMERIC: u32 = 1700;
    pub const REFCURSOR: u32 = 1790;
    pub const REGPROCEDURE: u32 = 2202;
    pub const REGOPER: u32 = 2203;
    pub const REGOPERATOR: u32 = 2204;
    pub const REGCLASS: u32 = 2205;
    pub const REGTYPE: u32 = 2206;
    pub const RECORD: u32 = 2249;
    pub const ANYARRAY: u32 = 2277;
    pub const VOID: u32 = 2278;
    pub const UUID: u32 = 2950;
    pub const TXID_SNAPSHOT: u32 = 2970;
    pub const PG_LSN: u32 = 3220;
    pub const TSVECTOR: u32 = 3614;
    pub const REGCONFIG: u32 = 3734;
    pub const REGDICTIONARY: u32 = 3769;
    pub const JSONB: u32 = 3802;
    pub const JSONPATH: u32 = 4072;
    pub const REGNAMESPACE: u32 = 4089;
    pub const REGROLE: u32 = 4096;
    pub const REGCOLLATION: u32 = 4191;
    pub const PG_SNAPSHOT: u32 = 5038;
    pub const XID8: u32 = 5069;
}

/// A result value whose binary representation could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum ValueError {
    /// The bytes do not form a valid binary value of the type.
    #[error("cannot decode a value of type {ty}: {reason}")]
    Malformed {
        /// The type being decoded (the innermost one, for nested values).
        ty: String,
        /// What was wrong with the bytes.
        reason: Cow<'static, str>,
    },
    /// The value nests deeper than the decoder allows.
    #[error("value of type {ty} nests deeper than {max} levels")]
    TooDeep {
        /// The type at which the limit was hit.
        ty: String,
        /// The limit.
        max: u32,
    },
}

impl ValueError {
    fn malformed(ty: &Type, bad: Bad) -> Self {
        ValueError::Malformed {
            ty: ty.to_string(),
            reason: bad.0,
        }
    }
}

/// Raw access to one cell of a result row: the binary bytes, or `None` for SQL NULL.
///
/// Accepts every type, so `row.try_get::<_, RawCell>(i)` never fails on a type check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawCell<'a>(pub Option<&'a [u8]>);

impl<'a> FromSql<'a> for RawCell<'a> {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn StdError + Sync + Send>> {
        Ok(RawCell(Some(raw)))
    }

    fn from_sql_null(_: &Type) -> Result<Self, Box<dyn StdError + Sync + Send>> {
        Ok(RawCell(None))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// The type name reported in `columns[].type` and `params`: PostgreSQL's `typname`
/// (`int4`, `text`, `_int4` for an array of int4, user types by their own name).
pub fn type_name(ty: &Type) -> &str {
    ty.name()
}

/// Appends the JSON text of one result value to `out`.
///
/// `raw` is PostgreSQL's binary representation; `None` (SQL NULL) writes `null`. Malformed
/// bytes give `Err` and leave `out` as it was on entry.
pub fn write_value(out: &mut Vec<u8>, ty: &Type, raw: Option<&[u8]>) -> Result<(), ValueError> {
    let Some(raw) = raw else {
        out.extend_from_slice(b"null");
        return Ok(());
    };
    let start = out.len();
    let result = write_nonnull(out, ty, raw, 0);
    if result.is_err() {
        out.truncate(start);
    }
    result
}

fn write_cell(
    out: &mut Vec<u8>,
    ty: &Type,
    raw: Option<&[u8]>,
    depth: u32,
) -> Result<(), ValueError> {
    match raw {
        None => {
            out.extend_from_slice(b"null");
            Ok(())
        }
        Some(raw) => write_nonnull(out, ty, raw, depth),
    }
}

fn write_nonnull(out: &mut Vec<u8>, ty: &Type, raw: &[u8], depth: u32) -> Result<(), ValueError> {
    if depth > MAX_DEPTH {
        return Err(ValueError::TooDeep {
            ty: ty.to_string(),
            max: MAX_DEPTH,
        });
    }
    match ty.kind() {
        Kind::Simple | Kind::Pseudo => match ty.oid() {
            oid::RECORD => write_record(out, ty, raw, depth),
            // `anyarray` columns (pg_stats.histogram_bounds …) carry the element OID in the
            // array header; decode them as arrays when that element type is built in.
            oid::ANYARRAY => match raw.get(8..12).and_then(|b| Type::from_oid(be_u32(b))) {
                Some(elem) => write_array(out, ty, &elem, raw, depth),
                None => {
                    json::write_hex_str(out, raw);
                    Ok(())
                }
            },
            _ => write_scalar(out, ty.oid(), raw).map_err(|bad| ValueError::malformed(ty, bad)),
        },
        // The binary form of an enum value is its label.
        Kind::Enum(_) => json::write_text(out, raw).map_err(|bad| ValueError::malformed(ty, bad)),
        Kind::Domain(base) => write_nonnull(out, base, raw, depth + 1),
        Kind::Array(elem) => write_array(out, ty, elem, raw, depth),
        Kind::Range(elem) => write_range(out, ty, elem, raw, depth),
        Kind::Multirange(elem) => write_multirange(out, ty, elem, raw, depth),
        Kind::Composite(fields) => write_composite(out, ty, fields, raw, depth),
        _ => {
            json::write_hex_str(out, raw);
            Ok(())
        }
    }
}

/// Simple and pseudo types, by OID. Anything not listed gets the lossless hex fallback.
fn write_scalar(out: &mut Vec<u8>, type_oid: u32, raw: &[u8]) -> Result<(), Bad> {
    use oid::*;
    match type_oid {
        BOOL => {
            let v = Reader::exact(raw, 1)?.u8()?;
            out.extend_from_slice(if v != 0 { b"true" } else { b"false" });
        }
        INT2 => json::write_int(out, Reader::exact(raw, 2)?.i16()?),
        INT4 => json::write_int(out, Reader::exact(raw, 4)?.i32()?),
        INT8 | MONEY => json::write_int(out, Reader::exact(raw, 8)?.i64()?),
        OID | XID | CID | REGPROC | REGPROCEDURE | REGOPER | REGOPERATOR | REGCLASS | REGTYPE
        | REGCONFIG | REGDICTIONARY | REGNAMESPACE | REGROLE | REGCOLLATION => {
            json::write_int(out, Reader::exact(raw, 4)?.u32()?)
        }
        XID8 => json::write_int(out, Reader::exact(raw, 8)?.u64()?),
        FLOAT4 => json::write_f32(out, Reader::exact(raw, 4)?.f32()?),
        FLOAT8 => json::write_f64(out, Reader::exact(raw, 8)?.f64()?),
        NUMERIC => numeric::write_numeric(out, raw)?,
        TEXT | VARCHAR | BPCHAR | NAME | XML | REFCURSOR | UNKNOWN => json::write_text(out, raw)?,
        CHAR => misc::write_char(out, raw)?,
        JSON => json::write_embedded_json(out, raw)?,
        JSONB => json::write_embedded_json(out, versioned(raw, "jsonb")?)?,
        JSONPATH => json::write_text(out, versioned(raw, "jsonpath")?)?,
        BYTEA => json::write_hex_str(out, raw),
        UUID => misc::write_uuid(out, raw)?,
        DATE => datetime::write_date(out, raw)?,
        TIME => datetime::write_time(out, raw)?,
        TIMETZ => datetime::write_timetz(out, raw)?,
        TIMESTAMP => datetime::write_timestamp(out, raw, false)?,
        TIMESTAMPTZ => datetime::write_timestamp(out, raw, true)?,
        INTERVAL => datetime::write_interval(out, raw)?,
        INET => misc::write_inet(out, raw, false)?,
        CIDR => misc::write_inet(out, raw, true)?,
        MACADDR => misc::write_macaddr(out, raw, 6)?,
        MACADDR8 => misc::write_macaddr(out, raw, 8)?,
        BIT | VARBIT => misc::write_bits(out, raw)?,
        PG_LSN => misc::write_lsn(out, raw)?,
        TID => misc::write_tid(out, raw)?,
        POINT | LSEG | BOX | LINE | CIRCLE | PATH | POLYGON => {
            misc::write_geometric(out, type_oid, raw)?
        }
        TSVECTOR => misc::write_tsvector(out, raw)?,
        TXID_SNAPSHOT | PG_SNAPSHOT => misc::write_snapshot(out, raw)?,
        // `void` has an empty binary form; `select pg_sleep(1)` yields one void cell.
        VOID => out.extend_from_slice(b"null"),
        _ => json::write_hex_str(out, raw),
    }
    Ok(())
}

fn be_u32(b: &[u8]) -> u32 {
    b.iter().fold(0, |acc, &x| acc << 8 | u32::from(x))
}

/// Strips the leading format-version byte of jsonb and jsonpath (always 1 so far).
fn versioned<'a>(raw: &'a [u8], what: &'static str) -> Result<&'a [u8], Bad> {
    match raw.split_first() {
        Some((1, rest)) => Ok(rest),
        Some((v, _)) => Err(Bad(format!("unsupported {what} format version {v}").into())),
        None => Err(Bad::from("empty value")),
    }
}

/// `array_send`: ndim, has-nulls flag, element OID, (length, lower bound) per dimension, then
/// every element as (i32 length or -1, bytes) in row-major order.
fn write_array(
    out: &mut Vec<u8>,
    ty: &Type,
    elem: &Type,
    raw: &[u8],
    depth: u32,
) -> Result<(), ValueError> {
    let bad = |b: Bad| ValueError::malformed(ty, b);
    let mut r = Reader::new(raw);
    let ndim = r.i32().map_err(bad)?;
    let _has_nulls = r.i32().map_err(bad)?;
    let _elem_oid = r.u32().map_err(bad)?;
    let ndim = usize::try_from(ndim)
        .ok()
        .filter(|&n| n <= MAX_ARRAY_DIMS)
        .ok_or_else(|| bad(Bad(format!("invalid dimension count {ndim}").into())))?;
    let mut dims = [0usize; MAX_ARRAY_DIMS];
    let mut total: usize = 1;
    for dim in dims.iter_mut().take(ndim) {
        let len = r.i32().map_err(bad)?;
        let _lower_bound = r.i32().map_err(bad)?;
        *dim = usize::try_from(len).map_err(|_| bad(Bad::from("negative dimension length")))?;
        total = total
            .checked_mul(*dim)
            .ok_or_else(|| bad(Bad::from("too many elements")))?;
    }
    // PostgreSQL sends every empty array with zero dimensions; a zero-length dimension is
    // written as `[]` too rather than as nested empty lists.
    if ndim == 0 || total == 0 {
        if !r.is_empty() {
            return Err(bad(Bad::from("trailing bytes after empty array")));
        }
        out.extend_from_slice(b"[]");
        return Ok(());
    }
    // Each element takes at least its 4-byte length word.
    if total > r.remaining() / 4 {
        return Err(bad(Bad::from("more elements than data")));
    }
    write_dims(out, ty, elem, &dims[..ndim], &mut r, depth)?;
    if !r.is_empty() {
        return Err(bad(Bad::from("trailing bytes after last element")));
    }
    Ok(())
}

fn write_dims(
    out: &mut Vec<u8>,
    ty: &Type,
    elem: &Type,
    dims: &[usize],
    r: &mut Reader<'_>,
    depth: u32,
) -> Result<(), ValueError> {
    let Some((&len, inner)) = dims.split_first() else {
        return Ok(());
    };
    out.push(b'[');
    for i in 0..len {
        if i > 0 {
            out.push(b',');
        }
        if inner.is_empty() {
            let cell = r.cell().map_err(|b| ValueError::malformed(ty, b))?;
            write_cell(out, elem, cell, depth + 1)?;
        } else {
            write_dims(out, ty, elem, inner, r, depth)?;
        }
    }
    out.push(b']');
    Ok(())
}

// Range flag bits (rangetypes.h).
const RANGE_EMPTY: u8 = 0x01;
const RANGE_LB_INC: u8 = 0x02;
const RANGE_UB_INC: u8 = 0x04;
const RANGE_LB_INF: u8 = 0x08;
const RANGE_UB_INF: u8 = 0x10;
const RANGE_LB_NULL: u8 = 0x20;
const RANGE_UB_NULL: u8 = 0x40;

/// `range_send`: a flags byte, then (i32 length, bytes) for each side that has a bound.
fn write_range(
    out: &mut Vec<u8>,
    ty: &Type,
    elem: &Type,
    raw: &[u8],
    depth: u32,
) -> Result<(), ValueError> {
    let bad = |b: Bad| ValueError::malformed(ty, b);
    let mut r = Reader::new(raw);
    let flags = r.u8().map_err(bad)?;
    if flags & RANGE_EMPTY != 0 {
        if !r.is_empty() {
            return Err(bad(Bad::from("trailing bytes after empty range")));
        }
        out.extend_from_slice(br#"{"empty":true}"#);
        return Ok(());
    }
    let has_lower = flags & (RANGE_LB_INF | RANGE_LB_NULL) == 0;
    let has_upper = flags & (RANGE_UB_INF | RANGE_UB_NULL) == 0;
    let lower = if has_lower {
        r.cell().map_err(bad)?
    } else {
        None
    };
    let upper = if has_upper {
        r.cell().map_err(bad)?
    } else {
        None
    };
    if !r.is_empty() {
        return Err(bad(Bad::from("trailing bytes after upper bound")));
    }
    out.extend_from_slice(br#"{"lower":"#);
    write_cell(out, elem, lower, depth + 1)?;
    out.extend_from_slice(br#","upper":"#);
    write_cell(out, elem, upper, depth + 1)?;
    out.extend_from_slice(br#","lower_inc":"#);
    json::write_bool(out, has_lower && flags & RANGE_LB_INC != 0);
    out.extend_from_slice(br#","upper_inc":"#);
    json::write_bool(out, has_upper && flags & RANGE_UB_INC != 0);
    out.push(b'}');
    Ok(())
}

/// `multirange_send`: i32 range count, then (i32 length, range bytes) per range.
fn write_multirange(
    out: &mut Vec<u8>,
    ty: &Type,
    elem: &Type,
    raw: &[u8],
    depth: u32,
) -> Result<(), ValueError> {
    let bad = |b: Bad| ValueError::malformed(ty, b);
    let mut r = Reader::new(raw);
    let count = r.i32().map_err(bad)?;
    if count < 0 {
        return Err(bad(Bad::from("negative range count")));
    }
    out.push(b'[');
    for i in 0..count {
        if i > 0 {
            out.push(b',');
        }
        let range = r
            .cell()
            .map_err(bad)?
            .ok_or_else(|| bad(Bad::from("NULL range inside multirange")))?;
        write_range(out, ty, elem, range, depth + 1)?;
    }
    out.push(b']');
    if !r.is_empty() {
        return Err(bad(Bad::from("trailing bytes after last range")));
    }
    Ok(())
}

/// `record_send` for a named composite: i32 field count, then per field its type OID and
/// (i32 length or -1, bytes). Dropped columns are not sent, and tokio-postgres' field list
/// excludes them too, so the counts must agree.
fn write_composite(
    out: &mut Vec<u8>,
    ty: &Type,
    fields: &[tokio_postgres::types::Field],
    raw: &[u8],
    depth: u32,
) -> Result<(), ValueError> {
    let bad = |b: Bad| ValueError::malformed(ty, b);
    let mut r = Reader::new(raw);
    let count = r.i32().map_err(bad)?;
    if usize::try_from(count).ok() != Some(fields.len()) {
        return Err(bad(Bad(format!(
            "value has {count} fields, type has {}",
            fields.len()
        )
        .into())));
    }
    out.push(b'{');
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_json_str(out, field.name());
        out.push(b':');
        let _field_oid = r.u32().map_err(bad)?;
        let cell = r.cell().map_err(bad)?;
        write_cell(out, field.type_(), cell, depth + 1)?;
    }
    out.push(b'}');
    if !r.is_empty() {
        return Err(bad(Bad::from("trailing bytes after last field")));
    }
    Ok(())
}

/// An anonymous `record` (`select row(1, 'a')`): same wire layout as a composite, but there
/// are no field names and the field types are only known by the OIDs in the data. Written as
/// a JSON array; fields of non-built-in types use the hex fallback.
fn write_record(out: &mut Vec<u8>, ty: &Type, raw: &[u8], depth: u32) -> Result<(), ValueError> {
    let bad = |b: Bad| ValueError::malformed(ty, b);
    let mut r = Reader::new(raw);
    let count = r.i32().map_err(bad)?;
    if count < 0 {
        return Err(bad(Bad::from("negative field count")));
    }
    out.push(b'[');
    for i in 0..count {
        if i > 0 {
            out.push(b',');
        }
        let field_oid = r.u32().map_err(bad)?;
        let cell = r.cell().map_err(bad)?;
        match (Type::from_oid(field_oid), cell) {
            (_, None) => out.extend_from_slice(b"null"),
            (Some(field_ty), Some(bytes)) => write_nonnull(out, &field_ty, bytes, depth + 1)?,
            (None, Some(bytes)) => json::write_hex_str(out, bytes),
        }
    }
    out.push(b']');
    if !r.is_empty() {
        return Err(bad(Bad::from("trailing bytes after last field")));
    }
    Ok(())
}
