//! Dispatcher-level tests: `write_value` over every kind of type, hand-built binary input,
//! malformed and random input (never a panic, and any success is valid JSON).

use bytes::BytesMut;
use postgres_protocol::types as pp;
use tokio_postgres::types::{Field, Kind, ToSql, Type};

use super::*;

fn ok(ty: &Type, raw: &[u8]) -> String {
    let mut out = Vec::new();
    write_value(&mut out, ty, Some(raw)).unwrap_or_else(|e| panic!("{ty}: {e}"));
    let s = String::from_utf8(out).expect("utf8");
    serde_json::from_str::<serde_json::Value>(&s).unwrap_or_else(|e| panic!("{s}: {e}"));
    s
}

fn fails(ty: &Type, raw: &[u8]) -> ValueError {
    let mut out = b"prefix".to_vec();
    let e = write_value(&mut out, ty, Some(raw)).expect_err("must fail");
    assert_eq!(out, b"prefix", "output must be rolled back");
    e
}

/// Binary encoding through the type's own `ToSql` impl in the postgres-types crate.
fn enc<T: ToSql>(v: T, ty: &Type) -> Vec<u8> {
    let mut b = BytesMut::new();
    v.to_sql(ty, &mut b).expect("encode");
    b.to_vec()
}

fn user_type(name: &str, kind: Kind) -> Type {
    Type::new(name.into(), 91_000, kind, "public".into())
}

/// `record_send` layout from (oid, value) pairs.
fn record(fields: &[(u32, Option<&[u8]>)]) -> Vec<u8> {
    let mut v = (fields.len() as i32).to_be_bytes().to_vec();
    for (oid, val) in fields {
        v.extend_from_slice(&oid.to_be_bytes());
        match val {
            None => v.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(b) => {
                v.extend_from_slice(&(b.len() as i32).to_be_bytes());
                v.extend_from_slice(b);
            }
        }
    }
    v
}

/// `array_send` layout: dims as (len, lower bound), elements row-major.
fn array(elem_oid: u32, dims: &[(i32, i32)], elems: &[Option<&[u8]>]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&(dims.len() as i32).to_be_bytes());
    v.extend_from_slice(&i32::from(elems.iter().any(Option::is_none)).to_be_bytes());
    v.extend_from_slice(&elem_oid.to_be_bytes());
    for (len, lb) in dims {
        v.extend_from_slice(&len.to_be_bytes());
        v.extend_from_slice(&lb.to_be_bytes());
    }
    for e in elems {
        match e {
            None => v.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(b) => {
                v.extend_from_slice(&(b.len() as i32).to_be_bytes());
                v.extend_from_slice(b);
            }
        }
    }
    v
}

