"""Restore from the archive, and a base backup taken while writes flow.

One engine (``fsync="always"``, archiving to a ``file://`` directory on the bench disk)
is filled with ``--backup-assertions`` assertions in 1,000-assertion batches.  Then a
base backup is taken online while ``--writers`` threads keep writing one assertion at a
time: their acknowledgement latency during the backup is reported beside the same
writers' latency with no backup running.  Then ``--wal-records`` more one-assertion
records are written, so that a restore is the base backup plus that much archived WAL.

The engine is closed (its archive up to date) and ``stemedb backup restore`` runs as a
command, timed from its start to its exit: from the ``file://`` archive, and from the
same objects copied to moto's S3 server (a process on 127.0.0.1, through boto3 as for
a real bucket).  Each restored directory is checked: its assertion count equals the
live one's.

Targets (issue #16): a restore of 1 M assertions (base backup + 100 k records of WAL)
from ``file://`` within 10 s; from the local S3 server, reported; writes keep flowing
during a base backup (their p99 reported).

Run: ``python -m bench.restore_bench [--backup-assertions 900000] [--wal-records 100000]``.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
from typing import Any

from stemedb.archive import ArchiveSettings, open_target
from stemedb.backup import BackupSettings
from stemedb.engine import Engine, EngineConfig, WriteRequest
from stemedb.wal import RecordType

from ._common import (
    Report,
    Target,
    base_parser,
    bench_dir,
    command_line,
    dir_size_bytes,
    latency_tail_ms,
    machine_info,
    print_machine,
    sample_assertion,
)
from .archive_bench import BUCKET, S3Server

MODULE = "bench.restore_bench"
BATCH_OPS = 1000
RESTORE_SECONDS_MAX = 10.0  # the target, from file://
RESTORE_TIMEOUT_SECONDS = 1800.0
BACKUP_TIMEOUT_SECONDS = 1800.0
SUBMIT_WINDOW = 512  # one-assertion writes in flight while the WAL part is written
BASELINE_SECONDS = 3.0  # writers measured without a backup, for the comparison


def _batch(start: int, n: int) -> WriteRequest:
    return WriteRequest(RecordType.BATCH, [{"assert": sample_assertion(start + k)}
                                           for k in range(n)])


def _one(i: int) -> WriteRequest:
    return WriteRequest(RecordType.ASSERT, [{"assert": sample_assertion(i)}])


class Writers:
    """``n`` threads writing one assertion at a time; latencies in windows."""

    def __init__(self, eng: Engine, n: int, first: int) -> None:
        self.eng = eng
        self.lat: list[tuple[float, float]] = []  # (ended at, seconds)
        self._stop = threading.Event()
        self._next = first
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(n)]

    def _run(self) -> None:
        while not self._stop.is_set():  # bounded by stop()
            with self._lock:
                i, self._next = self._next, self._next + 1
            t0 = time.perf_counter()
            self.eng.write(_one(i))
            t1 = time.perf_counter()
            with self._lock:
                self.lat.append((t1, t1 - t0))

    def start(self) -> Writers:
        for t in self.threads:
            t.start()
        return self

    def stop(self) -> int:
        self._stop.set()
        for t in self.threads:
            t.join(60)
        return self._next

    def between(self, a: float, b: float) -> list[float]:
        with self._lock:
            return [s for end, s in self.lat if a <= end <= b]


def _count(data_dir: str) -> int:
    conn = sqlite3.connect(f"file:{os.path.join(data_dir, 'state.sqlite3')}?mode=ro",
                           uri=True)
    try:
        n: int = conn.execute("SELECT count(*) FROM assertions").fetchone()[0]
        return n
    finally:
        conn.close()


def _restore(url: str, data_dir: str, env: dict[str, str] | None) -> float:
    cmd = [sys.executable, "-c", "from stemedb.cli import main; main()", "backup",
           "restore", "--from", url, "--data-dir", data_dir]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("STEMEDB_")}
    full_env.update(env or {})
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=full_env,
                       timeout=RESTORE_TIMEOUT_SECONDS, check=False)
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"restore from {url} failed ({r.returncode}): "
                           f"{r.stdout[-2000:]}{r.stderr[-2000:]}")
    return seconds


def _copy_archive(src_url: str, s3: S3Server, prefix: str) -> int:
    import boto3

    src = open_target(src_url)
    client = boto3.client("s3", endpoint_url=s3.endpoint, region_name="us-east-1",
                          aws_access_key_id="bench", aws_secret_access_key="bench-secret")
    n = 0
    for top in ("wal/", "backups/", "timelines/"):
        for name in src.list_names(top):
            client.put_object(Bucket=BUCKET, Key=f"{prefix}/{name}", Body=src.get(name))
            n += 1
    return n


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0], MODULE)
    p.add_argument("--backup-assertions", type=int, default=900_000,
                   help="assertions in the state when the base backup is taken "
                        "(default: 900000)")
    p.add_argument("--wal-records", type=int, default=100_000,
                   help="one-assertion records written after it (default: 100000)")
    p.add_argument("--writers", type=int, default=4,
                   help="threads writing during the base backup (default: 4)")
    p.add_argument("--no-s3", action="store_true",
                   help="restore from file:// only (default: also from moto's S3)")
    args = p.parse_args(argv)
    report = Report("restore", command_line(MODULE, argv))
    with bench_dir(args.dir, args.keep, "stemedb-bench-restore-") as root:
        info = machine_info(root)
        print_machine(info)
        archive = os.path.join(root, "archive")
        url = f"file://{archive}"
        data = os.path.join(root, "live")
        eng = Engine(data, EngineConfig(
            fsync="always", disk_reserve_bytes=0,
            archive=ArchiveSettings(url=url),
            backup=BackupSettings(interval_hours=0, drill_interval_hours=0)))
        eng.recover()
        eng.start()
        try:
            t0 = time.perf_counter()
            for start in range(0, args.backup_assertions, BATCH_OPS):  # bounded
                eng.write(_batch(start, min(BATCH_OPS, args.backup_assertions - start)))
            build_s = time.perf_counter() - t0
            print(f"  {args.backup_assertions:,} assertions written in {build_s:.1f} s",
                  flush=True)
            writers = Writers(eng, args.writers, args.backup_assertions).start()
            time.sleep(BASELINE_SECONDS)
            b0 = time.perf_counter()
            manifest = eng.backup_now().result(BACKUP_TIMEOUT_SECONDS)
            b1 = time.perf_counter()
            time.sleep(0.2)
            nxt = writers.stop()
            during = writers.between(b0, b1)
            before = writers.between(b0 - BASELINE_SECONDS + 0.5, b0)
            print(f"  base backup {manifest.id} at LSN {manifest.end_lsn} in "
                  f"{b1 - b0:.1f} s, {len(during)} writes meanwhile", flush=True)
            t0 = time.perf_counter()
            pending: list[Any] = []
            for i in range(nxt, nxt + args.wal_records):  # bounded by --wal-records
                pending.append(eng.submit(_one(i)))
                if len(pending) >= SUBMIT_WINDOW:
                    for f in pending:
                        f.result(60)
                    pending = []
            for f in pending:
                f.result(60)
            wal_s = time.perf_counter() - t0
            print(f"  {args.wal_records:,} one-assertion records written in {wal_s:.1f} s",
                  flush=True)
        finally:
            eng.close()  # a final archive pass: the archive holds every record
        live_count = _count(data)
        rows: list[dict[str, Any]] = []
        targets: list[tuple[str, str, dict[str, str] | None]] = [("file://", url, None)]
        s3: S3Server | None = None
        try:
            if not args.no_s3:
                s3 = S3Server(root)
                s3.start()
                copied = _copy_archive(url, s3, "restore")
                print(f"  {copied} objects copied to S3", flush=True)
                targets.append(("S3 (moto)", f"s3://{BUCKET}/restore", s3.env))
            for name, from_url, env in targets:
                out = os.path.join(root, f"restored-{len(rows)}")
                seconds = _restore(from_url, out, env)
                count = _count(out)
                if count != live_count:
                    raise RuntimeError(f"restore from {name}: {count} assertions, live "
                                       f"{live_count}")
                rows.append({"from": name, "assertions": count,
                             "base_backup_assertions": args.backup_assertions,
                             "wal_records": args.wal_records,
                             "archive_mib": dir_size_bytes(archive) / 2**20,
                             "restore_s": seconds,
                             "assertions_per_s": count / seconds})
                print(f"  restore from {name}: {seconds:.2f} s", flush=True)
        finally:
            if s3 is not None:
                s3.stop()
        report.table("Restore: base backup + archived WAL, `stemedb backup restore` from "
                     "start to exit", rows)
        lat_during, lat_before = latency_tail_ms(during), latency_tail_ms(before)
        report.table("Writes during the online base backup (one assertion each, "
                     f"{args.writers} threads)", [
                         {"window": "before the backup", "writes": len(before), **lat_before},
                         {"window": "during the backup", "writes": len(during),
                          "backup_s": b1 - b0, **lat_during}])
        f = rows[0]
        report.targets.append(Target(
            f"restore of {live_count:,} assertions (base backup + {args.wal_records:,} "
            "records of WAL) from file://", f"<= {RESTORE_SECONDS_MAX:g} s",
            f"{f['restore_s']:.2f} s" + (f"; from S3 {rows[1]['restore_s']:.2f} s"
                                         if len(rows) > 1 else ""),
            f["restore_s"] <= RESTORE_SECONDS_MAX))
        report.targets.append(Target(
            "writes keep flowing during an online base backup", "writes acknowledged "
            "throughout (p99 reported)",
            f"{len(during)} writes in {b1 - b0:.1f} s; p99 {lat_during.get('p99_ms', 0):.2f} "
            f"ms vs {lat_before.get('p99_ms', 0):.2f} ms before", len(during) > 0))
        report.emit(args.json, info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
