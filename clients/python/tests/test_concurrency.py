"""Fork and thread safety of the synchronous client."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest


def _wait_child(pid: int, limit: float = 30.0) -> int:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status) if hasattr(os, "waitstatus_to_exitcode") \
                else status >> 8
        time.sleep(0.01)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    pytest.fail("forked child did not finish within %.0f s" % limit)


def test_fork_child_reconnects_on_its_own_socket(daemon):
    client = daemon.connect()
    handle = client.prepare("SELECT $1::int * 2")
    assert client.query(handle, [1]) == [(2,)]
    parent_session = client.session
    parent_fd = client._sock.fileno()

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report, never return into pytest
        code = 1
        try:
            os.close(read_end)
            rows = [client.query(handle, [i])[0][0] for i in range(20)]
            report = {"rows": rows, "session": client.session, "pid_ok": client._pid == os.getpid()}
            os.write(write_end, json.dumps(report).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    assert _wait_child(pid) == 0
    with os.fdopen(read_end) as f:
        report = json.loads(f.read())
    assert report["rows"] == [2 * i for i in range(20)]
    assert report["pid_ok"]
    assert report["session"] != parent_session  # a connection of its own
    # The parent's connection was not disturbed by the child.
    assert client._sock.fileno() == parent_fd
    assert client.session == parent_session
    assert client.query(handle, [21]) == [(42,)]
    client.close()


def test_fork_while_another_thread_holds_the_lock(daemon):
    client = daemon.connect()
    started = threading.Event()

    def slow():
        with client.transaction():
            started.set()
            client.query("SELECT pg_sleep(0.5)")

    t = threading.Thread(target=slow)
    t.start()
    assert started.wait(10)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            # The lock copied from the parent is held by a thread that does not exist here;
            # the at-fork hook gave the child a fresh one, and a fresh connection.
            code = 0 if client.query("SELECT 7") == [(7,)] and not client.in_transaction else 2
        finally:
            os._exit(code)
    assert _wait_child(pid) == 0
    t.join(10)
    assert client.query("SELECT 8") == [(8,)]
    client.close()


def test_many_threads_share_one_client(daemon):
    client = daemon.connect()
    handle = client.prepare("SELECT $1::int, $2::text")
    errors = []

    def work(n: int) -> None:
        try:
            for i in range(40):
                if i % 2:
                    assert client.query(handle, [n * 1000 + i, "t%d" % n]) == [(n * 1000 + i, "t%d" % n)]
                else:
                    results = client.pipeline(handle, [[n, "a"], [i, "b"]])
                    assert [r.rows for r in results] == [[(n, "a")], [(i, "b")]]
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    client.close()


def test_transaction_block_keeps_other_threads_out(daemon):
    client = daemon.connect()
    client.execute("CREATE TABLE t (id int)")
    inside = threading.Event()
    other_done = threading.Event()

    def other() -> None:
        assert inside.wait(10)
        client.execute("INSERT INTO t VALUES (2)")  # waits for the transaction to end
        other_done.set()

    t = threading.Thread(target=other)
    t.start()
    with pytest.raises(RuntimeError):
        with client.transaction():
            client.execute("INSERT INTO t VALUES (1)")
            inside.set()
            time.sleep(0.2)
            assert not other_done.is_set()
            raise RuntimeError("roll it back")
    t.join(10)
    assert other_done.is_set()
    # Row 2 was not swallowed by the rolled-back transaction.
    assert client.query("SELECT id FROM t") == [(2,)]
    client.close()
