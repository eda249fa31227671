"""Durable write path of the embedded engine, beside SQLite and one raw fdatasync.

Each cell runs N submitter threads for ``--seconds``; every submitter keeps exactly
one request in flight (submit, wait for the acknowledgement, repeat).  A write is
counted when its acknowledgement arrives, i.e. after its WAL record was fdatasynced
(``fsync="always"``).  The first ``--warmup`` seconds of each cell are not counted.

Compared in the same run, in the same directory (same filesystem):

- **StemeDB**: ``EngineConfig(fsync="always", disk_reserve_bytes=0)``, a fresh data dir
  per cell, submitted two ways: N threads each blocking on
  ``Engine.write(WriteRequest(RecordType.ASSERT, [op]))`` (the embedded way: a thread
  that finds the writer idle commits its write itself), and N coroutines on one event
  loop each awaiting ``Engine.submit_async(...)`` (the server's way: one loop wake-up
  per group commit instead of one thread wake-up per request).
- **SQLite**: ``journal_mode=WAL``, ``synchronous=FULL``, one INSERT + COMMIT per write,
  into a table shaped like StemeDB's ``assertions`` (same four indexes).  All
  submitters share ONE connection guarded by a lock: SQLite has no group commit and
  per-thread connections only add busy-wait back-off on the write lock.
- **raw fdatasync**: one ``os.pwrite`` of 200 bytes then ``os.fdatasync`` on a file in
  the same directory, one thread; once overwriting a preallocated file (what the WAL
  does) and once appending (the file grows, so the inode's size must be synced too).
- **design floor** (``bench/_floor.py``): what this design requires of every group
  commit before it acknowledges, done by one thread with none of the engine around it:
  N one-assertion records encoded and framed as the WAL does, one ``pwrite`` into a
  preallocated file, one ``fdatasync``; no SQLite.  N is the submitter count: the
  largest group N closed-loop submitters can form.  No engine of this design can
  acknowledge faster on this disk, so the targets table gives this floor beside each
  target.
- **apply floor**: the applier's work for the same groups, on one thread: each record
  decoded and applied with the product's own ``stemedb.state.apply_record`` into the
  product's schema, one SQLite transaction per group of N (its p50/p99 are one
  transaction's).  The state follows the acknowledgements; this row says how fast it
  can, so whether the applier keeps up with the engine's rate above it.

In the StemeDB cells with more than one submitter, a thread samples
``Engine.read_index.lag_bytes()`` (durable WAL bytes the state has not applied yet)
every ``--lag-sample-ms`` during the measured seconds: ``lag_p99_bytes`` and
``lag_max_bytes`` say whether the applier kept up.  The 1-submitter cells, whose p50 is
a target, run without that thread.

Run: ``python -m bench.engine_bench [--seconds 5] [--submitters 1,16,64] [--json F]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

from stemedb.engine import Engine, EngineConfig, WriteRequest
from stemedb.wal import RecordType

from ._common import (
    Report,
    Sampler,
    Target,
    base_parser,
    bench_dir,
    command_line,
    encode_sample,
    latency_tail_ms,
    machine_info,
    percentile,
    print_machine,
    sample_assertion,
)
from ._floor import apply_floor, design_floor

MODULE = "bench.engine_bench"
# How submitters wait: threads blocking on Engine.write(...), or coroutines on
# one event loop awaiting Engine.submit_async(...) (what the HTTP server does).
MODES = {"threads": "StemeDB engine, threads (fsync=always)",
         "asyncio": "StemeDB engine, asyncio (fsync=always)"}
SPLIT_LABEL = "StemeDB engine, asyncio, state on --state-dir ([wal] dir)"
FLOOR_LABEL = "design floor: encode + frame + pwrite + fdatasync, 1 thread, group of N"
APPLY_LABEL = "apply floor: apply_record, 1 SQLite txn per group of N, 1 thread"
SQLITE_LABEL = "SQLite WAL synchronous=FULL (1 conn + lock)"
RAW_PRE_LABEL = "raw fdatasync (200 B, preallocated)"
RAW_APP_LABEL = "raw fdatasync (200 B, appending)"
# The targets: the 1-submitter latency against one raw fdatasync into a preallocated
# file, and the 64-submitter rate against SQLite's.
P50_RATIO_MAX = 1.5
SQLITE_RATIO_MIN = 10.0
LAG_SAMPLE_MS_DEFAULT = 5.0
JOIN_TIMEOUT_SECONDS = 30.0  # a submitter stuck longer than this is a failed cell

SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS assertions (
    id INTEGER PRIMARY KEY, subject TEXT NOT NULL, predicate TEXT NOT NULL,
    object TEXT NOT NULL, author TEXT NOT NULL, confidence REAL, source TEXT,
    epoch INTEGER NOT NULL, created_at TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS a_subject ON assertions(subject, id);
CREATE INDEX IF NOT EXISTS a_predicate ON assertions(predicate, id);
CREATE INDEX IF NOT EXISTS a_author ON assertions(author, id);
CREATE INDEX IF NOT EXISTS a_epoch ON assertions(epoch, id);
"""


