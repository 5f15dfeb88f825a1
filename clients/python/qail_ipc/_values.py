"""Python values ⇄ protocol-1 JSON values (``docs/values.md``).

Results are decoded by column type name: the daemon already sends integers, booleans,
strings, JSON and arrays as JSON; this module turns the string forms of the other types
into Python objects (``numeric`` → :class:`~decimal.Decimal`, ``timestamptz`` → aware
:class:`~datetime.datetime`, ``bytea`` → :class:`bytes`, ...). Types it does not know stay
as the daemon sent them.

Parameters go the other way: every Python value becomes a JSON value that PostgreSQL's input
function for the parameter type accepts (the daemon passes parameters to PostgreSQL as text).
"""

from __future__ import annotations

import math
import re
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple
from uuid import UUID

__all__ = [
    "Interval",
    "Range",
    "decoder_for",
    "decode_rows",
    "row_decoders",
    "apply_decoders",
    "encode_param",
    "encode_params",
]

Decoder = Callable[[Any], Any]


class Interval(NamedTuple):
    """A PostgreSQL ``interval`` that has a month part (years or months).

    ``timedelta`` cannot hold months (their length varies), so such intervals are returned
    as this tuple of PostgreSQL's own three fields. Intervals without months decode to
    :class:`~datetime.timedelta`. An ``Interval`` is accepted as a parameter.
    """

    months: int = 0
    days: int = 0
    microseconds: int = 0

    def __str__(self) -> str:
        return "%d months %d days %s seconds" % (
            self.months,
            self.days,
            _seconds_text(self.microseconds),
        )


class Range(NamedTuple):
    """A PostgreSQL range value (``int4range``, ``tstzrange``, ...).

    ``lower``/``upper`` are ``None`` for an unbounded side. ``empty`` ranges have no bounds.
    Accepted as a parameter (sent in PostgreSQL's range literal syntax).
    """

    lower: Any = None
    upper: Any = None
    lower_inc: bool = True
    upper_inc: bool = False
    empty: bool = False

    def __str__(self) -> str:
        if self.empty:
            return "empty"
        return "%s%s,%s%s" % (
            "[" if self.lower_inc else "(",
            _range_bound(self.lower),
            _range_bound(self.upper),
            "]" if self.upper_inc else ")",
        )


def _range_bound(value: Any) -> str:
    if value is None:
        return ""
    text = encode_param(value)
    text = text if isinstance(text, str) else str(text)
    return '"%s"' % text.replace("\\", "\\\\").replace('"', '\\"')


def _seconds_text(microseconds: int) -> str:
    sign = "-" if microseconds < 0 else ""
    whole, frac = divmod(abs(microseconds), 1_000_000)
    return "%s%d.%06d" % (sign, whole, frac)


# ---------------------------------------------------------------------------------------------
# Result decoding


def _float(v: Any) -> Any:
    # NaN and the infinities arrive as the strings "NaN", "Infinity", "-Infinity".
    return float(v) if isinstance(v, str) else v


def _numeric(v: Any) -> Decimal:
    return Decimal(v) if isinstance(v, str) else Decimal(str(v))


def _bytea(v: str) -> bytes:
    # "\\x0a1b": PostgreSQL's hex format.
    return bytes.fromhex(v[2:])


def _uuid(v: str) -> UUID:
    return UUID(v)


def _fraction_us(frac: Optional[str]) -> int:
    return int((frac or "").ljust(6, "0")[:6])


_DATE = re.compile(r"(\d{4})-(\d\d)-(\d\d)\Z")
_TIME = r"(\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?"
_TIMESTAMP = re.compile(r"(\d{4})-(\d\d)-(\d\d)T" + _TIME + r"(Z?)\Z")
_TIME_RE = re.compile(_TIME + r"\Z")
_TIMETZ = re.compile(_TIME + r"([+-])(\d\d):(\d\d)(?::(\d\d))?\Z")


# Values with no Python counterpart (infinity, BC years, years above 9999, 24:00:00) are
# returned as the string the daemon sent, so nothing is ever lost or raises.


