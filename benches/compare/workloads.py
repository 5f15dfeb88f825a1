"""The benchmark modes. Each invocation runs one mode once and prints one JSON object.

    workloads.py MODE SPEC_JSON      (run by run.py with the comparison venv's python)

Every mode runs the seed's statement, ``SELECT id, name FROM users LIMIT $1`` with the
parameter cycling 10, 5, 1, warms up for ``warmup`` seconds, then counts the queries completed
in ``duration`` seconds. Rows are fetched into Python objects (tuples or the driver's records)
unless the mode is count-only. Sequential modes also report per-query latency percentiles.

Every mode also reports the CPU used during its timed window by the client and by the servers
whose pids the driver passes in ``cpu_roots`` (see cputime.py), and, when the driver gives perf's
control FIFOs (``--profile``), enables perf for exactly that window.
"""

from __future__ import annotations

import array
import asyncio
import json
import multiprocessing as mp
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Optional

import cputime

SQL = "SELECT id, name FROM users LIMIT $1"
SQL_PSYCOPG = "SELECT id, name FROM users LIMIT %s"
LIMITS = (10, 5, 1)
PARAMS = tuple((n,) for n in LIMITS)

clock = time.monotonic  # CLOCK_MONOTONIC: one clock for every process of a multi-process mode

Step = Callable[[int], tuple[int, int]]  # i -> (queries done, rows fetched)
AsyncStep = Callable[[int], Awaitable[tuple[int, int]]]


@dataclass
class Spec:
    """What a mode needs to know: where the servers are and how long to run."""

    duration: float = 4.0
    warmup: float = 1.0
    batch_rows: int = 10_000  # pipeline batches that return rows
    batch_count: int = 9_999  # count-only batches (the seed's [["10"], ["5"], ["1"]] * 3333)
    in_flight: int = 64
    processes: int = 32
    pool: int = 8
    pg_socket_dir: str = ""
    pg_port: int = 5432
    pg_user: str = "postgres"
    pg_password: str = ""
    pg_database: str = "bench"
    daemon_socket: str = ""
    upstream: str = "main"
    bouncer_socket_dir: str = ""
    bouncer_port: int = 0
    client: str = "qail_ipc"  # or "raw" (benches/compare/rawclient.py)
    json_codec: str = "stdlib"  # or "orjson" (qail_ipc picks orjson up when installed)
    cpu_roots: dict[str, int] = field(default_factory=dict)  # server group -> root pid
    profile_ctl: str = ""  # perf record's control FIFO (run.py --profile), else ""
    profile_ack: str = ""


@dataclass
class Measurement:
    queries: int
    rows: int
    seconds: float
    latencies: Optional[list[float]] = None  # seconds per query, sequential modes only
    info: dict[str, Any] = field(default_factory=dict)
    cpu: Optional[dict[str, Any]] = None  # cputime.Window.report() of the timed window

    def report(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "queries": self.queries,
            "rows": self.rows,
            "seconds": round(self.seconds, 6),
            "qps": self.queries / self.seconds if self.seconds else 0.0,
            "rows_per_query": self.rows / self.queries if self.queries else 0.0,
            "info": self.info,
        }
        if self.cpu:
            out["cpu"] = self.cpu
        if self.latencies:
            lat = sorted(self.latencies)
            out["p50_us"] = percentile(lat, 0.50) * 1e6
            out["p99_us"] = percentile(lat, 0.99) * 1e6
            out["samples"] = len(lat)
        return out


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def batch(size: int) -> list[list[int]]:
    """``size`` parameter lists cycling 10, 5, 1."""
    return [[LIMITS[i % 3]] for i in range(size)]


# -- loops ------------------------------------------------------------------------------------


def cpu_window(spec: Spec) -> cputime.Window:
    """The CPU snapshots (and perf switch) of one timed window; opened before the warm-up."""
    perf = (cputime.PerfControl(spec.profile_ctl, spec.profile_ack)
            if spec.profile_ctl else None)
    return cputime.Window(spec.cpu_roots, perf)