def run_closed_loop(make_op: Callable[[int], Callable[[], Any]], submitters: int,
                    seconds: float, warmup_seconds: float) -> dict[str, Any]:
    """N threads, each calling its op in a loop; returns rate and latency percentiles."""
    stop = threading.Event()
    t_start = time.perf_counter()
    measure_from = t_start + warmup_seconds
    lat: list[list[float]] = [[] for _ in range(submitters)]
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        op = make_op(k)
        out = lat[k]
        try:
            while not stop.is_set():
                t0 = time.perf_counter()
                op()
                t1 = time.perf_counter()
                if t0 >= measure_from:
                    out.append(t1 - t0)
        except BaseException as exc:
            errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=worker, args=(k,), daemon=True)
               for k in range(submitters)]
    for t in threads:
        t.start()
    stop.wait(warmup_seconds + seconds)
    t_end = time.perf_counter()
    stop.set()
    for t in threads:
        t.join(JOIN_TIMEOUT_SECONDS)
    if errors:
        raise RuntimeError(f"a submitter failed: {errors[0]!r}") from errors[0]
    if any(t.is_alive() for t in threads):
        raise RuntimeError(f"a submitter did not finish within {JOIN_TIMEOUT_SECONDS}s")
    all_lat = [x for xs in lat for x in xs]
    elapsed = max(t_end - measure_from, 1e-9)
    return {"writes": len(all_lat), "writes_per_s": len(all_lat) / elapsed,
            **latency_tail_ms(all_lat)}


def bench_stemedb(root: str, submitters: int, seconds: float, warmup: float,
                  mode: str = "threads", state_root: str | None = None,
                  lag_sample_seconds: float | None = None) -> dict[str, Any]:
    """One cell; with ``state_root`` the WAL stays under ``root`` (the disk measured)
    and the data directory, with the state database, goes under ``state_root``.  With
    ``lag_sample_seconds`` the apply lag is sampled that often while it is measured."""
    d = os.path.join(root, f"stemedb-{mode}-{submitters}")
    wal_dir = ""
    if state_root is not None:
        wal_dir, d = d + "-wal", os.path.join(state_root, f"stemedb-{mode}-{submitters}")
    eng = Engine(d, EngineConfig(fsync="always", disk_reserve_bytes=0, wal_dir=wal_dir))
    eng.recover()
    eng.start()
    counter = iter(range(10**12))
    try:
        def make_op(_k: int) -> Callable[[], Any]:
            def op() -> Any:
                req = WriteRequest(RecordType.ASSERT, [{"assert": sample_assertion(
                    next(counter))}])
                return eng.write(req)
            return op

        sampler = None
        if lag_sample_seconds is not None:
            ri = eng.read_index
            sampler = Sampler(lambda: (float(ri.lag_bytes()),), lag_sample_seconds,
                              warmup, seconds).start()
        try:
            if mode == "asyncio":
                res = run_closed_loop_async(eng, submitters, seconds, warmup)
            else:
                res = run_closed_loop(make_op, submitters, seconds, warmup)
        finally:
            if sampler is not None:
                sampler.stop()
        if sampler is not None:
            lag = sampler.column(0)
            res["lag_p99_bytes"] = percentile(lag, 99)
            res["lag_max_bytes"] = lag[-1] if lag else float("nan")
            res["lag_samples"] = len(lag)
        reg = eng.m.registry
        commits = reg.get_sample_value("stemedb_group_commit_batch_records_count") or 0
        recs = reg.get_sample_value("stemedb_group_commit_batch_records_sum") or 0
        fs_n = reg.get_sample_value("stemedb_wal_fsync_latency_seconds_count") or 0
        fs_s = reg.get_sample_value("stemedb_wal_fsync_latency_seconds_sum") or 0
        res["batch_mean"] = recs / commits if commits else float("nan")
        res["fsync_mean_ms"] = fs_s / fs_n * 1e3 if fs_n else float("nan")
        return res
    finally:
        eng.close()


