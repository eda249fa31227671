"""Child processes of the restart and replay benchmarks (run with ``python -m bench._child``).

``build``   opens a data dir and writes assertions until killed, printing one JSON line
            per progress step; once ``--target-ops`` are acknowledged it stops the
            background SQLite copy, checkpoints once and then holds back the engine's
            checkpoints (so the database file stays exactly that checkpoint) and,
            when the next checkpoint falls due (the replay debt is at its budget: the
            worst moment to crash), prints ``{"killme": ...}`` and keeps writing.
``restart`` is the fresh process that only restarts: it measures Engine() to ready
            (recover() + start()), the records replayed, peak RSS (VmHWM) at ready, then
            runs a short steady-state write/read load and reports VmRSS/VmHWM again.

Every line on stdout is one JSON object; the parent reads them with a timeout.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures as cf
import functools
import json
import os
import sqlite3
import sys
import threading
import time
from typing import Any

from stemedb.engine import Engine, EngineConfig, WriteRequest, WriteResult
from stemedb.wal import RecordType

from ._common import proc_status_kib, sample_assertion

BUILD_SECONDS_MAX = 3600.0  # a build child gives up (exits) after an hour
BACKFILL_STOP_SECONDS = 60.0  # waiting for a background SQLite copy pass to finish
CHECKPOINTS_OFF = {"checkpoint_wal_bytes": 10**15, "replay_budget_seconds": 1e9,
                   "checkpoint_interval_seconds": 1e9}


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _config(fsync: str, checkpoints: str) -> EngineConfig:
    extra: dict[str, Any] = CHECKPOINTS_OFF if checkpoints == "off" else {}
    return EngineConfig(fsync=fsync, disk_reserve_bytes=0, **extra)


def build(args: argparse.Namespace) -> int:
    eng = Engine(args.data_dir, _config(args.fsync, args.checkpoints))
    eng.recover()
    eng.start()
    # Gate the engine's checkpoints so the parent can kill between two of them.
    gate = threading.Lock()
    allowed = [True]
    checkpoints = [0]
    retention = eng.retention
    assert retention is not None
    real_checkpoint = retention.checkpoint

    due_while_held = threading.Event()

    def gated_checkpoint() -> Any:
        with gate:
            if not allowed[0]:
                due_while_held.set()
                return None
            res = real_checkpoint()
            checkpoints[0] += 1
            return res

    retention.checkpoint = gated_checkpoint  # type: ignore[method-assign]
    per_record = args.ops_per_record
    kind = RecordType.BATCH if per_record > 1 else RecordType.ASSERT
    inflight: collections.deque[cf.Future[WriteResult]] = collections.deque()
    ops = records = 0
    seq = 0
    t0 = time.monotonic()
    next_report = args.report_every_ops
    announced = False
    held_since: float | None = None
    while time.monotonic() - t0 < BUILD_SECONDS_MAX:  # bounded: killed long before
        while len(inflight) < args.inflight:
            batch = [{"assert": sample_assertion(seq + k)} for k in range(per_record)]
            seq += per_record
            inflight.append(eng.submit(WriteRequest(kind, batch)))
        inflight.popleft().result()
        ops += per_record
        records += 1
        if ops >= next_report:
            next_report += args.report_every_ops
            emit({"ops": ops, "records": records, "seconds": time.monotonic() - t0,
                  "checkpoints": checkpoints[0]})
        if held_since is None and ops >= args.target_ops:
            # Freeze the database file at one engine checkpoint: the background copy
            # of SQLite's WAL stops first (a pass after the checkpoint would put later
            # pages in the file), then one checkpoint (TRUNCATE), then none.  So the
            # parent's "power loss" copy, without SQLite's WAL, is exactly that
            # checkpoint, a consistent file; a process crash keeps SQLite's WAL anyway.
            if eng._backfill is not None:
                eng._backfill.stop(BACKFILL_STOP_SECONDS)
            eng.checkpoint().result()
            with gate:
                allowed[0] = False
            held_since = time.monotonic()
        # Worst case for the restart: kill when the next checkpoint falls due (the
        # replay debt is at its budget), or after --hold-seconds-max of writes.
        if held_since is not None and not announced and (
                due_while_held.is_set() or args.kill_at == "target"
                or time.monotonic() - held_since >= args.hold_seconds_max):
            announced = True
            emit({"killme": True, "checkpoint_was_due": due_while_held.is_set(),
                  "ops": ops, "records": records,
                  "seconds": time.monotonic() - t0, "checkpoints": checkpoints[0],
                  "checkpoint_lsn": eng.checkpoint_lsn,
                  "end_lsn": eng.status()["wal"]["end_lsn"]})
    emit({"error": f"not killed within {BUILD_SECONDS_MAX}s"})
    return 1


def _row_by_id(aid: int, conn: sqlite3.Connection) -> Any:
    return conn.execute("SELECT * FROM assertions WHERE id=?", (aid,)).fetchone()


def restart(args: argparse.Namespace) -> int:
    rss_start_kib = proc_status_kib("VmRSS")
    t0 = time.monotonic()
    eng = Engine(args.data_dir, _config(args.fsync, args.checkpoints))
    rep = eng.recover()
    t_recovered = time.monotonic()
    eng.start()
    t_ready = time.monotonic()
    hwm_ready_kib = proc_status_kib("VmHWM")
    rss_ready_kib = proc_status_kib("VmRSS")
    emit({"ready": True, "engine_to_ready_s": t_ready - t0,
          "recover_s": t_recovered - t0, "replay_s": rep.seconds,
          "records": rep.records, "bytes": rep.bytes, "start_lsn": rep.start_lsn,
          "end_lsn": rep.end_lsn, "torn_tail": rep.torn_tail is not None,
          "rss_start_mib": rss_start_kib / 1024, "rss_ready_mib": rss_ready_kib / 1024,
          "hwm_ready_mib": hwm_ready_kib / 1024})
    # Steady state: a short mixed load on the recovered engine, then its RSS.
    steady: dict[str, Any] = {}
    if args.steady_seconds > 0:
        stop = time.monotonic() + args.steady_seconds
        writes = [0]

        def writer(k: int) -> None:
            i = k * 10**9
            while time.monotonic() < stop:  # bounded by --steady-seconds
                eng.submit(WriteRequest(RecordType.ASSERT,
                                        [{"assert": sample_assertion(i)}])).result()
                i += 1
                writes[0] += 1

        def reader() -> None:
            n = 1
            while time.monotonic() < stop:  # bounded by --steady-seconds
                eng.read(functools.partial(_row_by_id, n)).result()
                n = n * 7919 % 1_000_003 + 1
        threads = [threading.Thread(target=writer, args=(k,)) for k in range(16)]
        threads.append(threading.Thread(target=reader))
        for t in threads:
            t.start()
        for t in threads:
            t.join(args.steady_seconds + 60)
        steady = {"steady_writes": writes[0], "rss_steady_mib": proc_status_kib("VmRSS") / 1024,
                  "hwm_after_steady_mib": proc_status_kib("VmHWM") / 1024}
    emit({"steady": True, **steady})
    sys.stdout.flush()
    os._exit(0)  # leave the directory exactly as a crash would: no final checkpoint


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench._child")
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("build", "restart"):
        s = sub.add_parser(name)
        s.add_argument("--data-dir", required=True)
        s.add_argument("--fsync", default="always", choices=["always", "never"])
        s.add_argument("--checkpoints", default="default", choices=["default", "off"])
    b = sub.choices["build"]
    b.add_argument("--target-ops", type=int, required=True)
    b.add_argument("--ops-per-record", type=int, default=1000)
    b.add_argument("--inflight", type=int, default=32)
    b.add_argument("--report-every-ops", type=int, default=100_000)
    b.add_argument("--kill-at", default="checkpoint-due", choices=["checkpoint-due", "target"],
                   help="when to ask for the kill once --target-ops are acknowledged")
    b.add_argument("--hold-seconds-max", type=float, default=120.0)
    r = sub.choices["restart"]
    r.add_argument("--steady-seconds", type=float, default=3.0)
    args = p.parse_args(argv)
    return build(args) if args.cmd == "build" else restart(args)


if __name__ == "__main__":
    raise SystemExit(main())
