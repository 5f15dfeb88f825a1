"""Turning a comparison run into its outputs: the console table, Markdown, JSON and charts.

    python benches/compare/report.py benches/results/compare.json   # re-render md + png
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
import sys
from typing import Any, Optional

from cputime import GROUPS, fmt_us

NATIVE_KEY = "native"

# The targets (item 3): (description, numerator mode, denominator mode, minimum ratio).
TARGETS: list[tuple[str, str, str, float]] = [
    ("Python `pipeline` with rows vs native tokio-postgres", "daemon.pipeline", NATIVE_KEY, 0.9),
    ("Python `prepared_pipeline` count-only vs native", "daemon.count", NATIVE_KEY, 1.0),
    ("Python `pipeline` vs psycopg 3 pipeline mode", "daemon.pipeline", "psycopg.pipeline", 5.0),
    ("Python `pipeline` vs asyncpg sequential", "daemon.pipeline", "asyncpg.seq", 10.0),
    ("Python sequential via the daemon vs psycopg 3 sequential", "daemon.seq", "psycopg.seq", 1.0),
    ("32 processes via the daemon vs via PgBouncer (pool 8)", "multi.daemon", "multi.pgbouncer", 1.5),
]


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the repetitions of one mode."""
    out: dict[str, Any] = {"reps": len(runs)}
    if not runs:
        return out
    out["qps"] = statistics.median(r["qps"] for r in runs)
    out["qps_min"] = min(r["qps"] for r in runs)
    out["qps_max"] = max(r["qps"] for r in runs)
    out["rows_per_query"] = statistics.median(r.get("rows_per_query", 0.0) for r in runs)
    for key in ("p50_us", "p99_us"):
        values = [r[key] for r in runs if key in r]
        if values:
            out[key] = statistics.median(values)
    cpu = cpu_medians(runs)
    if cpu:
        out["cpu_us"] = cpu
    return out


