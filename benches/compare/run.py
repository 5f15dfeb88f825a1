#!/usr/bin/env python3
"""`make bench`: qail-daemon side by side with its peers, in one run, on a throwaway PostgreSQL.

Sets up the seed's workload (a `users(id int primary key, name text)` table of 1,000 rows;
`SELECT id, name FROM users LIMIT $1` with parameters cycling 10, 5, 1) and measures:

- Python through the daemon (qail_ipc, pool_max 8): sequential, `pipeline` with rows,
  `prepared_pipeline` count-only, asyncio with 64 requests in flight;
- Python straight to PostgreSQL over its Unix socket: asyncpg, psycopg 3, psqlpy (Rust/PyO3);
- native Rust (examples/native_ceiling.rs): tokio-postgres pipelined on 8 connections, the ceiling;
- 32 Python processes running sequential queries through the daemon, through PgBouncer in
  transaction mode (pool 8) and with direct connections;
- the daemon's memory: idle RSS, growth per idle client connection, N connections served.

Modes are interleaved (repetition 1 of every mode, then repetition 2, ...) so that noise from
other work on the machine spreads over all of them; the table shows medians. Every run also
accounts the CPU that the client, qail-daemon, PostgreSQL and PgBouncer used during its timed
window, per query (cputime.py). With --profile, one extra run of the sequential daemon modes
is recorded with `perf record` on the daemon, and one of the pipeline with rows on every CPU,
and their top symbols written out. Outputs go to benches/results/ (Markdown, JSON, PNG charts).

The driver runs with any python3: it creates its own virtual environment
(benches/compare/.venv) with the peer drivers on first use, then re-runs itself inside it.
Everything it starts is stopped, and every temporary directory removed, on exit or Ctrl-C.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import venv
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
VENV = HERE / ".venv"
VENV_PYTHON = VENV / "bin" / "python"
MARKER = VENV / "qail-bench-packages.json"
CLIENT_DIR = REPO / "clients" / "python"

# pip requirement -> import name. psqlpy ships manylinux wheels; when it cannot be installed
# its modes are skipped and the report says so.
REQUIREMENTS = {
    "asyncpg>=0.30": "asyncpg",
    "psycopg[binary]>=3.1": "psycopg",
    "psqlpy": "psqlpy",
    "matplotlib": "matplotlib",
    "orjson": "orjson",
}


@dataclass(frozen=True)
class Mode:
    key: str
    workload: str  # a workloads.MODES key, or "native"
    group: str
    label: str
    sequential: bool = False
    count_only: bool = False
    notes: str = ""
    json_codec: str = "stdlib"
    needs: str = ""  # "psqlpy", "pgbouncer" or "tls": skipped when unavailable


DAEMON = "Python via qail-daemon (pool 8)"
DIRECT = "Python straight to PostgreSQL (Unix socket)"
NATIVE = "Native Rust"
MULTI = "32 Python processes, sequential"

# What --profile records: one extra run of each mode after the measured repetitions, with
# `perf record` either on the daemon ("daemon") or on every CPU ("system": how the two cores
# are shared between the client, the daemon and PostgreSQL, and where PostgreSQL's share goes).
PROFILED = {"daemon.seq": "daemon", "multi.daemon": "daemon", "daemon.pipeline": "system"}

MODES: list[Mode] = [
    Mode("daemon.seq", "daemon.seq", DAEMON, "qail_ipc · sequential (1 query per round trip)",
         sequential=True),
    Mode("daemon.pipeline", "daemon.pipeline", DAEMON, "qail_ipc · pipeline, rows (10,000/frame)"),
    Mode("daemon.pipeline.atomic", "daemon.pipeline.atomic", DAEMON,
         "qail_ipc · pipeline atomic, rows (10,000/frame)",
         notes="one transaction per batch, like asyncpg's batch modes"),
    Mode("daemon.count", "daemon.count", DAEMON,
         "qail_ipc · prepared_pipeline, count-only (9,999/frame)", count_only=True),
    Mode("daemon.asyncio", "daemon.asyncio", DAEMON, "qail_ipc.aio · 64 in flight on 1 socket"),
    Mode("daemon.pipeline.orjson", "daemon.pipeline", DAEMON,
         "qail_ipc + orjson · pipeline, rows (10,000/frame)", json_codec="orjson",
         notes="optional `qail-ipc[fast]` codec"),
    Mode("daemon.pipeline.tls", "daemon.pipeline", DAEMON,
         "qail_ipc · pipeline, rows (10,000/frame), TLS upstream", needs="tls",
         notes="a second daemon: PostgreSQL over 127.0.0.1 with sslmode=require"),
    Mode("daemon.count.tls", "daemon.count", DAEMON,
         "qail_ipc · prepared_pipeline, count-only, TLS upstream", count_only=True, needs="tls",
         notes="as above"),
    Mode("asyncpg.seq", "asyncpg.seq", DIRECT, "asyncpg · sequential", sequential=True),
    Mode("asyncpg.fetchmany", "asyncpg.fetchmany", DIRECT,
         "asyncpg · fetchmany, rows (10,000/batch)",
         notes="atomic: one transaction per batch; rows as one flat list"),
    Mode("asyncpg.executemany", "asyncpg.executemany", DIRECT,
         "asyncpg · executemany (9,999/batch)", count_only=True,
         notes="atomic like fetchmany; discards the rows"),
    Mode("asyncpg.pool", "asyncpg.pool", DIRECT, "asyncpg · pool 8, 64 in flight",
         notes="asyncpg runs 1 query at a time per connection"),
    Mode("psycopg.seq", "psycopg.seq", DIRECT, "psycopg 3 · sequential", sequential=True,
         notes="server-side prepare after 5 uses (default)"),
    Mode("psycopg.pipeline", "psycopg.pipeline", DIRECT,
         "psycopg 3 · pipeline mode, rows (10,000/batch)",
         notes="executemany(returning=True) in conn.pipeline()"),
    Mode("psqlpy.seq", "psqlpy.seq", DIRECT, "psqlpy (Rust/PyO3) · sequential", sequential=True,
         needs="psqlpy", notes="the seed's \"PyO3\" row"),
    Mode("psqlpy.pipeline", "psqlpy.pipeline", DIRECT,
         "psqlpy (Rust/PyO3) · pipeline, rows (10,000/batch)", needs="psqlpy",
         notes="Transaction.pipeline: one transaction per batch"),
    Mode("native", "native", NATIVE, "tokio-postgres · 8 connections, pipelined",
         notes="examples/native_ceiling.rs; rows decoded to i32/String"),
    Mode("multi.daemon", "multi.daemon", MULTI, "32 × qail_ipc → qail-daemon (pool 8)",
         sequential=True),
    Mode("multi.pgbouncer", "multi.pgbouncer", MULTI,
         "32 × psycopg 3 → PgBouncer transaction mode (pool 8)", sequential=True,
         needs="pgbouncer", notes="prepare_threshold=None"),
    Mode("multi.direct", "multi.direct", MULTI, "32 × psycopg 3 → PostgreSQL (32 backends)",
         sequential=True),
]


def log(message: str) -> None:
    print(message, flush=True)


def uses_daemon(m: Mode) -> bool:
    return m.group == DAEMON or m.key == "multi.daemon"


# -- the virtual environment ------------------------------------------------------------------


def ensure_venv() -> dict[str, str]:
    """Creates .venv and installs the peer drivers when needed; returns requirement -> status."""
    healthy = VENV_PYTHON.exists() and subprocess.run(
        [str(VENV_PYTHON), "-c", "import pip"], capture_output=True).returncode == 0
    if not healthy:
        log(f"==> creating the benchmark venv in {VENV.relative_to(REPO)}")
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    status: dict[str, str] = {}
    if healthy and MARKER.exists():
        status = json.loads(MARKER.read_text())
    # Trust the marker only for packages that still import.
    probe = ("import importlib.util, json, sys\n"
             "print(json.dumps([n for n in sys.argv[1:] if importlib.util.find_spec(n) is None]))")
    gone = json.loads(subprocess.run([str(VENV_PYTHON), "-c", probe, *REQUIREMENTS.values()],
                                     capture_output=True, text=True).stdout or "[]")
    missing = [req for req, name in REQUIREMENTS.items()
               if status.get(req) != "ok" or name in gone]
    for req in missing:
        log(f"==> pip install {req}")
        done = subprocess.run([str(VENV_PYTHON), "-m", "pip", "install", "-q",
                               "--disable-pip-version-check", req],
                              capture_output=True, text=True)
        if done.returncode == 0:
            status[req] = "ok"
        else:
            status[req] = "failed: " + (done.stderr.strip().splitlines() or ["?"])[-1]
            log(f"    {status[req]}")
    if missing:
        MARKER.write_text(json.dumps(status, indent=1))
    return status


def reexec_in_venv() -> None:
    if Path(sys.prefix).resolve() == VENV.resolve():
        return
    ensure_venv()
    os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), str(Path(__file__).resolve()), *sys.argv[1:]])


# -- child processes --------------------------------------------------------------------------

RUNNING: set[subprocess.Popen] = set()


def run_child(argv: list[str], timeout: float, env: Optional[dict[str, str]] = None,
              during: Optional[Callable[[subprocess.Popen], None]] = None
              ) -> tuple[int, str, str]:
    """Runs a child in its own process group (killed whole on timeout or interruption).

    ``during``, when given, runs in a thread alongside the child (it gets the Popen) and is
    waited for (at most 10 s) after the child exits.
    """
    from services import stop_process_group

    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True, cwd=HERE)
    RUNNING.add(proc)
    watcher = None
    if during is not None:
        watcher = threading.Thread(target=during, args=(proc,), daemon=True)
        watcher.start()
    try:
        out, err = proc.communicate(timeout=timeout)
        return proc.returncode, out, err
    except subprocess.TimeoutExpired:
        stop_process_group(proc, grace=2, sig=signal.SIGKILL)
        out, err = proc.communicate()
        return -1, out, err + f"\ntimed out after {timeout:.0f} s"
    finally:
        stop_process_group(proc, grace=2, sig=signal.SIGKILL)
        RUNNING.discard(proc)
        if watcher is not None:
            watcher.join(10)


def kill_children() -> None:
    from services import stop_process_group

    for proc in list(RUNNING):
        stop_process_group(proc, grace=2, sig=signal.SIGKILL)


# -- machine description ----------------------------------------------------------------------


def machine_description(pg_version: str, bouncer_version: str) -> dict[str, str]:
    from importlib import metadata

    cpu = "?"
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with open("/proc/meminfo") as info:
        for line in info:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    os_name = platform.system()
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip('"')
    except OSError:
        pass

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    def command(*argv: str) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, cwd=REPO).stdout.strip()
        except OSError:
            return "?"

    commit = command("git", "rev-parse", "--short", "HEAD")
    if command("git", "status", "--porcelain", "--", "src", "Cargo.toml"):
        commit += " (with uncommitted changes in src/)"
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "memory": f"{mem_kib / 1024 / 1024:.0f} GiB",
        "os": os_name,
        "kernel": platform.release(),
        "postgresql": pg_version.replace("postgres (PostgreSQL)", "PostgreSQL"),
        "pgbouncer": bouncer_version or "not available",
        "python": platform.python_version(),
        "drivers": (f"asyncpg {version('asyncpg')}, psycopg {version('psycopg')} "
                    f"(binary {version('psycopg-binary')}), psqlpy {version('psqlpy')}, "
                    f"orjson {version('orjson')}"),
        "rustc": command("rustc", "--version"),
        "qail-daemon": commit,
        "load average at start": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
    }


# -- the run ----------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="benches/compare/run.py",
        description="Compare qail-daemon with asyncpg, psycopg 3, psqlpy, PgBouncer and native "
                    "tokio-postgres on the seed's workload, in one run, on a throwaway "
                    "PostgreSQL. Writes benches/results/compare.{md,json,png}.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run (~2 minutes): 1 repetition of 1.5 s, 2,000 idle "
                             "connections; results go to compare-quick.*")
    parser.add_argument("--reps", type=int, default=3, help="repetitions per mode (median)")
    parser.add_argument("--multi-reps", type=int, default=5,
                        help="repetitions of the multi-process modes (at least --reps): their "
                             "figures swing the most from one run to the next on a shared "
                             "machine, and their median wants more samples")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds measured per run")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of warm-up per run")
    parser.add_argument("--modes", default="",
                        help="comma-separated mode keys (or prefixes: daemon,asyncpg,multi,...) "
                             "to run; default all. Keys: " + ", ".join(m.key for m in MODES))
    parser.add_argument("--pool", type=int, default=8,
                        help="the daemon's pool_max = PgBouncer pool = native connections")
    parser.add_argument("--processes", type=int, default=32, help="processes in the multi modes")
    parser.add_argument("--connections", type=int, default=10_000,
                        help="idle client connections for the memory test (0 = skip it)")
    parser.add_argument("--client", choices=("qail_ipc", "raw"), default="qail_ipc",
                        help="Python client for the daemon modes (raw = the bench's own "
                             "minimal protocol client; qail_ipc falls back to it if unusable)")
    parser.add_argument("--waiters", type=int, default=1000,
                        help="client connections in the pool-checkout test, each keeping one "
                             "request in flight against the pool (0 = skip it)")
    parser.add_argument("--native-depth", type=int, default=64,
                        help="queries in flight per connection in the native ceiling")
    parser.add_argument("--skip-build", action="store_true",
                        help="use the existing target/release binaries")
    parser.add_argument("--profile", action="store_true",
                        help="after the measured runs, one extra run each of "
                             f"{', '.join(PROFILED)} with `perf record -g -e cpu-clock` during "
                             "the timed window (on qail-daemon; system-wide for "
                             "daemon.pipeline); writes the top symbols to OUT/profile-MODE.txt")
    parser.add_argument("--out", type=Path, default=REPO / "benches" / "results",
                        help="output directory")
    args = parser.parse_args(argv)
    if args.quick:
        args.reps, args.multi_reps, args.duration, args.warmup = 1, 1, 1.5, 0.5
        args.connections = min(args.connections, 2_000)
    args.multi_reps = max(args.multi_reps, args.reps)
    return args


def selected_modes(spec: str) -> list[Mode]:
    if not spec:
        return list(MODES)
    wanted = [s.strip() for s in spec.split(",") if s.strip()]
    chosen = [m for m in MODES if any(m.key == w or m.key.startswith(w + ".") for w in wanted)]
    if not chosen:
        raise SystemExit(f"--modes {spec!r} matches no mode; keys: "
                         + ", ".join(m.key for m in MODES))
    return chosen


def build(skip: bool) -> tuple[Path, Path, Path]:
    daemon = REPO / "target" / "release" / "qail-daemon"
    examples = REPO / "target" / "release" / "examples"
    native, waiters = examples / "native_ceiling", examples / "checkout_waiters"
    if not skip:
        log("==> cargo build --release --bin qail-daemon --example native_ceiling "
            "--example checkout_waiters")
        t0 = time.monotonic()
        done = subprocess.run(["cargo", "build", "--release", "--bin", "qail-daemon",
                               "--example", "native_ceiling", "--example", "checkout_waiters"],
                              cwd=REPO, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit("cargo build failed:\n" + done.stderr[-4000:])
        log(f"    built in {time.monotonic() - t0:.0f} s")
    for binary in (daemon, native, waiters):
        if not binary.exists():
            raise SystemExit(f"{binary} is missing: run without --skip-build")
    return daemon, native, waiters


def client_usable(env: dict[str, str]) -> Optional[str]:
    """None when qail_ipc imports and has what the modes use, else why not."""
    probe = ("import qail_ipc, qail_ipc.aio\n"
             "for name in ('use', 'prepare', 'query', 'pipeline', 'prepared_pipeline'):\n"
             "    getattr(qail_ipc.Client, name)\n"
             "getattr(qail_ipc.aio, 'connect')\n")
    code, _, err = run_child([str(VENV_PYTHON), "-c", probe], 60, env)
    return None if code == 0 else (err.strip().splitlines() or ["?"])[-1]


@dataclass
class Run:
    """The state of one comparison run."""

    args: argparse.Namespace
    stack: ExitStack
    results: dict[str, Any]
    failures: list[str]
    t_launch: float
    t_start: float = 0.0
    child_env: Optional[dict[str, str]] = None

    def elapsed(self) -> str:
        seconds = int(time.monotonic() - self.t_start)
        return f"{seconds // 60}:{seconds % 60:02d}"


def main(argv: list[str]) -> int:
    t_launch = time.monotonic()
    args = parse_args(argv)
    reexec_in_venv()
    sys.path.insert(0, str(HERE))
    import services

    # Ctrl-C raises KeyboardInterrupt even when started with SIGINT ignored (as `cmd &` is).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGHUP, lambda *_: sys.exit(129))
    soft, hard = services.raise_nofile_limit()
    modes = selected_modes(args.modes)
    failures: list[str] = []
    packages = json.loads(MARKER.read_text()) if MARKER.exists() else {}
    failures += [f"pip install {req} {status}" for req, status in packages.items()
                 if status != "ok"]
    results: dict[str, Any] = {
        "generated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python3 benches/compare/run.py " + " ".join(argv),
        "settings": {"reps": args.reps, "multi_reps": args.multi_reps,
                     "duration": args.duration, "warmup": args.warmup,
                     "pool": args.pool, "processes": args.processes,
                     "native_depth": args.native_depth, "quick": args.quick,
                     "profile": args.profile, "nofile_limit": f"{soft}/{hard}"},
        "modes": [],
        "failures": failures,
    }
    with ExitStack() as stack:
        stack.callback(kill_children)
        run = Run(args, stack, results, failures, t_launch)
        daemon_bin, native_bin, waiters_bin = build(args.skip_build)
        run.t_start = time.monotonic()
        run.child_env = client_environment(run)
        pg, bouncer = start_databases(run, modes)
        run_modes(run, modes, pg, bouncer, daemon_bin, native_bin, packages)
        if args.connections > 0:
            run_memory(run, pg, daemon_bin, soft)
        if args.waiters > 0:
            run_checkout(run, pg, daemon_bin, waiters_bin)
        finish(run)
    return 0


def client_environment(run: Run) -> dict[str, str]:
    """The environment of the workload processes, with a snapshot of the Python client.

    The client is copied once, next to the daemon binary just built, so that one run uses one
    consistent pair even while clients/python is being edited.
    """
    copy = Path(tempfile.mkdtemp(prefix="qail-bench-client-"))
    run.stack.callback(shutil.rmtree, copy, ignore_errors=True)
    if (CLIENT_DIR / "qail_ipc").is_dir():
        shutil.copytree(CLIENT_DIR / "qail_ipc", copy / "qail_ipc",
                        ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("QAIL_SOCKET", None)
    client = run.args.client
    if client == "qail_ipc":
        why = client_usable(env)
        if why:
            run.failures.append(f"qail_ipc unusable ({why}): the daemon modes used the bench's "
                                "raw protocol client instead")
            log(f"!!  qail_ipc is not usable ({why}); falling back to "
                "benches/compare/rawclient.py")
            client = "raw"
    run.args.client = client
    run.results["settings"]["daemon_client"] = (
        "qail_ipc (clients/python)" if client == "qail_ipc"
        else "raw protocol client (benches/compare/rawclient.py)")
    return env


def start_databases(run: Run, modes: list[Mode]) -> tuple[Any, Any]:
    """The throwaway cluster with the workload, and PgBouncer when a mode needs it."""
    import services

    log("==> starting a throwaway PostgreSQL cluster")
    pg = services.PostgresCluster()
    run.stack.callback(pg.stop)
    pg.start(max_connections=max(150, run.args.processes + 4 * run.args.pool + 40))
    pg.load_workload()
    log(f"    {pg.version}, socket {pg.socket_dir}, port {pg.port}; users: 1,000 rows")
    bouncer = None
    if any(m.needs == "pgbouncer" for m in modes):
        try:
            bouncer = services.PgBouncer(services.install_pgbouncer(log), pg, run.args.pool)
            run.stack.callback(bouncer.stop)
            bouncer.start()
            log(f"    {bouncer.version}: transaction mode, pool {run.args.pool}, "
                f"socket {bouncer.socket_dir}")
        except services.ServiceError as exc:
            run.failures.append(f"PgBouncer unavailable, its mode skipped: {exc}")
            log(f"!!  {exc}")
            bouncer = None
    run.results["machine"] = machine_description(pg.version,
                                                 bouncer.version if bouncer else "")
    return pg, bouncer


def run_modes(run: Run, modes: list[Mode], pg: Any, bouncer: Any, daemon_bin: Path,
              native_bin: Path, packages: dict[str, str]) -> None:
    """Every mode, repetitions interleaved; medians and ratios into run.results."""
    import cputime
    import report
    import services
    from workloads import Spec

    args = run.args
    log(f"==> starting qail-daemon (pool_max {args.pool}) over the cluster's Unix socket")
    daemon = services.Daemon(daemon_bin, pg, args.pool, "throughput")
    run.stack.callback(daemon.stop)
    daemon.start()
    tls_daemon = None
    if any(m.needs == "tls" for m in modes) and not pg.no_tls:
        log(f"==> starting a second qail-daemon (pool_max {args.pool}) over TCP with TLS")
        tls_daemon = services.Daemon(daemon_bin, pg, args.pool, "tls", tls=True)
        run.stack.callback(tls_daemon.stop)
        tls_daemon.start()
    spec = Spec(duration=args.duration, warmup=args.warmup, pool=args.pool,
                processes=args.processes, pg_socket_dir=str(pg.socket_dir), pg_port=pg.port,
                pg_user=services.PG_USER, pg_password=services.PG_PASSWORD,
                pg_database=services.PG_DATABASE, daemon_socket=str(daemon.socket),
                client=args.client,
                bouncer_socket_dir=str(bouncer.socket_dir) if bouncer else "",
                bouncer_port=bouncer.port if bouncer else 0)
    runnable: list[Mode] = []
    for m in modes:
        if m.needs == "psqlpy" and packages.get("psqlpy") != "ok":
            run.failures.append(f"{m.label}: skipped, psqlpy could not be installed")
        elif m.needs == "pgbouncer" and bouncer is None:
            run.failures.append(f"{m.label}: skipped, PgBouncer unavailable")
        elif m.needs == "tls" and tls_daemon is None:
            run.failures.append(f"{m.label}: skipped, the cluster has no TLS: {pg.no_tls}")
        else:
            runnable.append(m)
    runs: dict[str, list[dict[str, Any]]] = {m.key: [] for m in runnable}
    errors: dict[str, str] = {}
    native_argv = [str(native_bin), "--host", str(pg.socket_dir), "--port", str(pg.port),
                   "--user", services.PG_USER, "--password", services.PG_PASSWORD,
                   "--dbname", services.PG_DATABASE, "--connections", str(args.pool),
                   "--depth", str(args.native_depth), "--seconds", str(args.duration),
                   "--warmup", str(args.warmup)]

    def roots(m: Mode) -> dict[str, int]:
        """The server process trees whose CPU a mode's runs account (cputime.py)."""
        out = {"postgres": pg.postmaster_pid()}
        if uses_daemon(m):
            serving = tls_daemon if m.needs == "tls" and tls_daemon is not None else daemon
            out["qail-daemon"] = serving.pid
        if m.needs == "pgbouncer" and bouncer is not None:
            out["pgbouncer"] = bouncer.pid
        return out

    def measure(m: Mode, **extra: Any) -> dict[str, Any]:
        """One run of a mode: its JSON line, with the CPU of its timed window."""
        if m.workload == "native":
            return measure_native(run, native_argv, roots(m))
        if m.needs == "tls" and tls_daemon is not None:
            extra = {"daemon_socket": str(tls_daemon.socket), **extra}
        argv = [str(VENV_PYTHON), str(HERE / "workloads.py"), m.workload,
                json.dumps({**asdict(spec), "json_codec": m.json_codec, "cpu_roots": roots(m),
                            **extra})]
        code, out, err = run_child(argv, args.warmup + args.duration + 180, run.child_env)
        if code != 0:
            raise ValueError(err.strip() or f"exit status {code}")
        return json.loads(out.strip().splitlines()[-1])

    def reps(m: Mode) -> int:
        return args.multi_reps if m.group == MULTI else args.reps

    total = sum(reps(m) for m in runnable)
    log(f"==> {len(runnable)} modes x {args.reps} repetition(s) ({args.multi_reps} for the "
        f"multi-process modes), {args.warmup:g} s warm-up + {args.duration:g} s each, "
        "interleaved")
    n = 0
    for rep in range(max(map(reps, runnable), default=0)):
        for m in runnable:
            if rep >= reps(m):
                continue
            n += 1
            print(f"[{n:3d}/{total}  {run.elapsed()}] rep {rep + 1}/{reps(m)}  "
                  f"{m.label[:52]:<52}", end=" ", flush=True)
            try:
                measured = measure(m)
            except (ValueError, IndexError) as exc:
                errors[m.key] = str(exc)
                print("FAILED: " + (str(exc).splitlines() or ["?"])[-1][:100], flush=True)
                continue
            runs[m.key].append(measured)
            lat = (f"  p50 {measured['p50_us']:,.0f} µs  p99 {measured['p99_us']:,.0f} µs"
                   if "p50_us" in measured else "")
            print(f"{measured['qps']:>10,.0f} q/s{lat}", flush=True)
            if measured.get("cpu"):
                print(f"{'':14}cpu µs/query: {cputime.console_line(measured['cpu'])}", flush=True)

    if args.profile:
        profiled = [m for m in runnable if m.key in PROFILED]
        if not profiled:
            run.failures.append(f"--profile: none of {', '.join(PROFILED)} was run")
        run_profiles(run, profiled, measure, daemon)

    for m in runnable:
        entry: dict[str, Any] = {
            "key": m.key, "group": m.group, "label": m.label, "notes": m.notes,
            "count_only": m.count_only, "sequential": m.sequential,
            "json_codec": m.json_codec if m.group == DAEMON else None,
            "median": report.summarise(runs[m.key]), "runs": runs[m.key],
        }
        if m.key in errors:
            entry["error"] = errors[m.key]
            run.failures.append(f"{m.label}: {errors[m.key].splitlines()[-1][:200]}")
        run.results["modes"].append(entry)
    report.add_ratios(run.results)
    daemon.stop()


