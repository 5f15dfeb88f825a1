"""Values both ways: decoding by column type, encoding parameters, and round trips through
a real daemon and PostgreSQL for every type in the README's table."""

from __future__ import annotations

import math
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from uuid import UUID

import pytest

from qail_ipc import Interval, Range
from qail_ipc._values import decode_rows, decoder_for, encode_param, encode_params

UTC = timezone.utc


# -- decoding (unit) ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "type_name, wire, expected",
    [
        ("float8", "NaN", "nan"),
        ("float8", "Infinity", math.inf),
        ("float4", "-Infinity", -math.inf),
        ("float8", 1.5, 1.5),
        ("numeric", "123456789012345678901234567890.000000001",
         Decimal("123456789012345678901234567890.000000001")),
        ("numeric", "NaN", "nan"),
        ("numeric", "-Infinity", Decimal("-Infinity")),
        ("bytea", "\\x00ff10", b"\x00\xff\x10"),
        ("bytea", "\\x", b""),
        ("uuid", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")),
        ("date", "2024-02-29", date(2024, 2, 29)),
        ("date", "infinity", "infinity"),
        ("date", "0044-03-15 BC", "0044-03-15 BC"),
        ("date", "10000-01-01", "10000-01-01"),
        ("time", "12:34:56.5", time(12, 34, 56, 500000)),
        ("time", "00:00:00", time(0, 0)),
        ("time", "24:00:00", "24:00:00"),
        ("timetz", "12:00:00-08:00", time(12, 0, tzinfo=timezone(timedelta(hours=-8)))),
        ("timetz", "01:02:03.5+05:30:15",
         time(1, 2, 3, 500000, timezone(timedelta(hours=5, minutes=30, seconds=15)))),
        ("timestamp", "2024-01-31T12:34:56.123456", datetime(2024, 1, 31, 12, 34, 56, 123456)),
        ("timestamp", "-infinity", "-infinity"),
        ("timestamptz", "2024-01-31T12:34:56Z", datetime(2024, 1, 31, 12, 34, 56, tzinfo=UTC)),
        ("timestamptz", "0044-03-15T12:00:00Z BC", "0044-03-15T12:00:00Z BC"),
        ("interval", "PT0S", timedelta(0)),
        ("interval", "P3DT4H5M6.5S", timedelta(days=3, hours=4, minutes=5, seconds=6.5)),
        ("interval", "PT-0.5S", timedelta(seconds=-0.5)),
        ("interval", "P1DT-0.000001S", timedelta(days=1, microseconds=-1)),
        ("interval", "P1Y2M3DT4H", Interval(14, 3, 4 * 3600 * 10**6)),
        ("interval", "P-1Y-2M3DT-4H-5M-6S", Interval(-14, 3, -(4 * 3600 + 5 * 60 + 6) * 10**6)),
        ("interval", "infinity", "infinity"),
        ("_int4", [[1, None], [3, 4]], [[1, None], [3, 4]]),
        ("_numeric", ["1.5", None], [Decimal("1.5"), None]),
        ("_date", [["2024-01-01"]], [[date(2024, 1, 1)]]),
        ("int4range", {"lower": 1, "upper": 5, "lower_inc": True, "upper_inc": False},
         Range(1, 5, True, False)),
        ("daterange", {"lower": "2024-01-01", "upper": None, "lower_inc": True, "upper_inc": False},
         Range(date(2024, 1, 1), None, True, False)),
        ("numrange", {"empty": True}, Range(empty=True, lower_inc=False)),
        ("int8multirange", [{"lower": 1, "upper": 3, "lower_inc": True, "upper_inc": False}],
         [Range(1, 3, True, False)]),
        ("_tstzrange", [{"lower": "2024-01-01T00:00:00Z", "upper": None, "lower_inc": True,
                         "upper_inc": False}],
         [Range(datetime(2024, 1, 1, tzinfo=UTC), None, True, False)]),
        ("inet", "192.168.0.1/24", "192.168.0.1/24"),
        ("my_enum", "happy", "happy"),
    ],
)
def test_decode(type_name, wire, expected):
    decoder = decoder_for(type_name)
    value = wire if decoder is None else decoder(wire)
    if expected == "nan":
        assert value != value
    else:
        assert value == expected
        assert type(value) is type(expected)