def run_closed_loop_async(eng: Engine, submitters: int, seconds: float,
                          warmup_seconds: float) -> dict[str, Any]:
    """N asyncio tasks on one event loop, each awaiting ``Engine.submit_async``."""
    counter = iter(range(10**12))
    lat: list[float] = []

    async def worker(deadline: float, measure_from: float) -> None:
        while True:
            t0 = time.perf_counter()
            if t0 >= deadline:  # bounded by --seconds
                return
            req = WriteRequest(RecordType.ASSERT, [{"assert": sample_assertion(
                next(counter))}])
            await eng.submit_async(req)
            if t0 >= measure_from:
                lat.append(time.perf_counter() - t0)

    async def main() -> float:
        t_start = time.perf_counter()
        measure_from = t_start + warmup_seconds
        deadline = measure_from + seconds
        await asyncio.wait_for(
            asyncio.gather(*(worker(deadline, measure_from) for _ in range(submitters))),
            seconds + warmup_seconds + JOIN_TIMEOUT_SECONDS)
        return max(time.perf_counter() - measure_from, 1e-9)

    elapsed = asyncio.run(main())
    return {"writes": len(lat), "writes_per_s": len(lat) / elapsed, **latency_tail_ms(lat)}


def bench_sqlite(root: str, submitters: int, seconds: float, warmup: float
                 ) -> dict[str, Any]:
    path = os.path.join(root, f"sqlite-{submitters}.db")
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.executescript(SQLITE_SCHEMA)
    lock = threading.Lock()
    counter = iter(range(10**12))
    try:
        def make_op(_k: int) -> Callable[[], Any]:
            def op() -> None:
                a = sample_assertion(next(counter))
                row = (a["subject"], a["predicate"], encode_sample(a["object"]),
                       a["author"], a["confidence"], None, 1,
                       time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
                with lock:
                    conn.execute("BEGIN")
                    conn.execute("INSERT INTO assertions(subject, predicate, object, author,"
                                 " confidence, source, epoch, created_at)"
                                 " VALUES(?,?,?,?,?,?,?,?)", row)
                    conn.execute("COMMIT")
            return op

        return run_closed_loop(make_op, submitters, seconds, warmup)
    finally:
        conn.close()


def bench_fdatasync(root: str, seconds: float, *, append: bool) -> dict[str, Any]:
    path = os.path.join(root, "fdatasync-append" if append else "fdatasync-prealloc")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    size = 64 * 1024 * 1024
    try:
        if not append:
            os.posix_fallocate(fd, 0, size)
            # Write real zeroes once, so later writes overwrite initialised blocks
            # (like a preallocated WAL segment) and fdatasync need not touch metadata.
            chunk = bytes(1024 * 1024)
            for off in range(0, size, len(chunk)):
                os.pwrite(fd, chunk, off)
            os.fsync(fd)
        payload = b"x" * 200
        lat: list[float] = []
        off = 0
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:  # bounded by --seconds
            t0 = time.perf_counter()
            os.pwrite(fd, payload, off)
            os.fdatasync(fd)
            lat.append(time.perf_counter() - t0)
            off += 256
            if off + 256 > size:
                off = 0
        return {"writes": len(lat), "writes_per_s": len(lat) / seconds,
                **latency_tail_ms(lat)}
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.remove(path)


def _ratio(a: float, b: float) -> float:
    return a / max(b, 1e-9)


def _lag_text(r: dict[str, Any]) -> str:
    if "lag_p99_bytes" not in r:
        return ""
    return (f"; apply lag p99 {r['lag_p99_bytes']:,.0f} B, max {r['lag_max_bytes']:,.0f} B "
            f"({r['lag_samples']} samples)")


def add_targets(report: Report, results: dict[tuple[str, int], dict[str, Any]],
                raw_pre: dict[str, Any]) -> None:
    """The engine's two targets, each beside its peer and the design floor of the run."""
    for mode in MODES:
        if (mode, 1) not in results:
            continue
        r, f, a = results[mode, 1], results["floor", 1], results["apply", 1]
        ratio = _ratio(r["p50_ms"], raw_pre["p50_ms"])
        report.targets.append(Target(
            f"Engine, 1 submitter ({mode}): p50 vs one raw fdatasync (preallocated)",
            f"<= {P50_RATIO_MAX}x",
            f"{ratio:.2f}x ({r['p50_ms']:.3f} ms vs {raw_pre['p50_ms']:.3f} ms; design "
            f"floor {_ratio(f['p50_ms'], raw_pre['p50_ms']):.2f}x = {f['p50_ms']:.3f} ms; "
            f"apply floor {a['p50_ms']:.3f} ms a record, after the ack)",
            ratio <= P50_RATIO_MAX))
    for mode in MODES:
        if (mode, 64) not in results:
            continue
        r, q = results[mode, 64], results["sqlite", 64]
        f, a = results["floor", 64], results["apply", 64]
        ratio = _ratio(r["writes_per_s"], q["writes_per_s"])
        report.targets.append(Target(
            f"Engine, 64 submitters ({mode}) vs SQLite (synchronous=FULL)",
            f">= {SQLITE_RATIO_MIN:g}x writes/s",
            f"{ratio:.1f}x ({r['writes_per_s']:,.0f} vs {q['writes_per_s']:,.0f} writes/s; "
            f"design floor {_ratio(f['writes_per_s'], q['writes_per_s']):.1f}x; apply floor "
            f"{a['writes_per_s']:,.0f} records/s{_lag_text(r)})",
            ratio >= SQLITE_RATIO_MIN))


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0], MODULE)
    p.add_argument("--seconds", type=float, default=5.0,
                   help="measured seconds per cell (default: 5)")
    p.add_argument("--warmup", type=float, default=0.5,
                   help="seconds per cell not counted (default: 0.5)")
    p.add_argument("--submitters", default="1,16,64",
                   help="comma-separated submitter counts (default: 1,16,64)")
    p.add_argument("--lag-sample-ms", type=float, default=LAG_SAMPLE_MS_DEFAULT,
                   help="how often the apply lag is sampled in the cells with more than "
                        f"one submitter (default: {LAG_SAMPLE_MS_DEFAULT:g})")
    p.add_argument("--state-dir", default=None,
                   help="also run the asyncio cells with the WAL on the bench disk and the "
                        "state database in this directory, on another device ([wal] dir; "
                        "e.g. /dev/shm where the machine has one disk)")
    args = p.parse_args(argv)
    counts = [int(x) for x in args.submitters.split(",") if x]
    report = Report("engine", command_line(MODULE, argv))
    with bench_dir(args.dir, args.keep, "stemedb-bench-engine-") as root:
        info = machine_info(root)
        print_machine(info)
        raw_pre = bench_fdatasync(root, args.seconds, append=False)
        raw_app = bench_fdatasync(root, args.seconds, append=True)
        rows: list[dict[str, Any]] = [
            {"system": RAW_PRE_LABEL, "submitters": 1, **raw_pre},
            {"system": RAW_APP_LABEL, "submitters": 1, **raw_app},
        ]
        results: dict[tuple[str, int], dict[str, Any]] = {}
        for n in counts:
            lag_every = args.lag_sample_ms / 1e3 if n > 1 else None
            s = bench_stemedb(root, n, args.seconds, args.warmup, "threads",
                              lag_sample_seconds=lag_every)
            a = bench_stemedb(root, n, args.seconds, args.warmup, "asyncio",
                              lag_sample_seconds=lag_every)
            q = bench_sqlite(root, n, args.seconds, args.warmup)
            f = design_floor(root, n, 1, args.seconds, args.warmup)
            ap = apply_floor(root, n, 1, args.seconds, args.warmup)
            results["threads", n] = s
            results["asyncio", n] = a
            results["sqlite", n] = q
            results["floor", n] = f
            results["apply", n] = ap
            for label, r in ((MODES["threads"], s), (MODES["asyncio"], a)):
                rows.append({"system": label, "submitters": n, **r,
                             "x_sqlite": _ratio(r["writes_per_s"], q["writes_per_s"])})
            if args.state_dir is not None:
                with bench_dir(args.state_dir, False, "stemedb-bench-state-") as state_root:
                    w = bench_stemedb(root, n, args.seconds, args.warmup, "asyncio",
                                      state_root=state_root, lag_sample_seconds=lag_every)
                rows.append({"system": SPLIT_LABEL, "submitters": n, **w,
                             "x_sqlite": _ratio(w["writes_per_s"], q["writes_per_s"])})
            rows.append({"system": FLOOR_LABEL, "submitters": n, **f,
                         "x_sqlite": _ratio(f["writes_per_s"], q["writes_per_s"])})
            rows.append({"system": APPLY_LABEL, "submitters": n, **ap,
                         "x_sqlite": _ratio(ap["writes_per_s"], q["writes_per_s"])})
            rows.append({"system": SQLITE_LABEL, "submitters": n, **q})
        for r in rows:
            r["writes_per_s"] = round(r["writes_per_s"], 1)
        report.table("Durable writes (acknowledged after fdatasync)", rows)
        report.notes.append(
            "writes_per_s of the apply floor is records applied per second; its p50/p99 "
            "are one SQLite transaction's (a group of N records)")
        report.notes.append(
            "lag_p99_bytes / lag_max_bytes: Engine.read_index.lag_bytes() (durable, not yet "
            f"applied) sampled every {args.lag_sample_ms:g} ms in the measured seconds of "
            "the cells with more than one submitter")
    add_targets(report, results, raw_pre)
    report.emit(args.json, info)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
