"""The processes a comparison run starts: a throwaway PostgreSQL, PgBouncer and qail-daemon.

Every service is started by the driver and stopped by it (``stop()`` is safe to call twice and
when the service never started). Servers that refuse to run as root (PostgreSQL, PgBouncer)
run as the ``postgres`` user through ``runuser``, in a directory chowned to that user.
"""

from __future__ import annotations

import glob
import os
import pwd
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

PG_USER = "postgres"
PG_PASSWORD = "qail-bench-password"
PG_DATABASE = "bench"
SERVICE_USER = "postgres"

SETUP_SQL = """
CREATE TABLE users (id int PRIMARY KEY, name text NOT NULL);
INSERT INTO users SELECT i, 'user ' || i FROM generate_series(1, 1000) AS i;
ANALYZE users;
"""

# The table is then vacuumed until every page is marked all-visible, as autovacuum keeps a live
# table: otherwise every mode pays for PostgreSQL checking the visibility of just-inserted rows
# one by one (measured: 10-12% more backend CPU per query in a pipeline). 1,000 inserts stay
# below autovacuum's insert threshold, so nothing else would do it during the run. With
# synchronous_commit off (below), a VACUUM right after the insert finds the commit not yet
# flushed, cannot set the rows' hint bits and so leaves the pages unmarked: hence the check, and
# a pause for the WAL writer before trying again.
SETTLE_SQL = "VACUUM users"
ALL_VISIBLE_SQL = "SELECT relallvisible = relpages FROM pg_class WHERE relname = 'users'"


class ServiceError(RuntimeError):
    """A service could not be set up or started."""


def is_root() -> bool:
    return os.geteuid() == 0


def as_service_user(argv: list[str]) -> list[str]:
    """Wraps a command so that it runs as the postgres user when we are root."""
    return ["runuser", "-u", SERVICE_USER, "--", *argv] if is_root() else argv


def chown_tree(path: Path) -> None:
    """Gives ``path`` and everything below it to the service user (when we are root)."""
    if not is_root():
        return
    entry = pwd.getpwnam(SERVICE_USER)
    for root, dirs, files in os.walk(path):
        os.chown(root, entry.pw_uid, entry.pw_gid)
        for name in dirs + files:
            os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid, follow_symlinks=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], bool], timeout: float, what: str,
             alive: Optional[Callable[[], bool]] = None) -> None:
    """Polls ``predicate`` until it holds; raises when ``timeout`` passes or ``alive`` fails."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if alive is not None and not alive():
            raise ServiceError(f"{what}: the process exited")
        if time.monotonic() > deadline:
            raise ServiceError(f"{what}: not ready after {timeout:.0f} s")
        time.sleep(0.05)


def raise_nofile_limit() -> tuple[int, int]:
    """Raises this process's open-file soft limit to its hard limit; returns (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def stop_process_group(proc: Optional[subprocess.Popen], grace: float = 10.0,
                       sig: int = signal.SIGTERM) -> None:
    """Stops a child started with ``start_new_session=True`` and everything it forked."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        return
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def find_pg_bin() -> Path:
    """The directory holding initdb: PATH first, else the newest /usr/lib/postgresql/*/bin."""
    initdb = shutil.which("initdb")
    if initdb:
        return Path(os.path.realpath(initdb)).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                        key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0)
    if candidates:
        return Path(candidates[-1]).parent
    raise ServiceError("no PostgreSQL server found: install the postgresql package "
                       "(initdb on PATH or under /usr/lib/postgresql/*/bin)")


