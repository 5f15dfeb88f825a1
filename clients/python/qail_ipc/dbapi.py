"""DB-API 2.0 (PEP 249) on top of :class:`qail_ipc.Client`.

``paramstyle`` is ``"numeric"``: ``:1``, ``:2``, ... name the parameters, and are rewritten to
PostgreSQL's ``$1``, ``$2`` outside string literals, quoted identifiers, comments and
dollar-quoted bodies; ``$n`` placeholders work too and are left alone. A ``:`` followed by a
digit is a parameter unless it directly follows a name or a number (``a[1:2]`` and ``x::int``
are untouched). Statements run without parameters are sent as written.

Transactions follow PEP 249: autocommit is off, so the first statement after ``connect``,
``commit`` or ``rollback`` begins a transaction (the ``begin`` op, which pins one PostgreSQL
connection in the daemon). ``connection.autocommit = True`` runs each statement on its own.
``executemany`` sends all parameter lists in one ``pipeline`` request.

``threadsafety`` is 1: threads may share the module but not connections (a connection is
one transaction).
"""

from __future__ import annotations

import datetime as _dt
import time as _time
from typing import Any, Iterator, List, NamedTuple, Optional, Sequence

from .client import Client, Result
from .errors import (
    DatabaseError,
    DataError,
    Error,
    IntegrityError,
    InterfaceError,
    InternalError,
    NotSupportedError,
    OperationalError,
    ProgrammingError,
    Warning,
)

__all__ = [
    "apilevel", "threadsafety", "paramstyle", "connect", "Connection", "Cursor",
    "Warning", "Error", "InterfaceError", "DatabaseError", "DataError", "OperationalError",
    "IntegrityError", "InternalError", "ProgrammingError", "NotSupportedError",
    "Date", "Time", "Timestamp", "DateFromTicks", "TimeFromTicks", "TimestampFromTicks",
    "Binary", "STRING", "BINARY", "NUMBER", "DATETIME", "ROWID", "ColumnDescription",
]

apilevel = "2.0"
threadsafety = 1
paramstyle = "numeric"

# -- type objects and constructors --------------------------------------------------------------


class DBAPITypeObject:
    """Compares equal to every PostgreSQL type name of one DB-API type category."""

    def __init__(self, name: str, *type_names: str) -> None:
        self.name = name
        self.type_names = frozenset(type_names)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, DBAPITypeObject):
            return other is self
        return other in self.type_names

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        return "<DBAPITypeObject %s>" % self.name


STRING = DBAPITypeObject(
    "STRING", "text", "varchar", "bpchar", "char", "name", "xml",
)
BINARY = DBAPITypeObject("BINARY", "bytea")
NUMBER = DBAPITypeObject(
    "NUMBER", "int2", "int4", "int8", "float4", "float8", "numeric", "money", "oid",
)
DATETIME = DBAPITypeObject(
    "DATETIME", "date", "time", "timetz", "timestamp", "timestamptz", "interval",
)
ROWID = DBAPITypeObject("ROWID", "oid", "tid")

Date = _dt.date
Time = _dt.time
Timestamp = _dt.datetime
Binary = bytes


def DateFromTicks(ticks: float) -> _dt.date:
    """The local date of a POSIX timestamp."""
    return _dt.date(*_time.localtime(ticks)[:3])


def TimeFromTicks(ticks: float) -> _dt.time:
    """The local time of day of a POSIX timestamp."""
    return _dt.time(*_time.localtime(ticks)[3:6])


def TimestampFromTicks(ticks: float) -> _dt.datetime:
    """The local date and time of a POSIX timestamp."""
    return _dt.datetime(*_time.localtime(ticks)[:6])


# -- placeholders -----------------------------------------------------------------------------

_WORD = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_$]")


def _skip_quoted(sql: str, i: int, quote: str, backslashes: bool) -> int:
    """Index after the literal starting at ``sql[i]`` (a doubled quote stays inside)."""
    n = len(sql)
    i += 1
    while i < n:
        c = sql[i]
        if backslashes and c == "\\":
            i += 2
            continue
        if c == quote:
            if i + 1 < n and sql[i + 1] == quote:
                i += 2
                continue
            return i + 1
        i += 1
    return n


def _dollar_tag(sql: str, i: int) -> Optional[str]:
    """The ``$tag$`` opening a dollar-quoted string at ``sql[i]``, if there is one."""
    j = i + 1
    n = len(sql)
    while j < n and (sql[j].isalnum() or sql[j] == "_"):
        j += 1
    if j < n and sql[j] == "$" and not sql[i + 1 : i + 2].isdigit():
        return sql[i : j + 1]
    return None


