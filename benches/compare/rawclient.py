"""A minimal protocol-1 client (stdlib only), used when the qail_ipc package is unavailable.

It is not what users run: the comparison reports which client produced the daemon figures
(``--client raw`` forces this one, e.g. to see how much of a mode's time the real client's
own work takes). Rows come back as tuples, as qail_ipc's default row factory makes them.
"""

from __future__ import annotations

import json
import socket
import struct
from typing import Any, Sequence

_HEADER = struct.Struct(">I")
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class RawError(Exception):
    """The daemon answered ``ok: false``."""


class RawClient:
    def __init__(self, path: str) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.connect(path)
        self._next_id = 0
        self.call({"op": "hello", "protocol": 1, "client": "qail-bench-raw"})

    def close(self) -> None:
        self._sock.close()

    def send(self, message: dict[str, Any]) -> None:
        self._next_id += 1
        message["id"] = self._next_id
        body = _encode(message).encode()
        self._sock.sendall(_HEADER.pack(len(body)) + body)

    def recv(self) -> dict[str, Any]:
        (length,) = _HEADER.unpack(self._read(4))
        answer = json.loads(self._read(length))
        if not answer.get("ok"):
            raise RawError(answer.get("error"))
        return answer

    def call(self, message: dict[str, Any]) -> dict[str, Any]:
        self.send(message)
        return self.recv()

    def _read(self, n: int) -> bytearray:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            k = self._sock.recv_into(view[got:], n - got)
            if k == 0:
                raise ConnectionError("the daemon closed the connection")
            got += k
        return buf

    # The subset of qail_ipc.Client the benchmark uses.

    def use(self, upstream: str) -> None:
        self.call({"op": "connect", "upstream": upstream})

    def prepare(self, sql: str) -> str:
        return self.call({"op": "prepare", "sql": sql})["handle"]

    def query(self, handle: str, params: Sequence[Any]) -> list[tuple]:
        answer = self.call({"op": "query", "handle": handle, "params": list(params)})
        return list(map(tuple, answer["rows"]))

    def pipeline(self, handle: str, params_batch: Sequence[Sequence[Any]]) -> list[list[tuple]]:
        answer = self.call({"op": "pipeline", "handle": handle,
                            "params_batch": [list(p) for p in params_batch]})
        return [list(map(tuple, r["rows"])) for r in answer["results"]]

    def prepared_pipeline(self, handle: str, params_batch: Sequence[Sequence[Any]]) -> int:
        answer = self.call({"op": "pipeline", "handle": handle, "count_only": True,
                            "params_batch": [list(p) for p in params_batch]})
        return int(answer["count"])
