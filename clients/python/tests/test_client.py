"""The synchronous client against a real daemon: every method, errors, healing, the seed."""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
import time

import pytest
from conftest import REPO

import qail_ipc
from qail_ipc import (
    DataError,
    IntegrityError,
    InterfaceError,
    InternalError,
    OperationalError,
    ProgrammingError,
    dict_row,
    namedtuple_row,
    tuple_row,
)

USERS = (
    "CREATE TABLE users (id int PRIMARY KEY, name text NOT NULL);"
    "INSERT INTO users SELECT i, 'user' || i FROM generate_series(1, 20) i"
)


@pytest.fixture
def users(pg_cluster, daemon):
    pg_cluster.psql(daemon.database, USERS)
    return daemon


def test_seed_example(users, monkeypatch, capsys):
    # The seed's code, unchanged except for the credentials of this test's PostgreSQL:
    # connect() finds the daemon through QAIL_SOCKET.
    monkeypatch.setenv("QAIL_SOCKET", users.socket)
    creds = users.pg_credentials
    from qail_ipc import connect

    client = connect()
    client.connect_pg("localhost", creds["port"], creds["user"], creds["database"],
                      creds["password"])
    handle = client.prepare("SELECT id, name FROM users LIMIT $1")
    params = [["10"], ["5"], ["1"]] * 3333
    started = time.perf_counter()
    count = client.prepared_pipeline(handle, params)
    elapsed = time.perf_counter() - started
    assert count == 9999
    with capsys.disabled():
        print("\nseed prepared_pipeline: 9999 statements in %.3f s (%.0f/s)"
              % (elapsed, 9999 / elapsed))
    client.close()


def test_not_running_names_socket_and_how_to_start(tmp_path):
    path = str(tmp_path / "nobody-home.sock")
    with pytest.raises(OperationalError) as info:
        qail_ipc.connect(path)
    message = str(info.value)
    assert path in message
    assert "qail-daemon --config FILE" in message


def test_connect_without_path_uses_qail_socket(daemon, monkeypatch):
    monkeypatch.setenv("QAIL_SOCKET", daemon.socket)
    with qail_ipc.connect(upstream="main") as client:
        assert client.path == daemon.socket
        assert client.query_one("SELECT 2") == (2,)


def test_hello_fills_server_and_session(client):
    assert client.server and client.server.startswith("qail-daemon")
    assert client.session
    client.ping()


def test_use_and_connect_pg(daemon):
    with qail_ipc.connect(daemon.socket, timeout=10) as client:
        with pytest.raises(ProgrammingError) as info:
            client.query("SELECT 1")
        assert info.value.code == "not_connected"
        assert client.use("main") == "main"
        assert client.query("SELECT 1") == [(1,)]
        with pytest.raises(OperationalError) as info:
            client.use("mian")
        assert info.value.code == "unknown_upstream"
        creds = daemon.pg_credentials
        assert client.connect_pg(**creds) == "main"
        with pytest.raises(OperationalError) as info:
            client.connect_pg(**dict(creds, password="wrong"))
        assert info.value.code == "auth_failed"
        # "main" talks to PostgreSQL in the clear: a client that wants TLS is not given it.
        assert client.connect_pg(**creds, sslmode="disable") == "main"
        with pytest.raises(OperationalError) as info:
            client.connect_pg(**creds, sslmode="require")
        assert info.value.code == "unknown_upstream"
        assert "sslmode require" in str(info.value)
        with pytest.raises(ProgrammingError) as info:
            client.connect_pg(**creds, sslmode="verify-full")
        assert info.value.code == "bad_request"


def test_query_params_and_row_factories(users):
    client = users.connect()
    rows = client.query("SELECT id, name FROM users WHERE id <= $1 ORDER BY id", [3])
    assert rows == [(1, "user1"), (2, "user2"), (3, "user3")]
    assert client.query("SELECT id FROM users WHERE id = $1", ["4"]) == [(4,)]
    assert client.query_one("SELECT name FROM users WHERE id = $1", [5]) == ("user5",)
    assert client.query_one("SELECT name FROM users WHERE id = $1", [500]) is None
    client.row_factory = dict_row
    assert client.query("SELECT id, name FROM users WHERE id = 1") == [{"id": 1, "name": "user1"}]
    client.row_factory = namedtuple_row
    row = client.query_one("SELECT id, name, 3 AS \"not an identifier\" FROM users WHERE id = 2")
    assert (row.id, row.name, row[2]) == (2, "user2", 3)
    client.close()


