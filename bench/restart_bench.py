"""Restart time after kill -9, at 1 M and 10 M assertions, with default checkpoints.

For each size N:

1. A child process (``bench._child build``) opens a fresh data dir with the DEFAULT
   checkpoint settings and ``fsync="always"`` and submits ``RecordType.BATCH``
   records of 1,000 assertions (32 in flight).  Once N assertions are acknowledged it
   holds back further checkpoints (waiting for one in progress) and keeps writing;
   when the next checkpoint falls due (replay debt at its budget: the worst moment
   to crash) it says so and the parent ``kill -9``s it while it is writing.
2. The killed directory is restarted twice, each time by a fresh process
   (``bench._child restart``) that only restarts:

   - ``process crash``: the directory as kill -9 left it.  SQLite's own WAL file
     survives a process crash (it is in the page cache), so the state already holds
     nearly every acknowledged record and replay is short.
   - ``power loss``: a copy of the directory with SQLite's ``-wal``/``-shm`` files
     removed, i.e. the state rolled back to the last completed checkpoint (the
     engine checkpoints with ``wal_checkpoint(TRUNCATE)``, and the build child stops
     the background copy of SQLite's WAL before its last checkpoint, so the main
     database file is exactly that checkpoint; the copy must pass SQLite's
     ``quick_check`` or the bench stops: a malformed copy would be a broken model of
     a power loss, not a result).  Replay covers everything since that
     checkpoint: the worst case the checkpoint budget has to bound.

Measured: process start to ready (wall clock in the parent, from spawning the child to
its "ready" line: interpreter start, imports, Engine(), recover(), start()), Engine()
to ready inside the child, records replayed, and memory: VmHWM at ready (the peak so
far, so it covers replay) against VmRSS after a few seconds of steady-state load
(16 writers + 1 reader on the recovered engine).

Run: ``python -m bench.restart_bench [--sizes 1000000,10000000] [--quick] [--json F]``.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from typing import Any

from ._common import (
    MiB,
    Report,
    Target,
    base_parser,
    bench_dir,
    command_line,
    dir_size_bytes,
    machine_info,
    print_machine,
)

MODULE = "bench.restart_bench"
CHILD = [sys.executable, "-m", "bench._child"]
RESTART_TIMEOUT_SECONDS = 600.0  # a restart child that takes longer is a failure


class ChildProcess:
    """A ``bench._child`` process whose JSON lines are read with a deadline."""

    def __init__(self, args: list[str]) -> None:
        # stderr goes to a file: a pipe nobody reads would block a chatty child.
        self.stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed in _close
        self.t_spawn = time.monotonic()
        self.proc = subprocess.Popen(
            [*CHILD, *args], stdout=subprocess.PIPE, stderr=self.stderr, text=True,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

    def stderr_tail(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read()[-2000:]

    def _close(self) -> None:
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.stderr.close()

    def read_until(self, key: str, timeout_seconds: float,
                   on_line: Any = None) -> tuple[dict[str, Any], float]:
        """Read lines until one has ``key``; return it and the monotonic time it came."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout_seconds
        while True:  # bounded by the deadline
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {key!r} line from the child within "
                                   f"{timeout_seconds:.0f}s")
            ready, _, _ = select.select([self.proc.stdout], [], [], min(remaining, 5.0))
            if not ready:
                continue
            line = self.proc.stdout.readline()
            now = time.monotonic()
            if not line:
                raise RuntimeError(f"the child exited (rc={self.proc.wait(10)}) before "
                                   f"{key!r}: {self.stderr_tail()}")
            obj = json.loads(line)
            if "error" in obj:
                raise RuntimeError(f"the child failed: {obj['error']}")
            if on_line is not None:
                on_line(obj)
            if key in obj:
                return obj, now

    def kill9(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)
        self._close()

    def wait(self, timeout_seconds: float) -> None:
        try:
            self.proc.wait(timeout_seconds)
        finally:
            if self.proc.poll() is None:
                self.kill9()
            self._close()