def numeric_to_dollar(sql: str) -> str:
    """Rewrites ``:1``-style placeholders to ``$1`` (see the module documentation)."""
    if ":" not in sql:
        return sql
    out: List[str] = []
    start = i = 0
    n = len(sql)
    while i < n:
        c = sql[i]
        prev = sql[i - 1] if i else ""
        if c == "'":
            escaped = prev in "eE" and (i < 2 or sql[i - 2] not in _WORD)
            i = _skip_quoted(sql, i, "'", escaped)
        elif c == '"':
            i = _skip_quoted(sql, i, '"', False)
        elif c == "-" and sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end + 1
        elif c == "/" and sql.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if sql.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif sql.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif c == "$" and prev not in _WORD and _dollar_tag(sql, i):
            tag = _dollar_tag(sql, i) or ""
            end = sql.find(tag, i + len(tag))
            i = n if end < 0 else end + len(tag)
        elif c == ":":
            if sql.startswith("::", i):
                i += 2
            elif i + 1 < n and sql[i + 1].isdigit() and prev not in _WORD and prev != ":":
                j = i + 1
                while j < n and sql[j].isdigit():
                    j += 1
                out.append(sql[start:i])
                out.append("$" + sql[i + 1 : j])
                start = i = j
            else:
                i += 1
        else:
            i += 1
    out.append(sql[start:])
    return "".join(out)


# -- connection and cursor --------------------------------------------------------------------


class ColumnDescription(NamedTuple):
    """One item of :attr:`Cursor.description`; ``type_code`` is the PostgreSQL type name."""

    name: str
    type_code: str
    display_size: Optional[int] = None
    internal_size: Optional[int] = None
    precision: Optional[int] = None
    scale: Optional[int] = None
    null_ok: Optional[bool] = None


class Connection:
    """A DB-API connection: one :class:`~qail_ipc.Client` and its transaction."""

    Warning = Warning
    Error = Error
    InterfaceError = InterfaceError
    DatabaseError = DatabaseError
    DataError = DataError
    OperationalError = OperationalError
    IntegrityError = IntegrityError
    InternalError = InternalError
    ProgrammingError = ProgrammingError
    NotSupportedError = NotSupportedError

    def __init__(self, client: Client, autocommit: bool = False) -> None:
        #: The underlying client (its idiomatic API is available too).
        self.client = client
        self._autocommit = autocommit

    @property
    def closed(self) -> bool:
        return self.client.closed

    @property
    def autocommit(self) -> bool:
        """When true, each statement commits on its own; off by default (PEP 249)."""
        return self._autocommit

    @autocommit.setter
    def autocommit(self, value: bool) -> None:
        self._check()
        if value and self.client.in_transaction:
            raise ProgrammingError("commit or roll back before switching autocommit on")
        self._autocommit = bool(value)

    def _check(self) -> None:
        if self.client.closed:
            raise InterfaceError("the connection is closed")

    def _before_statement(self) -> None:
        self._check()
        if not self._autocommit and not self.client.in_transaction:
            self.client.begin()

    def cursor(self) -> "Cursor":
        """A new cursor on this connection."""
        self._check()
        return Cursor(self)

    def commit(self) -> None:
        """Commits the open transaction, if any."""
        self._check()
        if self.client.in_transaction:
            self.client.commit()

    def rollback(self) -> None:
        """Rolls the open transaction back, if any."""
        self._check()
        if self.client.in_transaction:
            self.client.rollback()

    def close(self) -> None:
        """Closes the connection; an uncommitted transaction is rolled back.

        Closing twice raises :class:`InterfaceError`.
        """
        self._check()
        self.client.close()

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        """Commits on success, rolls back on an exception; does not close (like sqlite3)."""
        if self.client.closed:
            return
        if exc_type is None:
            self.commit()
        else:
            self.rollback()