def test_answers_of_alternating_shapes_keep_their_own_columns_and_decoders(users):
    # The client reuses the last answer's columns while they repeat; a different shape,
    # even one with the same column names, must get its own types and decoders.
    import datetime
    import decimal

    client = users.connect()
    for _ in range(2):
        a = client.query_result("SELECT id, name FROM users WHERE id = $1", [1])
        b = client.query_result("SELECT 2.5::numeric AS id, date '2026-11-26' AS name")
        c = client.query_result("SELECT id, name FROM users WHERE id = $1", [2])
        assert a.rows == [(1, "user1")] and c.rows == [(2, "user2")]
        assert [col.type for col in a.columns] == ["int4", "text"]
        assert [col.type for col in b.columns] == ["numeric", "date"]
        assert b.rows == [(decimal.Decimal("2.5"), datetime.date(2026, 11, 26))]
    # Each result owns its column list.
    a.columns.append("mutated")
    assert len(client.query_result("SELECT id, name FROM users LIMIT 1").columns) == 2
    client.close()


def test_query_result_execute_and_command_tags(users):
    client = users.connect()
    result = client.query_result("SELECT id FROM users WHERE id < 3 ORDER BY id")
    assert [c.name for c in result.columns] == ["id"]
    assert result.columns[0].type == "int4"
    assert result.command == "SELECT 2" and result.rows_affected == 2
    assert client.execute("UPDATE users SET name = upper(name) WHERE id <= $1", [4]) == 4
    assert client.execute("INSERT INTO users VALUES ($1, $2)", [100, "x"]) == 1
    assert client.execute("CREATE TABLE t (x int)") == 0
    ins = client.query_result("INSERT INTO t VALUES (1), (2) RETURNING x")
    assert ins.rows == [(1,), (2,)] and ins.command == "INSERT 0 2"
    client.close()


def test_prepare_handle_and_sharing(users):
    a, b = users.connect(), users.connect()
    handle = a.prepare("SELECT id, name FROM users WHERE id = $1")
    assert handle.sql == "SELECT id, name FROM users WHERE id = $1"
    assert handle.param_types == ["int4"]
    assert [(c.name, c.type) for c in handle.columns] == [("id", "int4"), ("name", "text")]
    assert isinstance(handle.name, str) and handle.name in repr(handle)
    # Handles are daemon-wide: another connection may use it.
    assert b.query(handle, [7]) == [(7, "user7")]
    assert a.execute(handle, [8]) == 1
    a.close()
    b.close()


def test_unknown_handle_is_healed_after_daemon_restart(users):
    client = users.connect()
    handle = client.prepare("SELECT name FROM users WHERE id = $1")
    old = handle.name
    users.restart()
    # The client notices the closed connection, reconnects (replaying the upstream choice),
    # gets unknown_handle, prepares again and retries — all inside this call.
    assert client.query(handle, [3]) == [("user3",)]
    assert handle.name != old
    # Healing works for the other statement ops too.
    users.restart()
    assert client.prepared_pipeline(handle, [[1], [2]]) == 2
    users.restart()
    assert [r.rows for r in client.batch([(handle, [1]), "SELECT 1"])] == [[("user1",)], [(1,)]]
    client.close()