#[test]
fn oid_table_matches_postgres_types() {
    let pairs = [
        (oid::BOOL, Type::BOOL),
        (oid::BYTEA, Type::BYTEA),
        (oid::CHAR, Type::CHAR),
        (oid::NAME, Type::NAME),
        (oid::INT8, Type::INT8),
        (oid::INT2, Type::INT2),
        (oid::INT2VECTOR, Type::INT2_VECTOR),
        (oid::INT4, Type::INT4),
        (oid::REGPROC, Type::REGPROC),
        (oid::TEXT, Type::TEXT),
        (oid::OID, Type::OID),
        (oid::TID, Type::TID),
        (oid::XID, Type::XID),
        (oid::CID, Type::CID),
        (oid::OIDVECTOR, Type::OID_VECTOR),
        (oid::JSON, Type::JSON),
        (oid::XML, Type::XML),
        (oid::POINT, Type::POINT),
        (oid::LSEG, Type::LSEG),
        (oid::PATH, Type::PATH),
        (oid::BOX, Type::BOX),
        (oid::POLYGON, Type::POLYGON),
        (oid::LINE, Type::LINE),
        (oid::CIDR, Type::CIDR),
        (oid::FLOAT4, Type::FLOAT4),
        (oid::FLOAT8, Type::FLOAT8),
        (oid::UNKNOWN, Type::UNKNOWN),
        (oid::CIRCLE, Type::CIRCLE),
        (oid::MACADDR8, Type::MACADDR8),
        (oid::MONEY, Type::MONEY),
        (oid::MACADDR, Type::MACADDR),
        (oid::INET, Type::INET),
        (oid::BPCHAR, Type::BPCHAR),
        (oid::VARCHAR, Type::VARCHAR),
        (oid::DATE, Type::DATE),
        (oid::TIME, Type::TIME),
        (oid::TIMESTAMP, Type::TIMESTAMP),
        (oid::TIMESTAMPTZ, Type::TIMESTAMPTZ),
        (oid::INTERVAL, Type::INTERVAL),
        (oid::TIMETZ, Type::TIMETZ),
        (oid::BIT, Type::BIT),
        (oid::VARBIT, Type::VARBIT),
        (oid::NUMERIC, Type::NUMERIC),
        (oid::REFCURSOR, Type::REFCURSOR),
        (oid::REGPROCEDURE, Type::REGPROCEDURE),
        (oid::REGOPER, Type::REGOPER),
        (oid::REGOPERATOR, Type::REGOPERATOR),
        (oid::REGCLASS, Type::REGCLASS),
        (oid::REGTYPE, Type::REGTYPE),
        (oid::RECORD, Type::RECORD),
        (oid::ANYARRAY, Type::ANYARRAY),
        (oid::VOID, Type::VOID),
        (oid::UUID, Type::UUID),
        (oid::TXID_SNAPSHOT, Type::TXID_SNAPSHOT),
        (oid::PG_LSN, Type::PG_LSN),
        (oid::TSVECTOR, Type::TS_VECTOR),
        (oid::REGCONFIG, Type::REGCONFIG),
        (oid::REGDICTIONARY, Type::REGDICTIONARY),
        (oid::JSONB, Type::JSONB),
        (oid::JSONPATH, Type::JSONPATH),
        (oid::REGNAMESPACE, Type::REGNAMESPACE),
        (oid::REGROLE, Type::REGROLE),
        (oid::REGCOLLATION, Type::REGCOLLATION),
        (oid::PG_SNAPSHOT, Type::PG_SNAPSHOT),
        (oid::XID8, Type::XID8),
    ];
    for (oid, ty) in pairs {
        assert_eq!(oid, ty.oid(), "{ty}");
    }
}

#[test]
fn type_names() {
    assert_eq!(type_name(&Type::INT4), "int4");
    assert_eq!(type_name(&Type::INT4_ARRAY), "_int4");
    assert_eq!(type_name(&Type::TIMESTAMPTZ), "timestamptz");
    assert_eq!(type_name(&user_type("mood", Kind::Enum(vec![]))), "mood");
}

