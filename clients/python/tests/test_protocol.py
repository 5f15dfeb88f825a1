"""Protocol plumbing without a daemon: framing, the socket path rule, error mapping,
placeholder rewriting."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import struct
import threading

import pytest

from qail_ipc import _protocol, errors
from qail_ipc._protocol import default_socket_path, encode_frame, read_frame, resolve_socket_path
from qail_ipc.dbapi import numeric_to_dollar


def test_frame_layout():
    frame = encode_frame({"id": 1, "op": "ping", "text": "é"})
    (length,) = struct.unpack(">I", frame[:4])
    assert length == len(frame) - 4
    assert _protocol.loads(frame[4:]) == {"id": 1, "op": "ping", "text": "é"}


def test_read_frame_across_partial_writes():
    a, b = socket.socketpair()
    a.settimeout(10)
    b.settimeout(10)
    frame = encode_frame({"id": 7, "ok": True, "rows": [[1, "x" * 70000]]})

    def dribble():
        for i in range(0, len(frame), 1000):
            b.sendall(frame[i : i + 1000])

    t = threading.Thread(target=dribble)
    t.start()
    assert read_frame(a)["rows"][0][1] == "x" * 70000
    t.join(10)
    b.close()
    with pytest.raises(EOFError):
        read_frame(a)
    a.close()


def test_default_socket_path_rule():
    assert default_socket_path({"XDG_RUNTIME_DIR": "/run/user/1000"}, uid=1000) == \
        "/run/user/1000/qail/qail.sock"
    assert default_socket_path({}, uid=0) == "/run/qail/qail.sock"
    assert default_socket_path({}, uid=1234) == "/tmp/qail-1234/qail.sock"
    assert default_socket_path({"XDG_RUNTIME_DIR": ""}, uid=0) == "/run/qail/qail.sock"


def test_resolve_socket_path_order():
    env = {"QAIL_SOCKET": "/x/q.sock", "XDG_RUNTIME_DIR": "/run/user/5"}
    assert resolve_socket_path("/explicit.sock", env) == "/explicit.sock"
    assert resolve_socket_path(None, env) == "/x/q.sock"
    assert resolve_socket_path(None, {"XDG_RUNTIME_DIR": "/run/user/5"}) == \
        "/run/user/5/qail/qail.sock"


@pytest.mark.parametrize(
    "code, cls",
    [
        ("23505", errors.IntegrityError),
        ("23502", errors.IntegrityError),
        ("42P01", errors.ProgrammingError),
        ("42601", errors.ProgrammingError),
        ("22012", errors.DataError),
        ("0A000", errors.NotSupportedError),
        ("40001", errors.OperationalError),
        ("57014", errors.OperationalError),
        ("25006", errors.InternalError),
        ("XX000", errors.InternalError),
        ("99999", errors.DatabaseError),
        ("bad_request", errors.ProgrammingError),
        ("unknown_op", errors.InterfaceError),
        ("frame_too_large", errors.InterfaceError),
        ("unsupported_protocol", errors.InterfaceError),
        ("not_connected", errors.ProgrammingError),
        ("unknown_upstream", errors.OperationalError),
        ("unknown_handle", errors.ProgrammingError),
        ("bad_parameter", errors.ProgrammingError),
        ("auth_failed", errors.OperationalError),
        ("forbidden", errors.ProgrammingError),
        ("transaction_state", errors.ProgrammingError),
        ("transaction_aborted", errors.InternalError),
        ("upstream_unavailable", errors.OperationalError),
        ("pool_timeout", errors.OperationalError),
        ("timeout", errors.OperationalError),
        ("shutting_down", errors.OperationalError),
        ("internal", errors.InternalError),
        ("something_new", errors.DatabaseError),
    ],
)
def test_error_class(code, cls):
    assert errors.error_class(code) is cls
    exc = errors.from_wire({"code": code, "message": "m", "detail": "d", "index": 3})
    assert type(exc) is cls and isinstance(exc, errors.Error)
    assert (exc.code, exc.message, exc.detail, exc.index) == (code, "m", "d", 3)
    assert exc.sqlstate == (code if errors.is_sqlstate(code) else None)


def test_hierarchy():
    for cls in (errors.DataError, errors.OperationalError, errors.IntegrityError,
                errors.InternalError, errors.ProgrammingError, errors.NotSupportedError):
        assert issubclass(cls, errors.DatabaseError)
    assert issubclass(errors.InterfaceError, errors.Error)
    assert issubclass(errors.Error, Exception) and issubclass(errors.Warning, Exception)
    assert isinstance(errors.from_wire("junk"), errors.InterfaceError)


@pytest.mark.parametrize(
    "sql, expected",
    [
        ("select :1, :2", "select $1, $2"),
        ("select $1, :1", "select $1, $1"),
        ("select x::int, a[1:2], b[i:3]", "select x::int, a[1:2], b[i:3]"),
        ("select ':1', \":1\", E'\\' :1', $$ :1 $$, $f$ :1 $f$ :2",
         "select ':1', \":1\", E'\\' :1', $$ :1 $$, $f$ :1 $f$ $2"),
        ("select 'it''s :1', :1", "select 'it''s :1', $1"),
        ("select 1 -- :1\n, :2 /* :3 /* :4 */ */", "select 1 -- :1\n, $2 /* :3 /* :4 */ */"),
        ("values(:10,:11)", "values($10,$11)"),
        ("no placeholders", "no placeholders"),
    ],
)
def test_numeric_to_dollar(sql, expected):
    assert numeric_to_dollar(sql) == expected


def test_stdlib_json_fallback():
    # Without orjson the standard json module is used, with the same results.
    code = (
        "import sys; sys.modules['orjson'] = None\n"
        "from qail_ipc import _protocol as p\n"
        "assert p.JSON_CODEC == 'json', p.JSON_CODEC\n"
        "f = p.encode_frame({'id': 1, 'text': 'é', 'n': 2**70})\n"
        "assert p.loads(f[4:]) == {'id': 1, 'text': 'é', 'n': 2**70}\n"
        "assert 'é'.encode() in f\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def test_stdlib_loads_takes_what_json_loads_takes_and_fails_like_it():
    # The standard-library decoder skips json.loads' encoding detection; the answers and
    # the errors must be the same.
    good = [b'{"a":[1,2.5,null,true,"\\u00e9"]}', ' {"a": 1} \n'.encode(), "[\"é\"]".encode(),
            b'"text"', b"12"]
    for body in good:
        assert _protocol._std_loads(body) == json.loads(body), body
    for body in [b"", b"{", b'{"a":1} x', b"nul", b'{"a":1}{}']:
        with pytest.raises(ValueError) as std:
            _protocol._std_loads(body)
        with pytest.raises(ValueError) as ref:
            json.loads(body)
        assert str(std.value) == str(ref.value), body


def test_stdlib_dumps_encodes_like_json_dumps_and_fails_like_it():
    # The standard-library encoder reuses one C encoder instead of making one per call; the
    # bytes and the errors must be those of json.dumps with the same settings.
    def reference(obj):
        return json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()

    values = [
        {"id": 1, "op": "query", "params": [10, "x", None, True, 2.5, -0.0, 2**70, "é\"\\\n"]},
        {"nested": {"a": [[], {}, [1, [2, [3]]]]}, "": ""},
        [1, "two", 3.0], "text", 12, None,
    ]
    for obj in values:
        assert _protocol._std_dumps(obj) == reference(obj), obj
    # The encoder is reused: an error half-way leaves nothing behind for the next call.
    for bad, error in [({"x": float("nan")}, ValueError), ({"x": object()}, TypeError)]:
        with pytest.raises(error):
            _protocol._std_dumps(bad)
        assert _protocol._std_dumps({"after": [1]}) == b'{"after":[1]}'


def test_big_integers_are_encoded():
    assert _protocol.loads(encode_frame({"n": 2**80})[4:]) == {"n": 2**80}


def test_large_frames_decode_with_the_collector_paused_and_restored():
    import gc

    body = ("[" + ",".join("[%d,\"n%d\"]" % (i, i) for i in range(40000)) + "]").encode()
    assert len(body) >= _protocol.LARGE_FRAME
    seen = []
    real_loads = _protocol.loads

    def spying_loads(b):
        seen.append(gc.isenabled())
        return real_loads(b)

    _protocol.loads = spying_loads
    try:
        assert gc.isenabled()
        rows = _protocol.decode_body(body)
        assert rows[39999] == [39999, "n39999"]
        assert seen == [False], "the collector is paused while a large frame is decoded"
        assert gc.isenabled(), "and enabled again afterwards"
        _protocol.decode_body(b"[1]")
        assert seen[-1] is True, "small frames leave the collector alone"
        gc.disable()
        try:
            _protocol.decode_body(body)
            assert not gc.isenabled(), "a collector the caller disabled stays disabled"
        finally:
            gc.enable()
    finally:
        _protocol.loads = real_loads


def test_a_decoded_burst_skips_the_young_generations_but_an_application_freeze_is_kept():
    import gc

    body = ("[" + ",".join("[%d,\"n%d\"]" % (i, i) for i in range(40000)) + "]").encode()
    gc.collect()
    rows = _protocol.decode_body(body)
    assert gc.get_count()[0] < 1000, "the burst was not left in the youngest generation"
    assert gc.get_freeze_count() == 0
    assert any(r is rows for r in gc.get_objects(generation=2)), "it went to the oldest one"

    frozen = [object() for _ in range(10)]  # an application's gc.freeze() before forking
    gc.freeze()
    try:
        before = gc.get_freeze_count()
        again = _protocol.decode_body(body)
        assert again == rows
        assert gc.get_freeze_count() == before, "the application's frozen objects stay frozen"
    finally:
        gc.unfreeze()
    del frozen


def test_frame_reader_handles_split_large_and_back_to_back_frames():
    import socket
    import threading

    a, b = socket.socketpair()
    try:
        reader = _protocol.FrameReader(size=64)
        small = encode_frame({"id": 1, "ok": True})
        large = encode_frame({"id": 2, "rows": list(range(500))})  # larger than the buffer
        # Two frames in one write, the second split mid-header.
        b.sendall(small + small[:2])
        assert reader.read(a) == {"id": 1, "ok": True}
        b.sendall(small[2:] + large[:30])
        assert reader.read(a) == {"id": 1, "ok": True}
        sender = threading.Thread(target=b.sendall, args=(large[30:] + small,))
        sender.start()
        assert reader.read(a)["rows"][499] == 499
        assert reader.read(a) == {"id": 1, "ok": True}
        sender.join()
        b.close()
        with pytest.raises(EOFError):
            reader.read(a)
    finally:
        a.close()


def test_frame_reader_keeps_a_frame_that_straddles_the_end_of_its_buffer():
    # Back-to-back answers (chunked pipelines): the first leaves the buffer part-full, the
    # second fits the buffer but not the room behind the first, so it is moved to the front.
    import socket
    import threading

    a, b = socket.socketpair()
    try:
        a.settimeout(5)
        reader = _protocol.FrameReader(size=256)
        first = encode_frame({"id": 1, "rows": list(range(40))})
        second = encode_frame({"id": 2, "rows": list(range(50))})
        assert len(first) < 256 and len(second) <= 256 - 4 and len(first) + len(second) > 256
        b.sendall(first + second[:256 - len(first)])
        assert reader.read(a)["id"] == 1
        sender = threading.Thread(target=b.sendall, args=(second[256 - len(first):],))
        sender.start()
        assert reader.read(a) == {"id": 2, "rows": list(range(50))}
        sender.join()
    finally:
        a.close()
        b.close()


def _voluntary_switches(tid: int) -> int:
    with open("/proc/self/task/%d/status" % tid) as status:
        for line in status:
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split()[1])
    raise AssertionError("no voluntary_ctxt_switches for thread %d" % tid)


def _switches_while_the_peer_reads(wait_in_poll: bool) -> int:
    """How often a thread blocked reading an answer is woken while the peer reads, piece by
    piece, what the thread's socket wrote earlier (the daemon reading a request)."""
    import select
    import socket
    import threading
    import time

    a, b = socket.socketpair()
    try:
        for _ in range(40):
            a.sendall(b"request!")
        poller = select.poll()
        poller.register(a, select.POLLIN)
        reader = _protocol.FrameReader(wait=poller.poll if wait_in_poll else None)
        started = threading.Event()
        result: dict = {}

        def read() -> None:
            result["tid"] = threading.get_native_id()
            started.set()
            result["frame"] = reader.read(a)

        thread = threading.Thread(target=read)
        thread.start()
        started.wait(5)
        time.sleep(0.1)  # asleep in poll() or recv() by now
        before = _voluntary_switches(result["tid"])
        for _ in range(40):
            assert b.recv(8) == b"request!"
            time.sleep(0.002)
        switches = _voluntary_switches(result["tid"]) - before
        b.sendall(encode_frame({"id": 1, "ok": True}))
        thread.join(5)
        assert result["frame"] == {"id": 1, "ok": True}
        return switches
    finally:
        a.close()
        b.close()


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="needs Linux /proc")
def test_a_reader_waiting_in_poll_is_not_woken_when_the_daemon_reads_the_request():
    # Every piece the peer reads frees room in the socket, and the kernel wakes whoever sleeps
    # on it: a recv() for nothing, a poll() for POLLIN not (the Client waits in poll()).
    assert _switches_while_the_peer_reads(wait_in_poll=False) >= 20
    assert _switches_while_the_peer_reads(wait_in_poll=True) <= 3
