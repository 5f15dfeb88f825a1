"""Protocol 1 plumbing: frame layout, the JSON codec and the default socket path.

A frame is a 4-byte unsigned big-endian length followed by that many bytes of UTF-8 JSON
holding one object (``docs/protocol.md``, "Transport and framing"). ``orjson`` is used for
the JSON when it is installed, the standard :mod:`json` module otherwise.
"""

from __future__ import annotations

import gc
import json
import os
import socket
import struct
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping, Optional

__all__ = [
    "PROTOCOL",
    "SOCKET_ENV",
    "HEADER",
    "dumps",
    "loads",
    "encode_frame",
    "default_socket_path",
    "resolve_socket_path",
    "recv_exact",
    "read_frame",
    "FrameReader",
    "decode_body",
    "gc_paused",
]

#: The protocol version this package speaks.
PROTOCOL = 1

#: Environment variable naming the socket; shared with the daemon.
SOCKET_ENV = "QAIL_SOCKET"

#: The frame header: one unsigned 32-bit big-endian length.
HEADER = struct.Struct(">I")

_pack_header = HEADER.pack
_unpack_header = HEADER.unpack
_unpack_header_from = HEADER.unpack_from

loads: Callable[[Any], Any]

_std_encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _std_chunks() -> Optional[Callable[[Any, int], Any]]:
    """The C encoder behind ``json.dumps``, made once.

    ``JSONEncoder.encode`` makes a new C encoder for every call, which costs more than encoding
    a small request. This one is made once with the same settings, without the circular
    reference check (a self-containing request fails with ``RecursionError`` instead of
    ``ValueError``); ``None`` where the C accelerator is missing.
    """
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # pragma: no cover - CPython always has it
        return None
    try:
        return make(
            None, _std_encoder.default, json.encoder.encode_basestring, None, ":", ",",
            False, False, False,
        )
    except TypeError:  # pragma: no cover - another signature
        return None


_std_encode_chunks = _std_chunks()


def _std_dumps(obj: Any) -> bytes:
    if _std_encode_chunks is None:  # pragma: no cover
        return _std_encoder.encode(obj).encode("utf-8")
    return "".join(_std_encode_chunks(obj, 0)).encode("utf-8")


_std_scan = json.scanner.make_scanner(json.JSONDecoder())


def _std_loads(body: Any) -> Any:
    """``json.loads`` for a frame body, without its per-call encoding detection.

    ``json.loads`` of ``bytes`` first guesses the encoding in Python code, which costs more
    than decoding a small answer itself. Frames are UTF-8 by definition, so the body is
    decoded directly and handed to the C scanner; anything it does not take whole (leading
    or trailing whitespace, invalid JSON) goes through ``json.loads`` for its exact error.
    """
    text = body.decode("utf-8")
    try:
        obj, end = _std_scan(text, 0)
    except StopIteration:
        return json.loads(text)
    if end != len(text):
        return json.loads(text)
    return obj


try:  # pragma: no cover - which branch runs depends on the environment
    import orjson as _orjson

    _orjson_dumps = _orjson.dumps

    def dumps(obj: Any) -> bytes:
        """Serialises ``obj`` to compact UTF-8 JSON."""
        try:
            return _orjson_dumps(obj)
        except TypeError:
            # orjson refuses integers beyond 64 bits; the standard encoder takes them.
            return _std_dumps(obj)

    loads = _orjson.loads
    JSON_CODEC = "orjson"
except ImportError:  # pragma: no cover
    dumps = _std_dumps
    loads = _std_loads
    JSON_CODEC = "json"


def encode_frame(message: Mapping[str, Any]) -> bytes:
    """Returns ``message`` as one frame: length header plus JSON body."""
    body = dumps(message)
    return _pack_header(len(body)) + body


def default_socket_path(
    environ: Optional[Mapping[str, str]] = None, uid: Optional[int] = None
) -> str:
    """The daemon's default socket path, ignoring ``QAIL_SOCKET``.

    ``$XDG_RUNTIME_DIR/qail/qail.sock`` when ``XDG_RUNTIME_DIR`` is set, else
    ``/run/qail/qail.sock`` for root and ``/tmp/qail-<uid>/qail.sock`` for anyone else.
    """
    env = os.environ if environ is None else environ
    runtime = env.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "qail", "qail.sock")
    if uid is None:
        uid = os.getuid()
    if uid == 0:
        return "/run/qail/qail.sock"
    return "/tmp/qail-%d/qail.sock" % uid


def resolve_socket_path(
    path: Optional[str] = None, environ: Optional[Mapping[str, str]] = None
) -> str:
    """The socket to use: ``path`` if given, else ``QAIL_SOCKET``, else the default path."""
    if path:
        return os.fspath(path)
    env = os.environ if environ is None else environ
    return env.get(SOCKET_ENV) or default_socket_path(env)