def test_a_connection_closed_while_idle_is_found_by_the_next_send(users):
    """No probe per request: the next request's send fails at once on a Unix socket the daemon
    closed (EPIPE), so nothing of it ran, and it is sent again on a new connection. The send
    never raises SIGPIPE, so a process that restored SIGPIPE's default action survives it."""
    script = (
        "import signal, sys\n"
        "import qail_ipc\n"
        "signal.signal(signal.SIGPIPE, signal.SIG_DFL)\n"
        "client = qail_ipc.connect(sys.argv[1], upstream='main')\n"
        "print(client.query('SELECT 1')[0][0], flush=True)\n"
        "sys.stdin.readline()\n"
        "print(client.query('SELECT 2')[0][0], flush=True)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO / "clients" / "python"))
    child = subprocess.Popen(
        [sys.executable, "-c", script, users.socket],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        assert child.stdout.readline().strip() == "1"
        users.restart()
        child.stdin.write("go\n")
        child.stdin.flush()
        out, err = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 0, err
    assert out.strip() == "2"


def test_forged_handle_is_unknown(client):
    bogus = qail_ipc.Handle("SELECT 1", "no-such-handle", [], [])
    # A Handle remembers its SQL, so even a bogus name is healed by preparing again.
    assert client.query(bogus) == [(1,)]
    assert bogus.name != "no-such-handle"


def test_pipeline(users):
    client = users.connect()
    handle = client.prepare("SELECT id FROM users ORDER BY id LIMIT $1")
    results = client.pipeline(handle, [[1], ["2"], [0]])
    assert [r.rows for r in results] == [[(1,)], [(1,), (2,)], []]
    assert [r.command for r in results] == ["SELECT 1", "SELECT 2", "SELECT 0"]
    client.execute("CREATE TABLE t (id int PRIMARY KEY)")
    with pytest.raises(IntegrityError) as info:
        client.pipeline("INSERT INTO t VALUES ($1)", [[1], [2], [1], [3]])
    assert info.value.sqlstate == "23505"
    assert info.value.index == 2
    assert info.value.fields["succeeded"] == 3 and info.value.fields["failed"] == 1
    with pytest.raises(IntegrityError):
        client.pipeline("INSERT INTO t VALUES ($1)", [[10], [10]], atomic=True)
    assert client.query_one("SELECT count(*) FROM t") == (3,)
    assert client.prepared_pipeline("INSERT INTO t VALUES ($1)", [[20], [21]], atomic=True) == 2
    assert client.query_one("SELECT count(*) FROM t") == (5,)
    client.close()


def test_pipeline_rows_are_the_same_in_every_answer_form(users):
    # pipeline() asks for column_major answers; the older forms must build the same Results.
    client = users.connect()
    cases = [
        (
            "SELECT id, name, CASE WHEN id % 2 = 0 THEN NULL ELSE timestamptz '2024-01-02 03:04:05Z' END AS t, "
            "ARRAY[id, -id] AS pair FROM users ORDER BY id LIMIT $1",
            [[i % 4] for i in range(1500)],
        ),
        ("SELECT FROM generate_series(1, $1::int)", [[2], [0], [3]]),
    ]
    for factory in (tuple_row, dict_row, namedtuple_row):
        client.row_factory = factory
        for sql, batch in cases:
            turned = client.pipeline(sql, batch)
            for form in ("compact", "columnar"):
                answer = client._request({"op": "pipeline", "sql": sql, "params_batch": batch, form: True})
                other = client._pipeline_results(answer)
                assert [r.rows for r in turned] == [r.rows for r in other], (factory, sql, form)
                assert [r.command for r in turned] == [r.command for r in other]
                assert [r.rows_affected for r in turned] == [r.rows_affected for r in other]
                assert [r.columns for r in turned] == [r.columns for r in other]
    client.row_factory = tuple_row
    first = client.pipeline(cases[0][0], [[3]])[0]
    assert isinstance(first.rows[0][2], datetime.datetime) and first.rows[1][2] is None
    assert first.rows[0][3] == [1, -1]
    assert client.pipeline(cases[1][0], [[2]])[0].rows == [(), ()]

    # An answer whose lists do not add up is refused, not silently cut short.
    with pytest.raises(InterfaceError, match="malformed pipeline answer"):
        client._pipeline_results(
            {"columns": [{"name": "a", "type": "int4"}], "counts": [2], "values": [[1]],
             "rows_affected": [2], "commands": ["SELECT 2"]}
        )
    client.close()


def test_pipeline_in_chunks_answers_like_one_request(users):
    client = users.connect()
    handle = client.prepare("SELECT id FROM users ORDER BY id LIMIT $1")
    batch = [[i % 4] for i in range(1000)]
    whole = client.pipeline(handle, batch)
    chunked = client.pipeline(handle, batch, chunk_size=64)
    assert [r.rows for r in chunked] == [r.rows for r in whole]
    assert [r.command for r in chunked] == [r.command for r in whole]
    assert client.pipeline(handle, [], chunk_size=10) == []

    # Answers of tens of KiB back to back (whether one straddles the end of the client's read
    # buffer depends on timing; test_protocol covers that case deterministically).
    wide = "SELECT g, repeat('x', 20) FROM generate_series(1, $1::int) g"
    parts = client.pipeline(wide, [[10]] * 3000, chunk_size=100)
    assert len(parts) == 3000 and all(r.rows[9] == (10, "x" * 20) for r in parts)

    # One failure per chunk in two chunks: the first one's index in the whole batch, and
    # the counts over every chunk.
    client.execute("CREATE TABLE c (id int PRIMARY KEY)")
    client.execute("INSERT INTO c VALUES (5), (25)")
    with pytest.raises(IntegrityError) as info:
        client.pipeline("INSERT INTO c VALUES ($1)", [[i] for i in range(30)], chunk_size=10)
    assert info.value.index == 5
    assert info.value.fields["succeeded"] == 28 and info.value.fields["failed"] == 2
    assert client.query_one("SELECT count(*) FROM c") == (30,)

    # A bad parameter fails its own chunk only.
    with pytest.raises(qail_ipc.Error) as info:
        client.pipeline("INSERT INTO c VALUES ($1)", [[100], [101], [102, 2], [103]], chunk_size=2)
    assert info.value.code == "bad_parameter" and info.value.index == 2
    assert client.query_one("SELECT count(*) FROM c WHERE id >= 100") == (2,)

    with pytest.raises(ValueError):
        client.pipeline(handle, batch, chunk_size=10, atomic=True)

    # A handle the daemon forgot (restart) is prepared again once, for every chunk.
    users.restart()
    assert len(client.pipeline(handle, batch, chunk_size=300)) == 1000
    client.close()


def test_batch(users):
    client = users.connect()
    handle = client.prepare("SELECT name FROM users WHERE id = $1")
    results = client.batch(
        [
            ("INSERT INTO users VALUES ($1, $2)", [50, "fifty"]),
            (handle, [50]),
            "SELECT count(*) FROM users",
        ],
        atomic=True,
    )
    assert [r.command for r in results] == ["INSERT 0 1", "SELECT 1", "SELECT 1"]
    assert results[1].rows == [("fifty",)]
    assert results[2].rows == [(21,)]
    with pytest.raises(IntegrityError) as info:
        client.batch(["INSERT INTO users VALUES (60, 'a')", "INSERT INTO users VALUES (60, 'b')"],
                     atomic=True)
    assert info.value.index == 1
    assert client.query_one("SELECT count(*) FROM users WHERE id = 60") == (0,)
    client.close()


def test_transactions(users):
    client = users.connect()
    with client.transaction():
        assert client.in_transaction
        client.execute("INSERT INTO users VALUES (30, 'thirty')")
    assert not client.in_transaction
    assert client.query_one("SELECT name FROM users WHERE id = 30") == ("thirty",)

    with pytest.raises(RuntimeError):
        with client.transaction():
            client.execute("INSERT INTO users VALUES (31, 'x')")
            raise RuntimeError("boom")
    assert client.query_one("SELECT count(*) FROM users WHERE id = 31") == (0,)

    client.begin(isolation="serializable")
    assert client.query_one("SHOW transaction_isolation") == ("serializable",)
    client.rollback()

    client.begin(read_only=True)
    with pytest.raises(InternalError) as info:  # 25006 read_only_sql_transaction
        client.execute("INSERT INTO users VALUES (32, 'x')")
    assert info.value.sqlstate == "25006"
    with pytest.raises(InternalError) as info:
        client.commit()
    assert info.value.code == "transaction_aborted"
    assert not client.in_transaction

    with pytest.raises(ProgrammingError) as info:
        client.commit()
    assert info.value.code == "transaction_state"
    with pytest.raises(ProgrammingError) as info:
        client.execute("BEGIN")
    assert info.value.code == "bad_request"
    client.close()


def test_transaction_lost_with_daemon(users):
    client = users.connect()
    client.begin()
    client.execute("INSERT INTO users VALUES (40, 'x')")
    users.restart()
    with pytest.raises(OperationalError, match="inside a transaction"):
        client.execute("INSERT INTO users VALUES (41, 'x')")
    assert not client.in_transaction
    assert client.query_one("SELECT count(*) FROM users WHERE id >= 40") == (0,)
    client.close()


@pytest.mark.parametrize(
    "sql, params, cls, code",
    [
        ("SELECT * FROM nope", [], ProgrammingError, "42P01"),
        ("SELEC 1", [], ProgrammingError, "42601"),
        ("INSERT INTO users VALUES (1, 'dup')", [], IntegrityError, "23505"),
        ("INSERT INTO users VALUES (99, NULL)", [], IntegrityError, "23502"),
        ("SELECT $1::int", ["ten"], DataError, "22P02"),
        ("SELECT 1 / 0", [], DataError, "22012"),
        ("SELECT $1::int + $2::int", [1], ProgrammingError, "bad_parameter"),
        ("SELECT $1::int", [{"an": "object"}], ProgrammingError, "bad_parameter"),
    ],
)
def test_error_classes(users, sql, params, cls, code):
    with users.connect() as client:
        with pytest.raises(cls) as info:
            client.query(sql, params)
        err = info.value
        assert err.code == code
        assert err.message and code in str(err)
        if len(code) == 5 and code[:2].isdigit():
            assert err.sqlstate == code and err.severity == "ERROR"
        else:
            assert err.sqlstate is None
        # The connection is still usable after any of these.
        assert client.query("SELECT 1") == [(1,)]


def test_error_fields(users):
    with users.connect() as client:
        with pytest.raises(ProgrammingError) as info:
            client.query("SELECT * FROM nope")
        assert info.value.position == 15
        with pytest.raises(IntegrityError) as info:
            client.execute("INSERT INTO users VALUES ($1, $2)", [1, "again"])
        assert info.value.detail == "Key (id)=(1) already exists."
        assert info.value.fields["constraint"] == "users_pkey"
        assert "DETAIL: Key (id)=(1)" in str(info.value)
        with pytest.raises(ProgrammingError) as info:
            client.query("SELECT no_such_function_abc()")
        assert info.value.hint


def test_timeout_cancels_statement(daemon):
    with daemon.connect(timeout=0.3) as client:
        started = time.monotonic()
        with pytest.raises(OperationalError) as info:
            client.query("SELECT pg_sleep(5)")
        assert info.value.code == "timeout"
        assert time.monotonic() - started < 3
        assert client.query_one("SELECT 1") == (1,)


def test_close_and_context_manager(daemon):
    with daemon.connect() as client:
        assert not client.closed
    assert client.closed
    with pytest.raises(InterfaceError):
        client.query("SELECT 1")
    client.close()  # closing twice is harmless


def test_raw_values(daemon):
    with daemon.connect(raw=True) as client:
        row = client.query_one(
            "SELECT 1.50::numeric, '\\x00ff'::bytea, '2024-01-31 12:00+00'::timestamptz,"
            " '1 day'::interval, 'NaN'::float8"
        )
        assert row == ("1.50", "\\x00ff", "2024-01-31T12:00:00Z", "P1D", "NaN")


def test_token_required(make_daemon, database):
    d = make_daemon(database, ipc='token = "s3cret"')
    with pytest.raises(OperationalError) as info:
        qail_ipc.connect(d.socket, upstream="main", timeout=10)
    assert info.value.code == "auth_failed"
    with qail_ipc.connect(d.socket, upstream="main", token="s3cret", timeout=10) as client:
        assert client.query("SELECT 1") == [(1,)]


def test_large_frames(client):
    text = "x" * 3_000_000
    assert client.query_one("SELECT length($1::text), $1::text = $2", [text, text]) == (
        3_000_000, True,
    )
    rows = client.query("SELECT i, repeat('y', 100) FROM generate_series(1, 20000) i")
    assert len(rows) == 20000 and rows[-1] == (20000, "y" * 100)


def test_bad_statement_type(client):
    with pytest.raises(TypeError):
        client.query(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        client.query("SELECT $1", [object()])
    assert client.query("SELECT 1") == [(1,)]


def test_pid_tracking_is_per_client(daemon):
    client = daemon.connect()
    assert client._pid == os.getpid()
    client.close()
