"""Shared pieces of the benchmarks: tables, JSON output, percentiles, machine facts.

Every benchmark builds a list of rows (dicts with the same keys), prints them as a
table (``rich`` on a terminal, aligned plain text otherwise, so a pasted log reads
the same) and, with ``--json PATH``, writes the rows, the targets and the machine
description to PATH.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

MiB = 1024 * 1024


# --------------------------------------------------------------------- statistics --
def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (q in 0..100)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def latency_summary_ms(latencies_s: list[float]) -> dict[str, float]:
    s = sorted(latencies_s)
    return {"p50_ms": percentile(s, 50) * 1e3, "p99_ms": percentile(s, 99) * 1e3}


def latency_tail_ms(latencies_s: list[float]) -> dict[str, float]:
    """p50 and p99, and p99.9: the tail that a shared disk's other syncs make."""
    return {**latency_summary_ms(latencies_s),
            "p999_ms": percentile(sorted(latencies_s), 99.9) * 1e3}


def rounds_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several rounds of one configuration (each a :func:`wrk`-like dict with ``per_s``,
    ``p50_ms``, ``p99_ms``, ``errors``): the median rate with the slowest and fastest,
    the latencies of the round nearest the median, and every round's errors summed."""
    rates = sorted(r["per_s"] for r in runs)
    median = statistics.median(rates)
    mid = min(runs, key=lambda r: abs(r["per_s"] - median))
    return {"runs": len(runs), "per_s": median, "slowest_per_s": rates[0],
            "fastest_per_s": rates[-1], "p50_ms": mid["p50_ms"], "p99_ms": mid["p99_ms"],
            "errors": sum(r["errors"] for r in runs)}


class Sampler:
    """Calls ``probe()`` every ``interval_seconds`` on a thread of its own, from
    ``delay_seconds`` after :meth:`start` for at most ``duration_seconds``, and keeps
    what it returns (a tuple of numbers, e.g. an apply lag in bytes and in seconds).
    A probe that raises ``OSError`` (a server busy or gone) is skipped, not fatal."""

    def __init__(self, probe: Callable[[], tuple[float, ...]], interval_seconds: float,
                 delay_seconds: float = 0.0, duration_seconds: float = 3600.0) -> None:
        self.probe = probe
        self.interval = interval_seconds
        self.delay = delay_seconds
        self.duration = duration_seconds
        self.samples: list[tuple[float, ...]] = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        begin = time.monotonic() + self.delay
        end = begin + self.duration
        if self._stop.wait(self.delay):
            return
        nxt = begin
        while not self._stop.is_set() and time.monotonic() < end:  # bounded by ``end``
            try:
                self.samples.append(self.probe())
            except OSError:
                self.errors += 1
            nxt += self.interval
            self._stop.wait(max(0.0, nxt - time.monotonic()))

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def stop(self, timeout_seconds: float = 30.0) -> list[tuple[float, ...]]:
        self._stop.set()
        self._thread.join(timeout_seconds)
        return self.samples

    def column(self, i: int) -> list[float]:
        return sorted(s[i] for s in self.samples)


# --------------------------------------------------------------------- results -----
@dataclass
class Target:
    """One target from the issue, and whether this run met it."""

    name: str
    goal: str
    measured: str
    met: bool

    def as_row(self) -> dict[str, Any]:
        return {"target": self.name, "goal": self.goal, "measured": self.measured,
                "met": "yes" if self.met else "NO"}


@dataclass
class Report:
    bench: str
    command: str
    tables: list[tuple[str, list[dict[str, Any]]]] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def table(self, title: str, rows: list[dict[str, Any]]) -> None:
        self.tables.append((title, rows))

    def emit(self, json_path: str | None, machine: dict[str, Any]) -> None:
        for title, rows in self.tables:
            print_table(title, rows)
        if self.targets:
            print_table("Targets", [t.as_row() for t in self.targets])
        for note in self.notes:
            print(f"note: {note}")
        print(f"load average {os.getloadavg()[0]:.2f} at the end (2 CPUs)")
        if json_path:
            machine = {**machine, "loadavg_1m_at_end": round(os.getloadavg()[0], 2)}
            doc = {"bench": self.bench, "command": self.command, "machine": machine,
                   "unix_time": time.time(),
                   "tables": {title: rows for title, rows in self.tables},
                   "targets": [t.as_row() for t in self.targets], "notes": self.notes}
            os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
            with open(json_path, "w") as f:
                json.dump(doc, f, indent=2, default=str)
                f.write("\n")
            print(f"wrote {json_path}")


def fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 100:
            return f"{v:.1f}"
        return f"{v:.3g}" if abs(v) < 1 else f"{v:.2f}"
    if isinstance(v, int):
        return f"{v:,}"
    return "-" if v is None else str(v)


def print_table(title: str, rows: list[dict[str, Any]]) -> None:
    if not rows:
        print(f"{title}: (no rows)")
        return
    cols = list(rows[0])
    for r in rows[1:]:
        cols.extend(k for k in r if k not in cols)
    cells = [[fmt(r.get(c)) for c in cols] for r in rows]
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        t = Table(title=title)
        for c in cols:
            t.add_column(c, justify="left" if c in _TEXT_COLUMNS else "right")
        for row in cells:
            t.add_row(*row)
        Console().print(t)
        return
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.ljust(w) if c in _TEXT_COLUMNS else v.rjust(w)
                         for v, w, c in zip(values, widths, cols, strict=True)).rstrip()

    print(f"\n{title}")
    print(line(cols))
    print(line(["-" * w for w in widths]))
    for row in cells:
        print(line(row))
    sys.stdout.flush()