def cpu_medians(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per group: medians over the runs of the µs of CPU per query, total and sys apart."""
    out: dict[str, dict[str, float]] = {}
    for group, _ in GROUPS:
        per = [r["cpu"]["us_per_query"][group] for r in runs
               if group in r.get("cpu", {}).get("us_per_query", {})]
        if per:
            out[group] = {"total": statistics.median(p["total"] for p in per),
                          "sys": statistics.median(p["sys"] for p in per),
                          "runs": len(per)}
    return out


def by_key(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["key"]: m for m in results["modes"]}


def add_ratios(results: dict[str, Any]) -> None:
    """Ratio to the native ceiling for every mode, and the target table."""
    modes = by_key(results)
    native = modes.get(NATIVE_KEY, {}).get("median", {}).get("qps")
    for m in results["modes"]:
        qps = m["median"].get("qps")
        m["ratio_native"] = qps / native if qps and native else None
    checks = []
    for text, num, den, minimum in TARGETS:
        a = modes.get(num, {}).get("median", {})
        b = modes.get(den, {}).get("median", {})
        ratio = a["qps"] / b["qps"] if a.get("qps") and b.get("qps") else None
        check: dict[str, Any] = {"target": text, "minimum": minimum, "ratio": ratio,
                                 "numerator": num, "denominator": den}
        if ratio is not None:
            check["met"] = ratio >= minimum
            if num == "multi.daemon" and a.get("p99_us") and b.get("p99_us"):
                check["p99_lower"] = a["p99_us"] < b["p99_us"]
                check["met"] = check["met"] and check["p99_lower"]
        checks.append(check)
    results["targets"] = checks


def _fmt_qps(v: Optional[float]) -> str:
    return f"{v:,.0f}" if v else "—"


def _fmt_ratio(v: Optional[float]) -> str:
    return f"{v:.2f}x" if v else "—"


def _fmt_us(v: Optional[float]) -> str:
    if not v:
        return "—"
    return f"{v:,.0f} µs" if v >= 10 else f"{v:.1f} µs"


def _rows_text(m: dict[str, Any]) -> str:
    if m.get("count_only"):
        return "count only"
    rpq = m["median"].get("rows_per_query")
    return f"{rpq:.2f}" if rpq else "—"


def _status(check: dict[str, Any]) -> str:
    if check.get("ratio") is None:
        return "not measured"
    if check["met"]:
        return "met"
    if check["ratio"] < check["minimum"]:
        short = 1 - check["ratio"] / check["minimum"]
        text = f"missed: {short:.0%} short"
    else:
        text = "missed"
    if check.get("p99_lower") is False:
        text += " (p99 not lower)"
    return text


def _cpu_cell(cpu: dict[str, dict[str, float]], group: str) -> str:
    if group not in cpu:
        return "—"
    return f"{fmt_us(cpu[group]['total'])} ({fmt_us(cpu[group]['sys'])} sys)"


def cpu_markdown(results: dict[str, Any]) -> list[str]:
    """The CPU-per-query table (empty when no run measured it)."""
    modes = [m for m in results["modes"] if m["median"].get("cpu_us")]
    if not modes:
        return []
    names = [name for _, name in GROUPS]
    lines = [
        "", f"### CPU per query, µs: {' / '.join(names)}", "",
        "CPU time (user + system) that each process group used during the timed window only "
        "(not warm-up or start-up), divided by the queries completed in it; medians over the "
        "runs, the system part in parentheses. client = the workload process (and its 32 "
        "children in the multi-process modes); PostgreSQL = the postmaster and all its "
        "processes, backends that exited included; the native row's window is sampled from "
        "outside the binary. A dash: the mode does not go through that server.",
        "",
        "| Mode | Queries/s | " + " | ".join(names) + " | all |",
        "|---|---:|" + "---:|" * (len(names) + 1),
    ]
    group = None
    for m in modes:
        if m["group"] != group:
            group = m["group"]
            lines.append(f"| **{group}** |" + " |" * (len(names) + 2))
        cpu = m["median"]["cpu_us"]
        cells = [_cpu_cell(cpu, key) for key, _ in GROUPS]
        total = sum(v["total"] for v in cpu.values())
        lines.append(f"| {m['label']} | {_fmt_qps(m['median'].get('qps'))} | "
                     + " | ".join(cells) + f" | {fmt_us(total)} |")
    return lines


def markdown(results: dict[str, Any]) -> str:
    settings = results["settings"]
    reps = settings["reps"]
    multi_reps = settings.get("multi_reps", reps)
    more = (f" ({multi_reps} for the {settings['processes']}-process modes, whose figures swing "
            "the most between runs)" if multi_reps != reps else "")
    lines = [
        f"### Throughput: the seed's workload, median of {reps} run(s) of "
        f"{settings['duration']:g} s each",
        "",
        "`SELECT id, name FROM users LIMIT $1`, parameters cycling 10, 5, 1 (5.33 rows per query "
        "on average), every row fetched into Python objects unless marked count only. "
        f"Ratios are to the native tokio-postgres ceiling measured in the same run. Repetitions "
        f"of all modes are interleaved{more}.",
        "",
        "| Mode | Queries/s | vs native | p50 | p99 | Rows/query | Notes |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    group = None
    for m in results["modes"]:
        if m["group"] != group:
            group = m["group"]
            lines.append(f"| **{group}** | | | | | | |")
        med = m["median"]
        notes = m.get("notes", "")
        if m.get("error"):
            notes = (notes + "; " if notes else "") + "FAILED: " + m["error"].splitlines()[-1][:120]
        lines.append(
            f"| {m['label']} | {_fmt_qps(med.get('qps'))} | {_fmt_ratio(m.get('ratio_native'))} "
            f"| {_fmt_us(med.get('p50_us'))} | {_fmt_us(med.get('p99_us'))} | {_rows_text(m)} "
            f"| {notes} |")
    lines += cpu_markdown(results)
    lines += ["", "### The issue's targets (ratios from this run)", "",
              "| Target | Needed | Measured | |", "|---|---:|---:|---|"]
    for check in results.get("targets", []):
        lines.append(f"| {check['target']} | ≥ {check['minimum']:g}x "
                     f"| {_fmt_ratio(check.get('ratio'))} | {_status(check)} |")
    mem = results.get("memory")
    if mem and "idle_rss_kib" in mem:
        lines += ["", "### Memory and scale", ""]
        lines.append(f"- Idle daemon RSS: **{mem['idle_rss_kib'] / 1024:.1f} MiB** "
                     f"(up, pool connected, no client)")
        if "kib_per_connection" in mem:
            top = mem["points"][-1]
            lines.append(f"- RSS growth per idle client connection (hello + connect, then idle): "
                         f"**{mem['kib_per_connection']:.1f} KiB** "
                         f"= {mem['mib_per_1000']:.2f} MiB per 1,000 connections "
                         f"(least-squares over 0..{top['connections']:,}; "
                         f"{top['rss_kib'] / 1024:.1f} MiB with {top['connections']:,} held)")
        served = mem.get("served")
        if served:
            lines.append(
                f"- {served['connections']:,} concurrent connections held; each sent one query "
                f"at once: {served['query_ok']:,} answered ok, {served['query_errors']:,} "
                f"errors, in {served['query_seconds']:.2f} s; then one ping each: "
                f"{served['ping_ok']:,} ok in {served['ping_seconds']:.2f} s. Peak RSS "
                f"{served['hwm_kib'] / 1024:.1f} MiB")
            if "kib_per_connection_after_serving" in served:
                lines.append(f"- RSS per connection once each has been served one query: "
                             f"{served['kib_per_connection_after_serving']:.1f} KiB "
                             f"({served['rss_after_kib'] / 1024:.1f} MiB with "
                             f"{served['connections']:,} held)")
        if "rss_after_close_kib" in mem:
            lines.append(f"- After closing them all: {mem['rss_after_close_kib'] / 1024:.1f} MiB "
                         f"RSS, {mem.get('daemon_fds_after_close', '?')} file descriptors still "
                         f"open in the daemon")
        second = mem.get("second_round") or {}
        if "connections" in second:
            lines.append(f"- A second round of {second['connections']:,} connections (open, one "
                         f"query each, close): {second['query_ok']:,} ok; after it "
                         f"{second['rss_after_close_kib'] / 1024:.1f} MiB RSS, "
                         f"{second['daemon_fds_after_close']} descriptors open")
        elif second.get("error"):
            lines.append(f"- A second round of connections failed: {second['error']}")
    elif mem and mem.get("error"):
        lines += ["", f"Memory measurement failed: {mem['error']}"]
    lines += checkout_markdown(results)
    lines += ["", "### Machine", ""]
    for key, value in results["machine"].items():
        lines.append(f"- {key}: {value}")
    notes = results.get("failures") or []
    if notes:
        lines += ["", "### Skipped or failed", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def console_table(results: dict[str, Any]) -> str:
    header = f"{'mode':<58} {'q/s':>10} {'x native':>9} {'p50':>10} {'p99':>10}  rows/q"
    lines = [header, "-" * len(header)]
    group = None
    for m in results["modes"]:
        if m["group"] != group:
            group = m["group"]
            lines.append(f"{group}:")
        med = m["median"]
        status = "  FAILED" if m.get("error") and not med.get("qps") else ""
        lines.append(f"  {m['label'][:56]:<56} {_fmt_qps(med.get('qps')):>10} "
                     f"{_fmt_ratio(m.get('ratio_native')):>9} {_fmt_us(med.get('p50_us')):>10} "
                     f"{_fmt_us(med.get('p99_us')):>10}  {_rows_text(m)}{status}")
    cpu_modes = [m for m in results["modes"] if m["median"].get("cpu_us")]
    if cpu_modes:
        lines.append("")
        lines.append(f"cpu µs/query, median (sys): {' / '.join(n for _, n in GROUPS)}")
        for m in cpu_modes:
            cpu = m["median"]["cpu_us"]
            cells = "  ".join(f"{_cpu_cell(cpu, key):>16}" for key, _ in GROUPS)
            lines.append(f"  {m['label'][:56]:<56} {cells}")
    lines.append("")
    lines.append("targets (issue 4, item 3):")
    for check in results.get("targets", []):
        lines.append(f"  {check['target']:<62} need >= {check['minimum']:g}x  "
                     f"got {_fmt_ratio(check.get('ratio')):>7}  {_status(check)}")
    return "\n".join(lines)


GROUP_COLOURS = ["#d1495b", "#2e86ab", "#66a182", "#edae49", "#8d6a9f"]


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = [m for m in results["modes"] if m["median"].get("qps")]
    groups = list(dict.fromkeys(m["group"] for m in modes))
    colour = {g: GROUP_COLOURS[i % len(GROUP_COLOURS)] for i, g in enumerate(groups)}
    fig, ax = plt.subplots(figsize=(11, 0.42 * len(modes) + 1.8))
    ys = list(range(len(modes)))[::-1]
    values = [m["median"]["qps"] for m in modes]
    ax.barh(ys, values, color=[colour[m["group"]] for m in modes])
    ax.set_yticks(ys)
    ax.set_yticklabels([m["label"] for m in modes], fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("queries per second (log scale, median)")
    for y, m in zip(ys, modes):
        ratio = m.get("ratio_native")
        text = f" {m['median']['qps']:,.0f}" + (f"  ({ratio:.2f}x native)" if ratio else "")
        ax.text(m["median"]["qps"], y, text, va="center", fontsize=7)
    ax.set_xlim(right=max(values) * 5)
    native = next((m["median"]["qps"] for m in modes if m["key"] == NATIVE_KEY), None)
    if native:
        ax.axvline(native, color="#444444", linestyle="--", linewidth=0.8)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colour[g]) for g in groups]
    ax.legend(handles, groups, loc="lower right", fontsize=7)
    machine = results["machine"]
    ax.set_title(f"qail-daemon vs peers: SELECT id, name FROM users LIMIT $1 (10/5/1)\n"
                 f"{machine.get('cpu', '')}, {machine.get('cores', '')} cores, "
                 f"{machine.get('postgresql', '')}", fontsize=9)
    ax.grid(axis="x", which="both", alpha=0.25)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def checkout_markdown(results: dict[str, Any]) -> list[str]:
    """The pool-checkout section: latency and fairness with many waiters."""
    checkout = results.get("checkout") or {}
    runs = checkout.get("runs") or []
    if not runs:
        return []
    lines = ["", "### Pool checkout under many waiters", "",
             f"{checkout['clients']:,} client connections to one daemon (pool "
             f"{checkout['pool']}), each keeping one `SELECT id, name FROM users LIMIT 5` in "
             "flight, so nearly every request waits for a connection "
             "(examples/checkout_waiters.rs, Rust clients). Shared: statements share "
             "connections, then queue; exclusive: each needs a connection of its own (a "
             "`timeout_ms`, as transactions and pipelines do). Served in arrival order, the "
             "tail stays close to the median and every client gets through about as often.", "",
             "| Requests | Queries/s | p50 | p99 | p99.9 | max | requests per client "
             "(min / median / max) |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for r in runs:
        lines.append(
            f"| {'exclusive' if r['exclusive'] else 'shared'} | {r['qps']:,.0f} "
            f"| {r['p50_us'] / 1000:.1f} ms | {r['p99_us'] / 1000:.1f} ms "
            f"| {r['p999_us'] / 1000:.1f} ms | {r['max_us'] / 1000:.1f} ms "
            f"| {r['per_client_min']} / {r['per_client_median']} / {r['per_client_max']} |")
    return lines


def memory_chart(results: dict[str, Any], path: Path) -> bool:
    mem = results.get("memory") or {}
    points = mem.get("points")
    if not points:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    xs = [p["connections"] for p in points]
    ys = [p["rss_kib"] / 1024 for p in points]
    ax.plot(xs, ys, marker="o", color=GROUP_COLOURS[0])
    ax.set_xlabel("idle client connections held")
    ax.set_ylabel("daemon VmRSS (MiB)")
    ax.set_title(f"qail-daemon RSS vs idle connections: "
                 f"{mem.get('kib_per_connection', 0):.1f} KiB per connection", fontsize=9)
    ax.grid(alpha=0.3)
    ax.set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write(results: dict[str, Any], out_dir: Path, stem: str) -> list[Path]:
    """Writes STEM.png (+ STEM-memory.png), STEM.md and STEM.json into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    try:
        png = out_dir / f"{stem}.png"
        chart(results, png)
        written.append(png)
        mem_png = out_dir / f"{stem}-memory.png"
        if memory_chart(results, mem_png):
            written.append(mem_png)
    except ImportError as exc:
        results.setdefault("failures", []).append(f"no chart: matplotlib unavailable ({exc})")
    md = out_dir / f"{stem}.md"
    md.write_text(markdown(results))
    written.append(md)
    js = out_dir / f"{stem}.json"
    js.write_text(json.dumps(results, indent=2) + "\n")
    written.append(js)
    return written


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: report.py RESULTS.json  (rewrites the .md and .png beside it)")
    source = Path(sys.argv[1])
    loaded = json.loads(source.read_text())
    add_ratios(loaded)
    for path in write(loaded, source.parent, source.stem):
        print(path)
    print(console_table(loaded))