def test_decode_rows_in_place_and_nulls():
    rows = [["1.5", None, 3], [None, "\\x01", None]]
    assert decode_rows(["numeric", "bytea", "int4"], rows) == [
        [Decimal("1.5"), None, 3], [None, b"\x01", None],
    ]
    same = [[1, "a"]]
    assert decode_rows(["int4", "text"], same) is same


# -- encoding (unit) ---------------------------------------------------------------------------


def test_encode_params():
    assert encode_params(["10", 5, None, True]) == ["10", 5, None, True]
    assert encode_param(1.25) == 1.25
    assert [encode_param(v) for v in (math.nan, math.inf, -math.inf)] == [
        "NaN", "Infinity", "-Infinity",
    ]
    assert encode_param(Decimal("1.10")) == "1.10"
    assert encode_param(b"\x00\xff") == "\\x00ff"
    assert encode_param(bytearray(b"a")) == "\\x61"
    assert encode_param(memoryview(b"a")) == "\\x61"
    assert encode_param(UUID(int=1)) == "00000000-0000-0000-0000-000000000001"
    assert encode_param(date(2024, 1, 2)) == "2024-01-02"
    assert encode_param(datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2024-01-02T03:04:05+00:00"
    assert encode_param(time(3, 4, 5, 6)) == "03:04:05.000006"
    assert encode_param(timedelta(seconds=-1)) == "-1 days 86399.000000 seconds"
    assert encode_param(Interval(14, 3, -1_500_000)) == "14 months 3 days -1.500000 seconds"
    assert encode_param(Range(1, 5)) == '["1","5")'
    assert encode_param(Range(None, date(2024, 1, 1), False, True)) == '(,"2024-01-01"]'
    assert encode_param(Range(empty=True)) == "empty"
    assert encode_param([1, [Decimal("2")], None]) == [1, ["2"], None]
    assert encode_param({"a": [Decimal("1")], 2: None}) == {"a": ["1"], "2": None}
    with pytest.raises(TypeError):
        encode_param(object())


# -- round trips through the daemon ------------------------------------------------------------


def roundtrip(client, pg_type, value):
    """Sends ``value`` as a ``pg_type`` parameter and returns what comes back."""
    result = client.query_result("SELECT $1::%s AS v" % pg_type, [value])
    return result.columns[0].type, result.rows[0][0]


@pytest.mark.parametrize(
    "pg_type, value, type_name",
    [
        ("int2", -32768, "int2"),
        ("int4", 2147483647, "int4"),
        ("int8", -9223372036854775808, "int8"),
        ("float4", 1.5, "float4"),
        ("float8", 0.1, "float8"),
        ("float8", math.inf, "float8"),
        ("float8", -math.inf, "float8"),
        ("numeric", Decimal("-123456789012345678901234567890.123456789"), "numeric"),
        ("numeric", Decimal("Infinity"), "numeric"),
        ("numeric", Decimal("1.10"), "numeric"),
        ("text", "héllo \"quoted\" \\ back\nslash ✓", "text"),
        ("varchar", "", "varchar"),
        ("bool", True, "bool"),
        ("bool", False, "bool"),
        ("date", date(2024, 2, 29), "date"),
        ("date", date(1, 1, 1), "date"),
        ("time", time(23, 59, 59, 999999), "time"),
        ("timetz", time(12, 0, tzinfo=timezone(timedelta(hours=5, minutes=30))), "timetz"),
        ("timestamp", datetime(2024, 1, 31, 12, 34, 56, 123456), "timestamp"),
        ("timestamptz", datetime(2024, 1, 31, 12, 34, 56, 5, tzinfo=UTC), "timestamptz"),
        ("interval", timedelta(days=3, hours=4, microseconds=7), "interval"),
        ("interval", timedelta(seconds=-90), "interval"),
        ("interval", Interval(14, -3, 1_500_000), "interval"),
        ("uuid", UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"), "uuid"),
        ("bytea", bytes(range(256)), "bytea"),
        ("bytea", b"", "bytea"),
        ("jsonb", {"a": [1, 2, {"b": None}], "c": "d", "e": 1.5, "f": True}, "jsonb"),
        ("json", [1, "two", None, {"x": []}], "json"),
        ("int4[]", [1, 2, None, 4], "_int4"),
        ("int4[]", [[1, 2], [3, 4]], "_int4"),
        ("int8[]", [], "_int8"),
        ("text[]", ["a", "b,c", 'quote"', "back\\slash", None, "NULL", ""], "_text"),
        ("numeric[]", [Decimal("1.5"), None], "_numeric"),
        ("date[]", [date(2024, 1, 1), date(2024, 12, 31)], "_date"),
        ("uuid[]", [UUID(int=5)], "_uuid"),
        ("bool[]", [True, False], "_bool"),
        ("jsonb[]", [{"a": 1}, [1, 2]], "_jsonb"),
        ("int4range", Range(1, 10), "int4range"),
        ("daterange", Range(date(2024, 1, 1), None), "daterange"),
        ("tstzrange", Range(datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 2, 1, tzinfo=UTC)),
         "tstzrange"),
        ("numrange", Range(empty=True, lower_inc=False), "numrange"),
        ("int4multirange", "{[1,3), [5,7)}", "int4multirange"),
    ],
)
def test_roundtrip(client, pg_type, value, type_name):
    got_type, got = roundtrip(client, pg_type, value)
    assert got_type == type_name
    if pg_type == "int4multirange":
        assert got == [Range(1, 3), Range(5, 7)]
    elif pg_type == "float4":
        assert got == pytest.approx(value)
    else:
        assert got == value
        assert type(got) is type(value)


def test_json_scalars(client):
    # For json/jsonb parameters a str is JSON *text* (PostgreSQL's input syntax), so a JSON
    # string scalar is passed quoted; numbers and booleans are JSON already.
    row = client.query_one("SELECT $1::jsonb, $2::jsonb, $3::json, $4::jsonb",
                           ['"just a string"', 42, True, "null"])
    assert row == ("just a string", 42, True, None)


def test_nan_float_and_numeric(client):
    row = client.query_one("SELECT $1::float8, $2::numeric", [math.nan, Decimal("NaN")])
    assert math.isnan(row[0]) and row[1].is_nan()


def test_null_every_way(client):
    assert client.query_one("SELECT NULL::int, NULL::numeric, NULL::bytea, $1::date", [None]) == (
        None, None, None, None,
    )


def test_strings_are_accepted_for_every_type(client):
    row = client.query_one(
        "SELECT $1::int8, $2::numeric, $3::timestamptz, $4::interval, $5::bytea, $6::bool",
        ["10", "2.50", "2024-01-01 00:00:00+02", "1 year 2 days", "\\x01", "yes"],
    )
    assert row == (10, Decimal("2.50"), datetime(2023, 12, 31, 22, tzinfo=UTC),
                   Interval(12, 2, 0), b"\x01", True)


def test_types_without_a_python_mapping_stay_text(client):
    client.execute("CREATE TYPE mood AS ENUM ('sad', 'happy')")
    client.execute("CREATE TYPE pair AS (a int, b text)")
    client.execute("CREATE DOMAIN posint AS int CHECK (VALUE > 0)")
    row = client.query_one(
        "SELECT $1::mood, $2::inet, $3::macaddr, '(1,x)'::pair, $4::posint, B'101',"
        " point(1, 2), 'infinity'::date, '24:00'::time",
        ["happy", "10.0.0.1/8", "08:00:2b:01:02:03", 7],
    )
    assert row == ("happy", "10.0.0.1/8", "08:00:2b:01:02:03", {"a": 1, "b": "x"}, 7, "101",
                   "(1,2)", "infinity", "24:00:00")


def test_fallback_types_are_opaque_hex(client):
    value, as_text = client.query_one("SELECT 'a & b'::tsquery, 'a & b'::tsquery::text")
    assert value.startswith("\\x") and as_text == "'a' & 'b'"


def test_pipeline_and_batch_decode_values(client):
    results = client.pipeline("SELECT $1::numeric * 2", [[Decimal("1.25")], ["2"]])
    assert [r.rows for r in results] == [[(Decimal("2.50"),)], [(Decimal("4"),)]]
    (result,) = client.batch([("SELECT $1::bytea", [b"\x01\x02"])])
    assert result.rows == [(b"\x01\x02",)]


def test_integers_beyond_64_bits(client):
    assert client.query_one("SELECT $1::numeric", [2**80]) == (Decimal(2**80),)