_TEXT_COLUMNS = {"system", "target", "goal", "measured", "met", "mode", "record kind",
                 "what", "load", "fsync", "note", "client"}


# --------------------------------------------------------------------- machine -----
def fs_type(path: str) -> str:
    """The filesystem type of the mount holding ``path`` (from /proc/self/mountinfo)."""
    path = os.path.realpath(path)
    best, best_type = "", "unknown"
    with contextlib.suppress(OSError), open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            mount_point = left.split()[4]
            if (path == mount_point or path.startswith(mount_point.rstrip("/") + "/")
                    or mount_point == "/") and len(mount_point) >= len(best):
                best, best_type = mount_point, right.split()[0]
    return best_type


def machine_info(bench_dir: str) -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    return {"nproc": os.cpu_count(), "cpu": cpu, "mem_gib": round(mem_kib / 2**20, 1),
            "kernel": platform.release(), "python": platform.python_version(),
            "bench_dir": bench_dir, "bench_dir_fs": fs_type(bench_dir),
            "sqlite": __import__("sqlite3").sqlite_version,
            "loadavg_1m_at_start": round(os.getloadavg()[0], 2),
            "stemedb_commit": _git_head()}


def _git_head() -> str:
    """The commit the engine code comes from, and whether src/ has local changes."""
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
    try:
        head = subprocess.run(["git", "-C", src, "rev-parse", "--short", "HEAD"], timeout=10,
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", src, "status", "--porcelain", "--", "."],
                               timeout=10, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+local changes" if dirty else "")


def print_machine(info: dict[str, Any]) -> None:
    print(f"machine: {info['nproc']} CPUs ({info['cpu']}), {info['mem_gib']} GiB, "
          f"Linux {info['kernel']}, Python {info['python']}, SQLite {info['sqlite']}; "
          f"bench dir {info['bench_dir']} on {info['bench_dir_fs']}; "
          f"load average {info['loadavg_1m_at_start']} at start; "
          f"stemedb at {info['stemedb_commit']}")


# --------------------------------------------------------------------- memory ------
def proc_status_kib(field_name: str, pid: int | str = "self") -> int:
    """VmRSS / VmHWM / ... of a process, in KiB (0 if unreadable)."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    return 0


def maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def dir_size_bytes(path: str) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(root, name)).st_blocks * 512
    return total


# --------------------------------------------------------------------- CLI --------
def base_parser(description: str, module: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m {module}", description=description)
    p.add_argument("--dir", default=None,
                   help="directory for data files (default: a fresh temp dir under /tmp)")
    p.add_argument("--json", default=None, metavar="PATH",
                   help="also write the results as JSON to PATH (default: none)")
    p.add_argument("--keep", action="store_true",
                   help="keep the data directories afterwards (default: delete them)")
    return p


@contextlib.contextmanager
def bench_dir(parent: str | None, keep: bool, prefix: str) -> Iterator[str]:
    if parent:
        os.makedirs(parent, exist_ok=True)
    d = tempfile.mkdtemp(prefix=prefix, dir=parent or "/tmp")
    try:
        yield d
    finally:
        if not keep:
            shutil.rmtree(d, ignore_errors=True)


def command_line(module: str, argv: Sequence[str] | None = None) -> str:
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join(["python -m", module, *args])


def run(cmd: Sequence[str], timeout: float = 60.0, check: bool = True,
        **kw: Any) -> subprocess.CompletedProcess[str]:
    """subprocess.run with a timeout always set and text output captured."""
    res = subprocess.run(list(cmd), timeout=timeout, check=False, text=True,
                         capture_output=True, **kw)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with {res.returncode}: "
                           f"{(res.stderr or res.stdout)[-1500:]}")
    return res


def sample_assertion(i: int) -> dict[str, Any]:
    """A realistic small assertion (about 150 bytes of JSON)."""
    return {"subject": f"urn:example:sensor/{i % 1000}", "predicate": "reading",
            "object": {"celsius": 20 + i % 17, "seq": i}, "author": f"writer-{i % 16}",
            "confidence": 0.9}


def encode_sample(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


# ------------------------------------------------------------ child server processes --
def wait_until_serving(proc: subprocess.Popen[bytes], serving: Callable[[], bool],
                       what: str, log_path: str, timeout_seconds: float) -> None:
    """Poll ``serving()`` every 0.1 s until it is true; raise if ``proc`` exits first
    or ``timeout_seconds`` pass.  ``serving`` returns False (or raises OSError, e.g. a
    refused connection) while the server is not up yet."""
    deadline = time.monotonic() + timeout_seconds
    while True:  # bounded by the deadline
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}; see {log_path}")
        with contextlib.suppress(OSError):
            if serving():
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not serving after {timeout_seconds}s; see {log_path}")
        time.sleep(0.1)


def stop_process_group(proc: subprocess.Popen[bytes], timeout_seconds: float) -> None:
    """SIGTERM the process group ``proc`` leads (started with ``start_new_session``),
    wait, SIGKILL it if it lingers, then SIGKILL whatever of the group is left (strace
    may exit before its tracee)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout_seconds)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout_seconds)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