def run_loop(step: Step, spec: Spec, latency: bool = False) -> Measurement:
    """Calls ``step`` back to back: warm-up, then a timed window."""
    window = cpu_window(spec)
    i = 0
    warm_end = clock() + spec.warmup
    while clock() < warm_end:
        step(i)
        i += 1
    queries = rows = 0
    latencies: list[float] = []
    window.begin()
    start = now = clock()
    deadline = start + spec.duration
    while now < deadline:
        q, r = step(i)
        i += 1
        t = clock()
        if latency:
            latencies.append(t - now)
        now = t
        queries += q
        rows += r
    window.end()
    return Measurement(queries, rows, now - start, latencies if latency else None,
                       cpu=window.report(queries, now - start))


async def run_loop_async(step: AsyncStep, spec: Spec, latency: bool = False) -> Measurement:
    window = cpu_window(spec)
    i = 0
    warm_end = clock() + spec.warmup
    while clock() < warm_end:
        await step(i)
        i += 1
    queries = rows = 0
    latencies: list[float] = []
    window.begin()
    start = now = clock()
    deadline = start + spec.duration
    while now < deadline:
        q, r = await step(i)
        i += 1
        t = clock()
        if latency:
            latencies.append(t - now)
        now = t
        queries += q
        rows += r
    window.end()
    return Measurement(queries, rows, now - start, latencies if latency else None,
                       cpu=window.report(queries, now - start))


async def run_concurrent(step: AsyncStep, tasks: int, spec: Spec) -> Measurement:
    """``tasks`` coroutines calling ``step`` back to back: that many requests in flight."""
    totals = [0, 0]
    stop = False

    async def worker(k: int) -> None:
        i = k
        while not stop:
            q, r = await step(i)
            i += 1
            totals[0] += q
            totals[1] += r

    window = cpu_window(spec)
    running = [asyncio.ensure_future(worker(k)) for k in range(tasks)]
    try:
        await asyncio.sleep(spec.warmup)
        window.begin()  # blocks the loop for the snapshot (a few ms), outside the window
        q0, r0, t0 = totals[0], totals[1], clock()
        await asyncio.sleep(spec.duration)
        q1, r1, t1 = totals[0], totals[1], clock()
        window.end()
        stop = True
        await asyncio.gather(*running)
    finally:
        for task in running:
            task.cancel()
    return Measurement(q1 - q0, r1 - r0, t1 - t0, cpu=window.report(q1 - q0, t1 - t0))


def run_processes(connect: Callable[[], Step], spec: Spec) -> Measurement:
    """``spec.processes`` forked processes, each connecting once and running ``step`` back to back.

    All connect first; then they start together and count the queries completed inside one
    shared window; latencies of every process are merged. Each process measures its own CPU
    over its window (it exits afterwards, so nobody could read it from outside); the parent
    takes the servers' snapshots at the shared window's edges.
    """
    ctx = mp.get_context("fork")
    ready: Any = ctx.Queue()
    results: Any = ctx.Queue()
    go = ctx.Event()
    start_at = ctx.Value("d", 0.0)

    def child(k: int) -> None:
        try:
            step = connect()
            step(k)
        except BaseException as exc:  # reported by the parent
            ready.put(f"process {k}: {exc!r}")
            return
        ready.put(None)
        go.wait()
        warm_end = start_at.value + spec.warmup
        deadline = warm_end + spec.duration
        i = k
        while clock() < warm_end:
            step(i)
            i += 1
        queries = rows = 0
        latencies = array.array("d")
        cpu0 = cputime.own_times()
        now = clock()
        while True:
            q, r = step(i)
            i += 1
            t = clock()
            if t > deadline:
                break
            latencies.append(t - now)
            now = t
            queries += q
            rows += r
        cpu = cputime.own_times() - cpu0
        results.put((queries, rows, latencies.tobytes(), cpu.user, cpu.sys))

    procs = [ctx.Process(target=child, args=(k,), daemon=True) for k in range(spec.processes)]
    for p in procs:
        p.start()
    window = cpu_window(spec)  # after the forks: the children do not inherit perf's FIFOs
    try:
        errors = [e for e in (ready.get(timeout=120) for _ in procs) if e]
        if errors:
            raise RuntimeError(f"{len(errors)} of {len(procs)} processes failed: {errors[0]}")
        start_at.value = clock() + 0.05
        go.set()
        time.sleep(max(0.0, start_at.value + spec.warmup - clock()))
        window.begin()
        time.sleep(max(0.0, start_at.value + spec.warmup + spec.duration - clock()))
        window.end()
        queries = rows = 0
        latencies: list[float] = []
        children = cputime.Times()
        for _ in procs:
            q, r, raw, user, system = results.get(timeout=spec.warmup + spec.duration + 120)
            queries += q
            rows += r
            children += cputime.Times(user, system)
            samples = array.array("d")
            samples.frombytes(raw)
            latencies.extend(samples)
        for p in procs:
            p.join(10)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
    return Measurement(queries, rows, spec.duration, latencies, {"processes": spec.processes},
                       cpu=window.report(queries, spec.duration, children))