def recv_exact(sock: socket.socket, n: int) -> bytearray:
    """Reads exactly ``n`` bytes; raises :class:`EOFError` if the peer closes first."""
    return _recv_rest(sock, bytearray(n), 0)


def _recv_rest(sock: socket.socket, buf: bytearray, got: int) -> bytearray:
    """Fills ``buf`` from offset ``got`` on; raises :class:`EOFError` if the peer closes first."""
    view = memoryview(buf)
    n = len(buf)
    recv_into = sock.recv_into
    while got < n:
        k = recv_into(view[got:], n - got)
        if k == 0:
            raise EOFError("the daemon closed the connection")
        got += k
    return buf


#: Frames at least this large are decoded with the cyclic garbage collector paused.
LARGE_FRAME = 256 * 1024


@contextmanager
def gc_paused(pause: bool = True) -> Iterator[None]:
    """Pauses the cyclic garbage collector for a burst of allocations.

    Decoding a large answer makes hundreds of thousands of lists and tuples. Every few hundred
    of them would trigger a collection that walks all the others, and once the burst survives,
    the next full collections walk it again: in the 10,000-query pipeline benchmark that was
    40% of the time. None of these objects form cycles (reference counting frees them), so
    the collector is paused during the burst and the burst is then moved, without a scan,
    to the oldest generation (``gc.freeze()`` followed by ``gc.unfreeze()``). Young objects
    of the application move with it and are looked at by the next full collection instead.
    An application that froze objects itself (``gc.get_freeze_count() > 0``, e.g. before
    forking workers) keeps them frozen: then the burst is left where it is.
    """
    if not pause or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        if gc.get_freeze_count() == 0:
            gc.freeze()
            gc.unfreeze()
        gc.enable()


def decode_body(body: bytes) -> Any:
    """Decodes one frame body (JSON), pausing the garbage collector for large ones."""
    if len(body) < LARGE_FRAME:
        return loads(body)
    with gc_paused():
        return loads(body)


class FrameReader:
    """Reads frames from one blocking socket, usually with a single ``recv`` per answer.

    Small answers land in a reusable buffer together with their header; a frame larger than
    the buffer is read into a buffer of its own size. Bytes past the end of a frame are kept
    for the next one. ``wait``, when given, is called before each read of a new answer and
    returns once the socket is readable (e.g. ``select.poll().poll``).
    """

    __slots__ = ("_buf", "_view", "_start", "_end", "_wait")

    def __init__(self, size: int = 64 * 1024, wait: Optional[Callable[[], Any]] = None) -> None:
        # At most LARGE_FRAME, so a frame read whole into it never needs the collector paused.
        self._buf = bytearray(min(size, LARGE_FRAME))
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0
        self._wait = wait

    def read(self, sock: socket.socket) -> Any:
        """Reads one frame and returns the decoded JSON object."""
        start, end = self._start, self._end
        if start == end:
            # Nothing pending, the usual case: one wait and one read bring a small answer whole.
            if self._wait is not None:
                self._wait()
            start, end = 0, sock.recv_into(self._view)
            if not end:
                raise EOFError("the daemon closed the connection")
            self._start, self._end = start, end
        if end - start >= 4:
            stop = start + 4 + _unpack_header_from(self._buf, start)[0]
            if stop <= end:
                if stop == end:
                    self._start = self._end = 0
                else:
                    self._start = stop
                # Within the buffer, so below LARGE_FRAME (see decode_body).
                return loads(bytes(self._view[start + 4 : stop]))
        return self._read_rest(sock)

    def _read_rest(self, sock: socket.socket) -> Any:
        """Reads one frame when the buffer does not hold it whole yet."""
        while self._end - self._start < 4:
            self._fill(sock)
        (length,) = _unpack_header_from(self._buf, self._start)
        if length <= len(self._buf) - 4:
            # Filling may move the pending bytes to the front, so the body's offset is taken
            # only once all of it is in.
            while self._end - self._start - 4 < length:
                self._fill(sock)
            body_start = self._start + 4
            body = bytes(self._view[body_start : body_start + length])
            self._start = body_start + length
            if self._start == self._end:
                self._start = self._end = 0
            return decode_body(body)
        body_start = self._start + 4
        have = self._end - body_start
        big = bytearray(length)
        big[:have] = self._view[body_start : self._end]
        self._start = self._end = 0
        return decode_body(_recv_rest(sock, big, have))

    def _fill(self, sock: socket.socket) -> None:
        if self._start and self._end == len(self._buf):
            pending = self._end - self._start
            self._buf[:pending] = self._view[self._start : self._end]
            self._start, self._end = 0, pending
        if self._wait is not None:
            self._wait()
        k = sock.recv_into(self._view[self._end :])
        if k == 0:
            raise EOFError("the daemon closed the connection")
        self._end += k


def read_frame(sock: socket.socket) -> Any:
    """Reads one frame from a blocking socket and returns the decoded JSON object."""
    (length,) = _unpack_header(recv_exact(sock, 4))
    return decode_body(recv_exact(sock, length))