def build_and_kill(data_dir: str, target_ops: int, *, ops_per_record: int, fsync: str,
                   checkpoints: str, inflight: int, kill_at: str = "checkpoint-due",
                   verbose: bool = True) -> dict[str, Any]:
    """Run a build child until ``target_ops`` are acknowledged, then kill -9 it."""
    report_every = max(ops_per_record, min(1_000_000, target_ops // 10))
    child = ChildProcess(["build", "--data-dir", data_dir, "--target-ops", str(target_ops),
                          "--ops-per-record", str(ops_per_record), "--fsync", fsync,
                          "--checkpoints", checkpoints, "--inflight", str(inflight),
                          "--report-every-ops", str(report_every), "--kill-at", kill_at])

    def progress(obj: dict[str, Any]) -> None:
        if verbose and "ops" in obj and "killme" not in obj:
            print(f"  building {data_dir}: {obj['ops']:,} assertions acknowledged in "
                  f"{obj['seconds']:.1f}s", flush=True)
    try:
        # A generous bound: the slowest build seen writes ~5,000 assertions/s.
        info, _ = child.read_until("killme", 600 + target_ops / 2000, progress)
    finally:
        child.kill9()
    return info


def restart_once(data_dir: str, *, checkpoints: str, steady_seconds: float
                 ) -> dict[str, Any]:
    child = ChildProcess(["restart", "--data-dir", data_dir, "--checkpoints", checkpoints,
                          "--steady-seconds", str(steady_seconds)])
    try:
        ready, t_ready = child.read_until("ready", RESTART_TIMEOUT_SECONDS)
        steady, _ = child.read_until("steady", steady_seconds + 120)
        child.wait(30)
    finally:
        if child.proc.poll() is None:
            child.kill9()
    return {**ready, **steady, "process_to_ready_s": t_ready - child.t_spawn}


def drop_sqlite_wal(data_dir: str) -> None:
    """Remove SQLite's WAL and index files, then check that the database file alone is
    consistent (it is the last checkpoint: see the module docstring)."""
    db = os.path.join(data_dir, "state.sqlite3")

    def remove_wal_files() -> None:
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(db + suffix)

    remove_wal_files()
    conn = sqlite3.connect(db)
    try:
        verdict = conn.execute("PRAGMA quick_check").fetchone()[0]
    finally:
        conn.close()
    remove_wal_files()  # opening the file made them again
    if verdict != "ok":
        raise RuntimeError(f"the power-loss copy of {data_dir} is not a consistent "
                           f"database ({verdict}): the simulation is broken")


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0], MODULE)
    p.add_argument("--sizes", default="1000000",
                   help="comma-separated database sizes in assertions (default: 1000000)")
    p.add_argument("--quick", action="store_true",
                   help="sizes 100000 and 200000 and 1 s of steady load (about a minute)")
    p.add_argument("--kill-at", default="checkpoint-due", choices=["checkpoint-due", "target"],
                   help="kill once the size is reached and the next checkpoint falls due "
                        "(worst case), or as soon as the size is reached "
                        "(default: checkpoint-due)")
    p.add_argument("--steady-seconds", type=float, default=3.0,
                   help="steady-state load after the restart, for its RSS (default: 3)")
    args = p.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",") if x]
    steady = args.steady_seconds
    if args.quick:
        sizes, steady = [100_000, 200_000], 1.0
    report = Report("restart", command_line(MODULE, argv))
    rows: list[dict[str, Any]] = []
    with bench_dir(args.dir, args.keep, "stemedb-bench-restart-") as root:
        info = machine_info(root)
        print_machine(info)
        for n in sizes:
            d = os.path.join(root, f"db-{n}")
            t0 = time.monotonic()
            killed = build_and_kill(d, n, ops_per_record=1000, fsync="always",
                                    checkpoints="default", inflight=32,
                                    kill_at=args.kill_at)
            build_s = time.monotonic() - t0
            size_bytes = dir_size_bytes(d)
            d_pl = d + "-powerloss"
            shutil.copytree(d, d_pl)
            drop_sqlite_wal(d_pl)
            for mode, path in (("process crash", d), ("power loss", d_pl)):
                r = restart_once(path, checkpoints="default", steady_seconds=steady)
                peak, rss = r["hwm_ready_mib"], r.get("rss_steady_mib", float("nan"))
                rows.append({
                    "assertions": killed["ops"], "mode": mode,
                    "killed_when_ckpt_due": killed.get("checkpoint_was_due", False),
                    "db_mib": round(size_bytes / MiB),
                    "build_s": round(build_s, 1),
                    "replayed_records": r["records"],
                    "replayed_mib": r["bytes"] / MiB,
                    "process_to_ready_s": r["process_to_ready_s"],
                    "engine_to_ready_s": r["engine_to_ready_s"],
                    "peak_rss_at_ready_mib": peak, "steady_rss_mib": rss,
                    "peak_minus_steady_mib": peak - rss,
                })
                print(f"  restarted {path} ({mode}): ready in "
                      f"{r['process_to_ready_s']:.2f}s, {r['records']} records replayed",
                      flush=True)
            if not args.keep:
                shutil.rmtree(d, ignore_errors=True)
                shutil.rmtree(d_pl, ignore_errors=True)
    report.table("Restart after kill -9 (default checkpoints, built with fsync=always, "
                 "BATCH records of 1000)", rows)
    for r in rows:
        report.targets.append(Target(
            f"ready at {r['assertions']:,} ({r['mode']})", "<= 2 s (process start to ready)",
            f"{r['process_to_ready_s']:.2f} s", r["process_to_ready_s"] <= 2.0))
    for mode in ("process crash", "power loss"):
        by = [r for r in rows if r["mode"] == mode]
        if len(by) >= 2:
            small, big = by[0], by[-1]
            growth = big["process_to_ready_s"] / max(small["process_to_ready_s"], 1e-9)
            report.targets.append(Target(
                f"restart does not grow with size ({mode})",
                f"{big['assertions']:,} vs {small['assertions']:,}: about 1x",
                f"{growth:.2f}x", growth <= 1.5))
    for r in rows:
        report.targets.append(Target(
            f"replay memory at {r['assertions']:,} ({r['mode']})",
            "peak <= steady + 64 MiB",
            f"{r['peak_rss_at_ready_mib']:.0f} vs {r['steady_rss_mib']:.0f} MiB",
            r["peak_minus_steady_mib"] <= 64))
    report.emit(args.json, info)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
