//! Value representations (`docs/values.md`), both directions, through the real daemon: each
//! case is read as a result (exact JSON and type name) and then sent back as a parameter, as the
//! JSON the daemon produced, and PostgreSQL confirms it is the same value.

use serde_json::{json, Value};

use crate::support::{RawClient, TestDb};

const TYPES: &str = "
    CREATE TYPE mood AS ENUM ('sad', 'happy');
    CREATE DOMAIN posint AS int CHECK (VALUE > 0);
    CREATE TYPE pair AS (n int, label text);
";

/// One value: how to write it in SQL, the JSON the daemon must produce, the column type name.
struct Case {
    /// The SQL type parameters are cast to for the round trip.
    ty: &'static str,
    /// A SQL expression of that type.
    sql: String,
    json: Value,
    type_name: &'static str,
}

fn case(ty: &'static str, sql: impl Into<String>, json: Value, type_name: &'static str) -> Case {
    Case {
        ty,
        sql: sql.into(),
        json,
        type_name,
    }
}

/// Reads every case as a result and sends it back as a parameter; returns the mismatches.
async fn check_cases<'a>(
    c: &mut RawClient,
    cases: impl IntoIterator<Item = &'a Case>,
) -> Vec<String> {
    let mut failures = Vec::new();
    for case in cases {
        let read = format!("SELECT {} AS v", case.sql);
        let r = c.call(json!({"op": "query", "sql": read})).await;
        if r["ok"] != json!(true) {
            failures.push(format!("{read}: failed: {r}"));
            continue;
        }
        if r["columns"][0]["type"] != json!(case.type_name) {
            failures.push(format!(
                "{read}: type {} instead of {}",
                r["columns"][0]["type"], case.type_name
            ));
        }
        if r["rows"][0][0] != case.json {
            failures.push(format!(
                "{read}: got {} instead of {}",
                r["rows"][0][0], case.json
            ));
        }
        // And back: the JSON form as a parameter is the same value.
        let back = format!(
            "SELECT ($1::{}) IS NOT DISTINCT FROM ({}) AS same",
            case.ty, case.sql
        );
        let r = c
            .call(json!({"op": "query", "sql": back, "params": [case.json]}))
            .await;
        if r["ok"] != json!(true) || r["rows"] != json!([[true]]) {
            failures.push(format!("{back} with $1 = {}: {r}", case.json));
        }
    }
    failures
}

