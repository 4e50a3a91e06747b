"""Shared harness of the benchmark scripts in this folder (not part of the ``safedispatch`` package).

Each benchmark runs every thread count in its own subprocess, because OMP_NUM_THREADS,
MKL_NUM_THREADS, OPENBLAS_NUM_THREADS and NUMBA_NUM_THREADS are read only when numpy and numba are
first imported. This module holds what the scripts share: the command line, the parent's loop over
thread-count subprocesses, the child's loop over cases (skips, warnings, CPU contention), machine
and version information, atomic writing of the result files, and table and Markdown helpers.

The scripts run as ``python benchmarks/X.py`` and import this module by putting their own folder
on ``sys.path``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from importlib import metadata
from pathlib import Path

from rich.console import Console
from rich.table import Table

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")

#: share of the machine's CPU time taken by other processes during a run above which the report
#: warns that the figures are disturbed
FOREIGN_CPU_NOTE = 0.10

RESULTS_DIR = Path(__file__).resolve().parent / "results"


# ----------------------------------------------------------------------------- command line


def parse_args(doc: str, argv, *, quick_help: str, default_cases, stem: str, seed_help: str):
    """The command line every benchmark shares.

    Args:
        doc: The script's module docstring (its first paragraph is the description).
        argv: Arguments, or None for ``sys.argv[1:]``.
        quick_help: Help of ``--quick``.
        default_cases: Default of ``--cases``.
        stem: Name of the result files (``<stem>.json``, ``<stem>.md``).
        seed_help: Help of ``--seed``.
    """
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], metavar="N",
                    help="thread counts, one subprocess each; the first is the headline (default: 1 2)")
    ap.add_argument("--quick", action="store_true", help=quick_help)
    ap.add_argument("--cases", nargs="+", default=list(default_cases), metavar="CASE",
                    help=f"cases for sd.load_case (default: {' '.join(default_cases)})")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR,
                    help=f"folder for {stem}.json and {stem}.md (default: benchmarks/results)")
    ap.add_argument("--seed", type=int, default=0, help=seed_help)
    ap.add_argument("--child-json", help=argparse.SUPPRESS)  # internal: a child's output file
    args = ap.parse_args(argv)
    if any(n < 1 for n in args.threads):
        ap.error(f"--threads: expected counts >= 1, got {args.threads}")
    return args


# ----------------------------------------------------------------------------- child process


def cpu_snapshot() -> tuple | None:
    """(machine busy CPU seconds, this process's CPU seconds, monotonic time); None off Linux."""
    try:
        with open("/proc/stat") as f:
            vals = [int(x) for x in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
    except (OSError, ValueError):
        return None
    t = os.times()
    busy = (sum(vals) - vals[3] - vals[4]) / os.sysconf("SC_CLK_TCK")
    return busy, t.user + t.system, time.monotonic()


def foreign_cpu(before: tuple | None, after: tuple | None) -> float | None:
    """Share of the machine's CPU time used by other processes between two snapshots: the load
    that competed with the measurement (a concurrent test run, say)."""
    if before is None or after is None:
        return None
    wall = after[2] - before[2]
    other = (after[0] - before[0]) - (after[1] - before[1])
    return max(0.0, other) / (wall * (os.cpu_count() or 1)) if wall > 0 else None


def run_child(args, bench_case, extra=None) -> int:
    """Measure every case at one thread count and write the rows as JSON to ``args.child_json``.

    Args:
        args: The parsed command line (``threads`` holds the one thread count).
        bench_case: ``bench_case(name, console)`` -> the case's rows (a list); may raise
            ``sd.BackendUnavailableError``, which skips the case.
        extra: Optional function of no arguments returning more fields of the result, placed
            after ``"threads"`` (called after the cases ran).
    """
    import numba

    import safedispatch as sd

    n = args.threads[0]
    console = Console(stderr=True, log_path=False)
    cpu_before = cpu_snapshot()
    rows, skipped = [], []
    with warnings.catch_warnings(record=True) as caught:
        # "default" keeps one record per source line, so a warning in a timing loop shows once
        warnings.simplefilter("default")
        for name in args.cases:
            try:
                rows += bench_case(name, console)
            except sd.BackendUnavailableError as exc:
                console.log(f"[yellow]{name}: skipped: {exc}[/yellow]")
                skipped.append({"case": name, "reason": str(exc)})
    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel numba kernel ran (e.g. every case skipped)
        layer = None
    seen, warns = set(), []
    for w in caught:
        key = (w.category.__name__, str(w.message)[:300], f"{w.filename}:{w.lineno}")
        if key not in seen:
            seen.add(key)
            warns.append(dict(zip(("category", "message", "where"), key)))
    result = {"threads": n, **(extra() if extra else {}), "numba_threads": numba.get_num_threads(),
              "numba_threading_layer": layer, "env": {v: os.environ.get(v) for v in THREAD_VARS},
              "foreign_cpu_share": foreign_cpu(cpu_before, cpu_snapshot()),
              "rows": rows, "skipped": skipped, "warnings": warns}
    Path(args.child_json).write_text(json.dumps(result))
    return 0


# ----------------------------------------------------------------------------- parent process


def machine_info(version_of) -> dict:
    """Platform, CPU and package versions, without importing the measured packages."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    versions = {}
    for pkg in version_of:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "platform": platform.platform(), "python": platform.python_version(), "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "versions": versions,
    }


def start_parent(args, version_of, width: int) -> tuple[Console, float, dict, list[int]]:
    """The parent's console, start time, machine information and thread counts.

    Args:
        args: The parsed command line.
        version_of: Packages whose versions the report lists.
        width: Console width when stdout is not a terminal (rich falls back to 80 columns, too
            narrow for the tables).

    Returns:
        ``(console, t_start, machine, threads)``; ``threads`` keeps the order of ``--threads``
        (headline first) without repeats.
    """
    console = Console(width=None if sys.stdout.isatty() else width)
    t_start = time.perf_counter()
    machine = machine_info(version_of)
    threads = list(dict.fromkeys(args.threads))  # keep the order (headline first), drop repeats
    if machine["cpu_affinity"] and max(threads) > machine["cpu_affinity"]:
        console.print(f"[yellow]note: {max(threads)} threads requested, {machine['cpu_affinity']} CPUs usable; "
                      "the figures will show oversubscription[/yellow]")
    return console, t_start, machine, threads


def run_threads(script: str | Path, args, threads: list[int], console: Console) -> list[dict] | int:
    """Run ``script`` once per thread count in a subprocess with the thread env vars set.

    Returns:
        The children's results in the order of ``threads``, or an exit status (the failed
        child's, or 130 when interrupted) when no result file should be written.
    """
    runs = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for n in threads:
                console.rule(f"{n} thread{'s' if n != 1 else ''}")
                out = Path(tmp) / f"threads{n}.json"
                cmd = [sys.executable, str(Path(script).resolve()), "--threads", str(n), "--cases", *args.cases,
                       "--seed", str(args.seed), "--child-json", str(out)] + (["--quick"] if args.quick else [])
                env = {**os.environ, **{var: str(n) for var in THREAD_VARS}}
                proc = subprocess.run(cmd, env=env)
                if proc.returncode == 130:  # the child saw the Ctrl-C first
                    raise KeyboardInterrupt
                if proc.returncode != 0:
                    console.print(f"[red]the {n}-thread run failed (exit {proc.returncode}); nothing written[/red]")
                    return proc.returncode
                runs.append(json.loads(out.read_text()))
    except KeyboardInterrupt:
        console.print("[yellow]interrupted; no result file was written[/yellow]")
        return 130
    return runs


def parent_or_child(script: str | Path, args, child, version_of, width: int):
    """The start every benchmark's ``main`` shares.

    As a child (the internal ``--child-json``): run ``child(args)`` and return its exit status
    (130 when interrupted). As the parent: start (:func:`start_parent`), run every thread count
    in its own subprocess (:func:`run_threads`) and return ``(console, t_start, machine,
    threads, runs)``, or an exit status when no result file should be written.
    """
    if args.child_json:
        try:
            return child(args)
        except KeyboardInterrupt:
            return 130
    console, t_start, machine, threads = start_parent(args, version_of, width=width)
    runs = run_threads(script, args, threads, console)
    if isinstance(runs, int):
        return runs
    return console, t_start, machine, threads, runs


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and ``os.replace``,
    so an interruption leaves either the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes the file private (0600); give it the mode a plain open() would
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_results(console: Console, out: Path, stem: str, report: dict, md: str) -> None:
    """Write ``<stem>.json`` and ``<stem>.md`` atomically to ``out`` and say so."""
    write_atomic(out / f"{stem}.json", json.dumps(report, indent=2) + "\n")
    write_atomic(out / f"{stem}.md", md)
    console.print(f"wrote {out / f'{stem}.json'} and {out / f'{stem}.md'} ({report['wall_s']:.0f} s)")


# ----------------------------------------------------------------------------- tables


def fmt_ratio(x: float) -> str:
    return f"{x:,.0f}x" if x >= 10 else f"{x:.2f}x"


def cells(values: list, fmt) -> str:
    """Headline value, the other thread counts in parentheses."""
    head = fmt(values[0]) if values[0] is not None else "-"
    rest = [fmt(v) if v is not None else "-" for v in values[1:]]
    return head + (f" ({', '.join(rest)})" if rest else "")


def threads_title(threads: list[int]) -> str:
    """The thread counts for a table title: the headline, the others in parentheses."""
    return (f"{threads[0]} thread (in parentheses: {', '.join(map(str, threads[1:]))})"
            if len(threads) > 1 else f"{threads[0]} thread(s)")


def print_table(console: Console, title: str, head: list[str], rows: list[list[str]]) -> None:
    """A rich table: the ``case`` column left-aligned, the others right-aligned."""
    table = Table(title=title)
    for h in head:
        table.add_column(h, justify="left" if h == "case" else "right")
    for r in rows:
        table.add_row(*r)
    console.print(table)


def print_warnings(console: Console, runs: list[dict]) -> None:
    """The warnings the children recorded, one line each."""
    for run in runs:
        for w in run["warnings"]:
            console.print(f"[yellow]warning ({run['threads']} thr): {w['category']} at {w['where']}: "
                          f"{w['message']}[/yellow]")


def md_table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def md_intro(report: dict, title: str) -> list[str]:
    """The Markdown report's title, date, machine and versions lines."""
    m = report["machine"]
    v = ", ".join(f"{k} {x}" for k, x in m["versions"].items() if x)
    return [
        f"# {title}", "",
        f"Date: {report['date']}. Wall time: {report['wall_s']:.0f} s. Mode: {report['settings']['mode']}.", "",
        f"Machine: {m['cpu']}, {m['cpu_count']} CPUs ({m['cpu_affinity']} usable), {m['platform']}, "
        f"Python {m['python']}.", "",
        f"Versions: {v}.", "",
    ]


def md_threads(threads: list[int]) -> str:
    """``"Each cell: 1 thread (in parentheses: 2 threads)"`` without the leading words."""
    return (f"{threads[0]} thread"
            + (f" (in parentheses: {', '.join(map(str, threads[1:]))} threads)" if len(threads) > 1 else ""))


def md_notes(report: dict) -> list[str]:
    """The Markdown report's notes and warnings sections (empty when there are none)."""
    md = []
    # one line per warning, with the thread counts whose runs raised it (each run is a subprocess
    # and records its own copy)
    warns: dict = {}
    for run in report["runs"]:
        for w in run["warnings"]:
            thr = warns.setdefault((w["category"], w["where"], w["message"]), [])
            if run["threads"] not in thr:
                thr.append(run["threads"])
    if report["notes"]:
        md += ["## Notes", ""] + [f"- {n}" for n in report["notes"]] + [""]
    if warns:
        md += ["## Warnings raised during the run", ""]
        md += [f"- {cat} at `{where}` (threads: {', '.join(map(str, thr))}): {msg}"
               for (cat, where, msg), thr in warns.items()]
        md += [""]
    return md