# -- qail-daemon ------------------------------------------------------------------------------


def daemon_client(spec: Spec) -> tuple[Any, Any, dict[str, Any]]:
    """A sync client (qail_ipc, or the raw fallback), connected and with the handle prepared."""
    if spec.client == "raw":
        import rawclient

        client: Any = rawclient.RawClient(spec.daemon_socket)
        client.use(spec.upstream)
        return client, client.prepare(SQL), {"client": "raw (benches/compare/rawclient.py)"}
    import qail_ipc
    from qail_ipc import _protocol

    client = qail_ipc.connect(spec.daemon_socket, upstream=spec.upstream)
    info = {"client": f"qail_ipc {qail_ipc.__version__}", "json": _protocol.JSON_CODEC}
    return client, client.prepare(SQL), info


def daemon_seq(spec: Spec) -> Measurement:
    client, handle, info = daemon_client(spec)

    def step(i: int) -> tuple[int, int]:
        return 1, len(client.query(handle, PARAMS[i % 3]))

    m = run_loop(step, spec, latency=True)
    m.info = info
    return m


def daemon_pipeline(spec: Spec) -> Measurement:
    client, handle, info = daemon_client(spec)
    params = batch(spec.batch_rows)

    def step(_: int) -> tuple[int, int]:
        results = client.pipeline(handle, params)
        if spec.client == "raw":
            return len(results), sum(map(len, results))
        return len(results), sum(len(r.rows) for r in results)

    m = run_loop(step, spec)
    m.info = {**info, "batch": spec.batch_rows}
    return m


def daemon_pipeline_atomic(spec: Spec) -> Measurement:
    """`pipeline` with `atomic`: one transaction per batch, like asyncpg's batch modes."""
    if spec.client == "raw":
        raise RuntimeError("the raw fallback client has no atomic pipeline")
    client, handle, info = daemon_client(spec)
    params = batch(spec.batch_rows)

    def step(_: int) -> tuple[int, int]:
        results = client.pipeline(handle, params, atomic=True)
        return len(results), sum(len(r.rows) for r in results)

    m = run_loop(step, spec)
    m.info = {**info, "batch": spec.batch_rows, "atomic": True}
    return m


def daemon_count(spec: Spec) -> Measurement:
    client, handle, info = daemon_client(spec)
    params = batch(spec.batch_count)

    def step(_: int) -> tuple[int, int]:
        return client.prepared_pipeline(handle, params), 0

    m = run_loop(step, spec)
    m.info = {**info, "batch": spec.batch_count, "count_only": True}
    return m


def daemon_asyncio(spec: Spec) -> Measurement:
    if spec.client == "raw":
        raise RuntimeError("the raw fallback client has no asyncio flavour")
    import qail_ipc
    import qail_ipc.aio
    from qail_ipc import _protocol

    async def main() -> Measurement:
        client = await qail_ipc.aio.connect(spec.daemon_socket, upstream=spec.upstream)
        handle = await client.prepare(SQL)

        async def step(i: int) -> tuple[int, int]:
            return 1, len(await client.query(handle, PARAMS[i % 3]))

        try:
            return await run_concurrent(step, spec.in_flight, spec)
        finally:
            await client.close()

    m = asyncio.run(main())
    m.info = {"client": f"qail_ipc.aio {qail_ipc.__version__}", "json": _protocol.JSON_CODEC,
              "in_flight": spec.in_flight, "connections": 1}
    return m


# -- asyncpg ----------------------------------------------------------------------------------


async def asyncpg_connect(spec: Spec) -> Any:
    import asyncpg

    return await asyncpg.connect(host=spec.pg_socket_dir, port=spec.pg_port, user=spec.pg_user,
                                 password=spec.pg_password, database=spec.pg_database)


def asyncpg_seq(spec: Spec) -> Measurement:
    async def main() -> Measurement:
        conn = await asyncpg_connect(spec)

        async def step(i: int) -> tuple[int, int]:
            return 1, len(await conn.fetch(SQL, LIMITS[i % 3]))

        try:
            return await run_loop_async(step, spec, latency=True)
        finally:
            await conn.close()

    return asyncio.run(main())