fn assert_no_failures(failures: Vec<String>) {
    assert!(
        failures.is_empty(),
        "{} value mismatch(es):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

async fn values_client() -> (TestDb, crate::support::TestDaemon, RawClient) {
    let db = TestDb::new().await;
    db.setup(TYPES).await;
    let daemon = db.daemon().await;
    let c = daemon.connected().await;
    (db, daemon, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_stay_exact() {
    let (_db, _daemon, mut c) = values_client().await;
    let forty_digits = "1234567890123456789012345678901234567890.0123456789";
    let cases = [
        case("int2", "32767::int2", json!(32767), "int2"),
        case("int2", "(-32768)::int2", json!(-32768), "int2"),
        case("int4", "2147483647", json!(2147483647), "int4"),
        case("int4", "(-2147483648)::int4", json!(-2147483648i64), "int4"),
        case(
            "int8",
            "9223372036854775807::int8",
            json!(9223372036854775807i64),
            "int8",
        ),
        case(
            "int8",
            "(-9223372036854775808)::int8",
            json!(i64::MIN),
            "int8",
        ),
        case(
            "numeric",
            format!("'{forty_digits}'::numeric"),
            json!(forty_digits),
            "numeric",
        ),
        case("numeric", "1.50::numeric", json!("1.50"), "numeric"),
        case(
            "numeric",
            "'-0.000001'::numeric",
            json!("-0.000001"),
            "numeric",
        ),
        case("numeric", "'NaN'::numeric", json!("NaN"), "numeric"),
        case("float8", "1.5::float8", json!(1.5), "float8"),
        case("float8", "0.1::float8", json!(0.1), "float8"),
        case("float8", "'NaN'::float8", json!("NaN"), "float8"),
        case("float8", "'Infinity'::float8", json!("Infinity"), "float8"),
        case(
            "float8",
            "'-Infinity'::float8",
            json!("-Infinity"),
            "float8",
        ),
        case("float4", "1.1::float4", json!(1.1), "float4"),
        case("float4", "'NaN'::float4", json!("NaN"), "float4"),
        case("bool", "true", json!(true), "bool"),
        case("bool", "false", json!(false), "bool"),
        case("int4", "NULL::int4", Value::Null, "int4"),
    ];
    assert_no_failures(check_cases(&mut c, &cases).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_as_parameters_keep_every_digit() {
    let (_db, _daemon, mut c) = values_client().await;
    // JSON numbers are passed as written: an int8 beyond 2^53 and a 40-digit numeric survive.
    let r = c
        .query(
            "SELECT $1::int8 AS big, $2::numeric AS exact, $3::int8 + 1 AS next",
            json!([9007199254740993i64, 0, "9223372036854775806"]),
        )
        .await;
    assert_eq!(
        r["rows"],
        json!([[9007199254740993i64, "0", 9223372036854775807i64]])
    );
    let raw_numeric = "12345678901234567890123456789012345678901.5";
    c.send_raw(&crate::support::client::encode_text(&format!(
        r#"{{"id": 500, "op": "query", "sql": "SELECT $1::numeric::text AS t", "params": [{raw_numeric}]}}"#
    )))
    .await;
    let r = c.recv().await;
    assert_eq!(r["id"], json!(500), "{r}");
    assert_eq!(
        r["rows"],
        json!([[raw_numeric]]),
        "a JSON number given to numeric is not rounded through a float"
    );
    // Strings work for every type: the seed sends ["10"].
    let r = c
        .query(
            "SELECT $1::int4 + $2::int2 + $3::int8 AS sum, $4::float8 AS f, $5::bool AS b",
            json!(["10", "20", "30", "2.5", "true"]),
        )
        .await;
    assert_eq!(r["rows"], json!([[60, 2.5, true]]));
    let r = c.query("SELECT $1::float8 AS nan", json!(["NaN"])).await;
    assert_eq!(r["rows"], json!([["NaN"]]));
    let r = c
        .query("SELECT $1::int4 IS NULL AS is_null", json!([null]))
        .await;
    assert_eq!(r["rows"], json!([[true]]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_bytes_and_identifiers() {
    let (_db, _daemon, mut c) = values_client().await;
    let tricky = "héllo \"wörld\" \\ 'quoted'\t\n\r\u{1}\u{7f} 😀 終わり";
    let cases = [
        case(
            "text",
            r#"E'héllo \"wörld\" \\ ''quoted''\t\n\r\x01\x7f \U0001F600 終わり'"#,
            json!(tricky),
            "text",
        ),
        case("text", "''", json!(""), "text"),
        case("varchar", "'abc'::varchar(10)", json!("abc"), "varchar"),
        case("bpchar", "'ab'::char(4)", json!("ab  "), "bpchar"),
        case("name", "'a_name'::name", json!("a_name"), "name"),
        case("bytea", r"'\x00ff10'::bytea", json!(r"\x00ff10"), "bytea"),
        case("bytea", "''::bytea", json!(r"\x"), "bytea"),
        case(
            "uuid",
            "'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'::uuid",
            json!("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
            "uuid",
        ),
        case(
            "inet",
            "'192.168.0.1/24'::inet",
            json!("192.168.0.1/24"),
            "inet",
        ),
        case("inet", "'10.1.2.3'::inet", json!("10.1.2.3"), "inet"),
        case("inet", "'::1'::inet", json!("::1"), "inet"),
        case("cidr", "'10.0.0.0/8'::cidr", json!("10.0.0.0/8"), "cidr"),
        case(
            "cidr",
            "'2001:db8::/32'::cidr",
            json!("2001:db8::/32"),
            "cidr",
        ),
        case(
            "macaddr",
            "'08:00:2B:01:02:03'::macaddr",
            json!("08:00:2b:01:02:03"),
            "macaddr",
        ),
    ];
    assert_no_failures(check_cases(&mut c, &cases).await);

    // The tricky text survives as a parameter too, and a NUL cannot be sent to text.
    let r = c
        .query(
            "SELECT $1::text AS t, length($1::text) AS n",
            json!([tricky]),
        )
        .await;
    assert_eq!(r["rows"], json!([[tricky, tricky.chars().count()]]));
    c.expect_error(
        json!({"op": "query", "sql": "SELECT $1::text", "params": ["a\u{0}b"]}),
        "bad_parameter",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dates_times_and_intervals() {
    let (_db, _daemon, mut c) = values_client().await;
    let cases = [
        case("date", "'2024-02-29'::date", json!("2024-02-29"), "date"),
        case(
            "date",
            "'0044-03-15 BC'::date",
            json!("0044-03-15 BC"),
            "date",
        ),
        case("date", "'infinity'::date", json!("infinity"), "date"),
        case(
            "time",
            "'13:45:06.789'::time",
            json!("13:45:06.789"),
            "time",
        ),
        case("time", "'00:00'::time", json!("00:00:00"), "time"),
        case(
            "timetz",
            "'13:45:06+02'::timetz",
            json!("13:45:06+02:00"),
            "timetz",
        ),
        case(
            "timetz",
            "'13:45:06-05:30'::timetz",
            json!("13:45:06-05:30"),
            "timetz",
        ),
        case(
            "timestamp",
            "'2024-02-29 13:45:06.123456'::timestamp",
            json!("2024-02-29T13:45:06.123456"),
            "timestamp",
        ),
        case(
            "timestamp",
            "'-infinity'::timestamp",
            json!("-infinity"),
            "timestamp",
        ),
        case(
            "timestamptz",
            "'2024-02-29 13:45:06+02'::timestamptz",
            json!("2024-02-29T11:45:06Z"),
            "timestamptz",
        ),
        case(
            "interval",
            "'1 year 2 months 3 days 04:05:06.5'::interval",
            json!("P1Y2M3DT4H5M6.5S"),
            "interval",
        ),
        case(
            "interval",
            "'-1 day +02:00'::interval",
            json!("P-1DT2H"),
            "interval",
        ),
        case("interval", "'0'::interval", json!("PT0S"), "interval"),
    ];
    assert_no_failures(check_cases(&mut c, &cases).await);

    // timestamptz output does not depend on the session's time zone.
    c.call_ok(json!({"op": "begin"})).await;
    c.execute("SET LOCAL TIME ZONE 'Asia/Tokyo'", json!([]))
        .await;
    assert_eq!(
        c.scalar("SELECT '2024-02-29 13:45:06+02'::timestamptz", json!([]))
            .await,
        json!("2024-02-29T11:45:06Z")
    );
    c.call_ok(json!({"op": "rollback"})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_and_jsonb_are_embedded() {
    let (_db, _daemon, mut c) = values_client().await;
    let doc = json!({"a": [1, 2.5, "x", null, {"b": true}], "ü": "\"quoted\"\n"});
    let literal = doc.to_string().replace('\'', "''");
    let cases = [
        case("jsonb", format!("'{literal}'::jsonb"), doc.clone(), "jsonb"),
        case("jsonb", "'[]'::jsonb", json!([]), "jsonb"),
        case(
            "jsonb",
            "'12345678901234567890'::jsonb",
            json!(12345678901234567890u64),
            "jsonb",
        ),
    ];
    assert_no_failures(check_cases(&mut c, &cases).await);

    // JSON scalars inside jsonb are embedded too. (As parameters a JSON string is always
    // PostgreSQL input text and a JSON null is SQL NULL, so those two are checked one way.)
    let r = c
        .query(
            "SELECT '\"just a string\"'::jsonb AS s, 'null'::jsonb AS n, NULL::jsonb AS sql_null",
            json!([]),
        )
        .await;
    assert_eq!(r["rows"], json!([["just a string", null, null]]));
    let r = c
        .query(
            "SELECT $1::jsonb = '\"just a string\"'::jsonb AS same",
            json!(["\"just a string\""]),
        )
        .await;
    assert_eq!(r["rows"], json!([[true]]));

    let r = c
        .query(&format!("SELECT '{literal}'::json AS j"), json!([]))
        .await;
    assert_eq!(r["columns"][0]["type"], json!("json"));
    assert_eq!(r["rows"][0][0], doc);

    // JSON values (objects, arrays, scalars) as json/jsonb parameters.
    let r = c
        .query(
            "SELECT $1::jsonb -> 'a' -> 4 AS inner_obj, $2::json AS arr, $3::jsonb AS s",
            json!([doc, [1, [2, 3]], "\"text\""]),
        )
        .await;
    assert_eq!(r["rows"], json!([[{"b": true}, [1, [2, 3]], "text"]]));
    // JSON SQL null vs JSON null: a JSON null parameter is SQL NULL.
    let r = c
        .query("SELECT $1::jsonb IS NULL AS is_null", json!([null]))
        .await;
    assert_eq!(r["rows"], json!([[true]]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arrays_in_one_and_more_dimensions() {
    let (_db, _daemon, mut c) = values_client().await;
    let cases = [
        case("int4[]", "ARRAY[1, 2, 3]", json!([1, 2, 3]), "_int4"),
        case(
            "int4[]",
            "ARRAY[[1, 2], [3, 4], [5, 6]]",
            json!([[1, 2], [3, 4], [5, 6]]),
            "_int4",
        ),
        case(
            "text[]",
            r#"ARRAY['a', NULL, 'c,d', 'e"f', 'g\h', '']"#,
            json!(["a", null, "c,d", "e\"f", "g\\h", ""]),
            "_text",
        ),
        case("int8[]", "'{}'::int8[]", json!([]), "_int8"),
        case(
            "numeric[]",
            "ARRAY[1.10, NULL, 12345678901234567890.5]::numeric[]",
            json!(["1.10", null, "12345678901234567890.5"]),
            "_numeric",
        ),
        case(
            "bool[]",
            "ARRAY[[true], [false]]",
            json!([[true], [false]]),
            "_bool",
        ),
        case(
            "date[]",
            "ARRAY['2024-01-01'::date, NULL]",
            json!(["2024-01-01", null]),
            "_date",
        ),
        case(
            "jsonb[]",
            r#"ARRAY['{"a": 1}'::jsonb, '[1, 2]'::jsonb]"#,
            json!([{"a": 1}, [1, 2]]),
            "_jsonb",
        ),
        case(
            "mood[]",
            "ARRAY['sad', 'happy']::mood[]",
            json!(["sad", "happy"]),
            "_mood",
        ),
    ];
    assert_no_failures(check_cases(&mut c, &cases).await);

    // Arrays as parameters: JSON arrays or PostgreSQL's literal as a string.
    let r = c
        .query(
            "SELECT array_length($1::int4[], 1) AS n, $2::text[] AS t, array_ndims($3::int4[]) AS dims",
            json!([[1, null, 3], "{x,\"y z\"}", [[1, 2], [3, 4]]]),
        )
        .await;
    assert_eq!(r["rows"], json!([[3, ["x", "y z"], 2]]));
    let r = c
        .query("SELECT 2 = ANY($1::int8[]) AS found", json!([[1, 2, 3]]))
        .await;
    assert_eq!(r["rows"], json!([[true]]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enums_domains_composites_and_ranges() {
    let (_db, _daemon, mut c) = values_client().await;
    let cases = [
        case("mood", "'happy'::mood", json!("happy"), "mood"),
        case(
            "pair",
            "ROW(7, 'seven')::pair",
            json!({"n": 7, "label": "seven"}),
            "pair",
        ),
        case(
            "pair",
            "ROW(NULL, 'q\"uote')::pair",
            json!({"n": null, "label": "q\"uote"}),
            "pair",
        ),
        case(
            "int4range",
            "int4range(1, 5)",
            json!({"lower": 1, "upper": 5, "lower_inc": true, "upper_inc": false}),
            "int4range",
        ),
        case(
            "int8range",
            "'[10,)'::int8range",
            json!({"lower": 10, "upper": null, "lower_inc": true, "upper_inc": false}),
            "int8range",
        ),
        case(
            "int4range",
            "'empty'::int4range",
            json!({"empty": true}),
            "int4range",
        ),
        case(
            "numrange",
            "numrange(1.5, 2.25, '(]')",
            json!({"lower": "1.5", "upper": "2.25", "lower_inc": false, "upper_inc": true}),
            "numrange",
        ),
        case(
            "tstzrange",
            "tstzrange('2024-01-01 00:00+00', '2024-01-02 00:00+00')",
            json!({"lower": "2024-01-01T00:00:00Z", "upper": "2024-01-02T00:00:00Z", "lower_inc": true, "upper_inc": false}),
            "tstzrange",
        ),
        case(
            "daterange",
            "daterange('2024-01-01', '2024-02-01')",
            json!({"lower": "2024-01-01", "upper": "2024-02-01", "lower_inc": true, "upper_inc": false}),
            "daterange",
        ),
    ];
    // Composite and range parameters are given in PostgreSQL's text form (strings) below;
    // the JSON object form is a result representation only, so check the results here and
    // the strings separately.
    let (objects, scalars): (Vec<&Case>, Vec<&Case>) =
        cases.iter().partition(|c| c.json.is_object());
    let mut failures = Vec::new();
    for case in objects {
        let r = c
            .query(&format!("SELECT {} AS v", case.sql), json!([]))
            .await;
        if r["rows"][0][0] != case.json || r["columns"][0]["type"] != json!(case.type_name) {
            failures.push(format!(
                "{}: got {} ({}), expected {} ({})",
                case.sql, r["rows"][0][0], r["columns"][0]["type"], case.json, case.type_name
            ));
        }
    }
    failures.extend(check_cases(&mut c, scalars).await);
    assert_no_failures(failures);

    let r = c
        .query(
            "SELECT $1::pair = ROW(7, 'seven')::pair AS same_pair, $2::int4range = int4range(1, 5) AS same_range, $3::mood AS m",
            json!(["(7,seven)", "[1,5)", "sad"]),
        )
        .await;
    assert_eq!(r["rows"], json!([[true, true, "sad"]]));

    // Domains read as their base type's value; parameters obey the domain's check.
    let r = c.query("SELECT 5::posint AS p", json!([])).await;
    assert_eq!(r["rows"], json!([[5]]));
    let r = c.query("SELECT $1::posint AS p", json!(["7"])).await;
    assert_eq!(r["rows"], json!([[7]]));
    c.expect_error(
        json!({"op": "query", "sql": "SELECT $1::posint", "params": [0]}),
        "23514",
    )
    .await;
    c.expect_error(
        json!({"op": "query", "sql": "SELECT $1::mood", "params": ["angry"]}),
        "22P02",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_types_use_the_lossless_hex_fallback() {
    let (_db, _daemon, mut c) = values_client().await;
    // tsquery has no dedicated JSON form: its binary representation is sent as hex, exactly
    // the bytes of tsquerysend().
    let r = c
        .query(
            "SELECT 'fat & (rat | cat)'::tsquery AS q, tsquerysend('fat & (rat | cat)'::tsquery) AS bytes",
            json!([]),
        )
        .await;
    assert_eq!(r["columns"][0]["type"], json!("tsquery"));
    let q = r["rows"][0][0].as_str().expect("a string");
    assert!(q.starts_with(r"\x"), "hex fallback: {q}");
    assert_eq!(
        r["rows"][0][0], r["rows"][0][1],
        "the fallback is the binary form"
    );
    // A tsquery parameter is given in PostgreSQL's text form.
    let r = c
        .query(
            "SELECT $1::tsquery = 'fat & (rat | cat)'::tsquery AS same",
            json!(["fat & (rat | cat)"]),
        )
        .await;
    assert_eq!(r["rows"], json!([[true]]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_of_every_kind_round_trips_through_insert_and_select() {
    let db = TestDb::new().await;
    db.setup(TYPES).await;
    db.setup(
        "CREATE TABLE every (
            id int8 PRIMARY KEY, n numeric, f float8, t text, b bytea, u uuid, d date,
            ts timestamptz, iv interval, j jsonb, a int4[], m mood, p posint, r int4range,
            ip inet, ok bool)",
    )
    .await;
    let daemon = db.daemon().await;
    let mut c = daemon.connected().await;
    let row = json!([
        i64::MAX,
        "98765432109876543210.0123456789",
        "-Infinity",
        "tab\tnewline\n\"quote\"",
        r"\xdeadbeef",
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "2000-01-01",
        "1999-12-31T23:59:59.999999Z",
        "P1DT1H",
        {"nested": {"list": [1, "two", null]}},
        [[1, 2], [3, 4]],
        "happy",
        42,
        "[3,7)",
        "fe80::1/64",
        false
    ]);
    let r = c
        .execute(
            "INSERT INTO every VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
            row.clone(),
        )
        .await;
    assert_eq!(r["rows_affected"], json!(1));
    let r = c.query("SELECT * FROM every", json!([])).await;
    let mut expected = row.as_array().unwrap().clone();
    expected[13] = json!({"lower": 3, "upper": 7, "lower_inc": true, "upper_inc": false});
    assert_eq!(r["rows"], json!([expected]));
    let types: Vec<&str> = r["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        &types[..12],
        &[
            "int8",
            "numeric",
            "float8",
            "text",
            "bytea",
            "uuid",
            "date",
            "timestamptz",
            "interval",
            "jsonb",
            "_int4",
            "mood"
        ]
    );
    assert_eq!(
        types[12..],
        ["int4", "int4range", "inet", "bool"],
        "a domain column is reported with its base type"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_other_documented_built_ins() {
    let (_db, _daemon, mut c) = values_client().await;
    // Result side only: these have no equality operator or are documented as one-way.
    let reads = [
        ("12.34::money", json!(1234)),
        ("'(1,2)'::point", json!("(1,2)")),
        ("'<(1,2),3>'::circle", json!("<(1,2),3>")),
        ("B'1010'", json!("1010")),
        (
            "'08:00:2b:01:02:03:04:05'::macaddr8",
            json!("08:00:2b:01:02:03:04:05"),
        ),
        ("'q'::\"char\"", json!("q")),
        ("'16/B374D848'::pg_lsn", json!("16/B374D848")),
        ("'a fat cat'::tsvector", json!("'a' 'cat' 'fat'")),
        (
            "'{[1,3),[5,7)}'::int4multirange",
            json!([
                {"lower": 1, "upper": 3, "lower_inc": true, "upper_inc": false},
                {"lower": 5, "upper": 7, "lower_inc": true, "upper_inc": false}
            ]),
        ),
        ("ROW(1, 'a', NULL, ARRAY[2])", json!([1, "a", null, [2]])),
        ("'pg_class'::regclass", json!(1259)),
        ("1e300::float8", json!(1e300)),
        ("2::float8", json!(2.0)),
        ("pg_sleep(0)", Value::Null),
    ];
    let mut failures = Vec::new();
    for (sql, expected) in reads {
        let r = c
            .call(json!({"op": "query", "sql": format!("SELECT {sql} AS v")}))
            .await;
        if r["ok"] != json!(true) || r["rows"][0][0] != expected {
            failures.push(format!("SELECT {sql}: expected {expected}, got {r}"));
        }
    }
    assert_no_failures(failures);
    let r = c.query("SELECT 2::float8 AS two", json!([])).await;
    let column = &r["rows"][0][0];
    assert!(
        column.is_f64(),
        "integral floats keep their .0 so they stay floats in every client: {column}"
    );
}