def _date(v: str) -> Any:
    m = _DATE.match(v)
    if m is None:
        return v
    return date(int(m.group(1)), int(m.group(2)), int(m.group(3)))


def _timestamp(v: str) -> Any:
    m = _TIMESTAMP.match(v)
    if m is None or m.group(4) == "24":
        return v
    y, mo, d, h, mi, s, frac, z = m.groups()
    return datetime(
        int(y), int(mo), int(d), int(h), int(mi), int(s), _fraction_us(frac),
        timezone.utc if z else None,
    )


def _time(v: str) -> Any:
    m = _TIME_RE.match(v)
    if m is None or m.group(1) == "24":
        return v
    h, mi, s, frac = m.groups()
    return time(int(h), int(mi), int(s), _fraction_us(frac))


def _timetz(v: str) -> Any:
    m = _TIMETZ.match(v)
    if m is None or m.group(1) == "24":
        return v
    h, mi, s, frac, sign, oh, om, os_ = m.groups()
    offset = timedelta(hours=int(oh), minutes=int(om), seconds=int(os_ or 0))
    tz = timezone(-offset if sign == "-" else offset)
    return time(int(h), int(mi), int(s), _fraction_us(frac), tz)


_INTERVAL = re.compile(
    r"P(?:(-?\d+)Y)?(?:(-?\d+)M)?(?:(-?\d+)D)?"
    r"(?:T(?:(-?\d+)H)?(?:(-?\d+)M)?(?:(-?)(\d+)(?:\.(\d{1,6}))?S)?)?\Z"
)


def _interval(v: str) -> Any:
    m = _INTERVAL.match(v)
    if m is None:
        return v  # "infinity", "-infinity"
    y, mo, d, h, mi, sign, s, frac = m.groups()
    seconds_us = int(s or 0) * 1_000_000 + _fraction_us(frac)
    if sign:
        seconds_us = -seconds_us
    time_us = (int(h or 0) * 3600 + int(mi or 0) * 60) * 1_000_000 + seconds_us
    months = int(y or 0) * 12 + int(mo or 0)
    days = int(d or 0)
    if months:
        return Interval(months, days, time_us)
    return timedelta(days=days, microseconds=time_us)


def _range_decoder(bound: Optional[Decoder]) -> Decoder:
    def decode(v: Any) -> Any:
        if not isinstance(v, dict):
            return v
        if v.get("empty"):
            return Range(empty=True, lower_inc=False)
        lower, upper = v.get("lower"), v.get("upper")
        if bound is not None:
            lower = None if lower is None else bound(lower)
            upper = None if upper is None else bound(upper)
        return Range(lower, upper, bool(v.get("lower_inc")), bool(v.get("upper_inc")))

    return decode


def _multirange_decoder(bound: Optional[Decoder]) -> Decoder:
    one = _range_decoder(bound)
    return lambda v: [one(r) for r in v] if isinstance(v, list) else v


def _array_decoder(element: Decoder) -> Decoder:
    def decode(v: Any) -> Any:
        if isinstance(v, list):
            return [None if e is None else decode(e) if isinstance(e, list) else element(e)
                    for e in v]
        return v

    return decode


# Types whose JSON form already is the Python value (ints, bools, text, json, ...) are absent:
# ``decoder_for`` returns None for them and rows are passed through untouched.
_SCALARS: Dict[str, Decoder] = {
    "float4": _float,
    "float8": _float,
    "numeric": _numeric,
    "bytea": _bytea,
    "uuid": _uuid,
    "date": _date,
    "time": _time,
    "timetz": _timetz,
    "timestamp": _timestamp,
    "timestamptz": _timestamp,
    "interval": _interval,
}

_RANGE_BOUNDS: Dict[str, str] = {
    "int4": "int4",
    "int8": "int8",
    "num": "numeric",
    "ts": "timestamp",
    "tstz": "timestamptz",
    "date": "date",
}

_cache: Dict[str, Optional[Decoder]] = {}


