"""Runs the shared protocol test vectors (docs/protocol-vectors/*.json) over a raw socket.

Format: see the end of docs/protocol.md. Each file gets a fresh database (its ``setup`` SQL
run there) configured as the upstream ``main``; the runner predefines the captures
``pg_host``, ``pg_port``, ``pg_user``, ``pg_database`` and ``pg_password`` for it.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any, Dict

import pytest

from conftest import REPO
from qail_ipc._protocol import encode_frame, read_frame

VECTORS = sorted((REPO / "docs" / "protocol-vectors").glob("*.json"))


def substitute(value: Any, refs: Dict[str, Any]) -> Any:
    """Replaces every ``"$ref:NAME"`` string with the captured value."""
    if isinstance(value, str) and value.startswith("$ref:"):
        return refs[value[len("$ref:"):]]
    if isinstance(value, list):
        return [substitute(v, refs) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v, refs) for k, v in value.items()}
    return value


def match(expected: Any, actual: Any, refs: Dict[str, Any], where: str = "$") -> None:
    """Asserts that ``actual`` matches ``expected`` under the vector rules."""
    if isinstance(expected, str) and expected.startswith("$"):
        if expected == "$any":
            return
        if expected == "$string":
            assert isinstance(actual, str), "%s: expected a string, got %r" % (where, actual)
            return
        if expected == "$integer":
            assert isinstance(actual, int) and not isinstance(actual, bool), \
                "%s: expected an integer, got %r" % (where, actual)
            return
        if expected == "$number":
            assert isinstance(actual, (int, float)) and not isinstance(actual, bool), \
                "%s: expected a number, got %r" % (where, actual)
            return
        if expected.startswith("$capture:"):
            refs[expected[len("$capture:"):]] = actual
            return
    if isinstance(expected, dict):
        assert isinstance(actual, dict), "%s: expected an object, got %r" % (where, actual)
        for key, value in expected.items():
            assert key in actual, "%s: missing key %r in %r" % (where, key, actual)
            match(value, actual[key], refs, "%s.%s" % (where, key))
        return
    if isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), \
            "%s: expected %r, got %r" % (where, expected, actual)
        for i, (e, a) in enumerate(zip(expected, actual)):
            match(e, a, refs, "%s[%d]" % (where, i))
        return
    assert type(actual) is type(expected) and actual == expected, \
        "%s: expected %r, got %r" % (where, expected, actual)


def assert_closed(sock: socket.socket) -> None:
    try:
        data = sock.recv(1)
    except ConnectionResetError:
        return
    assert data == b"", "expected the daemon to close the connection, got %r" % data


def test_vectors_exist():
    assert VECTORS, "no protocol vectors found in docs/protocol-vectors"


@pytest.mark.parametrize("path", VECTORS, ids=[p.stem for p in VECTORS])
def test_vector(path: Path, pg_cluster, make_daemon, database):
    vector = json.loads(path.read_text())
    for sql in vector.get("setup", []):
        pg_cluster.psql(database, sql)
    daemon = make_daemon(database)
    refs: Dict[str, Any] = {
        "pg_%s" % k: v for k, v in daemon.pg_credentials.items()
    }
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(daemon.socket)
        for n, step in enumerate(vector["steps"]):
            where = "%s step %d" % (path.name, n)
            if "send" in step:
                sock.sendall(encode_frame(substitute(step["send"], refs)))
                match(step["expect"], read_frame(sock), refs, where)
            elif "send_raw_hex" in step:
                sock.sendall(bytes.fromhex(step["send_raw_hex"]))
                match(step["expect"], read_frame(sock), refs, where)
            elif "send_many" in step:
                sock.sendall(b"".join(encode_frame(substitute(m, refs)) for m in step["send_many"]))
                for i, expected in enumerate(step["expect_many"]):
                    match(expected, read_frame(sock), refs, "%s answer %d" % (where, i))
            else:
                pytest.fail("%s: unknown step %r" % (where, step))
            if step.get("expect_closed"):
                assert_closed(sock)
