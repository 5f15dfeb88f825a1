"""CPU time per process group over a mode's timed window, and the perf switch for --profile.

The process that owns the timed window (the workload process, or the driver for the native
ceiling) takes one snapshot just before the window starts and one just after it ends; nothing
is read in between, so the window itself carries no extra work. The difference between the
two, divided by the queries completed in the window, is the CPU per query of each group:

- ``client``: the workload process, from ``getrusage(RUSAGE_SELF)`` (every thread, microsecond
  resolution). The multi-process modes add what each child measured of itself the same way
  over its own window: the children exit right after it, so they send their figures back with
  their query counts instead of being read from outside.
- a server (``qail-daemon``, ``postgres``, ``pgbouncer``): a process tree given by its root pid
  (the daemon; the postmaster; the ``runuser`` wrapping PgBouncer), read from
  ``/proc/<pid>/stat`` (utime, stime, cutime, cstime, in clock ticks of ``SC_CLK_TCK``).

A tree's CPU is the sum, over its live processes, of each one's own time (all its threads,
live and exited) plus what its already-reaped children used (cutime/cstime). A PostgreSQL
backend that exits during the window is therefore counted while it is alive (a zombie still
has its stat) and, once the postmaster has reaped it, through the postmaster's cutime/cstime:
included once, never twice. Only a reap that lands between the reading of the child and the
reading of its parent could count it twice (or miss it), so a snapshot is retaken when a root's
reaped-children time moved while the snapshot was being read (all reaping in these trees is
done by the roots). Clock ticks truncate: each process's figure is exact to one tick (10 ms at
100 Hz) per window, which over a 3-second window and a few dozen processes stays within a few
per cent of the totals measured here; idle processes add exactly zero.

One snapshot reads every ``/proc/<pid>/stat`` once (no CONFIG_PROC_CHILDREN here): about 2 ms
for 70 processes, 4 ms for the 32-process modes.
"""

from __future__ import annotations

import os
import resource
import select
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

TICK = 1.0 / os.sysconf("SC_CLK_TCK")

# Group keys, in the order the report shows them, with their display names.
GROUPS: list[tuple[str, str]] = [
    ("client", "client"),
    ("qail-daemon", "qail-daemon"),
    ("postgres", "PostgreSQL"),
    ("pgbouncer", "PgBouncer"),
]

Stat = tuple[int, int, int, int, int]  # ppid, utime, stime, cutime, cstime (ticks)


@dataclass(frozen=True)
class Times:
    """User and system CPU seconds."""

    user: float = 0.0
    sys: float = 0.0

    def __add__(self, other: "Times") -> "Times":
        return Times(self.user + other.user, self.sys + other.sys)

    def __sub__(self, other: "Times") -> "Times":
        return Times(self.user - other.user, self.sys - other.sys)


def own_times() -> Times:
    """This process's CPU (all threads) so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return Times(usage.ru_utime, usage.ru_stime)


def read_stat(pid: int) -> Optional[Stat]:
    """ppid, utime, stime, cutime, cstime of a process; None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces: split after the last ')'.
    fields = data[data.rindex(b")") + 2:].split()
    return (int(fields[1]), int(fields[11]), int(fields[12]), int(fields[13]),
            int(fields[14]))


def process_table() -> dict[int, Stat]:
    """Every process's stat, one read each."""
    table: dict[int, Stat] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = read_stat(int(name))
            if stat is not None:
                table[int(name)] = stat
    return table


def socket_count(pid: int) -> int:
    """How many sockets a process holds open (0 when it is gone)."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return 0
    count = 0
    for fd in fds:
        try:
            count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except OSError:
            pass
    return count


def tree_times(root: int, table: dict[int, Stat]) -> Optional[Times]:
    """The CPU of ``root`` and its descendants (live ones, plus the children each has reaped)."""
    if root not in table:
        return None
    kids: dict[int, list[int]] = {}
    for pid, stat in table.items():
        kids.setdefault(stat[0], []).append(pid)
    user = system = 0
    todo = [root]
    while todo:
        pid = todo.pop()
        _, utime, stime, cutime, cstime = table[pid]
        user += utime + cutime
        system += stime + cstime
        todo.extend(kids.get(pid, ()))
    return Times(user * TICK, system * TICK)


def _reaped(pid: int) -> Optional[tuple[int, int]]:
    stat = read_stat(pid)
    return (stat[3], stat[4]) if stat else None


def snapshot(roots: dict[str, int]) -> dict[str, Optional[Times]]:
    """The CPU so far of each group's process tree (None for a group whose root is gone)."""
    table: dict[int, Stat] = {}
    for _ in range(3):
        before = {pid: _reaped(pid) for pid in roots.values()}
        table = process_table()
        if before == {pid: _reaped(pid) for pid in roots.values()}:
            break  # no root reaped a child meanwhile: nothing counted twice or missed
    return {name: tree_times(pid, table) for name, pid in roots.items()}


def per_query(groups: dict[str, Times], queries: float) -> dict[str, dict[str, float]]:
    """µs of CPU per query, total (user + sys) and sys, per group."""
    if queries <= 0:
        return {}
    return {name: {"total": (t.user + t.sys) * 1e6 / queries, "sys": t.sys * 1e6 / queries}
            for name, t in groups.items()}


