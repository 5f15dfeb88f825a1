#!/usr/bin/env python3
"""Talk to qail-daemon with nothing but the standard library.

Speaks protocol 1 (docs/protocol.md) directly: every message is a 4-byte big-endian length
followed by one JSON object. Expects a `users(id int, name text)` table with at least 10 rows
(scripts/demo.sh makes one) on the upstream named ``main``.

Usage: demo_client.py [SOCKET]   (default: $QAIL_SOCKET)
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
import time
from typing import Any


class ProtocolError(Exception):
    """The daemon answered a request with ``ok: false``."""

    def __init__(self, request: dict[str, Any], error: dict[str, Any]) -> None:
        super().__init__(f"{request['op']} failed: {error.get('code')}: {error.get('message')}")
        self.error = error


class Connection:
    """One client connection; requests get increasing ids."""

    def __init__(self, path: str, timeout: float = 30.0) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        self._sock.connect(path)
        self._next_id = 1

    def close(self) -> None:
        self._sock.close()

    def send(self, op: str, **fields: Any) -> int:
        """Sends one request without waiting; returns its id."""
        request_id = self._next_id
        self._next_id += 1
        body = json.dumps({"id": request_id, "op": op, **fields}).encode()
        self._sock.sendall(struct.pack(">I", len(body)) + body)
        return request_id

    def recv(self) -> dict[str, Any]:
        """Reads one response frame."""
        (length,) = struct.unpack(">I", self._read_exact(4))
        return json.loads(self._read_exact(length))

    def call(self, op: str, **fields: Any) -> dict[str, Any]:
        """Sends one request and returns its successful response (raises on an error)."""
        request_id = self.send(op, **fields)
        response = self.recv()
        if response.get("id") != request_id:
            raise RuntimeError(f"expected the answer to request {request_id}, got {response}")
        if not response.get("ok"):
            raise ProtocolError({"op": op, **fields}, response.get("error", {}))
        return response

    def _read_exact(self, n: int) -> bytes:
        chunks = []
        while n:
            chunk = self._sock.recv(min(n, 1 << 20))
            if not chunk:
                raise ConnectionError("the daemon closed the connection")
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)


def show_rows(result: dict[str, Any]) -> None:
    """Prints a result's columns and rows as a small table."""
    columns = [f"{c['name']} ({c['type']})" for c in result["columns"]]
    print("    " + " | ".join(columns))
    for row in result["rows"]:
        print("    " + " | ".join(json.dumps(v) for v in row))
    print(f"    -> {result['command']}")


def main() -> int:
    path = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("QAIL_SOCKET")
    if not path:
        print("usage: demo_client.py SOCKET (or set QAIL_SOCKET)", file=sys.stderr)
        return 2
    conn = Connection(path)
    try:
        hello = conn.call("hello", protocol=1, client="demo_client.py")
        print(f"hello: {hello['server']}, protocol {hello['protocol']}, session {hello['session']}")

        connected = conn.call("connect", upstream="main")
        print(f"connect: upstream {connected['upstream']}")

        prepared = conn.call("prepare", sql="SELECT id, name FROM users LIMIT $1")
        handle = prepared["handle"]
        print(f"prepare: handle {handle}, params {prepared['params']}, "
              f"columns {[c['name'] + ':' + c['type'] for c in prepared['columns']]}")

        print('query (handle, params ["3"]):')
        show_rows(conn.call("query", handle=handle, params=["3"]))

        pipelined = conn.call("pipeline", handle=handle, params_batch=[["1"], ["2"], [3]])
        print(f"pipeline: {len(pipelined['results'])} results")
        for i, result in enumerate(pipelined["results"]):
            names = [row[1] for row in result["rows"]]
            print(f"    [{i}] {result['command']}: {names}")

        params_batch = [["10"], ["5"], ["1"]] * 3333
        started = time.perf_counter()
        counted = conn.call("pipeline", handle=handle, params_batch=params_batch, count_only=True)
        elapsed = time.perf_counter() - started
        print(f"pipeline count_only: {counted['count']} statements in {elapsed * 1000:.1f} ms "
              f"({counted['count'] / elapsed:,.0f} statements/s)")
        if counted["count"] != len(params_batch):
            raise RuntimeError(f"expected {len(params_batch)} statements, got {counted['count']}")

        conn.call("begin")
        before = conn.call("query", sql="SELECT name FROM users WHERE id = $1", params=[1])
        conn.call("execute", sql="UPDATE users SET name = $1 WHERE id = $2",
                  params=["renamed inside a transaction", 1])
        inside = conn.call("query", sql="SELECT name FROM users WHERE id = $1", params=[1])
        conn.call("rollback")
        after = conn.call("query", sql="SELECT name FROM users WHERE id = $1", params=[1])
        print(f"transaction: name was {before['rows'][0][0]!r}, "
              f"inside {inside['rows'][0][0]!r}, after rollback {after['rows'][0][0]!r}")

        try:
            conn.call("query", sql="SELECT * FROM no_such_table")
        except ProtocolError as e:
            print(f"error example: {e.error['code']}: {e.error['message']}")

        conn.call("close")
        print("close: ok")
        return 0
    finally:
        conn.close()


if __name__ == "__main__":
    sys.exit(main())