def measure_native(run: Run, argv: list[str], roots: dict[str, int]) -> dict[str, Any]:
    """One run of the native ceiling, its window's CPU sampled from here.

    The binary cannot report its own window, so a thread waits until it holds its
    ``--connections`` sockets (its warm-up starts right after), then snapshots the native
    process and the servers inside its window (cputime.sample_external); queries are its rate
    times that window.
    """
    import cputime

    args = run.args
    sampled: dict[str, Any] = {}

    def sample(proc: subprocess.Popen) -> None:
        got = cputime.sample_external(
            proc.pid, roots, lambda: cputime.socket_count(proc.pid) >= args.pool,
            args.warmup, args.duration)
        if got:
            sampled.update(got)

    code, out, err = run_child(argv, args.warmup + args.duration + 180, run.child_env, sample)
    if code != 0:
        raise ValueError(err.strip() or f"exit status {code}")
    measured = json.loads(out.strip().splitlines()[-1])
    if sampled:
        measured["cpu"] = cputime.window_report(
            sampled["groups"], measured["qps"] * sampled["seconds"], sampled["seconds"],
            "sampled by the driver inside the binary's window; queries = its rate x window")
    return measured


def run_profiles(run: Run, modes: list[Mode], measure: Callable[..., dict[str, Any]],
                   daemon: Any) -> None:
    """--profile: one extra run of each mode with `perf record` for its window (PROFILED)."""
    perf = shutil.which("perf")
    if perf is None:
        run.failures.append("--profile: perf is not installed, no profile recorded")
        log("!!  --profile: perf is not installed (apt-get install linux-perf); skipped")
        return
    for m in modes:
        scope = "qail-daemon" if PROFILED[m.key] == "daemon" else "every CPU"
        log(f"==> profiling {scope}: one extra run of {m.key} under perf record")
        tmp = Path(tempfile.mkdtemp(prefix="qail-bench-perf-"))
        try:
            path, measured = profile_one(run, perf, m, measure, daemon, tmp)
            run.results.setdefault("profiles", {})[m.key] = {
                "file": path.name, "qps": measured["qps"], "cpu": measured.get("cpu")}
            log(f"    wrote {path}")
        except (OSError, ValueError, IndexError, subprocess.SubprocessError) as exc:
            run.failures.append(f"--profile {m.key}: {exc}")
            log(f"!!  --profile {m.key}: {exc}")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def profile_one(run: Run, perf: str, m: Mode, measure: Callable[..., dict[str, Any]],
                daemon: Any, tmp: Path) -> tuple[Path, dict[str, Any]]:
    """Records one run of ``m``; writes OUT/profile-KEY.txt; returns it and the run's figures.

    perf starts with its events disabled (-D -1); the workload enables them through perf's
    control FIFO when its timed window starts and disables them when it ends.
    """
    import cputime
    from services import stop_process_group

    system = PROFILED[m.key] == "system"
    ctl, ack, data = tmp / "ctl", tmp / "ack", tmp / "perf.data"
    os.mkfifo(ctl)
    os.mkfifo(ack)
    target = ["-a"] if system else ["-p", str(daemon.pid)]
    record = [perf, "record", "-g", "-e", "cpu-clock", "-D", "-1",
              "--control", f"fifo:{ctl},{ack}", *target, "-o", str(data)]
    with open(tmp / "perf.log", "w") as perf_log:
        proc = subprocess.Popen(record, stdout=perf_log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    RUNNING.add(proc)
    try:
        measured = measure(m, profile_ctl=str(ctl), profile_ack=str(ack))
        proc.send_signal(signal.SIGINT)  # perf writes perf.data and exits
        proc.wait(60)
    finally:
        stop_process_group(proc, grace=5, sig=signal.SIGKILL)
        RUNNING.discard(proc)
    if not data.exists():
        raise ValueError("perf record failed: " + (tmp / "perf.log").read_text()[-500:])
    cpu = measured.get("cpu") or {}
    who = "every CPU (perf record -a)" if system else "qail-daemon"
    lines = [
        f"# {who} under perf: {m.label} ({m.key})",
        f"# perf record -g -e cpu-clock -D -1 --control fifo:CTL,ACK "
        f"{'-a' if system else '-p <qail-daemon pid>'}: events enabled for the timed window only",
        f"# one extra run after the measured ones, {run.args.warmup:g} s warm-up + "
        f"{run.args.duration:g} s; commit {run.results['machine'].get('qail-daemon', '?')}, "
        f"{datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}",
        f"# this run: {measured['qps']:,.0f} q/s; CPU per query, µs: "
        f"{cputime.console_line(cpu) if cpu else 'not measured'}",
        "# cpu-clock is a timer (no hardware counters in this VM): kernel time spent with "
        "interrupts off is charged where they",
        "# are turned back on (_raw_spin_unlock_irqrestore, finish_task_switch): read those as "
        "wake-ups and context switches.",
    ]
    lines += system_report(perf, data) if system else daemon_report(perf, data)
    run.args.out.mkdir(parents=True, exist_ok=True)
    path = run.args.out / f"profile-{m.key}.txt"
    path.write_text("\n".join(lines))
    return path, measured


def daemon_report(perf: str, data: Path) -> list[str]:
    """The daemon's top symbols, its kernel/daemon/libc split, and who calls the hottest
    kernel symbols (mostly: which wake-ups)."""
    head, symbols = perf_report(perf, data, ["--sort", "symbol", "-g", "none"], 25)
    _, objects = perf_report(perf, data, ["--sort", "dso", "-g", "none"], 8)
    # Where the hottest kernel symbols are reached from (leaf first), e.g. which wake-ups.
    kernel = [row.split("[k]", 1)[1].strip() for row in symbols[:6] if "[k]" in row]
    callers: list[str] = []
    if kernel:
        _, callers = perf_report(perf, data, [
            "--sort", "symbol", "-g", "caller,2,callee,function,percent", "--max-stack", "9",
            "--symbols", ",".join(kernel)], 90)
    lines = [
        "", *head, "",
        f"# perf report --no-children --sort symbol --stdio -g none (top {len(symbols)})",
        "", *symbols, "",
        "# perf report --no-children --sort dso --stdio -g none",
        "", *objects, "",
    ]
    if callers:
        lines += ["# callers of the hottest kernel symbols: perf report --no-children "
                  "--sort symbol -g caller,2,callee --max-stack 9 --symbols ...",
                  "", *callers, ""]
    return lines


def system_report(perf: str, data: Path) -> list[str]:
    """Both CPUs' time by process name (swapper = idle) and by process and object, then
    PostgreSQL's top symbols as shares of all samples."""
    head, comms = perf_report(perf, data, ["--sort", "comm", "-g", "none"], 8)
    _, objects = perf_report(perf, data, ["--sort", "comm,dso", "-g", "none"], 14)
    _, symbols = perf_report(perf, data, [
        "--comms", "postgres", "--percentage", "absolute", "--sort", "symbol", "-g", "none"], 25)
    return [
        "", *head, "",
        "# perf report --no-children --sort comm --stdio -g none: where both CPUs' time went "
        "(swapper = idle)",
        "", *comms, "",
        "# the same by process and object: --sort comm,dso",
        "", *objects, "",
        "# PostgreSQL's processes only, as shares of all samples: perf report --no-children "
        f"--comms postgres --percentage absolute --sort symbol -g none (top {len(symbols)})",
        "", *symbols, "",
    ]


def perf_report(perf: str, data: Path, options: list[str], top: int
                ) -> tuple[list[str], list[str]]:
    """`perf report --no-children --stdio OPTIONS`: its sample-count header, its first ``top``
    lines (the rows, with their call graphs when ``-g`` asks for them)."""
    done = subprocess.run([perf, "report", "-i", str(data), "--no-children", "--stdio",
                           *options], capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise ValueError("perf report failed: " + done.stderr.strip()[-500:])
    head = [line for line in done.stdout.splitlines()
            if line.startswith(("# Samples", "# Event count"))]
    rows = [line.rstrip() for line in done.stdout.splitlines()
            if line.strip() and not line.startswith("#")]
    # perf 6.x appends empty IPC columns ("-  -") when there is no branch data: drop them.
    rows = [re.sub(r"\s+-\s+-$", "", line) for line in rows[:top]]
    # A graph's last lines are often bare addresses of stripped code: drop the lone hex ones.
    rows = [line for line in rows if not re.fullmatch(r"[\s|]*(0x[0-9a-f]+|0)", line)]
    return head, rows


def run_memory(run: Run, pg: Any, daemon_bin: Path, nofile_soft: int) -> None:
    """Item 4: idle RSS, RSS per idle connection, N connections served (a fresh daemon)."""
    import memory
    import services

    wanted = run.args.connections
    log(f"==> memory: a fresh daemon, then up to {wanted:,} idle connections")
    connections = wanted
    if nofile_soft < wanted + 256:
        connections = max(1000, (nofile_soft - 256) // 1000 * 1000)
        run.failures.append(f"the open-file limit {nofile_soft} allows only {connections} idle "
                            f"connections (asked for {wanted}): raise `ulimit -Hn`")
    daemon = services.Daemon(daemon_bin, pg, run.args.pool, "memory")
    run.stack.callback(daemon.stop)
    daemon.start()
    try:
        run.results["memory"] = memory.measure(daemon, connections,
                                               1000 if connections >= 2000 else 500, log)
    except Exception as exc:  # report it; the throughput results are still worth writing
        run.results["memory"] = {"error": repr(exc), "daemon_log": daemon.log_tail(10)}
        run.failures.append(f"memory test failed: {exc!r}")
        log(f"!!  memory test failed: {exc!r}\n{daemon.log_tail(10)}")
    daemon.stop()


def run_checkout(run: Run, pg: Any, daemon_bin: Path, waiters_bin: Path) -> None:
    """Item 5: checkout latency under many waiters (a fresh daemon, examples/checkout_waiters.rs).

    Shared statements first (they share connections, then wait for one), then statements that
    need a connection of their own (a `timeout_ms`, as transactions and pipelines do).
    """
    import services

    clients, pool = run.args.waiters, run.args.pool
    log(f"==> pool checkout: {clients:,} clients, one request each in flight, pool {pool}")
    daemon = services.Daemon(daemon_bin, pg, pool, "checkout")
    run.stack.callback(daemon.stop)
    daemon.start()
    runs = []
    for exclusive in (False, True):
        cmd = [str(waiters_bin), "--socket", str(daemon.socket), "--clients", str(clients),
               "--sql", "SELECT id, name FROM users LIMIT 5",
               "--seconds", str(run.args.duration), "--warmup", str(run.args.warmup)]
        if exclusive:
            cmd.append("--exclusive")
        limit = run.args.duration + run.args.warmup + 60
        code, out, err = run_child(cmd, limit, run.child_env)
        try:
            if code != 0:
                raise RuntimeError(f"exit {code}: {err.strip()[-300:]}")
            result = json.loads(out.strip().splitlines()[-1])
        except (RuntimeError, ValueError, IndexError) as exc:
            run.failures.append(f"pool checkout test ({'exclusive' if exclusive else 'shared'}) "
                                f"failed: {exc}")
            log(f"!!  pool checkout test failed: {exc}\n{daemon.log_tail(10)}")
            continue
        runs.append(result)
        log(f"    {'exclusive' if exclusive else 'shared   '}  {result['qps']:9,.0f} q/s  "
            f"p50 {result['p50_us'] / 1000:6.1f} ms  p99 {result['p99_us'] / 1000:6.1f} ms  "
            f"max {result['max_us'] / 1000:6.1f} ms  requests per client "
            f"{result['per_client_min']}..{result['per_client_max']}")
    run.results["checkout"] = {"clients": clients, "pool": pool, "runs": runs}
    daemon.stop()


def finish(run: Run) -> None:
    """Writes the outputs and prints the table."""
    import report

    results = run.results
    results["machine"]["load average at end"] = " ".join(
        Path("/proc/loadavg").read_text().split()[:3])
    results["wall_seconds"] = round(time.monotonic() - run.t_launch, 1)
    results["measure_seconds"] = round(time.monotonic() - run.t_start, 1)
    stem = "compare-quick" if run.args.quick else "compare"
    if run.args.modes:
        stem += "-partial"
    written = report.write(results, run.args.out, stem)
    log("")
    log(report.console_table(results))
    if run.failures:
        log("\nskipped or failed:\n  " + "\n  ".join(run.failures))
    names = [str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(p) for p in written]
    log(f"\nwrote {', '.join(names)} in {results['wall_seconds']:.0f} s")


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        print("\ninterrupted: everything started was stopped and removed", file=sys.stderr)
        sys.exit(130)