def window_report(groups: dict[str, Times], queries: float, seconds: float,
                  how: str) -> dict[str, Any]:
    """What one run reports: the window, each group's CPU seconds and its µs per query."""
    return {
        "window_s": round(seconds, 6),
        "queries": round(queries),
        "how": how,
        "groups": {name: {"user_s": round(t.user, 6), "sys_s": round(t.sys, 6)}
                   for name, t in groups.items()},
        "us_per_query": per_query(groups, queries),
    }


def console_line(cpu: dict[str, Any]) -> str:
    """``client 77 (24 sys) · qail-daemon 73 (44 sys) · PostgreSQL 53 (20 sys)``."""
    parts = []
    per = cpu.get("us_per_query", {})
    for key, name in GROUPS:
        if key in per:
            parts.append(f"{name} {fmt_us(per[key]['total'])} ({fmt_us(per[key]['sys'])} sys)")
    return " · ".join(parts)


def fmt_us(v: float) -> str:
    return f"{v:,.0f}" if v >= 10 else f"{v:.1f}"


class PerfControl:
    """The control FIFOs of a ``perf record -D -1 --control fifo:CTL,ACK`` started by the driver.

    Both are opened read-write so that opening never blocks; every command waits for perf's
    ``ack`` (at most ``timeout`` seconds, so a perf that died cannot hang the workload).
    """

    def __init__(self, ctl: str, ack: str, timeout: float = 10.0) -> None:
        self.ctl = os.open(ctl, os.O_RDWR)
        self.ack = os.open(ack, os.O_RDWR)
        self.timeout = timeout
        self.failures: list[str] = []

    def send(self, command: str) -> None:
        os.write(self.ctl, command.encode() + b"\n")
        ready, _, _ = select.select([self.ack], [], [], self.timeout)
        if ready:
            os.read(self.ack, 64)
        else:
            self.failures.append(f"perf did not acknowledge {command!r}")


class Window:
    """Brackets one timed window: snapshots of the server trees and of this process's CPU.

    ``roots`` maps a server group to the pid of its tree's root. With ``perf`` given, perf's
    events are enabled for exactly the window too.
    """

    def __init__(self, roots: dict[str, int], perf: Optional[PerfControl] = None) -> None:
        self.roots = roots
        self.perf = perf
        self.servers0: dict[str, Optional[Times]] = {}
        self.servers1: dict[str, Optional[Times]] = {}
        self.own0 = self.own1 = Times()

    def begin(self) -> None:
        """Call right before the window's clock starts (the client's own reading comes last)."""
        if self.perf:
            self.perf.send("enable")
        self.servers0 = snapshot(self.roots)
        self.own0 = own_times()

    def end(self) -> None:
        """Call right after the window's clock stops (the client's own reading comes first)."""
        self.own1 = own_times()
        self.servers1 = snapshot(self.roots)
        if self.perf:
            self.perf.send("disable")

    def report(self, queries: float, seconds: float,
               children: Optional[Times] = None) -> dict[str, Any]:
        """The window's figures; ``children`` is what the multi modes' processes measured."""
        groups = {"client": self.own1 - self.own0 + (children or Times())}
        missing = []
        for name in self.roots:
            a, b = self.servers0.get(name), self.servers1.get(name)
            if a is None or b is None:
                missing.append(name)
            else:
                groups[name] = b - a
        how = "in-process snapshots" + (" + children's own getrusage" if children else "")
        out = window_report(groups, queries, seconds, how)
        if missing:
            out["missing"] = missing
        if self.perf and self.perf.failures:
            out["perf"] = self.perf.failures
        return out


def sample_external(pid: int, roots: dict[str, int], ready: Callable[[], bool],
                    warmup: float, duration: float, give_up: float = 60.0
                    ) -> Optional[dict[str, Any]]:
    """The window of a process that cannot report its own (the native ceiling), from outside.

    Waits until ``ready()`` (its connections are up, so its warm-up has begun), then samples the
    inner part of the process's own window: from ``margin`` after its start to ``margin`` before
    its end (5% of it, at most 0.1 s), so that polling delays (10 ms) never push a snapshot past
    the process's exit. The caller turns that into queries with the process's own rate.
    ``pid`` is the client group. Returns the groups' CPU seconds and the sampled window's
    length, or None when the process exited or never became ready.
    """
    deadline = time.monotonic() + give_up
    while not ready():
        if time.monotonic() > deadline or read_stat(pid) is None:
            return None
        time.sleep(0.01)
    margin = min(0.1, duration * 0.05)
    time.sleep(warmup + margin)
    everything = {"client": pid, **roots}
    s0 = snapshot(everything)
    t0 = time.monotonic()
    time.sleep(duration - 2 * margin)
    t1 = time.monotonic()
    s1 = snapshot(everything)
    groups = {}
    for name in everything:
        a, b = s0.get(name), s1.get(name)
        if a is not None and b is not None:
            groups[name] = b - a
    if "client" not in groups:
        return None
    return {"seconds": t1 - t0, "groups": groups}