class Cursor:
    """A DB-API cursor. Results are read whole; ``fetch*`` walk them."""

    def __init__(self, connection: Connection) -> None:
        #: The connection this cursor belongs to.
        self.connection = connection
        #: Rows fetched by ``fetchmany()`` without a size.
        self.arraysize = 1
        #: One :class:`ColumnDescription` per column, or None when there is no result set.
        self.description: Optional[List[ColumnDescription]] = None
        #: Rows returned or affected by the last statement, -1 before any.
        self.rowcount = -1
        #: Always None: PostgreSQL has no row ids worth returning (use RETURNING).
        self.lastrowid = None
        self._rows: Optional[List[Any]] = None
        self._pos = 0
        self._closed = False

    def _check(self) -> None:
        if self._closed:
            raise InterfaceError("the cursor is closed")
        self.connection._check()

    def _set(self, result: Optional[Result], rowcount: int) -> None:
        self.rowcount = rowcount
        self._pos = 0
        if result is not None and result.columns:
            self.description = [ColumnDescription(c.name, c.type) for c in result.columns]
            self._rows = result.rows
        else:
            self.description = None
            self._rows = None

    def execute(self, operation: str, parameters: Optional[Sequence[Any]] = None) -> "Cursor":
        """Runs one statement; ``parameters`` fill ``:1``/``$1``, ... Returns the cursor."""
        self._check()
        sql = operation
        params: List[Any] = []
        if parameters is not None:
            sql, params = numeric_to_dollar(operation), list(parameters)
        self.connection._before_statement()
        result = self.connection.client.query_result(sql, params)
        self._set(result, result.rows_affected)
        return self

    def executemany(
        self, operation: str, seq_of_parameters: Sequence[Sequence[Any]]
    ) -> "Cursor":
        """Runs one statement per parameter list, all in one ``pipeline`` request."""
        self._check()
        batch = [list(p) for p in seq_of_parameters]
        if not batch:
            self._set(None, 0)
            return self
        self.connection._before_statement()
        results = self.connection.client.pipeline(numeric_to_dollar(operation), batch)
        self._set(None, sum(r.rows_affected for r in results))
        return self

    def callproc(self, procname: str, parameters: Sequence[Any] = ()) -> Sequence[Any]:
        """Calls a set-returning or scalar function (``SELECT * FROM procname(...)``).

        ``procname`` is inserted as written. Returns ``parameters`` unchanged.
        """
        placeholders = ", ".join("$%d" % (i + 1) for i in range(len(parameters)))
        self.execute("SELECT * FROM %s(%s)" % (procname, placeholders), list(parameters))
        return parameters

    def _result_rows(self) -> List[Any]:
        self._check()
        if self._rows is None:
            raise ProgrammingError("no result set: the last statement returned no rows")
        return self._rows

    def fetchone(self) -> Optional[Any]:
        """The next row, or None when there are no more."""
        rows = self._result_rows()
        if self._pos >= len(rows):
            return None
        self._pos += 1
        return rows[self._pos - 1]

    def fetchmany(self, size: Optional[int] = None) -> List[Any]:
        """The next ``size`` rows (default :attr:`arraysize`)."""
        rows = self._result_rows()
        end = self._pos + (self.arraysize if size is None else size)
        chunk = rows[self._pos : end]
        self._pos += len(chunk)
        return chunk

    def fetchall(self) -> List[Any]:
        """All remaining rows."""
        rows = self._result_rows()
        chunk = rows[self._pos :]
        self._pos = len(rows)
        return chunk

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        row = self.fetchone()
        if row is None:
            raise StopIteration
        return row

    def setinputsizes(self, sizes: Any) -> None:
        """Does nothing (allowed by PEP 249)."""

    def setoutputsize(self, size: Any, column: Optional[int] = None) -> None:
        """Does nothing (allowed by PEP 249)."""

    def close(self) -> None:
        """Closes the cursor; further use raises :class:`InterfaceError`."""
        self._closed = True
        self._rows = None

    def __enter__(self) -> "Cursor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def connect(
    path: Optional[str] = None,
    *,
    upstream: Optional[str] = None,
    host: Optional[str] = None,
    port: int = 5432,
    user: Optional[str] = None,
    database: Optional[str] = None,
    password: str = "",
    token: Optional[str] = None,
    timeout: Optional[float] = None,
    autocommit: bool = False,
    raw: bool = False,
    sslmode: Optional[str] = None,
) -> Connection:
    """Opens a DB-API connection through qail-daemon.

    Select the database with ``upstream`` (a configured name) or with ``host``, ``port``,
    ``user``, ``database``, ``password`` and ``sslmode`` (matched against the configured
    upstreams, as :meth:`qail_ipc.Client.connect_pg`). The other arguments are those of
    :func:`qail_ipc.connect`.
    """
    client = Client(path, upstream=upstream, token=token, timeout=timeout, raw=raw)
    try:
        if host is not None:
            client.connect_pg(
                host, port, user or "", database or user or "", password, sslmode=sslmode
            )
    except BaseException:
        client.close()
        raise
    return Connection(client, autocommit=autocommit)
