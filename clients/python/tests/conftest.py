"""Fixtures: a throwaway PostgreSQL cluster (one per session), a fresh database and a real
qail-daemon per test.

The cluster is made with the installed ``initdb`` (PATH, else the newest
/usr/lib/postgresql/*/bin), listens on a private socket directory and on 127.0.0.1 with a free
port, and wants a scram-sha-256 password. PostgreSQL refuses to run as root, so as root every
server program runs as ``postgres`` through ``runuser``, in a directory chowned to it.

The daemon binary is ``$QAIL_DAEMON_BIN`` or ``<repo>/target/debug/qail-daemon`` (built with
``cargo build`` when missing). Each daemon gets its own config file and socket in a short
temporary directory (Unix socket paths are limited to 108 bytes).
"""

from __future__ import annotations

import glob
import itertools
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator, List, Optional

import pytest

import qail_ipc
from qail_ipc._protocol import encode_frame, read_frame

REPO = Path(__file__).resolve().parents[3]
PG_USER = "postgres"
PG_PASSWORD = "qail-python-test-password"
#: Upper bound for any single test, enforced with SIGALRM.
TEST_TIME_LIMIT = 120
#: Timeout given to clients made by the fixtures, in seconds.
CLIENT_TIMEOUT = 30.0

_db_counter = itertools.count(1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _find_pg_bin() -> Path:
    initdb = shutil.which("initdb")
    if initdb:
        return Path(os.path.realpath(initdb)).parent
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name)
    )
    for d in reversed(candidates):
        if os.access(os.path.join(d, "initdb"), os.X_OK):
            return Path(d)
    pytest.fail("no PostgreSQL server found: install the postgresql package")


class Cluster:
    """A running throwaway PostgreSQL cluster."""

    def __init__(self) -> None:
        self.bin = _find_pg_bin()
        self.as_postgres = os.geteuid() == 0
        self.root = Path(tempfile.mkdtemp(prefix="qail-py-pg-"))
        self.sock_dir = self.root / "sock"
        self.data = self.root / "data"
        self.port = 0
        self.sock_dir.mkdir()
        (self.root / "pwfile").write_text(PG_PASSWORD + "\n")
        if self.as_postgres:
            subprocess.run(["chown", "-R", "postgres:postgres", str(self.root)], check=True)

    def _server_cmd(self, *args: str) -> List[str]:
        cmd = list(args)
        return ["runuser", "-u", "postgres", "--", *cmd] if self.as_postgres else cmd

    def start(self) -> None:
        out = subprocess.run(
            self._server_cmd(
                str(self.bin / "initdb"), "-D", str(self.data), "-U", PG_USER,
                "--auth=scram-sha-256", "--pwfile=%s" % (self.root / "pwfile"),
                "-E", "UTF8", "--no-locale", "--no-sync",
            ),
            capture_output=True, text=True, timeout=300,
        )
        if out.returncode != 0:
            pytest.fail("initdb failed:\n%s%s" % (out.stdout, out.stderr))
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(
                "listen_addresses = '127.0.0.1'\n"
                "unix_socket_directories = '%s'\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                "shared_buffers = 32MB\nmax_connections = 200\n" % self.sock_dir
            )
        for _ in range(3):
            self.port = _free_port()
            result = subprocess.run(
                self._server_cmd(
                    str(self.bin / "pg_ctl"), "-D", str(self.data), "-l",
                    str(self.root / "postgres.log"), "-w", "-t", "60", "-o", "-p %d" % self.port,
                    "start",
                ),
                capture_output=True, text=True, timeout=120,
            )
            if result.returncode == 0:
                self._watchdog()
                return
        pytest.fail("PostgreSQL did not start:\n%s" % (self.root / "postgres.log").read_text())

    def _watchdog(self) -> None:
        """Stops the cluster if pytest dies without its teardown (killed, timed out)."""
        stop = " ".join(
            shlex.quote(a)
            for a in self._server_cmd(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m",
                                      "immediate", "stop")
        )
        script = "while kill -0 %d 2>/dev/null; do sleep 1; done; %s >/dev/null 2>&1; rm -rf %s" % (
            os.getpid(), stop, shlex.quote(str(self.root)))
        subprocess.Popen(["sh", "-c", script], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)

    def stop(self) -> None:
        subprocess.run(
            self._server_cmd(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                             "-w", "stop"),
            capture_output=True, timeout=60,
        )
        shutil.rmtree(self.root, ignore_errors=True)

    def psql(self, database: str, sql: str) -> str:
        """Runs SQL as the superuser over the private socket directory; returns stdout."""
        psql = self.bin / "psql"
        if not psql.exists():
            psql = Path(shutil.which("psql") or "psql")
        out = subprocess.run(
            [str(psql), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", str(self.sock_dir),
             "-p", str(self.port), "-U", PG_USER, "-d", database, "-c", sql],
            capture_output=True, text=True, timeout=60,
            env=dict(os.environ, PGPASSWORD=PG_PASSWORD),
        )
        if out.returncode != 0:
            raise RuntimeError("psql failed: %s" % out.stderr)
        return out.stdout

    def create_database(self) -> str:
        name = "qpy_%d_%d" % (os.getpid(), next(_db_counter))
        self.psql("postgres", "CREATE DATABASE %s" % name)
        return name