def asyncpg_fetchmany(spec: Spec) -> Measurement:
    """asyncpg's pipelined batch that returns rows (Connection.fetchmany, asyncpg >= 0.30)."""

    async def main() -> Measurement:
        conn = await asyncpg_connect(spec)
        args = [tuple(p) for p in batch(spec.batch_rows)]

        async def step(_: int) -> tuple[int, int]:
            records = await conn.fetchmany(SQL, args)
            return len(args), len(records)

        try:
            return await run_loop_async(step, spec)
        finally:
            await conn.close()

    m = asyncio.run(main())
    m.info = {"batch": spec.batch_rows}
    return m


def asyncpg_executemany(spec: Spec) -> Measurement:
    """asyncpg's pipelined executemany: it discards the rows, so this is count-only."""

    async def main() -> Measurement:
        conn = await asyncpg_connect(spec)
        args = [tuple(p) for p in batch(spec.batch_count)]

        async def step(_: int) -> tuple[int, int]:
            await conn.executemany(SQL, args)
            return len(args), 0

        try:
            return await run_loop_async(step, spec)
        finally:
            await conn.close()

    m = asyncio.run(main())
    m.info = {"batch": spec.batch_count, "count_only": True}
    return m


def asyncpg_pool(spec: Spec) -> Measurement:
    """An asyncpg pool of ``pool`` connections with ``in_flight`` concurrent requests.

    One asyncpg connection runs one query at a time, so this is how asyncpg keeps many
    requests in flight: the same shape as the daemon's asyncio mode (pool 8, 64 in flight).
    """
    import asyncpg

    async def main() -> Measurement:
        pool = await asyncpg.create_pool(host=spec.pg_socket_dir, port=spec.pg_port,
                                         user=spec.pg_user, password=spec.pg_password,
                                         database=spec.pg_database, min_size=spec.pool,
                                         max_size=spec.pool)

        async def step(i: int) -> tuple[int, int]:
            return 1, len(await pool.fetch(SQL, LIMITS[i % 3]))

        try:
            return await run_concurrent(step, spec.in_flight, spec)
        finally:
            await pool.close()

    m = asyncio.run(main())
    m.info = {"pool": spec.pool, "in_flight": spec.in_flight}
    return m


# -- psycopg 3 --------------------------------------------------------------------------------


def psycopg_connect(spec: Spec, via_bouncer: bool = False) -> Any:
    import psycopg

    if via_bouncer:
        # Transaction pooling: server-side prepared statements must be off.
        return psycopg.connect(host=spec.bouncer_socket_dir, port=spec.bouncer_port,
                               user=spec.pg_user, password=spec.pg_password,
                               dbname=spec.pg_database, autocommit=True, prepare_threshold=None)
    return psycopg.connect(host=spec.pg_socket_dir, port=spec.pg_port, user=spec.pg_user,
                           password=spec.pg_password, dbname=spec.pg_database, autocommit=True)


def psycopg_seq(spec: Spec) -> Measurement:
    conn = psycopg_connect(spec)
    cur = conn.cursor()

    def step(i: int) -> tuple[int, int]:
        cur.execute(SQL_PSYCOPG, PARAMS[i % 3])
        return 1, len(cur.fetchall())

    try:
        return run_loop(step, spec, latency=True)
    finally:
        conn.close()


def psycopg_pipeline(spec: Spec) -> Measurement:
    """psycopg's pipeline mode: executemany(returning=True) pipelines and keeps every result."""
    conn = psycopg_connect(spec)
    cur = conn.cursor()
    params = [tuple(p) for p in batch(spec.batch_rows)]

    def step(_: int) -> tuple[int, int]:
        with conn.pipeline():
            cur.executemany(SQL_PSYCOPG, params, returning=True)
        rows = 0
        while True:
            rows += len(cur.fetchall())
            if not cur.nextset():
                break
        return len(params), rows

    try:
        m = run_loop(step, spec)
    finally:
        conn.close()
    m.info = {"batch": spec.batch_rows}
    return m


# -- psqlpy (Rust/PyO3) -----------------------------------------------------------------------