#[test]
fn null_and_scalars() {
    let mut out = Vec::new();
    write_value(&mut out, &Type::INT4, None).expect("null");
    assert_eq!(out, b"null");

    assert_eq!(ok(&Type::BOOL, &[1]), "true");
    assert_eq!(ok(&Type::BOOL, &[0]), "false");
    assert_eq!(ok(&Type::INT2, &enc(-32768i16, &Type::INT2)), "-32768");
    assert_eq!(ok(&Type::INT4, &enc(123_456i32, &Type::INT4)), "123456");
    assert_eq!(
        ok(&Type::INT8, &enc(i64::MIN, &Type::INT8)),
        "-9223372036854775808"
    );
    assert_eq!(ok(&Type::OID, &enc(u32::MAX, &Type::OID)), "4294967295");
    assert_eq!(ok(&Type::REGCLASS, &1259u32.to_be_bytes()), "1259");
    assert_eq!(ok(&Type::XID, &7u32.to_be_bytes()), "7");
    assert_eq!(
        ok(&Type::XID8, &u64::MAX.to_be_bytes()),
        "18446744073709551615"
    );
    assert_eq!(ok(&Type::MONEY, &(-12345i64).to_be_bytes()), "-12345");
    assert_eq!(ok(&Type::FLOAT4, &enc(1.1f32, &Type::FLOAT4)), "1.1");
    assert_eq!(ok(&Type::FLOAT8, &enc(1e300f64, &Type::FLOAT8)), "1e300");
    assert_eq!(ok(&Type::FLOAT8, &enc(f64::NAN, &Type::FLOAT8)), "\"NaN\"");
    assert_eq!(
        ok(&Type::FLOAT4, &enc(f32::INFINITY, &Type::FLOAT4)),
        "\"Infinity\""
    );
    assert_eq!(
        ok(&Type::FLOAT8, &enc(f64::NEG_INFINITY, &Type::FLOAT8)),
        "\"-Infinity\""
    );
    // numeric 123.4500: ndigits 2, weight 0, sign +, dscale 4, digits 123 4500
    assert_eq!(
        ok(
            &Type::NUMERIC,
            &[0, 2, 0, 0, 0, 0, 0, 4, 0, 123, 0x11, 0x94]
        ),
        "\"123.4500\""
    );
    for ty in [Type::INT2, Type::INT4, Type::INT8, Type::FLOAT8, Type::BOOL] {
        fails(&ty, &[]);
        fails(&ty, &[0; 9]);
    }
}