def _daemon_binary() -> str:
    explicit = os.environ.get("QAIL_DAEMON_BIN")
    if explicit:
        return explicit
    # Always through cargo: a no-op when the binary is current, and never a stale daemon.
    subprocess.run(["cargo", "build", "--quiet", "--bin", "qail-daemon"], cwd=REPO, check=True,
                   timeout=3600)
    return str(REPO / "target" / "debug" / "qail-daemon")


class Daemon:
    """A qail-daemon process with an upstream ``main`` on one database of the cluster."""

    def __init__(
        self, binary: str, cluster: Cluster, database: str, ipc: str = "", tables: str = ""
    ) -> None:
        self.binary = binary
        self.cluster = cluster
        self.database = database
        self.dir = Path(tempfile.mkdtemp(prefix="qd-"))
        self.socket = str(self.dir / "qail.sock")
        self.config = self.dir / "qail.toml"
        self.log = self.dir / "daemon.log"
        # ``ipc`` adds keys to [ipc]; ``tables`` adds whole tables after the upstream.
        self.config.write_text(
            '[ipc]\nsocket = "%s"\n%s\n\n[admin]\nlisten = ""\n\n'
            '[[upstreams]]\nname = "main"\nhost = "127.0.0.1"\nport = %d\nuser = "%s"\n'
            'database = "%s"\npassword = "%s"\npool_max = 4\npool_min_idle = 0\n\n%s\n'
            % (self.socket, ipc, cluster.port, PG_USER, database, PG_PASSWORD, tables)
        )
        self.proc: Optional[subprocess.Popen] = None

    # Credentials that connect_pg matches against upstream "main".
    @property
    def pg_credentials(self) -> dict:
        return {
            "host": "127.0.0.1", "port": self.cluster.port, "user": PG_USER,
            "database": self.database, "password": PG_PASSWORD,
        }

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("QAIL_")}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "--config", str(self.config)], stdout=log, stderr=log,
                stdin=subprocess.DEVNULL, env=env,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail("qail-daemon exited:\n%s" % self.log.read_text())
            if self._answers_ping():
                return
            time.sleep(0.02)
        pytest.fail("qail-daemon did not start within 30 s:\n%s" % self.log.read_text())

    def _answers_ping(self) -> bool:
        """Raw probe (works with or without a token): one ``ping`` frame, one answer."""
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(5)
                s.connect(self.socket)
                s.sendall(encode_frame({"id": 1, "op": "ping"}))
                return read_frame(s).get("ok") is True
        except (OSError, EOFError):
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def connect(self, **kwargs) -> qail_ipc.Client:
        kwargs.setdefault("timeout", CLIENT_TIMEOUT)
        kwargs.setdefault("upstream", "main")
        return qail_ipc.connect(self.socket, **kwargs)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(autouse=True)
def _time_limit() -> Iterator[None]:
    """Fails any test that runs longer than TEST_TIME_LIMIT seconds."""

    def expired(signum, frame):
        raise TimeoutError("test exceeded %d s" % TEST_TIME_LIMIT)

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, TEST_TIME_LIMIT)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    cluster = Cluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def daemon_bin() -> str:
    return _daemon_binary()


@pytest.fixture
def database(pg_cluster: Cluster) -> str:
    """A fresh, empty database."""
    return pg_cluster.create_database()


@pytest.fixture
def make_daemon(pg_cluster: Cluster, daemon_bin: str) -> Iterator:
    """Factory: ``make_daemon(database, ipc="", tables="")`` starts a daemon; stopped at
    teardown."""
    started: List[Daemon] = []

    def make(database: str, ipc: str = "", tables: str = "") -> Daemon:
        d = Daemon(daemon_bin, pg_cluster, database, ipc, tables)
        started.append(d)
        d.start()
        return d

    yield make
    for d in started:
        d.cleanup()


@pytest.fixture
def daemon(make_daemon, database: str) -> Daemon:
    """A running daemon whose upstream ``main`` is a fresh database."""
    return make_daemon(database)


@pytest.fixture
def client(daemon: Daemon) -> Iterator[qail_ipc.Client]:
    """A client connected to ``main``."""
    c = daemon.connect()
    try:
        yield c
    finally:
        c.close()
