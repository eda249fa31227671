"""WAL replay throughput: records/s, ops/s and MB/s, checkpoints disabled.

For each record kind (single-assertion ``ASSERT`` records, and ``BATCH`` records of
1,000 assertions) a child process writes a WAL with checkpoints disabled
(``checkpoint_wal_bytes=10**15, replay_budget_seconds=1e9,
checkpoint_interval_seconds=1e9``; built with ``fsync="never"`` to save time: the
bytes on disk are the same) and is ``kill -9``ed while writing.

A process crash does not lose SQLite's own WAL file (it is in the page cache), so a
plain restart would find nearly everything applied and replay almost nothing.  To
measure replay, the state files (``state.sqlite3`` and its ``-wal``/``-shm``) are
removed after the kill, which is what a power loss before the first checkpoint
leaves: the whole WAL is replayed from segment 1.  A fresh process then times
``recover()``.

Each replay runs ``--runs`` times (default 3), each time on a fresh copy of the
killed directory, and the table gives the median run with the slowest and fastest
beside it: on a shared 2-core machine the same replay has measured anywhere between
0.85 and 1.55 s of CPU time from one run to the next, so one run says little.  The
target is judged on the median.

With ``--callgrind`` each WAL is also replayed once under ``valgrind --tool=callgrind``
and the table gains the instructions ``recover()`` executed per record: a count, not a
time, so it is the same on a busy machine and an idle one and tells whether a change
to the replay path made it cheaper (the wall-clock rate of the same code has varied
1.7x on this machine from one minute to the next).  The count is that of a child that
recovers minus that of one that does everything else (imports, the engine's
construction, exit), with ``PYTHONHASHSEED=0``; it takes about a minute per 100,000
records.

Run: ``python -m bench.replay_bench [--assert-records 100000] [--batch-records 100]
[--callgrind]``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
from typing import Any

from ._common import (
    MiB,
    Report,
    Target,
    base_parser,
    bench_dir,
    command_line,
    machine_info,
    print_machine,
)
from .restart_bench import build_and_kill, restart_once

MODULE = "bench.replay_bench"
TARGET_RECORDS_PER_SECOND = 100_000


def remove_state(data_dir: str) -> None:
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(data_dir, "state.sqlite3" + suffix))


# A bound on one callgrind run: recover() of 100,000 records takes about a minute there.
CALLGRIND_TIMEOUT_SECONDS = 1800.0
_IREFS = re.compile(r"I\s+refs:\s+([\d,]+)")


def _recover_child(data_dir: str, skip: bool) -> None:
    """The process callgrind counts: the engine's construction and, unless ``skip``,
    its ``recover()`` (checkpoints off, as the WAL was written)."""
    from stemedb.engine import Engine

    from ._child import _config
    eng = Engine(data_dir, _config("never", "off"))
    if not skip:
        eng.recover()
        eng.close()


def callgrind_instructions(data_dir: str, *, skip_recover: bool) -> int:
    """Instructions of one ``--recover-child`` process under callgrind."""
    cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
           sys.executable, "-m", MODULE, "--recover-child", data_dir]
    if skip_recover:
        cmd.append("--skip-recover")
    done = subprocess.run(cmd, capture_output=True, text=True, check=False,
                          timeout=CALLGRIND_TIMEOUT_SECONDS,
                          env={**os.environ, "PYTHONHASHSEED": "0"})
    found = _IREFS.search(done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"callgrind run failed ({done.returncode}): {done.stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


def recover_instructions(data_dir: str) -> int:
    """recover()'s instructions on a copy of ``data_dir`` (which stays unreplayed)."""
    run_dir = f"{data_dir}-callgrind"
    shutil.copytree(data_dir, run_dir)
    try:
        base = callgrind_instructions(run_dir, skip_recover=True)
        return callgrind_instructions(run_dir, skip_recover=False) - base
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--recover-child"]:
        _recover_child(argv[1], "--skip-recover" in argv[2:])
        return 0
    p = base_parser(__doc__.splitlines()[0], MODULE)
    p.add_argument("--assert-records", type=int, default=100_000,
                   help="single-assertion records to write and replay (default: 100000)")
    p.add_argument("--batch-records", type=int, default=100,
                   help="1000-assertion batch records to write and replay (default: 100)")
    p.add_argument("--runs", type=int, default=3,
                   help="replays of each WAL, each on a fresh copy; the table gives the "
                        "median (default: 3)")
    p.add_argument("--callgrind", action="store_true",
                   help="also count recover()'s instructions per record under valgrind's "
                        "callgrind (about a minute per 100,000 records)")
    args = p.parse_args(argv)
    report = Report("replay", command_line(MODULE, argv))
    rows: list[dict[str, Any]] = []
    with bench_dir(args.dir, args.keep, "stemedb-bench-replay-") as root:
        info = machine_info(root)
        print_machine(info)
        for kind, per_record, n_records, inflight in (
                ("ASSERT (1 assertion)", 1, args.assert_records, 4096),
                ("BATCH (1000 assertions)", 1000, args.batch_records, 32)):
            if n_records <= 0:
                continue
            d = os.path.join(root, f"replay-{per_record}")
            build_and_kill(d, n_records * per_record, ops_per_record=per_record,
                           fsync="never", checkpoints="off", inflight=inflight,
                           kill_at="target", verbose=False)
            remove_state(d)
            runs = []
            for k in range(max(1, args.runs)):
                run_dir = f"{d}-run{k}"
                shutil.copytree(d, run_dir)
                runs.append(restart_once(run_dir, checkpoints="off", steady_seconds=0))
                if not args.keep:
                    shutil.rmtree(run_dir, ignore_errors=True)
            runs.sort(key=lambda r: r["replay_s"])
            r = runs[len(runs) // 2]  # the median run (of two, the slower one)
            secs = max(r["replay_s"], 1e-9)
            rates = [x["records"] / max(x["replay_s"], 1e-9) for x in runs]
            row_insns: dict[str, Any] = {}
            if args.callgrind:
                insns = recover_instructions(d)
                row_insns = {"recover_instructions": insns,
                             "instructions_per_record": insns / max(1, r["records"])}
            rows.append({
                "record kind": kind, "records": r["records"],
                "assertions": (r["records"] - 1) * per_record,  # minus the genesis record
                "wal_mib": r["bytes"] / MiB, "runs": len(runs), "replay_s": secs,
                "records_per_s": r["records"] / secs,
                "slowest_records_per_s": min(rates), "fastest_records_per_s": max(rates),
                "assertions_per_s": (r["records"] - 1) * per_record / secs,
                "mib_per_s": r["bytes"] / MiB / secs,
                "peak_rss_mib": max(x["hwm_ready_mib"] for x in runs),
                **row_insns,
            })
            if not args.keep:
                shutil.rmtree(d, ignore_errors=True)
    report.table("WAL replay into an empty state (checkpoints off, kill -9, state removed)",
                 rows)
    for r in rows:
        report.targets.append(Target(
            f"replay {r['record kind']}",
            f">= {TARGET_RECORDS_PER_SECOND:,} records/s (median of {r['runs']})",
            f"{r['records_per_s']:,.0f} records/s ({r['assertions_per_s']:,.0f} "
            f"assertions/s, {r['mib_per_s']:.1f} MiB/s; runs "
            f"{r['slowest_records_per_s']:,.0f}-{r['fastest_records_per_s']:,.0f})",
            r["records_per_s"] >= TARGET_RECORDS_PER_SECOND))
    report.emit(args.json, info)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