#[test]
fn text_like() {
    for ty in [
        Type::TEXT,
        Type::VARCHAR,
        Type::BPCHAR,
        Type::NAME,
        Type::XML,
        Type::REFCURSOR,
        Type::UNKNOWN,
    ] {
        assert_eq!(ok(&ty, "a\"b\\\n é".as_bytes()), r#""a\"b\\\n é""#);
        assert_eq!(ok(&ty, b""), "\"\"");
        fails(&ty, b"\xff\xfe");
    }
    assert_eq!(ok(&Type::CHAR, b"x"), "\"x\"");
    let mood = user_type("mood", Kind::Enum(vec!["happy".into()]));
    assert_eq!(ok(&mood, b"happy"), "\"happy\"");
}

#[test]
fn json_types() {
    assert_eq!(
        ok(&Type::JSON, br#"{"a": [1, 2.5, null]}"#),
        r#"{"a": [1, 2.5, null]}"#
    );
    assert_eq!(ok(&Type::JSONB, b"\x01{\"a\": 1}"), r#"{"a": 1}"#);
    assert_eq!(ok(&Type::JSONB, b"\x01\"s\""), r#""s""#);
    assert_eq!(ok(&Type::JSONPATH, b"\x01$.\"a\"[*]"), r#""$.\"a\"[*]""#);
    fails(&Type::JSONB, b"\x02{}");
    fails(&Type::JSONB, b"");
    fails(&Type::JSONB, b"\x01{");
    fails(&Type::JSON, b"{} {}");
    fails(&Type::JSONPATH, b"");
}

#[test]
fn bytea_uuid_fallback() {
    assert_eq!(ok(&Type::BYTEA, &[0x0a, 0x1b, 0xff]), r#""\\x0a1bff""#);
    assert_eq!(ok(&Type::BYTEA, &[]), r#""\\x""#);
    let u: [u8; 16] = [
        0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd, 0x38, 0x0a,
        0x11,
    ];
    assert_eq!(
        ok(&Type::UUID, &u),
        r#""a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11""#
    );
    // Extension and unhandled built-in types: hex of the binary form, even if it is text.
    let citext = user_type("citext", Kind::Simple);
    assert_eq!(ok(&citext, b"Hi"), r#""\\x4869""#);
    assert_eq!(ok(&Type::TSQUERY, &[0, 0, 0, 0]), r#""\\x00000000""#);
    assert_eq!(ok(&Type::VOID, &[]), "null");
}

#[test]
fn dates_and_times_dispatch() {
    assert_eq!(ok(&Type::DATE, &enc_date(8796)), "\"2024-01-31\"");
    assert_eq!(
        ok(&Type::INTERVAL, &interval(3_600_000_000, 1, 13)),
        "\"P1Y1M1DT1H\""
    );
    let mut b = BytesMut::new();
    pp::timestamp_to_sql(0, &mut b);
    assert_eq!(ok(&Type::TIMESTAMPTZ, &b), "\"2000-01-01T00:00:00Z\"");
    assert_eq!(ok(&Type::TIMESTAMP, &b), "\"2000-01-01T00:00:00\"");
}

fn enc_date(days: i32) -> Vec<u8> {
    let mut b = BytesMut::new();
    pp::date_to_sql(days, &mut b);
    b.to_vec()
}

fn interval(us: i64, days: i32, months: i32) -> Vec<u8> {
    let mut v = us.to_be_bytes().to_vec();
    v.extend_from_slice(&days.to_be_bytes());
    v.extend_from_slice(&months.to_be_bytes());
    v
}

#[test]
fn domains() {
    let posint = user_type("posint", Kind::Domain(Type::INT4));
    assert_eq!(ok(&posint, &5i32.to_be_bytes()), "5");
    let nested = user_type("small_posint", Kind::Domain(posint));
    assert_eq!(ok(&nested, &6i32.to_be_bytes()), "6");
    // A chain longer than the depth limit is refused, not followed forever.
    let mut ty = Type::INT4;
    for _ in 0..40 {
        ty = user_type("d", Kind::Domain(ty));
    }
    assert!(matches!(
        fails(&ty, &1i32.to_be_bytes()),
        ValueError::TooDeep { .. }
    ));
}

#[test]
fn arrays() {
    let one = 1i32.to_be_bytes();
    let two = 2i32.to_be_bytes();
    let three = 3i32.to_be_bytes();
    let four = 4i32.to_be_bytes();
    let arr = array(23, &[(3, 1)], &[Some(&one), None, Some(&three)]);
    assert_eq!(ok(&Type::INT4_ARRAY, &arr), "[1,null,3]");
    // Built with postgres-types' own encoder, lower bound 1.
    assert_eq!(
        ok(&Type::INT4_ARRAY, &enc(vec![7i32, 8], &Type::INT4_ARRAY)),
        "[7,8]"
    );
    let two_d = array(
        23,
        &[(2, 1), (2, 1)],
        &[Some(&one), Some(&two), Some(&three), Some(&four)],
    );
    assert_eq!(ok(&Type::INT4_ARRAY, &two_d), "[[1,2],[3,4]]");
    let three_d = array(23, &[(1, 1), (2, 1), (1, 5)], &[Some(&one), Some(&two)]);
    assert_eq!(ok(&Type::INT4_ARRAY, &three_d), "[[[1],[2]]]");
    assert_eq!(ok(&Type::INT4_ARRAY, &array(23, &[], &[])), "[]");
    assert_eq!(
        ok(
            &Type::TEXT_ARRAY,
            &array(25, &[(2, 0)], &[Some(b"a\"b"), Some(b"")])
        ),
        r#"["a\"b",""]"#
    );
    assert_eq!(
        ok(
            &Type::INT2_VECTOR,
            &array(21, &[(2, 0)], &[Some(&[0, 1]), Some(&[0, 2])])
        ),
        "[1,2]"
    );
    // Array of arrays of a domain over jsonb.
    let doc = user_type("doc", Kind::Domain(Type::JSONB));
    let docs = user_type("_doc", Kind::Array(doc));
    assert_eq!(
        ok(
            &docs,
            &array(91_000, &[(1, 1)], &[Some(b"\x01{\"k\": true}")])
        ),
        r#"[{"k": true}]"#
    );

    // Malformed: wrong counts, trailing bytes, negative lengths, absurd sizes.
    fails(&Type::INT4_ARRAY, &two_d[..two_d.len() - 1]);
    let mut trailing = arr.clone();
    trailing.push(0);
    fails(&Type::INT4_ARRAY, &trailing);
    fails(&Type::INT4_ARRAY, &array(23, &[(-1, 1)], &[]));
    fails(&Type::INT4_ARRAY, &array(23, &[(1, 1)], &[Some(&[1, 2])]));
    fails(
        &Type::INT4_ARRAY,
        &array(23, &[(i32::MAX, 1), (i32::MAX, 1)], &[]),
    );
    let mut bad_ndim = arr.clone();
    bad_ndim[..4].copy_from_slice(&1000i32.to_be_bytes());
    fails(&Type::INT4_ARRAY, &bad_ndim);
    let mut neg_len = array(23, &[(1, 1)], &[Some(&one)]);
    let at = neg_len.len() - 8;
    neg_len[at..at + 4].copy_from_slice(&(-2i32).to_be_bytes());
    fails(&Type::INT4_ARRAY, &neg_len);
    let e = fails(&Type::INT4_ARRAY, &array(23, &[(1, 1)], &[Some(&[1])]));
    assert!(e.to_string().contains("int4"), "{e}");
}

fn range(flags: u8, lower: Option<&[u8]>, upper: Option<&[u8]>) -> Vec<u8> {
    let mut v = vec![flags];
    for b in [lower, upper].into_iter().flatten() {
        v.extend_from_slice(&(b.len() as i32).to_be_bytes());
        v.extend_from_slice(b);
    }
    v
}

#[test]
fn ranges() {
    let one = 1i32.to_be_bytes();
    let ten = 10i32.to_be_bytes();
    let r = Type::INT4_RANGE;
    assert_eq!(
        ok(&r, &range(RANGE_LB_INC, Some(&one), Some(&ten))),
        r#"{"lower":1,"upper":10,"lower_inc":true,"upper_inc":false}"#
    );
    assert_eq!(ok(&r, &range(RANGE_EMPTY, None, None)), r#"{"empty":true}"#);
    assert_eq!(
        ok(&r, &range(RANGE_LB_INF, None, Some(&ten))),
        r#"{"lower":null,"upper":10,"lower_inc":false,"upper_inc":false}"#
    );
    assert_eq!(
        ok(
            &r,
            &range(RANGE_LB_INF | RANGE_UB_INF | RANGE_LB_INC, None, None)
        ),
        r#"{"lower":null,"upper":null,"lower_inc":false,"upper_inc":false}"#
    );
    assert_eq!(
        ok(&r, &range(RANGE_UB_INF | RANGE_LB_INC, Some(&one), None)),
        r#"{"lower":1,"upper":null,"lower_inc":true,"upper_inc":false}"#
    );
    let d1 = enc_date(0);
    let d2 = enc_date(31);
    assert_eq!(
        ok(
            &Type::DATE_RANGE,
            &range(RANGE_LB_INC, Some(&d1), Some(&d2))
        ),
        r#"{"lower":"2000-01-01","upper":"2000-02-01","lower_inc":true,"upper_inc":false}"#
    );
    // numeric range: bounds recurse into numeric
    let n = [0, 1, 0, 0, 0, 0, 0, 0, 0, 5];
    assert_eq!(
        ok(
            &Type::NUM_RANGE,
            &range(RANGE_LB_INC | RANGE_UB_INC, Some(&n), Some(&n))
        ),
        r#"{"lower":"5","upper":"5","lower_inc":true,"upper_inc":true}"#
    );

    fails(&r, &[]);
    fails(&r, &[RANGE_EMPTY, 0]);
    fails(&r, &range(RANGE_LB_INC, Some(&one), None));
    fails(&r, &range(RANGE_LB_INC, Some(&one), Some(&[0, 0])));

    // multirange: count, then (len, range bytes) per range
    let r1 = range(RANGE_LB_INC, Some(&one), Some(&ten));
    let r2 = range(RANGE_UB_INF | RANGE_LB_INC, Some(&ten), None);
    let mut mr = 2i32.to_be_bytes().to_vec();
    for x in [&r1, &r2] {
        mr.extend_from_slice(&(x.len() as i32).to_be_bytes());
        mr.extend_from_slice(x);
    }
    assert_eq!(
        ok(&Type::INT4MULTI_RANGE, &mr),
        concat!(
            r#"[{"lower":1,"upper":10,"lower_inc":true,"upper_inc":false},"#,
            r#"{"lower":10,"upper":null,"lower_inc":true,"upper_inc":false}]"#
        )
    );
    assert_eq!(ok(&Type::INT4MULTI_RANGE, &0i32.to_be_bytes()), "[]");
    fails(&Type::INT4MULTI_RANGE, &mr[..mr.len() - 1]);
    fails(&Type::INT4MULTI_RANGE, &(-1i32).to_be_bytes());
    // range arrays
    let ra = array(3904, &[(1, 1)], &[Some(&r1)]);
    assert_eq!(
        ok(&Type::INT4_RANGE_ARRAY, &ra),
        r#"[{"lower":1,"upper":10,"lower_inc":true,"upper_inc":false}]"#
    );
}

#[test]
fn composites() {
    let inner = user_type(
        "point2",
        Kind::Composite(vec![
            Field::new("x".into(), Type::FLOAT8),
            Field::new("y".into(), Type::FLOAT8),
        ]),
    );
    let outer = user_type(
        "shape",
        Kind::Composite(vec![
            Field::new("name \"q\"".into(), Type::TEXT),
            Field::new("at".into(), inner.clone()),
            Field::new("tags".into(), Type::TEXT_ARRAY),
            Field::new("note".into(), Type::TEXT),
        ]),
    );
    let at = record(&[
        (701, Some(&1.5f64.to_be_bytes())),
        (701, Some(&(-2.0f64).to_be_bytes())),
    ]);
    let tags = array(25, &[(1, 1)], &[Some(b"t")]);
    let raw = record(&[
        (25, Some(b"sq")),
        (0, Some(&at)),
        (1009, Some(&tags)),
        (25, None),
    ]);
    assert_eq!(
        ok(&outer, &raw),
        r#"{"name \"q\"":"sq","at":{"x":1.5,"y":-2.0},"tags":["t"],"note":null}"#
    );
    // field count mismatch, truncation, trailing bytes
    fails(&inner, &record(&[(701, Some(&1.5f64.to_be_bytes()))]));
    fails(&outer, &raw[..raw.len() - 1]);
    let mut trailing = at.clone();
    trailing.push(0);
    fails(&inner, &trailing);
    let e = fails(
        &outer,
        &record(&[
            (25, Some(b"sq")),
            (0, Some(&[0, 0, 0, 2])),
            (1009, None),
            (25, None),
        ]),
    );
    assert!(e.to_string().contains("point2"), "{e}");
}

#[test]
fn anyarray_uses_the_element_oid_of_the_data() {
    let arr = array(25, &[(2, 1)], &[Some(b"a"), None]);
    assert_eq!(ok(&Type::ANYARRAY, &arr), r#"["a",null]"#);
    let unknown = array(99_999, &[(1, 1)], &[Some(b"a")]);
    assert_eq!(
        ok(&Type::ANYARRAY, &unknown),
        format!("\"\\\\x{}\"", hex(&unknown))
    );
    fails(&Type::ANYARRAY, &arr[..arr.len() - 1]);
    check_no_panic(&Type::ANYARRAY, &[0, 0, 0, 1]);
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn anonymous_records() {
    let raw = record(&[
        (23, Some(&7i32.to_be_bytes())),
        (25, Some(b"a")),
        (25, None),
        (99_999, Some(b"\x01\x02")),
    ]);
    assert_eq!(ok(&Type::RECORD, &raw), r#"[7,"a",null,"\\x0102"]"#);
    assert_eq!(ok(&Type::RECORD, &record(&[])), "[]");
    // record inside record inside record …: bounded by the depth limit
    let mut nested = record(&[(23, Some(&1i32.to_be_bytes()))]);
    for _ in 0..10 {
        nested = record(&[(2249, Some(&nested))]);
    }
    assert_eq!(
        ok(&Type::RECORD, &nested),
        format!("{}1{}", "[".repeat(11), "]".repeat(11))
    );
    for _ in 0..40 {
        nested = record(&[(2249, Some(&nested))]);
    }
    assert!(matches!(
        fails(&Type::RECORD, &nested),
        ValueError::TooDeep { .. }
    ));
    fails(&Type::RECORD, &(-1i32).to_be_bytes());
    fails(&Type::RECORD, &raw[..raw.len() - 1]);
}

/// Tiny deterministic generator for the random-input test (no extra dependency).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
}

fn check_no_panic(ty: &Type, raw: &[u8]) {
    let mut out = Vec::new();
    if write_value(&mut out, ty, Some(raw)).is_ok() {
        if let Err(e) = serde_json::from_slice::<serde_json::Value>(&out) {
            panic!(
                "{ty} {raw:?}: invalid JSON {:?}: {e}",
                String::from_utf8_lossy(&out)
            );
        }
    } else {
        assert!(out.is_empty());
    }
}

#[test]
fn random_bytes_never_panic_and_successes_are_json() {
    let mut types: Vec<Type> = (0..6000).filter_map(Type::from_oid).collect();
    let comp = user_type(
        "c",
        Kind::Composite(vec![
            Field::new("a".into(), Type::INT4),
            Field::new("b".into(), Type::TEXT_ARRAY),
        ]),
    );
    types.push(user_type("_c", Kind::Array(comp.clone())));
    types.push(comp);
    types.push(user_type("e", Kind::Enum(vec![])));
    types.push(user_type("d", Kind::Domain(Type::NUMERIC)));
    let mut rng = Lcg(0x5eed);
    for ty in &types {
        for len in 0..48 {
            for _ in 0..8 {
                // Small values make valid-looking lengths and counts likely.
                let raw: Vec<u8> = (0..len)
                    .map(|_| match rng.next() % 4 {
                        0 => 0,
                        1 => 1,
                        2 => 0xff,
                        _ => rng.next() as u8,
                    })
                    .collect();
                check_no_panic(ty, &raw);
            }
        }
    }
}

#[test]
fn every_prefix_of_valid_values_is_handled() {
    let one = 1i32.to_be_bytes();
    let arr = array(23, &[(2, 1), (1, 1)], &[Some(&one), None]);
    let comp = user_type(
        "c",
        Kind::Composite(vec![
            Field::new("a".into(), Type::INT4_ARRAY),
            Field::new("b".into(), Type::INT4_RANGE),
        ]),
    );
    let rng = range(RANGE_LB_INC, Some(&one), Some(&one));
    let rec = record(&[(1007, Some(&arr)), (3904, Some(&rng))]);
    let cases: Vec<(Type, Vec<u8>)> = vec![
        (Type::INT4_ARRAY, arr.clone()),
        (Type::INT4_RANGE, rng.clone()),
        (comp.clone(), rec.clone()),
        (Type::RECORD, rec),
        (
            Type::NUMERIC,
            vec![0, 2, 0, 0, 0, 0, 0, 4, 0, 123, 0x11, 0x94],
        ),
        (Type::INTERVAL, interval(1, 2, 3)),
    ];
    for (ty, raw) in cases {
        assert!(
            write_value(&mut Vec::new(), &ty, Some(&raw)).is_ok(),
            "{ty}"
        );
        for cut in 0..raw.len() {
            check_no_panic(&ty, &raw[..cut]);
        }
    }
}
