"""Helpers of the archive tests: an engine that archives, writes, bounded waits, and
reading back what an archive holds."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from stemedb.archive import ArchiveKey, ArchiveReader, ArchiveSettings, open_target
from stemedb.engine import Engine, EngineConfig, WriteRequest
from stemedb.metrics import Metrics
from stemedb.wal import RecordType
from tests._tmp import fast_dir

SEGMENT_BYTES = 64 * 1024
WAIT_SECONDS = 15.0


def archive_settings(url: str, **kw: Any) -> ArchiveSettings:
    """Fast settings for tests: short interval and backoff, the smallest cap."""
    base: dict[str, Any] = {"url": url, "interval_seconds": 0.02,
                            "backoff_seconds_initial": 0.01, "backoff_seconds_max": 0.05,
                            "upload_attempts_max": 2}
    base.update(kw)
    return ArchiveSettings(**base)


def engine(data_dir: Path, settings: ArchiveSettings, **kw: Any) -> Engine:
    cfg = EngineConfig(segment_size_bytes=SEGMENT_BYTES, disk_reserve_bytes=0,
                       checkpoint_wal_bytes=10**12, replay_budget_seconds=1e9,
                       checkpoint_interval_seconds=1e9, archive=settings, **kw)
    eng = Engine(data_dir, cfg, metrics=Metrics())
    eng.recover()
    eng.start()
    return eng


@contextmanager
def scratch(name: str, fallback: Path) -> Iterator[Path]:
    d = fast_dir(f"{name}-{os.urandom(4).hex()}", fallback)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def assertion(subject: str, pad: int = 0) -> WriteRequest:
    return WriteRequest(RecordType.ASSERT, [{"assert": {
        "subject": subject, "predicate": "p", "object": "x" * pad, "author": "a"}}])


def wait_for(what: str, cond: Callable[[], bool], seconds: float = WAIT_SECONDS) -> None:
    deadline = time.monotonic() + seconds
    while not cond():  # bounded by the deadline
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds}s waiting for {what}")
        time.sleep(0.01)


def caught_up(eng: Engine) -> bool:
    a = eng.status()["archive"]
    return bool(a["archived_lsn"] == a["durable_lsn"] and a["hold_lsn"] == a["archived_lsn"])


def archived_records(url: str, key: ArchiveKey | None = None
                     ) -> dict[int, list[tuple[int, int, bytes]]]:
    """Every record of every timeline, fetched and verified, in LSN order."""
    reader = ArchiveReader(open_target(url), key)
    out: dict[int, list[tuple[int, int, bytes]]] = {}
    for chain in reader.summary():
        recs = out.setdefault(chain.timeline, [])
        for obj in chain.objects:
            recs.extend(reader.fetch(obj).records())
    return out


def metric(eng: Engine, name: str, labels: dict[str, str] | None = None) -> float:
    value = eng.m.registry.get_sample_value(name, labels or {})
    return 0.0 if value is None else value


def segment_names(eng: Engine) -> list[str]:
    return sorted(n for n in os.listdir(eng.wal_dir) if n.endswith(".wal"))