class PostgresCluster:
    """initdb + pg_ctl start in a temporary directory; Unix socket directory + 127.0.0.1, with
    TLS on 127.0.0.1 (a self-signed certificate) when the openssl command is there."""

    def __init__(self) -> None:
        self.bin = find_pg_bin()
        self.dir = Path(tempfile.mkdtemp(prefix="qail-bench-pg-"))
        self.data = self.dir / "data"
        self.socket_dir = self.dir / "sock"
        self.port = 0
        self.started = False
        self.version = ""
        #: Why TLS is off ("" when it is on).
        self.no_tls = ""

    def _certificate(self) -> str:
        """Makes a self-signed server certificate; returns the postgresql.conf lines for it."""
        openssl = shutil.which("openssl")
        if openssl is None:
            self.no_tls = "the openssl command is missing (apt-get install openssl)"
            return ""
        made = subprocess.run(
            [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt",
             "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj", "/CN=localhost",
             "-keyout", str(self.dir / "server.key"), "-out", str(self.dir / "server.crt")],
            capture_output=True, text=True)
        if made.returncode != 0:
            self.no_tls = "openssl could not make a certificate: " + made.stderr.strip()[-200:]
            return ""
        (self.dir / "server.key").chmod(0o600)
        return (f"ssl = on\nssl_cert_file = '{self.dir / 'server.crt'}'\n"
                f"ssl_key_file = '{self.dir / 'server.key'}'\n")

    def start(self, max_connections: int = 150) -> None:
        self.socket_dir.mkdir()
        pwfile = self.dir / "pwfile"
        pwfile.write_text(PG_PASSWORD + "\n")
        tls = self._certificate()
        chown_tree(self.dir)
        initdb = subprocess.run(
            as_service_user([str(self.bin / "initdb"), "-D", str(self.data), "-U", PG_USER,
                             "--auth=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8",
                             "--no-locale", "--no-sync"]),
            capture_output=True, text=True)
        if initdb.returncode != 0:
            raise ServiceError("initdb failed:\n" + initdb.stdout + initdb.stderr)
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(
                "# written by benches/compare\n"
                "listen_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.socket_dir}'\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                f"max_connections = {max_connections}\n"
                "shared_buffers = 64MB\n" + tls)
        log = self.dir / "postgres.log"
        for _ in range(3):
            self.port = free_port()
            started = subprocess.run(
                as_service_user([str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(log),
                                 "-w", "-t", "60", "-o", f"-p {self.port}", "start"]),
                capture_output=True, text=True)
            if started.returncode == 0:
                self.started = True
                break
        else:
            raise ServiceError("pg_ctl start failed:\n" + log.read_text()[-2000:])
        self.version = subprocess.run([str(self.bin / "postgres"), "--version"],
                                      capture_output=True, text=True).stdout.strip()

    def postmaster_pid(self) -> int:
        """The postmaster's pid (first line of postmaster.pid): the root of every backend."""
        return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])

    def psql(self, database: str, sql: str) -> str:
        """Runs SQL with psql over the private socket directory; returns its output."""
        done = subprocess.run(
            [str(self.bin / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
             "-h", str(self.socket_dir), "-p", str(self.port), "-U", PG_USER, "-d", database,
             "-c", sql],
            capture_output=True, text=True, env={**os.environ, "PGPASSWORD": PG_PASSWORD})
        if done.returncode != 0:
            raise ServiceError(f"psql failed: {done.stderr.strip()}")
        return done.stdout.strip()

    def load_workload(self) -> None:
        """Creates the bench database with the seed's users table of 1,000 rows."""
        self.psql("postgres", f"CREATE DATABASE {PG_DATABASE}")
        self.psql(PG_DATABASE, SETUP_SQL)
        for _ in range(5):
            self.psql(PG_DATABASE, SETTLE_SQL)
            if self.psql(PG_DATABASE, ALL_VISIBLE_SQL) == "t":
                return
            time.sleep(0.2)
        print("warning: VACUUM left pages of the users table not all-visible", file=sys.stderr)

    def stop(self) -> None:
        if self.started:
            subprocess.run(as_service_user([str(self.bin / "pg_ctl"), "-D", str(self.data),
                                            "-m", "immediate", "-w", "stop"]),
                           capture_output=True)
            self.started = False
        shutil.rmtree(self.dir, ignore_errors=True)


def find_pgbouncer() -> Optional[str]:
    for candidate in (shutil.which("pgbouncer"), "/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def install_pgbouncer(log: Callable[[str], None]) -> str:
    """Returns the pgbouncer binary, installing Debian's package when it is missing."""
    found = find_pgbouncer()
    if found:
        return found
    if not is_root() or not shutil.which("apt-get"):
        raise ServiceError("pgbouncer is missing and cannot be installed here "
                           "(needs root and apt-get): apt-get install pgbouncer")
    log("installing PgBouncer from Debian (apt-get install pgbouncer)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "pgbouncer"]
    done = subprocess.run(install, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env)
        done = subprocess.run(install, capture_output=True, text=True, env=env)
    found = find_pgbouncer()
    if done.returncode != 0 or not found:
        raise ServiceError("apt-get install pgbouncer failed:\n" + done.stderr[-2000:])
    return found


class PgBouncer:
    """PgBouncer in transaction mode in front of the cluster, over Unix sockets."""

    def __init__(self, binary: str, cluster: PostgresCluster, pool_size: int) -> None:
        self.binary = binary
        self.cluster = cluster
        self.pool_size = pool_size
        self.dir = cluster.dir / "pgbouncer"
        self.socket_dir = self.dir / "sock"
        self.port = 0
        self.proc: Optional[subprocess.Popen] = None
        self.version = ""

    def start(self) -> None:
        self.socket_dir.mkdir(parents=True)
        self.port = free_port()
        (self.dir / "userlist.txt").write_text(f'"{PG_USER}" "{PG_PASSWORD}"\n')
        (self.dir / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"{PG_DATABASE} = host={self.cluster.socket_dir} port={self.cluster.port} "
            f"dbname={PG_DATABASE}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            f"unix_socket_dir = {self.socket_dir}\n"
            "auth_type = scram-sha-256\n"
            f"auth_file = {self.dir / 'userlist.txt'}\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {self.pool_size}\n"
            "min_pool_size = 0\nreserve_pool_size = 0\n"
            "max_client_conn = 1000\n"
            "max_db_connections = 0\n"
            f"logfile = {self.dir / 'pgbouncer.log'}\n"
            "log_connections = 0\nlog_disconnections = 0\n"
            "ignore_startup_parameters = extra_float_digits\n")
        chown_tree(self.dir)
        self.version = subprocess.run([self.binary, "--version"], capture_output=True,
                                      text=True).stdout.strip().splitlines()[0]
        proc = subprocess.Popen(as_service_user([self.binary, str(self.dir / "pgbouncer.ini")]),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        self.proc = proc
        sock = self.socket_dir / f".s.PGSQL.{self.port}"
        wait_for(sock.exists, 20, "pgbouncer", alive=lambda: proc.poll() is None)

    @property
    def pid(self) -> int:
        """The root of PgBouncer's process tree (``runuser`` when we are root, its parent)."""
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        stop_process_group(self.proc, grace=5)
        self.proc = None


class Daemon:
    """qail-daemon with one upstream: the cluster over its Unix socket, or with ``tls`` over
    127.0.0.1 with ``sslmode = "require"``."""

    def __init__(self, binary: Path, cluster: PostgresCluster, pool_max: int, name: str,
                 tls: bool = False) -> None:
        self.binary = binary
        self.cluster = cluster
        self.pool_max = pool_max
        self.tls = tls
        self.dir = Path(tempfile.mkdtemp(prefix=f"qail-bench-{name}-"))
        self.socket = self.dir / "qail.sock"
        self.config = self.dir / "qail-daemon.toml"
        self.log = self.dir / "daemon.log"
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> None:
        host = "127.0.0.1" if self.tls else self.cluster.socket_dir
        sslmode = "require" if self.tls else "disable"
        self.config.write_text(
            "[ipc]\n"
            f'socket = "{self.socket}"\n'
            "[admin]\n"
            'listen = ""\n'
            "[[upstreams]]\n"
            'name = "main"\n'
            f'host = "{host}"\n'
            f"port = {self.cluster.port}\n"
            f'sslmode = "{sslmode}"\n'
            f'user = "{PG_USER}"\n'
            f'database = "{PG_DATABASE}"\n'
            'password_env = "QAIL_BENCH_PG_PASSWORD"\n'
            f"pool_max = {self.pool_max}\n")
        env = {**os.environ, "QAIL_BENCH_PG_PASSWORD": PG_PASSWORD}
        env.pop("QAIL_SOCKET", None)
        with open(self.log, "wb") as log:
            # The driver raised its own RLIMIT_NOFILE to the hard limit; the daemon inherits it.
            proc = subprocess.Popen([str(self.binary), "--config", str(self.config)],
                                    stdout=log, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)
        self.proc = proc
        wait_for(self.socket.exists, 30, "qail-daemon", alive=lambda: proc.poll() is None)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def status(self, field: str) -> int:
        """A kB figure from /proc/<pid>/status (VmRSS, VmHWM, ...)."""
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        raise KeyError(field)

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def nofile_limit(self) -> str:
        with open(f"/proc/{self.pid}/limits") as limits:
            for line in limits:
                if line.startswith("Max open files"):
                    return " ".join(line.split()[3:5])
        return "?"

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        stop_process_group(self.proc, grace=15)
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)
