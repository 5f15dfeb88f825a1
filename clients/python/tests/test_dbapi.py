"""qail_ipc.dbapi beyond the compliance suite: transactions, descriptions, type objects."""

from __future__ import annotations

import datetime
from decimal import Decimal

import pytest

from qail_ipc import dbapi


@pytest.fixture
def conn(daemon):
    c = dbapi.connect(daemon.socket, upstream="main", timeout=30)
    yield c
    if not c.closed:
        c.close()


def test_module_globals():
    assert (dbapi.apilevel, dbapi.threadsafety, dbapi.paramstyle) == ("2.0", 1, "numeric")
    assert dbapi.Binary(b"x") == b"x"
    assert dbapi.Date(2024, 1, 2) == datetime.date(2024, 1, 2)
    assert dbapi.Time(1, 2, 3) == datetime.time(1, 2, 3)
    assert dbapi.Timestamp(2024, 1, 2, 3, 4, 5) == datetime.datetime(2024, 1, 2, 3, 4, 5)
    assert isinstance(dbapi.TimestampFromTicks(0), datetime.datetime)
    assert isinstance(dbapi.DateFromTicks(0), datetime.date)
    assert isinstance(dbapi.TimeFromTicks(0), datetime.time)
    assert dbapi.STRING == "text" and dbapi.STRING == "varchar" and dbapi.STRING != "int4"
    assert dbapi.NUMBER == "numeric" and dbapi.BINARY == "bytea"
    assert dbapi.DATETIME == "timestamptz" and dbapi.ROWID == "oid"


def test_connect_with_credentials(daemon):
    c = dbapi.connect(daemon.socket, timeout=30, **daemon.pg_credentials)
    cur = c.cursor()
    cur.execute("SELECT :1::int + 1", [41])
    assert cur.fetchone() == (42,)
    c.close()
    with pytest.raises(dbapi.InterfaceError):
        c.close()


def test_description_rowcount_and_types(conn):
    cur = conn.cursor()
    cur.execute("SELECT 1::int4 AS a, 'x'::text AS b, 1.5::numeric AS c, now() AS d,"
                " '\\x00'::bytea AS e")
    names = [d.name for d in cur.description]
    assert names == ["a", "b", "c", "d", "e"]
    codes = [d[1] for d in cur.description]
    assert codes == ["int4", "text", "numeric", "timestamptz", "bytea"]
    assert codes[0] == dbapi.NUMBER and codes[1] == dbapi.STRING
    assert codes[3] == dbapi.DATETIME and codes[4] == dbapi.BINARY
    assert all(len(d) == 7 for d in cur.description)
    row = cur.fetchone()
    assert row[2] == Decimal("1.5") and row[4] == b"\x00"
    assert cur.rowcount == 1


def test_lazy_begin_commit_rollback(conn, daemon):
    cur = conn.cursor()
    assert not conn.client.in_transaction
    cur.execute("CREATE TABLE t (id int)")
    assert conn.client.in_transaction
    conn.commit()
    cur.execute("INSERT INTO t VALUES (:1)", [1])
    conn.rollback()
    cur.execute("SELECT count(*) FROM t")
    assert cur.fetchone() == (0,)
    cur.executemany("INSERT INTO t VALUES (:1)", [[i] for i in range(10)])
    assert cur.rowcount == 10 and cur.description is None
    conn.commit()
    other = dbapi.connect(daemon.socket, upstream="main", timeout=30)
    ocur = other.cursor()
    ocur.execute("SELECT count(*) FROM t")
    assert ocur.fetchall() == [(10,)]
    other.close()


def test_error_inside_transaction_then_rollback(conn):
    cur = conn.cursor()
    cur.execute("CREATE TABLE t (id int PRIMARY KEY)")
    conn.commit()
    cur.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(dbapi.IntegrityError):
        cur.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(dbapi.InternalError):  # 25P02: the transaction is aborted
        cur.execute("SELECT 1")
    conn.rollback()
    cur.execute("SELECT count(*) FROM t")
    assert cur.fetchone() == (0,)


def test_autocommit(conn, daemon):
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute("CREATE TABLE t (id int)")
    cur.execute("INSERT INTO t VALUES ($1)", [5])
    assert not conn.client.in_transaction
    other = dbapi.connect(daemon.socket, upstream="main", timeout=30)
    with other.cursor() as ocur:
        ocur.execute("SELECT id FROM t")
        assert list(ocur) == [(5,)]
    other.close()
    conn.autocommit = False
    cur.execute("SELECT 1")
    with pytest.raises(dbapi.ProgrammingError):
        conn.autocommit = True


def test_context_managers_and_iteration(conn):
    with conn:
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE t AS SELECT generate_series(1, 5) AS i")
    cur = conn.cursor()
    cur.execute("SELECT i FROM t ORDER BY i")
    assert [r[0] for r in cur] == [1, 2, 3, 4, 5]
    cur.arraysize = 2
    cur.execute("SELECT i FROM t ORDER BY i")
    assert cur.fetchmany() == [(1,), (2,)]
    cur.close()
    with pytest.raises(dbapi.InterfaceError):
        cur.execute("SELECT 1")
    with pytest.raises(ZeroDivisionError):
        with conn:
            conn.cursor().execute("DROP TABLE t")
            1 / 0
    cur = conn.cursor()
    cur.execute("SELECT count(*) FROM t")  # the drop was rolled back
    assert cur.fetchone() == (5,)


def test_callproc_and_empty_executemany(conn):
    cur = conn.cursor()
    assert cur.callproc("upper", ["abc"]) == ["abc"]
    assert cur.fetchall() == [("ABC",)]
    cur.executemany("SELECT :1", [])
    assert cur.rowcount == 0
