"""Item 4 of the performance issue: the daemon's memory at rest and under many idle clients.

Measured on a fresh daemon (nothing else running through it):

- idle RSS: VmRSS of the daemon once it is up and connected to PostgreSQL, with no client;
- RSS growth per idle client connection: the driver opens N Unix connections from this one
  process, in steps of 1,000, each doing what a real idle worker does (``hello`` + ``connect``)
  and then holding still; VmRSS after every step, and a least-squares slope over the steps;
- 10,000 (or N) concurrent connections served: with all of them open, every connection sends
  one ``query`` at once and then one ``ping``; the answers are read back and counted;
- after closing them, a second round of N connections (open, serve, close): RSS that stays
  flat is memory the daemon reuses, RSS that grows again is a per-connection leak.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from typing import Any, Callable

from services import Daemon

HEADER = struct.Struct(">I")
SQL = "SELECT id, name FROM users LIMIT $1"


def frame(message: dict[str, Any]) -> bytes:
    body = json.dumps(message, separators=(",", ":")).encode()
    return HEADER.pack(len(body)) + body


def read_exact(sock: socket.socket, n: int) -> bytes:
    chunks = []
    while n:
        chunk = sock.recv(n)
        if not chunk:
            raise ConnectionError("the daemon closed the connection")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def read_frame(sock: socket.socket) -> dict[str, Any]:
    (length,) = HEADER.unpack(read_exact(sock, 4))
    return json.loads(read_exact(sock, length))


def send_all_then_read(socks: list[socket.socket], messages: list[bytes],
                       answers_each: int) -> tuple[int, list[str]]:
    """Sends ``messages[i]`` on ``socks[i]`` for all, then reads the answers; (ok, errors)."""
    for sock, message in zip(socks, messages):
        sock.sendall(message)
    ok = 0
    errors: list[str] = []
    for sock in socks:
        for _ in range(answers_each):
            try:
                answer = read_frame(sock)
            except (OSError, ConnectionError, ValueError) as exc:
                errors.append(repr(exc))
                break
            if answer.get("ok"):
                ok += 1
            else:
                errors.append(str(answer.get("error", {}).get("code")))
    return ok, errors


def settle_rss(daemon: Daemon, pause: float = 0.5) -> int:
    """VmRSS in KiB once the daemon has had ``pause`` seconds to settle."""
    time.sleep(pause)
    return daemon.status("VmRSS")


def slope_kib(points: list[tuple[int, int]]) -> float:
    """Least-squares KiB per connection over (connections, VmRSS KiB) points."""
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in points)
    return sxy / sxx if sxx else 0.0


def open_connections(daemon: Daemon, n: int, handshake: bytes) -> list[socket.socket]:
    """Opens ``n`` connections, each doing ``handshake`` (two requests) and reading both answers."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            socks.append(sock)
            sock.settimeout(15)
            sock.connect(str(daemon.socket))
        _, errors = send_all_then_read(socks, [handshake] * n, 2)
        if errors:
            raise RuntimeError(f"{len(errors)} handshakes failed, first: {errors[0]}")
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


def serve_each(daemon: Daemon, socks: list[socket.socket], handle: str) -> dict[str, Any]:
    """Every held connection asks at once: one query, then one ping."""
    n = len(socks)
    query = [frame({"id": 3, "op": "query", "handle": handle, "params": [1]})] * n
    t0 = time.monotonic()
    ok_q, errors_q = send_all_then_read(socks, query, 1)
    query_seconds = time.monotonic() - t0
    t0 = time.monotonic()
    ok_p, errors_p = send_all_then_read(socks, [frame({"id": 4, "op": "ping"})] * n, 1)
    return {
        "connections": n,
        "query_ok": ok_q, "query_errors": len(errors_q),
        "query_error_sample": errors_q[:3], "query_seconds": query_seconds,
        "ping_ok": ok_p, "ping_errors": len(errors_p), "ping_seconds": time.monotonic() - t0,
        "rss_after_kib": daemon.status("VmRSS"), "hwm_kib": daemon.status("VmHWM"),
    }


