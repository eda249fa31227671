"""The engine: one writer thread, group commit, recovery, checkpoints, holds, disk guard.

Write path (``fsync = "always"``): requests queue to the writer thread, which takes
everything queued (bounded by ``batch_records_max`` and ``batch_bytes_max``),
validates and applies each request to SQLite inside a SAVEPOINT (computing its
response and planning its LSN), appends every accepted record with one
``write(2)``, runs one ``fdatasync(2)``, commits the SQLite transaction (which
also stores ``applied_end_lsn``) and only then resolves the requests' futures.
A request that is invalid against the state (a vote on an unknown assertion) is
rolled back to its savepoint and never reaches the WAL.  An embedded thread in
:meth:`Engine.write` that finds the writer idle runs that same group commit for its
one request itself, under the commit lock the writer holds for each of its groups.

A failed write or fsync *fences* the writer: the batch and every later write fail
with :class:`WalFsyncFailed`, the ``stemedb_wal_writes_fenced`` gauge turns 1,
and nothing is retried.  A restart recovers from what is on disk.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import datetime as dt
import hashlib
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import msgspec
import orjson

from . import limits
from . import state as st
from ._loops import Outcome, settle_by_loop
from .backfill import Backfiller
from .dirlock import DataDirLock
from .errors import (
    Closed,
    CorruptionError,
    IdempotencyConflict,
    InsufficientStorage,
    InvalidInput,
    StateApplyFailed,
    StemeError,
    TooLarge,
    Unavailable,
    WalFsyncFailed,
)
from .layout import place_wal_dir, wal_link_path
from .metrics import Metrics
from .model import encode_json, validate_assertion, validate_batch, validate_vote
from .read_index import ReadIndex, TooStale
from .readers import ReaderPool, run_in_snapshot
from .storage import DiskUsage, FileSystem, OsFileSystem
from .wal import (
    PREALLOC_NAME,
    SEGMENT_HEADER_SIZE,
    Frame,
    RecordType,
    SegmentHeader,
    SegmentScanner,
    WalOpError,
    WalWriter,
    frame_size,
    is_zero,
    load_chain,
    segment_name,
    unpadded_len,
)

log = logging.getLogger("stemedb.engine")
T = TypeVar("T")

FSYNC_POLICIES = ("always", "interval", "never")
RECOVERY_MODES = ("tolerate-torn-tail", "absolute", "point-in-time")


@dataclass
class EngineConfig:
    fsync: str = "always"
    fsync_interval_ms: int = limits.fsync_interval_ms_default
    segment_size_bytes: int = limits.segment_size_bytes_default
    disk_reserve_bytes: int = limits.disk_reserve_bytes_default
    checkpoint_wal_bytes: int = limits.checkpoint_wal_bytes_default
    checkpoint_interval_seconds: float = limits.checkpoint_interval_seconds_default
    replay_budget_seconds: float = limits.replay_budget_seconds_default
    recovery_mode: str = "tolerate-torn-tail"
    idempotency_ttl_seconds: float = limits.idempotency_ttl_seconds_default
    batch_records_max: int = limits.batch_records_max
    batch_bytes_max: int = limits.batch_bytes_max
    submit_queue_requests_max: int = limits.submit_queue_requests_max
    log_fsync_errors: bool = False
    reader_threads: int = limits.reader_threads
    # The WAL on a disk of its own: "" keeps it in <data-dir>/wal; a directory makes
    # <data-dir>/wal a link to it on the first start (stemedb.layout).
    wal_dir: str = ""
    # Copy SQLite's WAL into its database file in the background (stemedb.backfill): a
    # short checkpoint stall under heavy writes, for syncs beside the WAL's fdatasync.
    sqlite_backfill: bool = True
    # SQLite's page cache per connection: the writer's and each of reader_threads'.
    page_cache_bytes: int = limits.state_page_cache_bytes_default

    def validate(self) -> None:
        if self.fsync not in FSYNC_POLICIES:
            raise InvalidInput(f"wal.fsync must be one of {', '.join(FSYNC_POLICIES)}, "
                               f"got {self.fsync!r}")
        if self.recovery_mode not in RECOVERY_MODES:
            raise InvalidInput(f"wal.recovery_mode must be one of {', '.join(RECOVERY_MODES)}")
        if not (limits.segment_size_bytes_min <= self.segment_size_bytes
                <= limits.segment_size_bytes_max):
            raise InvalidInput(
                f"wal.segment_size_bytes must be between {limits.segment_size_bytes_min} and "
                f"{limits.segment_size_bytes_max}, got {self.segment_size_bytes}")
        for name in ("fsync_interval_ms", "batch_records_max", "batch_bytes_max",
                     "submit_queue_requests_max"):
            if getattr(self, name) < 1:
                raise InvalidInput(f"{name} must be at least 1")
        for name in ("disk_reserve_bytes", "checkpoint_wal_bytes",
                     "checkpoint_interval_seconds", "replay_budget_seconds",
                     "idempotency_ttl_seconds"):
            if getattr(self, name) < 0:
                raise InvalidInput(f"{name} must not be negative")
        if self.page_cache_bytes < limits.state_page_cache_bytes_min:
            raise InvalidInput(f"state.page_cache_bytes must be at least "
                               f"{limits.state_page_cache_bytes_min}, got "
                               f"{self.page_cache_bytes}")
        if not 1 <= self.reader_threads <= limits.reader_threads_max:
            raise InvalidInput(f"server.reader_threads must be between 1 and "
                               f"{limits.reader_threads_max}, got {self.reader_threads}")


@dataclass
class WriteRequest:
    """One client request: becomes exactly one WAL record (or none, if refused)."""

    type: RecordType
    ops: list[dict[str, Any]] = field(default_factory=list)
    idempotency_key: str | None = None
    body_sha256: str | None = None
    # Set by a caller that already ran stemedb.model's checks on ``ops`` (the HTTP
    # layer does, before it reads the state), so they do not run twice.
    prevalidated: bool = False

    def size_hint(self) -> int:
        return 256 + 512 * len(self.ops)


@dataclass
class WriteResult:
    status: int
    body: dict[str, Any]
    lsn: int
    idempotent_replay: bool = False


@dataclass
class ReadResult(Generic[T]):
    """What a consistent read returns: its value, and the state's applied LSN (the end
    of the last applied record) in the snapshot it read."""

    value: T
    applied_lsn: int


@dataclass
class ReplayProgress:
    phase: str  # "opening", "replaying", "indexing", "done", "failed"
    bytes_done: int = 0
    bytes_total: int = 0
    records: int = 0
    started_monotonic: float = 0.0
    eta_seconds: float | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"phase": self.phase, "bytes_done": self.bytes_done,
                "bytes_total": self.bytes_total, "records": self.records,
                "eta_seconds": None if self.eta_seconds is None else round(self.eta_seconds, 3),
                "error": self.error}


@dataclass
class RecoveryReport:
    start_lsn: int
    end_lsn: int
    records: int
    bytes: int
    seconds: float
    torn_tail: dict[str, Any] | None = None
    quarantined: list[str] = field(default_factory=list)
    created: bool = False


@dataclass
class CheckpointReport:
    checkpoint_lsn: int
    removed_segments: list[str]
    seconds: float
    lowest_hold: int
    holds: dict[str, int]


@dataclass
class _SegMeta:
    seq: int
    base_lsn: int
    capacity_bytes: int


class _Pending:
    """A queued write and whom to tell.

    Without a loop the outcome goes to a ``concurrent.futures.Future`` (any thread may
    wait on it).  With a loop it goes to an ``asyncio.Future`` of that loop, and the
    writer settles a whole group commit's futures with ONE ``call_soon_threadsafe``
    per loop (see :func:`_settle`) instead of one wake-up per request.
    """

    __slots__ = ("afuture", "future", "loop", "request", "settled")

    def __init__(self, request: WriteRequest,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.request = request
        self.loop = loop
        self.settled = False
        self.future: cf.Future[WriteResult] | None = None
        self.afuture: asyncio.Future[WriteResult] | None = None
        if loop is None:
            self.future = cf.Future()
        else:
            self.afuture = loop.create_future()


_Outcome = tuple[_Pending, "WriteResult | None", "BaseException | None"]


def _settle(outcomes: list[_Outcome]) -> None:
    """Hand each pending write its outcome; one loop callback per event loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[Outcome]] = {}
    for p, result, exc in outcomes:
        if p.settled:
            continue
        p.settled = True
        if p.loop is not None:
            assert p.afuture is not None
            by_loop.setdefault(p.loop, []).append((p.afuture, result, exc))
            continue
        fut = p.future
        assert fut is not None
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)  # type: ignore[arg-type]
    settle_by_loop(by_loop)


def _key_reused() -> IdempotencyConflict:
    return IdempotencyConflict("this Idempotency-Key was used with a different request body",
                               hint="use a new key for a new request")


def _stopping() -> Unavailable:
    """What a write gets that no one will commit any more: the engine is closing."""
    return Unavailable("the server is stopping", code="not_accepting")