def decoder_for(type_name: str) -> Optional[Decoder]:
    """The decoder for a column type name, or ``None`` when values need no conversion."""
    try:
        return _cache[type_name]
    except KeyError:
        pass
    decoder = _SCALARS.get(type_name)
    if decoder is None:
        if type_name.startswith("_"):
            element = decoder_for(type_name[1:])
            decoder = _array_decoder(element) if element is not None else None
        elif type_name.endswith("multirange"):
            base = _RANGE_BOUNDS.get(type_name[: -len("multirange")])
            decoder = _multirange_decoder(_SCALARS.get(base) if base else None)
        elif type_name.endswith("range"):
            base = _RANGE_BOUNDS.get(type_name[: -len("range")])
            decoder = _range_decoder(_SCALARS.get(base) if base else None)
    _cache[type_name] = decoder
    return decoder


def decode_rows(
    types: Sequence[str], rows: List[List[Any]]
) -> List[List[Any]]:
    """Converts the values of ``rows`` in place by column type; returns ``rows``."""
    return apply_decoders(row_decoders(types), rows)


def row_decoders(types: Sequence[str]) -> List[Tuple[int, Decoder]]:
    """``(column index, decoder)`` for each column whose values need converting."""
    return [(i, d) for i, d in enumerate(map(decoder_for, types)) if d is not None]


def apply_decoders(
    decoders: Sequence[Tuple[int, Decoder]], rows: List[List[Any]]
) -> List[List[Any]]:
    """Converts the values of ``rows`` in place with :func:`row_decoders`' decoders."""
    if not decoders:
        return rows
    for row in rows:
        for i, decode in decoders:
            v = row[i]
            if v is not None:
                row[i] = decode(v)
    return rows


# ---------------------------------------------------------------------------------------------
# Parameter encoding

_PLAIN = (str, int, bool, type(None))


def _encode_float(v: float) -> Any:
    if math.isfinite(v):
        return v
    if math.isnan(v):
        return "NaN"
    return "Infinity" if v > 0 else "-Infinity"


def _encode_timedelta(v: timedelta) -> str:
    # Exact: days and seconds are what timedelta stores (seconds are never negative).
    return "%d days %d.%06d seconds" % (v.days, v.seconds, v.microseconds)


def _encode_bytes(v: Any) -> str:
    return "\\x" + bytes(v).hex()


def _encode_seq(v: Any) -> List[Any]:
    return [encode_param(e) for e in v]


def _encode_dict(v: Dict[Any, Any]) -> Dict[str, Any]:
    return {str(k): encode_param(e) for k, e in v.items()}


_ENCODERS: Dict[type, Callable[[Any], Any]] = {
    float: _encode_float,
    Decimal: str,
    datetime: datetime.isoformat,
    date: date.isoformat,
    time: time.isoformat,
    timedelta: _encode_timedelta,
    UUID: str,
    bytes: _encode_bytes,
    bytearray: _encode_bytes,
    memoryview: _encode_bytes,
    Interval: str,
    Range: str,
    list: _encode_seq,
    tuple: _encode_seq,
    dict: _encode_dict,
}


def encode_param(value: Any) -> Any:
    """Converts one Python value to the JSON value sent as a parameter.

    ``None``/``bool``/``int``/``str`` pass through; ``float`` too (NaN and the infinities as
    strings); ``Decimal``, ``UUID``, ``Interval`` and ``Range`` become their text; dates and
    times ISO 8601 text; ``timedelta`` an exact interval text; bytes ``"\\\\x..."`` hex; lists
    and tuples JSON arrays (array or json parameters); dicts JSON objects (json parameters).
    Raises :class:`TypeError` for anything else.
    """
    if isinstance(value, _PLAIN):
        return value
    encoder = _ENCODERS.get(type(value))
    if encoder is None:
        for cls, candidate in _ENCODERS.items():
            if isinstance(value, cls):
                encoder = candidate
                break
        else:
            raise TypeError(
                "cannot pass a %s as a parameter; pass a str in PostgreSQL's input syntax"
                % type(value).__name__
            )
    return encoder(value)


def encode_params(params: Sequence[Any]) -> List[Any]:
    """Encodes one parameter list (see :func:`encode_param`)."""
    for p in params:
        if not isinstance(p, _PLAIN):
            return [encode_param(p) for p in params]
    return params if type(params) is list else list(params)