def measure(daemon: Daemon, max_connections: int, step: int,
            log: Callable[[str], None]) -> dict[str, Any]:
    result: dict[str, Any] = {"daemon_nofile_limit": daemon.nofile_limit()}
    time.sleep(1.0)
    result["idle_rss_kib"] = daemon.status("VmRSS")
    log(f"idle daemon RSS: {result['idle_rss_kib'] / 1024:.1f} MiB "
        f"(open-file limit of the daemon: {result['daemon_nofile_limit']})")

    # One client prepares the statement (handles are shared by every connection).
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as first:
        first.connect(str(daemon.socket))
        first.sendall(frame({"id": 1, "op": "hello", "protocol": 1})
                      + frame({"id": 2, "op": "connect", "upstream": "main"})
                      + frame({"id": 3, "op": "prepare", "sql": SQL}))
        read_frame(first), read_frame(first)
        handle = read_frame(first)["handle"]
    baseline = settle_rss(daemon, 1.0)
    points: list[tuple[int, int]] = [(0, baseline)]
    result["baseline_rss_kib"] = baseline

    handshake = (frame({"id": 1, "op": "hello", "protocol": 1, "client": "idle"})
                 + frame({"id": 2, "op": "connect", "upstream": "main"}))
    socks: list[socket.socket] = []
    try:
        t0 = time.monotonic()
        while len(socks) < max_connections:
            socks += open_connections(daemon, min(step, max_connections - len(socks)), handshake)
            rss = settle_rss(daemon)
            points.append((len(socks), rss))
            log(f"{len(socks):6d} idle connections: VmRSS {rss / 1024:7.1f} MiB "
                f"(+{(rss - baseline) / len(socks):.1f} KiB per connection)")
        result["open_seconds"] = time.monotonic() - t0
        result["points"] = [{"connections": c, "rss_kib": r} for c, r in points]
        per_conn = slope_kib(points)
        result["kib_per_connection"] = per_conn
        result["mib_per_1000"] = per_conn * 1000 / 1024
        result["daemon_fds_held"] = daemon.open_fds()
        served = result["served"] = serve_each(daemon, socks, handle)
        served["kib_per_connection_after_serving"] = (
            (served["rss_after_kib"] - baseline) / len(socks))
        log(f"{len(socks)} connections each served one query ({served['query_ok']} ok, "
            f"{served['query_errors']} errors, {served['query_seconds']:.2f} s) and one ping "
            f"({served['ping_ok']} ok, {served['ping_seconds']:.2f} s); VmRSS "
            f"{served['rss_after_kib'] / 1024:.1f} MiB "
            f"({served['kib_per_connection_after_serving']:.1f} KiB per connection)")
    finally:
        for sock in socks:
            sock.close()
    n = len(socks)
    result["rss_after_close_kib"] = settle_rss(daemon, 1.5)
    result["daemon_fds_after_close"] = daemon.open_fds()
    log(f"after closing them: VmRSS {result['rss_after_close_kib'] / 1024:.1f} MiB, "
        f"{result['daemon_fds_after_close']} file descriptors still open in the daemon")

    # Again with half as many: memory that is reused shows no growth, a per-connection leak
    # shows up here. (Half, so that 1.5 N stays under the default max_clients of 16,384 even
    # when closed sessions are never released.)
    try:
        socks = open_connections(daemon, max(1, n // 2), handshake)
        try:
            second = serve_each(daemon, socks, handle)
        finally:
            for sock in socks:
                sock.close()
        second["rss_after_close_kib"] = settle_rss(daemon, 1.5)
        second["daemon_fds_after_close"] = daemon.open_fds()
        result["second_round"] = second
        log(f"second round of {second['connections']} connections served and closed: VmRSS "
            f"{second['rss_after_close_kib'] / 1024:.1f} MiB, "
            f"{second['daemon_fds_after_close']} descriptors open in the daemon")
    except (OSError, RuntimeError) as exc:
        result["second_round"] = {"error": repr(exc)}
        log(f"second round failed: {exc!r}")
    return result