def validate_request(request: WriteRequest) -> None:
    """Normalize and check a request's ops in place (see stemedb.model)."""
    t = request.type
    if t == RecordType.GENESIS:
        raise InvalidInput("the genesis record is written by the engine itself")
    if t == RecordType.SEAL:
        if request.ops:
            raise InvalidInput("a seal takes no ops")
    elif t == RecordType.BATCH:
        request.ops = validate_batch({"ops": request.ops})
    elif t in (RecordType.ASSERT, RecordType.VOTE):
        kind = "assert" if t == RecordType.ASSERT else "vote"
        if (len(request.ops) != 1 or not isinstance(request.ops[0], dict)
                or set(request.ops[0]) != {kind}):
            raise InvalidInput(f"a {kind} request carries exactly one {{\"{kind}\": ...}} op")
        body = request.ops[0][kind]
        request.ops = [{kind: validate_assertion(body) if kind == "assert"
                        else validate_vote(body)}]
    else:
        raise InvalidInput(f"unknown request type {t!r}")
    check_idempotency_key(request)


def check_idempotency_key(request: WriteRequest) -> None:
    """A key, when there is one, is 1 to ``idempotency_key_bytes_max`` bytes and comes
    with the body's SHA-256 (checked for every request, prevalidated or not)."""
    key = request.idempotency_key
    if key is not None and (not isinstance(key, str) or not key
                            or len(key.encode("utf-8", "replace"))
                            > limits.idempotency_key_bytes_max):
        raise InvalidInput(f"Idempotency-Key must be 1 to {limits.idempotency_key_bytes_max} "
                           "bytes", code="invalid_idempotency_key")
    if key is not None and not _is_sha256_hex(request.body_sha256):
        # Without it a retry could not be told from a new request, and replay refuses a
        # keyed record that lacks it.
        raise InvalidInput("a request with an Idempotency-Key needs body_sha256, the "
                           "SHA-256 of its body as 64 lowercase hex digits (body_digest())",
                           code="invalid_idempotency_key")


def _is_sha256_hex(value: object) -> bool:
    return (isinstance(value, str) and len(value) == 64
            and all(c in "0123456789abcdef" for c in value))


# (whole second, its formatted prefix): replaced as one tuple, so threads never mix two.
_ts_second: tuple[int, str] = (-1, "")