async def psqlpy_connect(spec: Spec) -> Any:
    import psqlpy

    return await psqlpy.connect(host=spec.pg_socket_dir, port=spec.pg_port,
                                username=spec.pg_user, password=spec.pg_password,
                                db_name=spec.pg_database)


def psqlpy_seq(spec: Spec) -> Measurement:
    async def main() -> Measurement:
        conn = await psqlpy_connect(spec)

        async def step(i: int) -> tuple[int, int]:
            result = await conn.fetch(SQL, [LIMITS[i % 3]])
            return 1, len(result.result(as_tuple=True))

        try:
            return await run_loop_async(step, spec, latency=True)
        finally:
            conn.close()

    return asyncio.run(main())


def psqlpy_pipeline(spec: Spec) -> Measurement:
    """psqlpy's Transaction.pipeline (its only pipelined API, so each batch is a transaction)."""

    async def main() -> Measurement:
        conn = await psqlpy_connect(spec)
        queries = [(SQL, p) for p in batch(spec.batch_rows)]

        async def step(_: int) -> tuple[int, int]:
            tx = conn.transaction()
            await tx.begin()
            results = await tx.pipeline(queries)
            await tx.commit()
            return len(results), sum(len(r.result(as_tuple=True)) for r in results)

        try:
            return await run_loop_async(step, spec)
        finally:
            conn.close()

    m = asyncio.run(main())
    m.info = {"batch": spec.batch_rows, "transaction_per_batch": True}
    return m


# -- many processes ---------------------------------------------------------------------------


def multi_daemon(spec: Spec) -> Measurement:
    if spec.client == "raw":
        import rawclient  # noqa: F401  (imported before fork)
    else:
        import qail_ipc  # noqa: F401

    def connect() -> Step:
        client, handle, _ = daemon_client(spec)
        return lambda i: (1, len(client.query(handle, PARAMS[i % 3])))

    m = run_processes(connect, spec)
    m.info["pool"] = spec.pool
    m.info["client"] = "raw" if spec.client == "raw" else "qail_ipc"
    return m


def _multi_psycopg(spec: Spec, via_bouncer: bool) -> Measurement:
    import psycopg  # noqa: F401  (imported before fork)

    def connect() -> Step:
        conn = psycopg_connect(spec, via_bouncer)
        cur = conn.cursor()

        def step(i: int) -> tuple[int, int]:
            cur.execute(SQL_PSYCOPG, PARAMS[i % 3])
            return 1, len(cur.fetchall())

        return step

    return run_processes(connect, spec)


def multi_pgbouncer(spec: Spec) -> Measurement:
    m = _multi_psycopg(spec, via_bouncer=True)
    m.info.update(pool=spec.pool, prepare_threshold=None)
    return m


def multi_direct(spec: Spec) -> Measurement:
    m = _multi_psycopg(spec, via_bouncer=False)
    m.info["pg_connections"] = spec.processes
    return m


MODES: dict[str, Callable[[Spec], Measurement]] = {
    "daemon.seq": daemon_seq,
    "daemon.pipeline": daemon_pipeline,
    "daemon.pipeline.atomic": daemon_pipeline_atomic,
    "daemon.count": daemon_count,
    "daemon.asyncio": daemon_asyncio,
    "asyncpg.seq": asyncpg_seq,
    "asyncpg.fetchmany": asyncpg_fetchmany,
    "asyncpg.executemany": asyncpg_executemany,
    "asyncpg.pool": asyncpg_pool,
    "psycopg.seq": psycopg_seq,
    "psycopg.pipeline": psycopg_pipeline,
    "psqlpy.seq": psqlpy_seq,
    "psqlpy.pipeline": psqlpy_pipeline,
    "multi.daemon": multi_daemon,
    "multi.pgbouncer": multi_pgbouncer,
    "multi.direct": multi_direct,
}


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in MODES:
        print(f"usage: {argv[0]} MODE SPEC_JSON\nmodes: {', '.join(MODES)}", file=sys.stderr)
        return 2
    spec = Spec(**json.loads(argv[2]))
    if spec.json_codec == "stdlib":
        sys.modules["orjson"] = None  # type: ignore[assignment]  # qail_ipc falls back to json
    try:
        measurement = MODES[argv[1]](spec)
    except Exception:
        traceback.print_exc()
        return 1
    print(json.dumps(measurement.report()))
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown (driver threads, pools): the numbers are out


if __name__ == "__main__":
    sys.exit(main(sys.argv))