def rfc3339(unix: float) -> str:
    """``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (UTC, microseconds), formatted once per second."""
    global _ts_second
    micros = round(unix * 1_000_000)
    sec, frac = divmod(micros, 1_000_000)
    cached = _ts_second
    if cached[0] != sec:
        cached = (sec, dt.datetime.fromtimestamp(sec, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S."))
        _ts_second = cached
    return f"{cached[1]}{frac:06d}Z"


# (formatted whole second, its Unix time): replaced as one tuple, like _ts_second.
_parsed_second: tuple[str, int] = ("", 0)


def parse_rfc3339(text: str) -> float:
    """Inverse of :func:`rfc3339`: the same float as ``datetime.timestamp()`` gives.

    Replay parses one timestamp per record with an idempotency key, and records come
    many to a second: the ``strptime`` runs once per second, and the fraction is added
    as the exact quotient of whole microseconds, which is how ``timestamp()`` of an
    aware datetime computes it.  Any text not in :func:`rfc3339`'s exact shape takes
    the ``strptime`` path (and its errors).
    """
    global _parsed_second
    frac = text[20:26]
    if len(text) == 27 and text[19] == "." and text[26] == "Z" and frac.isascii() \
            and frac.isdigit():
        prefix = text[:19]
        cached = _parsed_second
        if cached[0] != prefix:
            sec = dt.datetime.strptime(prefix, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=dt.UTC)
            cached = (prefix, int(sec.timestamp()))
            _parsed_second = cached
        return (cached[1] * 1_000_000 + int(frac)) / 1_000_000
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=dt.UTC).timestamp()


def body_digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


class Engine:
    """An open StemeDB data directory.

    Typical use::

        eng = Engine("/var/lib/stemedb")
        eng.recover()          # replay the WAL since the last checkpoint
        eng.start()            # start the writer thread
        res = eng.write(WriteRequest(RecordType.ASSERT, [{"assert": {...}}]))
        eng.close()            # drain, checkpoint, close: the next start replays nothing

    docs/embedding.md has the whole API, with a program the tests run.
    """

    def __init__(self, data_dir: str | os.PathLike[str], config: EngineConfig | None = None,
                 *, fs: FileSystem | None = None, metrics: Metrics | None = None,
                 clock: Callable[[], float] = time.time, background: bool = True,
                 on_checkpoint_durable: Callable[[str], None] | None = None,
                 writer_host: Callable[[Callable[[], None]], None] | None = None) -> None:
        self.config = config or EngineConfig()
        self.config.validate()
        self.data_dir = os.fspath(data_dir)
        self.wal_dir = wal_link_path(self.data_dir)
        # Where the segments really are: <data-dir>/wal, or wal_dir when that is set.
        self.wal_resolved_dir = os.path.abspath(self.config.wal_dir or self.wal_dir)
        self.db_path = os.path.join(self.data_dir, "state.sqlite3")
        self.fs = fs or OsFileSystem()
        # One engine per data directory (stemedb.dirlock); the simulated file system of
        # the crash tests has no other process to keep out.
        self._dir_lock = DataDirLock(self.data_dir) if isinstance(self.fs, OsFileSystem) \
            else None
        self.m = metrics or Metrics()
        self.clock = clock
        self._background = background
        self._on_checkpoint_durable = on_checkpoint_durable
        self._writer: WalWriter | None = None
        self._wconn: sqlite3.Connection | None = None
        # SimpleQueue: put and get are C calls, no Python-level Condition per request.
        self._queue: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._queued = 0
        self._queued_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        # Where the writer loop runs: a thread of its own by default, or a thread the
        # caller hands over (the server gives it the main thread, so that the
        # runbook's `strace -p $(pgrep stemedb-api)` sees every WAL fdatasync).
        self._writer_host = writer_host
        self._writer_started = False
        self._writer_done = threading.Event()
        # Held by whoever commits: the writer loop for its groups, checkpoints and other
        # work, or a thread in write() that finds the writer idle (_commit_now).
        self._commit_lock = threading.Lock()
        self._writer_stopped = False  # set under _commit_lock by the writer's stop
        self._release_lock = threading.Lock()
        self._released = False  # files, connection and lock closed (_release)
        self._readers: ReaderPool | None = None
        self._backfill: Backfiller | None = None
        self._segments: list[_SegMeta] = []
        self._holds: dict[str, int] = {}
        self._hold_advanced: dict[str, float] = {}
        # What fenced the writer (a WAL write or fsync failure, or the state failing
        # after the WAL append); every later write fails until a restart.
        self.fenced: WalFsyncFailed | StateApplyFailed | None = None
        self.accepting = False
        self.closed = False
        self.recovered = False
        self.progress = ReplayProgress("opening")
        self.checkpoint_lsn = 0
        self.last_checkpoint_unix: float | None = None
        self.last_checkpoint_error: str | None = None
        self._last_checkpoint_mono = time.monotonic()
        self._apply_bytes_per_s = float(limits.replay_throughput_bytes_per_second_initial)
        self._last_fsync_mono = time.monotonic()
        self._disk: DiskUsage | None = None
        self._state_disk: DiskUsage | None = None  # probed only when the WAL is linked
        self._wal_linked = False  # <data-dir>/wal is a link to another directory
        self._disk_checked_mono = 0.0
        self.applied_records = 0
        self.read_index = ReadIndex()
        self.last_fsync_seconds: float | None = None
        self._ctx_cache: st.ApplyContext | None = None
        self._gauges_mono = 0.0

    # ------------------------------------------------------------------ recovery --
    def recover(self, progress: Callable[[ReplayProgress], None] | None = None
                ) -> RecoveryReport:
        """Open the state and replay the WAL from ``applied_end_lsn``.  Blocking."""
        t0 = time.monotonic()
        self.progress = ReplayProgress("opening", started_monotonic=t0)
        self.m.replay_in_progress.set(1)
        try:
            report = self._recover(progress, t0)
        except Exception as exc:
            self.progress.phase = "failed"
            self.progress.error = str(exc)
            if isinstance(exc, CorruptionError):
                log.error("%s", exc)  # the one log line for it: `grep "WAL.*corrupt"`
            raise
        finally:
            self.m.replay_in_progress.set(0)
        self.progress.phase = "done"
        self.progress.eta_seconds = 0.0
        self.recovered = True
        if self._wconn is not None:
            self.read_index.publish_applied(st.applied_end_lsn(self._wconn) or 0)
        self.m.replay_last_duration_seconds.set(report.seconds)
        if report.created:
            log.info("created a new database in %s (WAL in %s)", self.data_dir, self.wal_dir)
        elif report.records:
            log.info("replayed %d WAL records (%d bytes, LSN %d..%d) in %.3fs",
                     report.records, report.bytes, report.start_lsn, report.end_lsn,
                     report.seconds)
        return report

    def _recover(self, progress: Callable[[ReplayProgress], None] | None, t0: float
                 ) -> RecoveryReport:
        self.lock_data_dir()
        self.place_wal_dir()
        self.fs.makedirs(self.wal_dir)
        if isinstance(self.fs, OsFileSystem) and os.path.islink(self.wal_dir):
            # Linked by wal_dir, or by hand: the state is on a filesystem of its own.
            self._wal_linked = True
            self.wal_resolved_dir = os.path.realpath(self.wal_dir)
        self.m.wal_linked.set(int(self._wal_linked))
        tmp = os.path.join(self.wal_dir, PREALLOC_NAME)
        if self.fs.exists(tmp):
            self.fs.remove(tmp)
        os.makedirs(self.data_dir, exist_ok=True)
        conn = self._wconn = st.connect(self.db_path,
                                        cache_bytes=self.config.page_cache_bytes)
        applied = st.applied_end_lsn(conn)
        self.applied_records = int(st.get_meta(conn, "applied_records") or 0)
        measured = st.get_meta(conn, "replay_bytes_per_second")
        if measured:
            self._apply_bytes_per_s = float(measured)
        self.checkpoint_lsn = int(st.get_meta(conn, "checkpoint_lsn") or 0)
        for name, lsn, _ in conn.execute("SELECT name, lsn, updated_unix FROM holds"):
            self._holds[name] = int(lsn)
            self._hold_advanced[name] = time.time()
        writer = self._writer = WalWriter(
            self.fs, self.wal_dir, segment_size_bytes=self.config.segment_size_bytes,
            background_preallocate=self._background, on_rotate=self._on_rotate)
        chain = load_chain(self.fs, self.wal_dir)
        segs = chain.segments
        if not segs:
            if applied is not None:
                raise CorruptionError(segment_name(1), 0,
                                      f"the WAL directory {self.wal_dir} has no segments but "
                                      f"the state has applied up to LSN {applied}",
                                      kind="missing_segment")
            writer.create_first()
            assert writer.header is not None
            self._segments = [_SegMeta(1, 0, writer.header.capacity_bytes)]
            self._genesis()
            return RecoveryReport(0, writer.end_lsn, 1, 0, time.monotonic() - t0, created=True)
        # Where replay starts.
        first = segs[0]
        if first.header is None:
            raise CorruptionError(first.name, 0, f"bad segment header: {first.header_error}",
                                  kind="bad_header")
        start = applied if applied is not None else first.header.base_lsn + SEGMENT_HEADER_SIZE
        if applied is None and first.seq != 1:
            raise CorruptionError(first.name, 0, "the state is empty but the WAL does not "
                                  "start at segment.001.wal", kind="missing_segment")
        if start < first.header.base_lsn:
            raise CorruptionError(first.name, 0, f"replay must start at LSN {start} but the "
                                  f"oldest segment starts at LSN {first.header.base_lsn}",
                                  kind="missing_segment")
        idx = chain.locate(start)
        report = RecoveryReport(start, start, 0, 0, 0.0)
        # Chain faults after the start segment are corruption (or the point-in-time cut).
        cut_at: int | None = None
        for fault in chain.faults:
            fidx = next(i for i, s in enumerate(segs) if s.name == fault.segment)
            if fidx <= idx:
                continue
            if self.config.recovery_mode == "point-in-time":
                cut_at = fidx if cut_at is None else min(cut_at, fidx)
            else:
                raise CorruptionError(fault.segment, 0, fault.reason, kind=fault.kind)
        for i in range(idx, len(segs) if cut_at is None else cut_at):
            s = segs[i]
            if s.header is None or s.header_error:
                is_last = i == len(segs) - 1
                if is_last and self._all_zero(s.path):
                    # A segment whose header never became durable holds nothing durable.
                    report.quarantined.append(self._quarantine(s.name, "torn"))
                    segs = segs[:i]
                    break
                if self.config.recovery_mode == "point-in-time":
                    cut_at = i
                    break
                raise CorruptionError(s.name, 0, f"bad segment header: {s.header_error}",
                                      kind="bad_header")
        if cut_at is not None:
            for s in segs[cut_at:]:
                report.quarantined.append(self._quarantine(s.name, "corrupted"))
            segs = segs[:cut_at]
        if not segs or idx >= len(segs):
            raise CorruptionError(first.name, 0, "no readable segment holds the replay start "
                                  f"LSN {start}", kind="missing_segment")
        self._segments = [_SegMeta(s.seq, s.header.base_lsn, s.header.capacity_bytes)
                          for s in segs if s.header]
        last = segs[-1]
        assert last.header is not None
        applied_last = st.get_meta(conn, "applied_last_lsn")
        if applied is not None and applied_last is not None and not self._frame_ends_at(
                segs, chain.locate(int(applied_last)), int(applied_last), applied):
            # The state holds records the WAL lost: acknowledged before fsync
            # (fsync=interval or never) and then lost in a crash.  Nothing after them
            # can be trusted in this segment; continue the log in a fresh segment.
            end = self._estimate_end(last.path, last.header)
            log.warning("the state is ahead of the WAL: the record at LSN %s is not in the "
                        "WAL (fsync=%s loss window); continuing in a new segment after %s",
                        applied_last, self.config.fsync, last.name)
            writer.open_tail(last.header, max(SEGMENT_HEADER_SIZE, end - last.header.base_lsn))
            writer.rotate(min_base_lsn=applied)
            report.end_lsn = writer.end_lsn
            report.seconds = time.monotonic() - t0
            self._update_wal_gauges()
            return report
        data_end = self._estimate_end(last.path, last.header)
        total = max(0, data_end - start)
        self.progress = ReplayProgress("replaying", 0, total, 0, t0)
        self.m.replay_bytes_total.set(total)
        tail_header, tail_offset = segs[idx].header, start - segs[idx].header.base_lsn  # type: ignore[union-attr]
        rebuild_indexes = self._drop_indexes_for_replay(conn, total)
        last_log = time.monotonic()
        for i in range(idx, len(segs)):
            s = segs[i]
            assert s.header is not None
            is_last = i == len(segs) - 1
            off = (start - s.header.base_lsn) if i == idx else SEGMENT_HEADER_SIZE
            zeros_from = data_end - s.header.base_lsn if is_last else None
            with SegmentScanner(self.fs, s.path, zeros_from=zeros_from) as sc:
                for frames in sc.batches(off, limits.replay_apply_records_max,
                                         limits.replay_apply_bytes_max):
                    self._replay_apply(frames, s.name, report)
                    now = time.monotonic()
                    self._report_progress(report, start, progress)
                    if now - last_log >= limits.replay_progress_interval_seconds:
                        last_log = now
                        log.info("replaying WAL: %d/%d bytes, %d records, ETA %s s",
                                 self.progress.bytes_done, self.progress.bytes_total,
                                 report.records, self.progress.eta_seconds)
                self._report_progress(report, start, progress)
                tail_header, tail_offset = s.header, max(sc.end_offset, off)
                if sc.damage is not None:
                    doff, reason, followed = sc.damage
                    lsn = s.header.base_lsn + doff
                    torn = is_last and not followed
                    if torn and self.config.recovery_mode != "absolute":
                        report.torn_tail = self._cut_torn_tail(s.path, s.name, doff, reason, sc)
                    elif self.config.recovery_mode == "point-in-time":
                        report.torn_tail = self._cut_torn_tail(s.path, s.name, doff, reason, sc)
                        for later in segs[i + 1:]:
                            report.quarantined.append(self._quarantine(later.name,
                                                                       "corrupted"))
                        self._segments = [m for m in self._segments if m.seq <= s.seq]
                        break
                    else:
                        kind = "torn_tail" if torn else "corrupt_record"
                        raise CorruptionError(s.name, doff, reason, lsn=lsn, kind=kind)
        if rebuild_indexes:
            # A failure before this point leaves them to the next start's connect().
            # Its own phase: every byte is replayed, but the node is not ready yet and
            # no byte count says for how long (one sort per index).
            self.progress.phase = "indexing"
            self.progress.eta_seconds = None
            if progress is not None:
                progress(self.progress)
            log.info("replay done; building the assertion indexes again")
            t_index = time.monotonic()
            st.create_assertion_indexes(conn)
            log.info("built the assertion indexes again after the replay in %.3fs",
                     time.monotonic() - t_index)
        # Open the writer where the valid data ends (after any torn tail was cut).
        assert tail_header is not None
        writer.open_tail(tail_header, tail_offset)
        if st.applied_end_lsn(conn) is None:
            # The genesis record never became durable (a crash while creating the
            # database): write it now.
            self._genesis()
            report.created = True
        report.end_lsn = writer.end_lsn
        report.seconds = time.monotonic() - t0
        if report.bytes >= limits.replay_measure_bytes_min and report.seconds > 0:
            # Measured, and kept in the state so the estimate survives restarts.
            self._apply_bytes_per_s = report.bytes / report.seconds
            conn.execute("BEGIN IMMEDIATE")
            st.set_meta(conn, "replay_bytes_per_second", self._apply_bytes_per_s)
            conn.execute("COMMIT")
        self.m.replay_throughput_bytes_per_second.set(self._apply_bytes_per_s)
        self._update_wal_gauges()
        return report

    def lock_data_dir(self) -> None:
        """Take the data directory's lock (:mod:`stemedb.dirlock`), held until
        :meth:`close`; :class:`DataDirInUse` when another engine has it.  Idempotent;
        :meth:`recover` calls it first, and the server before it listens."""
        if self._dir_lock is not None:
            self._dir_lock.acquire()

    def place_wal_dir(self) -> None:
        """Link ``<data-dir>/wal`` to ``wal_dir`` when it is set, or check the link.

        Idempotent; :meth:`recover` calls it first, and the server before it listens,
        so that a data directory paired with another WAL directory is refused at start.
        """
        if not self.config.wal_dir:
            return
        if not isinstance(self.fs, OsFileSystem):
            raise InvalidInput("wal_dir places the WAL on the real file system only")
        if place_wal_dir(self.data_dir, self.config.wal_dir):
            log.info("the WAL is in %s: %s links there", os.path.abspath(self.config.wal_dir),
                     self.wal_dir)

    def _drop_indexes_for_replay(self, conn: sqlite3.Connection, replay_bytes: int) -> bool:
        """Drop the assertion indexes before a replay that will build most of the table.

        Worth it when the WAL to replay is at least ``replay_index_rebuild_bytes_min``
        and likely holds more assertions than the table already has (at most
        ``replay_index_rebuild_wal_bytes_per_row`` WAL bytes per existing row): then one
        sort per index after the replay is cheaper than four B-tree inserts per row.
        Returns whether the caller must build them again.
        """
        if replay_bytes < limits.replay_index_rebuild_bytes_min:
            return False
        rows = conn.execute("SELECT max(id) FROM assertions").fetchone()[0] or 0
        if rows * limits.replay_index_rebuild_wal_bytes_per_row > replay_bytes:
            return False
        st.drop_assertion_indexes(conn)
        log.info("replaying %d WAL bytes into %d assertions: the assertion indexes are "
                 "dropped and built again after the replay", replay_bytes, rows)
        return True

    def _frame_ends_at(self, segs: list[Any], idx: int, lsn: int, end: int) -> bool:
        """True when a valid frame at ``lsn`` ends exactly at ``end``."""
        if idx >= len(segs) or segs[idx].header is None:
            return False
        s = segs[idx]
        off = lsn - s.header.base_lsn
        if off < SEGMENT_HEADER_SIZE or off >= s.header.capacity_bytes:
            return False
        with SegmentScanner(self.fs, s.path) as sc:
            for rec in sc.records(off):
                return rec.lsn == lsn and rec.end_lsn == end
        return False

    def _all_zero(self, path: str) -> bool:
        f = self.fs.open(path)
        try:
            size, pos = f.size(), 0
            while pos < size:  # bounded by the file size
                chunk = f.pread(min(limits.replay_read_bytes_max, size - pos), pos)
                if not chunk or not is_zero(chunk):
                    return not chunk
                pos += len(chunk)
            return True
        finally:
            f.close()

    def _estimate_end(self, path: str, header: SegmentHeader) -> int:
        """End of written data in the last segment: find the last non-zero chunk."""
        f = self.fs.open(path)
        try:
            size = min(f.size(), header.capacity_bytes)
            pos = size
            step = limits.replay_read_bytes_max
            while pos > SEGMENT_HEADER_SIZE:  # bounded: capacity / step reads at most
                lo = max(SEGMENT_HEADER_SIZE, pos - step)
                chunk = f.pread(pos - lo, lo)
                if not is_zero(chunk):
                    return header.base_lsn + lo + unpadded_len(chunk)
                pos = lo
            return header.base_lsn + SEGMENT_HEADER_SIZE
        finally:
            f.close()

    def _report_progress(self, report: RecoveryReport, start: int,
                         cb: Callable[[ReplayProgress], None] | None) -> None:
        p = self.progress
        p.bytes_done = report.bytes
        p.records = report.records
        elapsed = time.monotonic() - p.started_monotonic
        if p.bytes_done > 0 and elapsed > 0:
            rate = p.bytes_done / elapsed
            p.eta_seconds = max(0.0, (p.bytes_total - p.bytes_done) / rate)
        self.m.replay_bytes_done.set(p.bytes_done)
        if cb is not None:
            cb(p)

    def _replay_apply(self, frames: list[Frame], segment: str, report: RecoveryReport
                      ) -> None:
        """Apply consecutive records of one segment in one SQLite transaction.

        Every payload is decoded into a :class:`stemedb.state.Record` and goes through
        :func:`stemedb.state.apply_record`, except an ASSERT record holding one
        assertion (most of a WAL), which takes an inlined copy of apply_record's
        assert branch, and a BATCH record of assertions only, which takes
        :func:`stemedb.state.buffer_assertions`: the same rows, ids, response and
        idempotency row, without the per-record calls.
        tests/test_replay_fast_path.py checks that a replay leaves a state identical,
        table by table, to one built through apply_record alone.
        """
        if not frames:
            return
        conn = self._wconn
        assert conn is not None
        dumps = orjson.dumps
        decode = st.RECORD_DECODER.decode
        object_text = st.object_text
        assert_type, batch_type = int(RecordType.ASSERT), int(RecordType.BATCH)
        rows_max = limits.apply_rows_buffered_max
        conn.execute("BEGIN IMMEDIATE")
        ctx = st.ApplyContext(buffer_rows=True)
        rows, shapes = ctx.rows, ctx.shapes
        # The context's epoch and next id, kept in locals on the fast path and handed
        # back to ctx around every apply_record call.
        epoch = next_id = 0
        idem: list[tuple[str, str, int, str, int, float]] = []

        def refuse(lsn: int, offset: int, why: str) -> CorruptionError:
            return CorruptionError(segment, offset, f"record at LSN {lsn} {why}", lsn=lsn,
                                   kind="corrupt_record")

        def keep_response(rec: st.Record, lsn: int, offset: int, status: int,
                          body: dict[str, Any]) -> None:
            """The idempotency row of a record that carries a key."""
            if rec.h is None:
                raise refuse(lsn, offset, "has an idempotency key but no body hash")
            assert rec.k is not None
            idem.append((rec.k, rec.h, status, dumps(body).decode(), lsn,
                         parse_rfc3339(rec.t)))

        try:
            for lsn, rtype, data, offset in frames:
                try:
                    rec = decode(data)
                except msgspec.DecodeError as exc:
                    raise refuse(lsn, offset, f"has a payload the state cannot read: {exc}"
                                 ) from exc
                ops = rec.ops
                if rtype == assert_type and len(ops) == 1 and ops[0].a is not None:
                    # apply_record's assert branch for a one-assertion ASSERT record.
                    a = ops[0].a
                    if not epoch:
                        ctx.load(conn)
                        epoch, next_id = ctx.epoch, ctx.next_id
                    aid, ts = next_id, rec.t
                    next_id += 1
                    # st.assertion_row, inline: the row without None columns.
                    obj, conf, src = object_text(a.object), a.confidence, a.source
                    if src is None:
                        if conf is None:
                            shapes.append(3)
                            rows.append((aid, a.subject, a.predicate, obj, a.author,
                                         epoch, lsn, ts))
                        else:
                            shapes.append(2)
                            rows.append((aid, a.subject, a.predicate, obj, a.author,
                                         conf, epoch, lsn, ts))
                    else:
                        shape, row = st.assertion_row(aid, a.subject, a.predicate, obj,
                                                      a.author, conf, src, epoch, lsn, ts)
                        shapes.append(shape)
                        rows.append(row)
                    if len(rows) >= rows_max:
                        ctx.flush_rows(conn)
                        rows, shapes = ctx.rows, ctx.shapes
                    if rec.k:
                        keep_response(rec, lsn, offset, 201, {
                            "id": aid, "lsn": lsn, "epoch": epoch, "created_at": ts})
                    continue
                if epoch:
                    ctx.next_id = next_id
                if rtype == batch_type and ops and all(op.a is not None for op in ops):
                    # apply_record's assert branch for a batch of assertions only.
                    ids = st.buffer_assertions(conn, ctx, rec, lsn)
                    status, body = 201, {"results": [
                        {"id": aid, "lsn": lsn, "epoch": ctx.epoch, "created_at": rec.t}
                        for aid in ids], "lsn": lsn, "epoch": ctx.epoch}
                else:
                    try:
                        status, body = st.apply_record(conn, rtype, rec, lsn, ctx)
                    except StemeError as exc:
                        raise refuse(lsn, offset, f"does not apply to the state: {exc}"
                                     ) from exc
                # buffer_assertions and apply_record move the next id, and may move the
                # epoch (a seal, the genesis) and flush (and replace) the buffers.
                epoch, next_id = ctx.epoch, ctx.next_id
                rows, shapes = ctx.rows, ctx.shapes
                if rec.k:
                    keep_response(rec, lsn, offset, status, body)
            if epoch:
                ctx.next_id = next_id
            ctx.flush(conn)
            if idem:
                # In record order, so a key seen twice keeps its last record's response.
                st.replace_idempotency(conn, idem)
            applied = self.applied_records + len(frames)
            last_lsn = frames[-1][0]
            end_lsn = last_lsn + frame_size(len(frames[-1][2]))
            st.set_applied(conn, end_lsn, last_lsn, applied)
            conn.execute("COMMIT")
        except UnicodeDecodeError as exc:
            conn.execute("ROLLBACK")
            raise CorruptionError(segment, frames[0][3], f"a record from LSN {frames[0][0]} "
                                  f"holds an object that is not UTF-8: {exc}",
                                  lsn=frames[0][0], kind="corrupt_record") from exc
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self.applied_records = applied
        # The frames of one call are consecutive in one segment.
        report.bytes += end_lsn - frames[0][0]
        report.records += len(frames)
        self.m.replay_records_total.inc(len(frames))

    def _cut_torn_tail(self, path: str, name: str, off: int, reason: str,
                       sc: SegmentScanner) -> dict[str, Any]:
        """Save the torn bytes aside, then zero them, so the segment ends cleanly."""
        f = self.fs.open(path)
        try:
            end = off
            pos = off
            while pos < sc.limit:  # find the end of non-zero data; bounded by the segment
                chunk = f.pread(min(limits.replay_read_bytes_max, sc.limit - pos), pos)
                if not chunk:
                    break
                stripped = chunk.rstrip(b"\0")
                if stripped:
                    end = pos + len(stripped)
                pos += len(chunk)
            cut = f.pread(end - off, off) if end > off else b""
            aside = None
            if cut:
                aside = f"{path}.torn-{off}"
                g = self.fs.open(aside, create=True)
                try:
                    g.pwrite(cut, 0)
                    g.sync()
                finally:
                    g.close()
                f.pwrite(bytes(len(cut)), off)
                f.sync()
                self.fs.sync_dir(self.wal_dir)
        finally:
            f.close()
        info = {"segment": name, "offset": off, "bytes_cut": len(cut), "reason": reason,
                "saved_to": aside}
        log.warning("WAL torn tail in %s at offset %d: %s; cut %d bytes (saved to %s)",
                    name, off, reason, len(cut), aside)
        return info

    def _quarantine(self, name: str, suffix: str) -> str:
        src = os.path.join(self.wal_dir, name)
        dst = f"{src}.{suffix}"
        self.fs.rename(src, dst)
        self.fs.sync_dir(self.wal_dir)
        log.error("WAL segment %s quarantined as %s (recovery mode %s)", name,
                  os.path.basename(dst), self.config.recovery_mode)
        return os.path.basename(dst)

    def _genesis(self) -> None:
        """The first record of a new database opens epoch 1."""
        assert self._wconn is not None and self._writer is not None
        self._commit([_Pending(WriteRequest(RecordType.GENESIS))], sync=True)  # not submit()

    # ------------------------------------------------------------------ lifecycle --
    def start(self) -> None:
        if not self.recovered:
            raise RuntimeError("Engine.start() before recover()")
        self.accepting = True
        if self._wconn is not None:
            st.tune_for_writes(self._wconn)
        if self._background:
            self._writer_started = True
            if self._writer_host is not None:
                self._writer_host(self._run_writer)
            else:
                self._thread = threading.Thread(target=self._run_writer,
                                                name="stemedb-writer", daemon=True)
                self._thread.start()
        cache_bytes = self.config.page_cache_bytes
        self._readers = ReaderPool(lambda: st.connect(self.db_path, readonly=True,
                                                      cache_bytes=cache_bytes),
                                   self.config.reader_threads, limits.read_batch_max)
        if self._background and self.config.sqlite_backfill:
            self._backfill = Backfiller(
                self.db_path, limits.sqlite_backfill_interval_seconds,
                limits.sqlite_backfill_wal_bytes,
                lambda: self._writer.end_lsn if self._writer and self._writer.header else 0,
                self.m)
            self._backfill.start()

    def drain(self, timeout_seconds: float = limits.http_drain_grace_seconds) -> None:
        """Stop taking writes, finish those queued, checkpoint."""
        self.accepting = False
        if self._writer_alive():
            fut: cf.Future[Any] = cf.Future()
            self._queue.put(("checkpoint", fut))
            with contextlib.suppress(Exception):
                fut.result(timeout=timeout_seconds)

    def close(self, timeout_seconds: float = limits.http_drain_grace_seconds) -> None:
        if self.closed:
            return
        self.accepting = False
        if self._backfill is not None:
            self._backfill.stop(timeout_seconds)  # the final checkpoint copies the rest
        stuck = False
        if self._writer_alive():
            fut: cf.Future[Any] = cf.Future()
            self._queue.put(("stop", fut))
            stuck = not self._writer_done.wait(timeout=timeout_seconds)
        elif self.recovered and self.fenced is None and self._wconn is not None:
            with contextlib.suppress(Exception):
                self._checkpoint()
        self.closed = True
        if self._readers is not None:
            self._readers.shutdown(timeout_seconds)
        if stuck:
            # A write or fsync that has not returned: the writer still uses the WAL file
            # and the state's connection, and the directory must stay locked while it
            # might write.  The writer releases them itself when it ends.
            log.error("the writer did not stop within %.1fs (a WAL write or fsync that has "
                      "not returned); it releases the WAL, the state and the data "
                      "directory's lock when it ends", timeout_seconds)
        if not stuck or self._writer_done.is_set():
            self._release()

    def _release(self) -> None:
        """Close the WAL file and the state's connection and unlock the directory, once:
        by :meth:`close`, or by the writer thread ending after close gave up on it."""
        with self._release_lock:
            if self._released:
                return
            self._released = True
            if self._writer is not None:
                self._writer.close()
            if self._wconn is not None:
                self._wconn.close()
            if self._dir_lock is not None:
                self._dir_lock.release()

    # ------------------------------------------------------------------ writes ----
    def submit(self, request: WriteRequest) -> cf.Future[WriteResult]:
        """Queue a write; the future resolves once it is durable and applied.

        Raises :class:`InvalidInput` for a malformed request (embedded callers get the
        same checks as the HTTP API: nothing invalid reaches the writer thread).
        """
        p = self._enqueue(request, None)
        assert p.future is not None
        return p.future

    def write(self, request: WriteRequest, timeout_seconds: float | None = None
              ) -> WriteResult:
        """Write and wait: :meth:`submit` then ``result()``, for a thread that has
        nothing else to do until the write is durable.

        When the writer is idle (nothing queued, nobody committing), the write is
        committed on the calling thread: WAL append, fdatasync, SQLite transaction,
        exactly as the writer would, without the two thread hand-offs (to the writer
        and back) that are most of a lone writer's latency beyond the work itself.
        Otherwise it joins the writer's next group commit like any other.  Raises what
        the future would: a :class:`StemeError`, or ``TimeoutError`` after
        ``timeout_seconds`` (the write going on).  With a timeout the write always goes
        to the writer, so that the wait can end even if the disk never answers.  Never
        from a coroutine: it waits on the disk; use :meth:`submit_async` there.
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass  # no loop on this thread: waiting here is fine
        else:
            raise RuntimeError("Engine.write() waits on the disk; in a coroutine, "
                               "await Engine.submit_async() instead")
        p = self._enqueue(request, None, commit_here=timeout_seconds is None)
        assert p.future is not None
        return p.future.result(timeout_seconds)

    def submit_async(self, request: WriteRequest) -> asyncio.Future[WriteResult]:
        """:meth:`submit` for a coroutine: an ``asyncio.Future`` of the running loop.

        The writer settles every such future of one group commit with a single
        ``call_soon_threadsafe``, so a loop with many writers in flight is woken once
        per fdatasync rather than once per request.  Cancelling the future does not
        withdraw the write (it may already be durable).
        """
        p = self._enqueue(request, asyncio.get_running_loop())
        assert p.afuture is not None
        return p.afuture

    def _enqueue(self, request: WriteRequest, loop: asyncio.AbstractEventLoop | None,
                 *, commit_here: bool = False) -> _Pending:
        if not request.prevalidated:
            validate_request(request)
        elif request.idempotency_key is not None:
            check_idempotency_key(request)
        if self.fenced is not None:
            raise self._fence_error()
        if self.closed or not self.accepting:
            raise Unavailable("not accepting writes (starting, draining or stopped)",
                              code="not_accepting")
        with self._queued_lock:
            if self._queued >= self.config.submit_queue_requests_max:
                raise Unavailable(f"write queue full ({self.config.submit_queue_requests_max}"
                                  " requests)", code="queue_full")
            self._queued += 1
        p = _Pending(request, loop)
        if self._background:
            if commit_here and self._commit_now(p):
                return p
            self._queue.put(("write", p))
        else:
            with self._queued_lock:
                self._queued -= 1
            self._commit([p])
            self._periodic()
        return p

    def _commit_now(self, p: _Pending) -> bool:
        """For :meth:`write`: commit ``p`` on the calling thread when the writer is
        idle (nothing queued, nobody committing).  Only with ``fsync="always"``: the
        other policies leave the sync to the writer's timer.  False: queue it."""
        if self.config.fsync != "always" or not self._queue.empty():
            return False
        if not self._commit_lock.acquire(blocking=False):
            return False
        try:
            with self._queued_lock:
                self._queued -= 1
            if self._writer_stopped:  # closed after _enqueue looked: nobody would commit it
                _settle([(p, None, _stopping())])
                return True
            self.m.caller_commits_total.inc()
            self._commit_or_fail([p])
            if self._checkpoint_due():
                # The checkpoint is the writer's work, not this caller's: wake it.
                self._queue.put(("tick", None))
            return True
        finally:
            self._commit_lock.release()

    def _fence_error(self) -> WalFsyncFailed | StateApplyFailed:
        assert self.fenced is not None
        if isinstance(self.fenced, StateApplyFailed):
            return StateApplyFailed(f"writes are fenced after the state failed: "
                                    f"{self.fenced.message}; nothing was written", lsn=None,
                                    durable=False, hint="restart stemedb-api: its replay "
                                    "applies the WAL to the state")
        return WalFsyncFailed(f"writes are fenced after a WAL failure: {self.fenced.message}",
                              segment=self.fenced.segment,
                              hint="check the disk (see the WALFsyncFailure runbook), "
                                   "then restart stemedb-api")

    def _writer_alive(self) -> bool:
        return self._writer_started and not self._writer_done.is_set()

    def _run_writer(self) -> None:
        try:
            self._run()
        finally:
            self._writer_done.set()
            if self.closed:  # close() gave up waiting for this thread
                self._release()

    def _run(self) -> None:
        """The writer loop."""
        cfg = self.config
        stop: cf.Future[Any] | None = None
        while stop is None:
            timeout = 0.25
            if cfg.fsync == "interval":
                due = self._last_fsync_mono + cfg.fsync_interval_ms / 1000 - time.monotonic()
                timeout = max(0.0, min(timeout, due))
            batch: list[_Pending] = []
            controls: list[tuple[str, Any]] = []
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                item = None
            nbytes = 0
            # Bounded: at most batch_records_max requests are taken per group commit.
            while item is not None:
                kind, obj = item
                if kind == "write":
                    batch.append(obj)
                    nbytes += obj.request.size_hint()
                else:
                    controls.append(item)
                    if kind == "stop":
                        break
                if len(batch) >= cfg.batch_records_max or nbytes >= cfg.batch_bytes_max:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    item = None
            with self._commit_lock:
                stop = self._work(batch, controls)
        # Stop: fail whatever is still queued, then a final checkpoint.
        with self._commit_lock:
            self._writer_stopped = True
            while True:
                try:
                    kind, obj = self._queue.get_nowait()
                except queue.Empty:
                    break
                if kind == "write":
                    _settle([(obj, None, _stopping())])
            try:
                if self.fenced is None:
                    self._checkpoint()
                stop.set_result(None)
            except Exception as exc:
                log.error("final checkpoint failed: %s", exc)
                stop.set_exception(exc)

    def _work(self, batch: list[_Pending], controls: list[tuple[str, Any]]
              ) -> cf.Future[Any] | None:
        """One turn of the writer loop, under the commit lock: the group commit, then
        the controls taken with it, then periodic work.  Returns the stop control's
        future when one was taken."""
        stop: cf.Future[Any] | None = None
        if batch:
            with self._queued_lock:
                self._queued -= len(batch)
            self._commit_or_fail(batch)
        for kind, obj in controls:
            try:
                if kind == "checkpoint":
                    obj.set_result(self._checkpoint())
                elif kind == "hold":
                    name, lsn, fut = obj
                    fut.set_result(self._set_hold(name, lsn))
                elif kind == "stop":
                    stop = obj
                # "tick": nothing of its own; the periodic work below is the point.
            except Exception as exc:
                target = obj if kind != "hold" else obj[2]
                if isinstance(target, cf.Future) and not target.done():
                    target.set_exception(exc)
        self._periodic()
        return stop

    def _periodic(self) -> None:
        cfg = self.config
        w = self._writer
        if w is None or self.fenced is not None:
            return
        now = time.monotonic()
        if cfg.fsync == "interval" and w.needs_sync() and (
                now - self._last_fsync_mono >= cfg.fsync_interval_ms / 1000):
            try:
                self._timed_sync()
            except WalOpError as exc:
                self._fence(exc)
        self._maybe_checkpoint()
        self._probe_disk()

    def _probe_disk(self, force: bool = False) -> DiskUsage | None:
        """statvfs of the WAL's filesystem (and of the state's, when ``<data-dir>/wal``
        links elsewhere), at most every ``disk_probe_interval_seconds``."""
        now = time.monotonic()
        if force or self._disk is None or (
                now - self._disk_checked_mono >= limits.disk_probe_interval_seconds):
            path = self.wal_dir
            try:
                self._disk = self.fs.disk_usage(path)
                path = self.data_dir
                self._state_disk = self.fs.disk_usage(path) if self._wal_linked else None
            except OSError as exc:
                self.m.storage_errors_total.labels(operation="statvfs").inc()
                log.error("cannot read free space of %s: %s", path, exc)
                return self._disk
            self._disk_checked_mono = now
            d = self._disk
            self.m.wal_fs_free_bytes.set(d.free_bytes)
            self.m.wal_fs_size_bytes.set(d.size_bytes)
            self.m.wal_fs_free_inodes.set(d.free_inodes)
            self.m.wal_fs_inodes.set(d.inodes)
            sd = self._state_disk or d  # the same filesystem unless the WAL is linked
            self.m.state_fs_free_bytes.set(sd.free_bytes)
            self.m.state_fs_size_bytes.set(sd.size_bytes)
            self.m.disk_guard_reserve_bytes.set(self.config.disk_reserve_bytes)
        return self._disk

    def disk_guard_refusal(self) -> str | None:
        """Why the disk guard refuses writes now, or None when it does not."""
        self._probe_disk()
        return self._refusal()

    def _refusal(self) -> str | None:
        """The guard's verdict on the last probe (no I/O; the message only when it
        refuses, since every group commit asks)."""
        reserve = self.config.disk_reserve_bytes
        d, sd = self._disk, self._state_disk
        if d is not None and d.free_bytes < reserve:
            free, what = d.free_bytes, "the WAL filesystem"
        elif sd is not None and sd.free_bytes < reserve:
            free, what = sd.free_bytes, f"the state's filesystem ({self.data_dir})"
        else:
            return None
        return (f"the disk guard refuses writes: {free} bytes free on {what}, under the "
                f"reserve of {reserve} bytes")

    def _commit_or_fail(self, batch: list[_Pending]) -> None:
        """:meth:`_commit`, and should it raise anyway, fail the batch with that: no
        request is left waiting, and the committing thread (the writer's, or a
        caller's in :meth:`write`) goes on."""
        try:
            self._commit(batch)
        except Exception as exc:
            log.exception("writer failed: %s", exc)
            _settle([(p, None, exc) for p in batch])

    def _commit(self, batch: list[_Pending], *, sync: bool | None = None) -> None:
        """One group commit, by one thread at a time: the writer thread, or a caller
        of :meth:`write` holding the commit lock (:meth:`_commit_now`); before
        :meth:`start` (genesis), and in an engine without threads, the caller's."""
        out: list[_Outcome] = []
        try:
            self._commit_group(batch, out, sync)
        finally:
            _settle(out)

    def _commit_group(self, batch: list[_Pending], out: list[_Outcome],
                      sync: bool | None) -> None:
        conn, w = self._wconn, self._writer
        assert conn is not None and w is not None
        if self.fenced is not None:
            err = self._fence_error()
            out.extend((p, None, err) for p in batch)
            return
        refusal = self.disk_guard_refusal()
        if refusal is not None and batch[0].request.type != RecordType.GENESIS:
            self.m.disk_guard_refusals_total.inc(len(batch))
            err2 = InsufficientStorage(
                refusal,
                hint="free space or grow the filesystem it names (see the disk-full "
                     "runbook); reads keep working")
            out.extend((p, None, err2) for p in batch)
            return
        now = self.clock()
        ts = rfc3339(now)
        # What an idempotency row keeps: the record's own time, to the microsecond, as
        # replay reads it back from "t".
        created_unix = parse_rfc3339(ts)
        frames: list[tuple[int, int, bytes]] = []
        done: list[tuple[_Pending, WriteResult]] = []
        # A retry of a request written in this same group shares its fate: it is
        # answered from it once the group is durable, and fails with it otherwise.
        # (key -> (body hash, index in done) of this group's request with that key)
        group_keys: dict[str, tuple[str | None, int]] = {}
        retries: list[tuple[_Pending, str]] = []
        cap = min(limits.record_payload_bytes_max, w.record_capacity())
        group_mark = w.plan_mark()
        # The open epoch and next assertion id carry over from the last group commit;
        # any rollback drops them (they are re-read from SQLite).
        ctx = self._ctx_cache or st.ApplyContext(buffer_rows=True)
        self._ctx_cache = None
        written = False
        conn.execute("BEGIN IMMEDIATE")
        try:
            for p in batch:
                req = p.request
                key = req.idempotency_key
                if key is not None:
                    if key in group_keys:
                        retries.append((p, key))
                        continue
                    # Rows of earlier groups only: this group's keys are in group_keys.
                    found = st.lookup_idempotency(conn, key)
                    if found is not None:
                        if found[0] != req.body_sha256:
                            out.append((p, None, _key_reused()))
                        else:
                            done.append((p, WriteResult(found[1], found[2],
                                                        int(found[2].get("lsn", 0)), True)))
                        continue
                payload: dict[str, Any] = {"t": ts}
                if req.type not in (RecordType.SEAL, RecordType.GENESIS):
                    payload["ops"] = req.ops
                if key is not None:
                    payload["k"] = key
                    payload["h"] = req.body_sha256
                data = encode_json(payload)
                if len(data) > cap:
                    out.append((p, None, TooLarge(
                        f"the record is {len(data)} bytes; the limit is {cap} bytes "
                        f"(segment_size_bytes={self.config.segment_size_bytes})")))
                    continue
                mark = w.plan_mark()
                lsn = w.plan(len(data))
                # Only a batch can fail half-way (a vote on an unknown assertion after
                # some inserts), so only a batch that shares its group gets a savepoint.
                # An assertion cannot fail once validated; a vote fails before it writes.
                # A group of one rolls back the whole transaction instead.
                alone = len(batch) == 1
                savepoint = not alone and req.type == RecordType.BATCH
                if savepoint:
                    ctx.flush_rows(conn)
                    conn.execute("SAVEPOINT req")
                saved = ctx.copy() if savepoint else ctx
                try:
                    # The state applies the bytes the WAL will hold, as replay will.
                    record = st.RECORD_DECODER.decode(data)
                    status, body = st.apply_record(conn, req.type, record, lsn, ctx)
                    if key is not None:
                        st.record_idempotency(conn, key, req.body_sha256 or "", status, body,
                                              lsn, created_unix)
                    if savepoint:
                        conn.execute("RELEASE req")
                except StemeError as exc:
                    if alone:
                        conn.execute("ROLLBACK")
                        conn.execute("BEGIN IMMEDIATE")
                        ctx = st.ApplyContext(buffer_rows=True)
                    elif savepoint:
                        conn.execute("ROLLBACK TO req")
                        conn.execute("RELEASE req")
                        ctx = saved
                    elif req.type != RecordType.VOTE:
                        raise  # cannot happen: fail the whole group rather than guess
                    w.plan_reset_to(mark)
                    out.append((p, None, exc))
                    continue
                frames.append((int(req.type), lsn, data))
                if key is not None:
                    group_keys[key] = (req.body_sha256, len(done))
                done.append((p, WriteResult(status, body, lsn)))
            ctx.flush(conn)
            if frames:
                end = frames[-1][1] + frame_size(len(frames[-1][2]))
                self.applied_records += len(frames)
                st.set_applied(conn, end, frames[-1][1], self.applied_records)
                nbytes = end - frames[0][1]
                written = True  # from here on, some of it may be in the WAL
                w.write(frames)
                if sync or (sync is None and self.config.fsync == "always"):
                    self._timed_sync()
                m = self.m
                m.wal_bytes_written_total.inc(nbytes)
                m.wal_records_written_total.inc(len(frames))
                m.group_commit_batch_records.observe(len(frames))
                m.group_commit_batch_bytes.observe(nbytes)
            st.commit(conn)
        except WalOpError as exc:
            self.applied_records -= len(frames)
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            if self.config.fsync == "always":
                zeroed = w.discard_unsynced()
                log.error("WAL failed batch of %d records discarded (%d bytes zeroed, "
                          "best effort)", len(frames), zeroed)
            self._fence(exc)
            self._fail_group(done, retries, out, self._fence_error())
            return
        except Exception as exc:
            self.applied_records -= len(frames)
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            self._fail_group(done, retries, out,
                             self._state_failed(exc, frames, written, group_mark))
            return
        self._ctx_cache = ctx
        if frames:
            # Durable (by the policy) and applied: before any caller is told.
            end = frames[-1][1] + frame_size(len(frames[-1][2]))
            self.read_index.publish_durable(end)
            self.read_index.publish_applied(end)
        for p, key in retries:
            body_sha256, i = group_keys[key]
            if p.request.body_sha256 != body_sha256:
                out.append((p, None, _key_reused()))
            else:
                r = done[i][1]
                out.append((p, WriteResult(r.status, r.body, r.lsn, True), None))
        out.extend((p, r, None) for p, r in done)
        if time.monotonic() - self._gauges_mono >= limits.wal_gauges_refresh_seconds:
            self._update_wal_gauges()

    def _fail_group(self, done: list[tuple[_Pending, WriteResult]],
                    retries: list[tuple[_Pending, str]], out: list[_Outcome],
                    err: StemeError) -> None:
        """A group that did not commit: its requests, and the retries that share their
        fate, fail with ``err``; a retry answered from an earlier group's durable
        record keeps its answer."""
        for p, r in done:
            out.append((p, r, None) if r.idempotent_replay else (p, None, err))
        out.extend((p, None, err) for p, _ in retries)

    def _state_failed(self, exc: Exception, frames: list[tuple[int, int, bytes]],
                      written: bool, group_mark: tuple[SegmentHeader | None, int]
                      ) -> StateApplyFailed:
        """What the callers of a group are told when the state failed under it.

        Before the WAL append nothing was written: the group is undone (its planned
        LSNs too) and the writer goes on.  After it, the records are in the WAL and
        replay will apply them, but the state no longer matches the writer's position:
        writes are fenced until a restart replays, and each caller is told that its
        write is durable (or, before the fdatasync of fsync="interval" or "never",
        that its outcome is unknown) rather than that it failed.
        """
        w = self._writer
        assert w is not None
        if not written:
            log.exception("the state could not apply a group of %d requests; nothing "
                          "was written: %s", len(frames), exc)
            self._ctx_cache = None
            w.plan_reset_to(group_mark)
            return StateApplyFailed(f"the state could not apply the write: {exc}; nothing "
                                    "was written", lsn=None, durable=False,
                                    hint="retry; if it persists, check the disk that holds "
                                         f"{self.db_path}")
        first, end = frames[0][1], frames[-1][1] + frame_size(len(frames[-1][2]))
        durable = w.synced_lsn >= end
        err = StateApplyFailed(f"the state could not apply WAL records at LSN {first}.."
                               f"{end}: {exc}", lsn=first, durable=durable)
        self.m.storage_errors_total.labels(operation="state_apply").inc()
        self._set_fenced(err)
        log.exception("the state could not apply WAL records at LSN %d..%d, which are %s; "
                      "writes are fenced until a restart applies them", first, end,
                      "durable" if durable else "written but not yet synced")
        what = ("the write is durable in the WAL and a restart applies it" if durable else
                "the write is in the WAL but not yet synced: its outcome is unknown until "
                "a restart")
        return StateApplyFailed(f"{what}, but the state could not apply it now: {exc}",
                                lsn=first, durable=durable,
                                hint="restart stemedb-api; a retry with the same "
                                     "Idempotency-Key then returns the first response")

    def _timed_sync(self) -> None:
        w = self._writer
        assert w is not None
        t0 = time.perf_counter()
        try:
            w.sync()
        finally:
            d = time.perf_counter() - t0
            self.last_fsync_seconds = d
            self._last_fsync_mono = time.monotonic()
            self.m.wal_fsync_duration.observe(d)
            self.m.wal_fsync_latency.observe(d)
            if d >= limits.slow_fsync_warn_seconds:
                log.warning("slow WAL fsync: %.3fs on %s (threshold %.3fs)", d, w.segment,
                            limits.slow_fsync_warn_seconds)

    def _fence(self, exc: WalOpError) -> None:
        if exc.operation == "fsync":
            self.m.wal_fsync_errors_total.labels(segment=exc.segment).inc()
            msg = (f"fsync failed: Error: Failed to fsync WAL segment {exc.segment}: "
                   f"{os.strerror(exc.errno) if exc.errno else exc}")
        else:
            msg = (f"WAL write error: Error: Failed to {exc.operation} WAL segment "
                   f"{exc.segment}: {os.strerror(exc.errno) if exc.errno else exc}")
        self.m.storage_errors_total.labels(operation=exc.operation).inc()
        self._set_fenced(WalFsyncFailed(msg, segment=exc.segment))
        if self.config.log_fsync_errors:
            log.error("WAL fsync debug: operation=%s segment=%s errno=%s end_lsn=%s "
                      "synced_lsn=%s", exc.operation, exc.segment, exc.errno,
                      self._writer.end_lsn if self._writer else None,
                      self._writer.synced_lsn if self._writer else None)

    def _set_fenced(self, err: WalFsyncFailed | StateApplyFailed) -> None:
        first = self.fenced is None
        self.fenced = err
        self.m.wal_writes_fenced.set(1)
        if first:
            self.m.wal_fenced_total.inc()
            log.error("%s; writes are fenced until restart (nothing is retried)",
                      err.message)

    def _on_rotate(self, name: str) -> None:
        self.m.wal_segment_rotations_total.inc()
        w = self._writer
        if w is not None and w.header is not None:
            self._segments.append(_SegMeta(w.header.seq, w.header.base_lsn,
                                           w.header.capacity_bytes))
        log.info("WAL rotated to %s", name)

    def refresh_gauges(self) -> None:
        """Bring the WAL position gauges up to date (the server calls it per scrape)."""
        self._update_wal_gauges()

    def _update_wal_gauges(self) -> None:
        """WAL position gauges: after rotations, checkpoints and hold changes, at most
        every ``wal_gauges_refresh_seconds`` after writes, and at every scrape."""
        w = self._writer
        if w is None or w.header is None:
            return
        self._gauges_mono = time.monotonic()
        end = w.end_lsn
        self.m.wal_end_lsn.set(end)
        self.m.wal_segments.set(len(self._segments))
        self.m.wal_size_bytes.set(sum(s.capacity_bytes for s in self._segments))
        debt = max(0, end - self.checkpoint_lsn)
        self.m.wal_replay_debt_bytes.set(debt)
        self.m.wal_replay_debt_seconds.set(debt / max(self._apply_bytes_per_s, 1.0))
        for name, lsn in list(self._holds.items()):
            self.m.hold_lag_bytes.labels(hold=name).set(max(0, end - lsn))

    # ------------------------------------------------------------------ checkpoints
    def replay_debt_bytes(self) -> int:
        w = self._writer
        return 0 if w is None or w.header is None else max(0, w.end_lsn - self.checkpoint_lsn)

    def replay_debt_seconds(self) -> float:
        return self.replay_debt_bytes() / max(self._apply_bytes_per_s, 1.0)

    def _checkpoint_due(self) -> bool:
        cfg = self.config
        debt = self.replay_debt_bytes()
        if debt <= SEGMENT_HEADER_SIZE:
            return False
        return (debt >= cfg.checkpoint_wal_bytes
                or self.replay_debt_seconds() >= cfg.replay_budget_seconds
                or time.monotonic() - self._last_checkpoint_mono
                >= cfg.checkpoint_interval_seconds)

    def _maybe_checkpoint(self) -> None:
        if self._checkpoint_due():
            with contextlib.suppress(StemeError, sqlite3.Error, OSError):
                self._checkpoint()

    def checkpoint(self) -> cf.Future[CheckpointReport]:
        """Checkpoint now (on the writer thread)."""
        fut: cf.Future[CheckpointReport] = cf.Future()
        if self._writer_alive():
            self._queue.put(("checkpoint", fut))
        else:
            try:
                fut.set_result(self._checkpoint())
            except Exception as exc:
                fut.set_exception(exc)
        return fut

    def _checkpoint(self) -> CheckpointReport:
        conn, w = self._wconn, self._writer
        assert conn is not None and w is not None
        t0 = time.monotonic()
        try:
            if self.fenced is not None:
                raise self._fence_error()
            try:
                if w.needs_sync():
                    self._timed_sync()
            except WalOpError as exc:
                self._fence(exc)
                raise self._fence_error() from exc
            lsn = st.applied_end_lsn(conn) or w.end_lsn
            cutoff = time.time() - self.config.idempotency_ttl_seconds
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("DELETE FROM idempotency WHERE created_unix < ?", (cutoff,))
            st.set_meta(conn, "checkpoint_lsn", lsn)
            conn.execute("COMMIT")
            # RESTART, not TRUNCATE: the same guarantee (every frame copied, the database
            # file synced, the next write starts SQLite's WAL over), without freeing and
            # re-growing the file, which cost ~130 ms per checkpoint on the writer thread.
            with self._backfill.lock if self._backfill is not None else contextlib.nullcontext():
                busy, frames, done = conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
            if busy or (frames >= 0 and done < frames):
                raise Unavailable(f"SQLite checkpoint incomplete (busy={busy}, "
                                  f"{done}/{frames} frames); will retry", code="checkpoint_busy")
            self.checkpoint_lsn = lsn
            if self._on_checkpoint_durable is not None:
                self._on_checkpoint_durable(self.db_path)
            lowest = min([lsn, *self._holds.values()])
            removed = []
            assert w.header is not None
            keep: list[_SegMeta] = []
            for s in self._segments:
                if s.seq != w.header.seq and s.base_lsn + s.capacity_bytes <= lowest:
                    with contextlib.suppress(FileNotFoundError):
                        self.fs.remove(os.path.join(self.wal_dir, segment_name(s.seq)))
                    removed.append(segment_name(s.seq))
                else:
                    keep.append(s)
            if removed:
                self._segments = keep
                self.fs.sync_dir(self.wal_dir)
        except Exception as exc:
            self.m.checkpoint_failures_total.inc()
            self.last_checkpoint_error = str(exc)
            log.error("checkpoint failed: %s", exc)
            raise
        secs = time.monotonic() - t0
        self.last_checkpoint_unix = time.time()
        self.last_checkpoint_error = None
        self._last_checkpoint_mono = time.monotonic()
        self.m.checkpoint_duration_seconds.observe(secs)
        self.m.checkpoint_last_success_timestamp_seconds.set(self.last_checkpoint_unix)
        self.m.checkpoint_lsn.set(lsn)
        self._update_wal_gauges()
        if removed:
            log.info("checkpoint at LSN %d removed %s", lsn, ", ".join(removed))
        return CheckpointReport(lsn, removed, secs, lowest, dict(self._holds))

    # ------------------------------------------------------------------ holds -----
    def set_hold(self, name: str, lsn: int) -> cf.Future[int]:
        """Keep WAL from ``lsn`` on (an archiver's or replica's position)."""
        fut: cf.Future[int] = cf.Future()
        if self._writer_alive():
            self._queue.put(("hold", (name, lsn, fut)))
        else:
            fut.set_result(self._set_hold(name, lsn))
        return fut

    def _set_hold(self, name: str, lsn: int) -> int:
        conn = self._wconn
        assert conn is not None
        if lsn < 0:
            conn.execute("DELETE FROM holds WHERE name=?", (name,))
            self._hold_advanced.pop(name, None)
            if self._holds.pop(name, None) is not None:
                # A gone hold has no series: a stale lag would page someone forever.
                for series in (self.m.hold_lsn, self.m.hold_lag_bytes,
                               self.m.hold_last_advance_timestamp_seconds):
                    with contextlib.suppress(KeyError):
                        series.remove(name)
            return -1
        old = self._holds.get(name)
        conn.execute("INSERT INTO holds(name, lsn, updated_unix) VALUES(?,?,?) ON CONFLICT(name)"
                     " DO UPDATE SET lsn=excluded.lsn, updated_unix=excluded.updated_unix",
                     (name, lsn, time.time()))
        self._holds[name] = lsn
        if old is None or lsn != old:
            self._hold_advanced[name] = time.time()
            self.m.hold_last_advance_timestamp_seconds.labels(hold=name).set(
                self._hold_advanced[name])
        self.m.hold_lsn.labels(hold=name).set(lsn)
        self._update_wal_gauges()
        return lsn

    def holds(self) -> dict[str, dict[str, Any]]:
        end = self._writer.end_lsn if self._writer and self._writer.header else 0
        return {n: {"lsn": lsn, "lag_bytes": max(0, end - lsn),
                    "last_advance_unix": self._hold_advanced.get(n)}
                for n, lsn in list(self._holds.items())}

    # ------------------------------------------------------------------ reads -----
    def read(self, fn: Callable[[sqlite3.Connection], T]) -> cf.Future[T]:
        """Run ``fn(conn)`` on one of the engine's reader threads."""
        if self._readers is None:
            raise Closed("the engine is not started")
        return self._readers.submit(fn)

    def read_async(self, fn: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        """:meth:`read` for a coroutine: a future of the running loop, settled together
        with the other reads a reader thread took in the same wake-up."""
        if self._readers is None:
            raise Closed("the engine is not started")
        return self._readers.submit_async(fn)

    async def read_consistent_async(
            self, fn: Callable[[sqlite3.Connection], T], *, min_lsn: int | None = None,
            stale: bool = False, max_staleness_seconds: float | None = None,
            wait_timeout_seconds: float = limits.read_wait_timeout_seconds_default
    ) -> ReadResult[T]:
        """Read as SPEC "Reads and consistency" says, from a coroutine.

        Default (linearizable): wait until the state has applied every write
        acknowledged before this call; ``min_lsn``: wait until the record at that LSN is
        applied (read-your-writes); ``stale``: do not wait, but raise
        :class:`TooStale` when the state has been behind for longer than
        ``max_staleness_seconds``.  A wait that outlasts ``wait_timeout_seconds`` raises
        :class:`LsnNotReached`.  The result carries the applied LSN of the snapshot the
        read saw; a :class:`StemeError` raised by ``fn`` carries it as ``applied_lsn``.
        """
        ri = self.read_index
        if stale:
            if max_staleness_seconds is not None:
                behind = ri.staleness_seconds()
                if behind > max_staleness_seconds:
                    raise TooStale(f"the state is {behind * 1000:.0f} ms behind the WAL, "
                                   f"more than max_staleness_ms="
                                   f"{max_staleness_seconds * 1000:.0f}")
        else:
            await ri.wait_async(ri.target_for(min_lsn), wait_timeout_seconds)

        def in_snapshot(conn: sqlite3.Connection) -> tuple[T, int]:
            applied = st.applied_end_lsn(conn) or 0
            try:
                return fn(conn), applied
            except StemeError as exc:
                exc.applied_lsn = applied
                raise

        value, applied = await self.read_async(in_snapshot)
        return ReadResult(value, applied)

    def read_now(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` on the calling thread (for tools and tests; not the event loop)."""
        conn = st.connect(self.db_path, readonly=True)
        try:
            return run_in_snapshot(conn, fn)
        finally:
            conn.close()

    # ------------------------------------------------------------------ status ----
    def status(self) -> dict[str, Any]:
        """A cheap snapshot of the engine (no I/O but a cached statvfs)."""
        w = self._writer
        d = self._disk
        sd = self._state_disk or d
        return {
            "wal": {
                "dir": self.wal_dir,
                "resolved_dir": self.wal_resolved_dir,
                "segment": w.segment if w and w.header else None,
                "segments": len(self._segments),
                "size_bytes": sum(s.capacity_bytes for s in self._segments),
                "end_lsn": w.end_lsn if w and w.header else None,
                "synced_lsn": w.synced_lsn if w and w.header else None,
                "fsync_policy": self.config.fsync,
                "segment_size_bytes": self.config.segment_size_bytes,
            },
            "fsync": {
                "fenced": self.fenced is not None,
                "error": self.fenced.message if self.fenced else None,
                "last_seconds": self.last_fsync_seconds,
                "p99_seconds": _nan_to_none(self.m.wal_fsync_duration.quantile(0.99)),
            },
            "checkpoint": {
                "lsn": self.checkpoint_lsn,
                "last_unix": self.last_checkpoint_unix,
                "last_error": self.last_checkpoint_error,
                "replay_debt_bytes": self.replay_debt_bytes(),
                "replay_debt_seconds": round(self.replay_debt_seconds(), 4),
                "replay_budget_seconds": self.config.replay_budget_seconds,
            },
            "replay": self.progress.as_dict(),
            "disk": None if d is None or sd is None else {
                "free_bytes": d.free_bytes, "size_bytes": d.size_bytes,
                "free_inodes": d.free_inodes, "reserve_bytes": self.config.disk_reserve_bytes,
                "state_free_bytes": sd.free_bytes, "state_size_bytes": sd.size_bytes,
                "refusing_writes": self._refusal() is not None},
            "holds": self.holds(),
            "archive": {"configured": False,
                        "note": "no archiver is built yet; holds are the hook it will use"},
            "applied_records": self.applied_records,
            "accepting_writes": self.accepting and self.fenced is None,
        }


def _nan_to_none(v: float) -> float | None:
    return None if v != v else v
