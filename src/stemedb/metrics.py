"""Every metric StemeDB exports, declared in one place.

The names are part of the product contract (SPEC.md): dashboards, alert rules and
runbooks in ``ops/`` and ``docs/operations/`` query them verbatim, and
``tests/test_alert_rules.py`` checks that every name they use is declared here.

Two rules keep a scrape cheap and honest:

- Nothing is computed by walking the disk at scrape time.  The engine sets the gauges
  (WAL size, free bytes, replay debt, ...) when it already knows the value: on a
  rotation, a checkpoint, or a disk-guard probe.  Only the process collectors (RSS,
  open file descriptors) read ``/proc`` during a scrape.
- Every metric takes its registry from :class:`Metrics`, so a test builds a fresh
  ``CollectorRegistry()`` and sees only its own samples.

``stemedb_wal_fsync_duration_seconds`` is a summary whose quantiles cover a sliding
window (:class:`SlidingWindowSummary`), because the runbook alert is written as
``stemedb_wal_fsync_duration_seconds{quantile="0.99"} > 0.1`` and the client library's
own ``Summary`` exports no quantiles.  The same fsyncs also feed a histogram,
``stemedb_wal_fsync_latency_seconds``, which aggregates across instances and over any
range in PromQL; the summary answers "how slow are fsyncs on this node right now".
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from importlib import metadata

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import Metric, SummaryMetricFamily
from prometheus_client.registry import DuplicateTimeseries
from prometheus_client.samples import Sample

from stemedb.limits import fsync_window_samples_max as _FSYNC_WINDOW_SAMPLES_MAX
from stemedb.limits import fsync_window_seconds as _FSYNC_WINDOW_SECONDS

__all__ = [
    "ARCHIVE_FAILURE_REASONS",
    "CHECKPOINT_DURATION_BUCKETS_SECONDS",
    "FSYNC_LATENCY_BUCKETS_SECONDS",
    "GROUP_COMMIT_BATCH_BYTES_BUCKETS",
    "GROUP_COMMIT_BATCH_RECORDS_BUCKETS",
    "HTTP_REQUEST_DURATION_BUCKETS_SECONDS",
    "STORAGE_OPERATIONS",
    "Metrics",
    "SlidingWindowSummary",
]

# Why an archive upload failed: the label of stemedb_archive_failures_total (each series
# exists at 0 from the start, so rate() sees the first failure).
ARCHIVE_FAILURE_REASONS: tuple[str, ...] = (
    "auth",  # credentials refused (expired, revoked, wrong), or no credentials at all
    "connect",  # the endpoint could not be reached
    "timeout",  # the endpoint did not answer in time
    "not_found",  # the bucket or directory is not there
    "io",  # a file:// archive's file system failed
    "conflict",  # an object name holds other bytes: another history writes there
    "verify",  # an object read back differs from what was written, or fails its checks
    "archive_mismatch",  # the archive holds objects that do not continue this node's WAL
    "wal_read",  # the local WAL could not be read (or is damaged) before shipping
    "hold",  # the writer did not move the WAL hold
    "other",
)

# --- buckets, each with its unit ------------------------------------------------
# 50 us (a write-back cache) to 10 s (a dying disk); 0.1 s is the WALFsyncSlow threshold.
FSYNC_LATENCY_BUCKETS_SECONDS: tuple[float, ...] = (
    5e-5,
    1e-4,
    2.5e-4,
    5e-4,
    1e-3,
    2.5e-3,
    5e-3,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
# Requests per group commit: 1 .. 1024 (limits.batch_records_max), powers of 2.
GROUP_COMMIT_BATCH_RECORDS_BUCKETS: tuple[float, ...] = tuple(float(2**i) for i in range(11))
# Bytes per group commit: 256 B .. 16 MiB, powers of 4.
GROUP_COMMIT_BATCH_BYTES_BUCKETS: tuple[float, ...] = tuple(float(256 * 4**i) for i in range(9))
# A checkpoint is an SQLite commit plus segment deletion: 10 ms .. 5 min.
CHECKPOINT_DURATION_BUCKETS_SECONDS: tuple[float, ...] = (
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
)
# HTTP latency: 0.5 ms (a cached read) .. 10 s (a write stuck behind a stalled fsync).
HTTP_REQUEST_DURATION_BUCKETS_SECONDS: tuple[float, ...] = (
    5e-4,
    1e-3,
    2.5e-3,
    5e-3,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

# Values of the `operation` label of stemedb_storage_errors_total.  Their series are
# created at zero so that rate() and increase() see the very first error.
# docs/operations/runbooks/storage-errors.md says what a failure of each one means.
STORAGE_OPERATIONS: tuple[str, ...] = (
    "write",  # appending records to the open segment
    "fsync",  # fdatasync of a segment or of the WAL directory
    "open",  # opening or creating a segment
    "rotate",  # closing a full segment and creating the next one
    "fallocate",  # preallocating a segment
    "rename",  # publishing a segment under its final name
    "unlink",  # deleting segments after a checkpoint
    "read",  # reading segments (replay, verify)
    "apply",  # applying a logged batch to the state database
    "sqlite",  # other state database operations
    "statvfs",  # reading free space of the WAL filesystem (the disk guard)
)

_QUANTILES_DEFAULT: tuple[float, ...] = (0.5, 0.9, 0.99)


class SlidingWindowSummary:
    """A summary whose quantiles cover the samples of the last ``window_seconds``.

    A custom collector: register it on a ``CollectorRegistry`` (the ``registry``
    argument does so; ``None`` leaves it unregistered, as in prometheus_client).  A
    scrape exports, in the Prometheus text format::

        name{quantile="0.5"} 0.0004
        name{quantile="0.9"} 0.0011
        name{quantile="0.99"} 0.012
        name_sum 12.5
        name_count 20481

    The quantiles are exact over the samples kept (nearest rank: the smallest kept value
    with at least a fraction ``q`` of the kept values at or below it), and ``NaN`` when
    the window holds no sample, as in the Go client.  ``_sum`` and ``_count`` are
    cumulative over the life of the process, like any summary.

    Memory is bounded: at most ``samples_max`` samples are kept; when more arrive within
    one window the oldest are dropped first, so under load the quantiles cover the most
    recent ``samples_max`` observations.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        *,
        window_seconds: float,
        samples_max: int,
        quantiles: tuple[float, ...] = _QUANTILES_DEFAULT,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not window_seconds > 0:
            raise ValueError(f"window_seconds must be > 0, got {window_seconds!r}")
        if samples_max < 1:
            raise ValueError(f"samples_max must be >= 1, got {samples_max!r}")
        if not quantiles:
            raise ValueError("quantiles must not be empty")
        for q in quantiles:
            _check_quantile(q)
        if len(set(quantiles)) != len(quantiles):
            raise ValueError(f"quantiles must be distinct, got {quantiles!r}")
        # Building the family once validates the name the same way a scrape would.
        SummaryMetricFamily(name, documentation)
        self.name = name
        self.documentation = documentation
        self.window_seconds = window_seconds
        self.samples_max = samples_max
        self.quantiles = tuple(sorted(quantiles))
        self._clock = clock
        self._lock = threading.Lock()
        # (observed_at, value), oldest first; maxlen drops the oldest on overflow.
        self._samples: deque[tuple[float, float]] = deque(maxlen=samples_max)
        self._count = 0
        self._sum = 0.0
        if registry is not None:
            registry.register(self)

    def observe(self, value: float) -> None:
        """Record one observation (in the metric's unit, e.g. seconds)."""
        value = float(value)
        if math.isnan(value):
            raise ValueError("cannot observe NaN")
        with self._lock:
            now = self._clock()
            self._expire(now)
            self._samples.append((now, value))
            self._count += 1
            self._sum += value

    def quantile(self, q: float) -> float:
        """The ``q`` quantile of the samples in the window; ``NaN`` when it is empty."""
        _check_quantile(q)
        values = self._window_values()
        return _nearest_rank(values, q)

    def collect(self) -> Iterable[Metric]:
        """The summary family: one sample per quantile, then ``_sum`` and ``_count``."""
        with self._lock:
            self._expire(self._clock())
            values = sorted(v for _, v in self._samples)
            count, total = self._count, self._sum
        family = SummaryMetricFamily(self.name, self.documentation)
        for q in self.quantiles:
            family.samples.append(
                Sample(self.name, {"quantile": _format_quantile(q)}, _nearest_rank(values, q))
            )
        family.add_metric([], count_value=count, sum_value=total)
        return [family]

    def describe(self) -> Iterable[Metric]:
        """The family without samples, so a registry can reject a duplicate name."""
        return [SummaryMetricFamily(self.name, self.documentation)]

    def _window_values(self) -> list[float]:
        with self._lock:
            self._expire(self._clock())
            return sorted(v for _, v in self._samples)

    def _expire(self, now: float) -> None:
        # Called with the lock held.  Each sample is popped at most once: O(1) amortized.
        oldest_kept = now - self.window_seconds
        samples = self._samples
        while samples and samples[0][0] <= oldest_kept:
            samples.popleft()


def _check_quantile(q: float) -> None:
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"a quantile must be within [0, 1], got {q!r}")


def _format_quantile(q: float) -> str:
    # As Go's strconv.FormatFloat(q, 'g', -1, 64), which the Go client uses: 0.5, 0.99, 1.
    text = repr(float(q))
    return text[:-2] if text.endswith(".0") else text


def _nearest_rank(sorted_values: list[float], q: float) -> float:
    n = len(sorted_values)
    if n == 0:
        return math.nan
    rank = max(1, math.ceil(q * n))  # 1-based
    return sorted_values[rank - 1]


def _version() -> str:
    try:
        return metadata.version("stemedb")
    except metadata.PackageNotFoundError:
        return "unknown"


class Metrics:
    """All of StemeDB's metrics, registered on one registry.

    ``Metrics()`` builds a fresh ``CollectorRegistry`` (never the global one);
    ``Metrics(registry)`` uses the one given.  Either way the process collector
    (``process_resident_memory_bytes``, ``process_open_fds``, ...) and the platform
    collector are on it.  Serve ``generate_latest(metrics.registry)``.

    Registering a second ``Metrics`` on the same registry raises ``ValueError``
    (duplicated time series).
    """

    registry: CollectorRegistry

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        fsync_window_seconds: float = _FSYNC_WINDOW_SECONDS,  # 60 s
        fsync_window_samples_max: int = _FSYNC_WINDOW_SAMPLES_MAX,  # 4096
    ) -> None:
        if registry is None:
            registry = CollectorRegistry()
        # RSS, open fds, CPU and start time (process_*), python_info.  A registry that has
        # them already (the global one does) keeps its own.
        with contextlib.suppress(DuplicateTimeseries):
            ProcessCollector(registry=registry)
        with contextlib.suppress(DuplicateTimeseries):
            PlatformCollector(registry=registry)
        self.registry = registry
        r = registry

        # --- process ------------------------------------------------------------
        self.process_threads = Gauge(
            "stemedb_process_threads",
            "Python threads alive in the StemeDB process.",
            registry=r,
        )
        self.process_threads.set_function(threading.active_count)
        self.build_info = Gauge(
            "stemedb_build_info",
            "Always 1; the version label says which StemeDB build is running.",
            ["version"],
            registry=r,
        )
        self.build_info.labels(version=_version()).set(1)

        # --- WAL: fsync -----------------------------------------------------------
        self.wal_fsync_errors_total = Counter(
            "stemedb_wal_fsync_errors_total",
            "WAL fsync (fdatasync) calls that failed, by segment file name. "
            "The first failure fences writes until restart.",
            ["segment"],
            registry=r,
        )
        self.wal_fsync_duration = SlidingWindowSummary(
            "stemedb_wal_fsync_duration_seconds",
            f"WAL fsync duration in seconds; quantiles over the last "
            f"{fsync_window_seconds:g} seconds (at most {fsync_window_samples_max} samples).",
            window_seconds=fsync_window_seconds,
            samples_max=fsync_window_samples_max,
            registry=r,
        )
        self.wal_fsync_latency = Histogram(
            "stemedb_wal_fsync_latency_seconds",
            "WAL fsync duration in seconds, as a histogram (aggregatable across instances).",
            buckets=FSYNC_LATENCY_BUCKETS_SECONDS,
            registry=r,
        )

        # --- WAL: writing and segments ---------------------------------------------
        self.wal_segment_rotations_total = Counter(
            "stemedb_wal_segment_rotations_total",
            "WAL segments closed because they were full and a new one opened.",
            registry=r,
        )
        self.wal_bytes_written_total = Counter(
            "stemedb_wal_bytes_written_total",
            "Bytes appended to the WAL (record frames, headers included).",
            registry=r,
        )
        self.wal_records_written_total = Counter(
            "stemedb_wal_records_written_total",
            "Records appended to the WAL.",
            registry=r,
        )
        self.wal_segments = Gauge(
            "stemedb_wal_segments",
            "WAL segment files on disk.",
            registry=r,
        )
        self.wal_size_bytes = Gauge(
            "stemedb_wal_size_bytes",
            "Bytes of WAL segment files on disk, preallocated space included.",
            registry=r,
        )
        self.wal_end_lsn = Gauge(
            "stemedb_wal_end_lsn",
            "LSN (byte position in the whole log) just past the last record written.",
            registry=r,
        )
        self.wal_replay_debt_bytes = Gauge(
            "stemedb_wal_replay_debt_bytes",
            "WAL bytes written since the last checkpoint: what a restart must replay.",
            registry=r,
        )
        self.wal_replay_debt_seconds = Gauge(
            "stemedb_wal_replay_debt_seconds",
            "Estimated seconds a restart would spend replaying the WAL now "
            "(replay debt bytes / measured replay throughput).",
            registry=r,
        )
        self.wal_writes_fenced = Gauge(
            "stemedb_wal_writes_fenced",
            "1 while writes are fenced after a WAL write or fsync failure (until restart).",
            registry=r,
        )
        self.wal_fenced_total = Counter(
            "stemedb_wal_fenced_total",
            "Times the WAL writer fenced itself after a write or fsync failure.",
            registry=r,
        )

        # --- group commit -----------------------------------------------------------
        self.group_commit_batch_records = Histogram(
            "stemedb_group_commit_batch_records",
            "Records made durable by one group commit (one fsync).",
            buckets=GROUP_COMMIT_BATCH_RECORDS_BUCKETS,
            registry=r,
        )
        self.group_commit_batch_bytes = Histogram(
            "stemedb_group_commit_batch_bytes",
            "Bytes made durable by one group commit (one fsync).",
            buckets=GROUP_COMMIT_BATCH_BYTES_BUCKETS,
            registry=r,
        )
        self.caller_commits_total = Counter(
            "stemedb_group_commit_by_caller_total",
            "Group commits made by the thread that submitted the write (an embedded "
            "Engine.write() that found the writer idle), not by the writer thread.",
            registry=r,
        )

        # --- checkpoints --------------------------------------------------------------
        self.checkpoint_duration_seconds = Histogram(
            "stemedb_checkpoint_duration_seconds",
            "Duration of successful checkpoints in seconds.",
            buckets=CHECKPOINT_DURATION_BUCKETS_SECONDS,
            registry=r,
        )
        self.sqlite_backfill_seconds = Histogram(
            "stemedb_sqlite_backfill_duration_seconds",
            "Duration of background passes copying SQLite's WAL into its database file"
            " (PRAGMA wal_checkpoint(PASSIVE)); each shortens the next checkpoint.",
            buckets=CHECKPOINT_DURATION_BUCKETS_SECONDS,
            registry=r,
        )
        self.checkpoint_last_success_timestamp_seconds = Gauge(
            "stemedb_checkpoint_last_success_timestamp_seconds",
            "Unix time of the last successful checkpoint (0 before the first one).",
            registry=r,
        )
        self.checkpoint_failures_total = Counter(
            "stemedb_checkpoint_failures_total",
            "Checkpoints that failed.",
            registry=r,
        )
        self.checkpoint_lsn = Gauge(
            "stemedb_checkpoint_lsn",
            "LSN up to which the state is durable in SQLite (the last checkpoint).",
            registry=r,
        )

        # --- replay (recovery) ------------------------------------------------------------
        # -- the state behind the WAL (the applier) and the read index ----------------
        self.state_apply_lag_bytes = Gauge(
            "stemedb_state_apply_lag_bytes",
            "Durable WAL bytes the state has not applied yet (durable minus applied LSN).",
            registry=r,
        )
        self.state_applied_lsn = Gauge(
            "stemedb_state_applied_lsn",
            "End LSN of the last WAL record the state (SQLite) has applied.",
            registry=r,
        )
        self.state_applied_records_total = Counter(
            "stemedb_state_applied_records_total",
            "WAL records applied to the state since the process started (replay and live).",
            registry=r,
        )
        self.state_apply_backpressure_seconds_total = Counter(
            "stemedb_state_apply_backpressure_seconds_total",
            "Seconds the committer waited because the state lagged more than "
            "[state] max_apply_lag_bytes behind the WAL.",
            registry=r,
        )
        self.replay_in_progress = Gauge(
            "stemedb_replay_in_progress",
            "1 while the WAL is being replayed at startup.",
            registry=r,
        )
        self.replay_bytes_done = Gauge(
            "stemedb_replay_bytes_done",
            "WAL bytes replayed so far by the current or last replay.",
            registry=r,
        )
        self.replay_bytes_total = Gauge(
            # Not "_total": that suffix is reserved for counters (promtool check metrics).
            "stemedb_replay_bytes_target",
            "WAL bytes the current or last replay has to read in all "
            "(progress = stemedb_replay_bytes_done / stemedb_replay_bytes_target).",
            registry=r,
        )
        self.replay_records_total = Counter(
            "stemedb_replay_records_total",
            "WAL records applied by replay since the process started.",
            registry=r,
        )
        self.replay_last_duration_seconds = Gauge(
            "stemedb_replay_last_duration_seconds",
            "Duration of the last completed replay in seconds.",
            registry=r,
        )
        self.replay_throughput_bytes_per_second = Gauge(
            "stemedb_replay_throughput_bytes_per_second",
            "Measured replay throughput in bytes per second (used for the replay debt estimate).",
            registry=r,
        )

        # --- disk: the filesystem holding the WAL, and the disk guard --------------------
        self.wal_fs_free_bytes = Gauge(
            "stemedb_wal_fs_free_bytes",
            "Bytes available to StemeDB on the filesystem holding the WAL.",
            registry=r,
        )
        self.wal_fs_size_bytes = Gauge(
            "stemedb_wal_fs_size_bytes",
            "Size in bytes of the filesystem holding the WAL.",
            registry=r,
        )
        self.wal_fs_free_inodes = Gauge(
            "stemedb_wal_fs_free_inodes",
            "Inodes available on the filesystem holding the WAL.",
            registry=r,
        )
        self.wal_fs_inodes = Gauge(
            "stemedb_wal_fs_inodes",
            "Inodes in all on the filesystem holding the WAL (0 where the filesystem "
            "does not count them).",
            registry=r,
        )
        self.wal_linked = Gauge(
            "stemedb_wal_linked",
            "1 when <data-dir>/wal links to a directory elsewhere ([wal] dir): the state "
            "database's filesystem is then watched on its own (stemedb_state_fs_*).",
            registry=r,
        )
        self.state_fs_free_bytes = Gauge(
            "stemedb_state_fs_free_bytes",
            "Bytes available to StemeDB on the filesystem holding the state database "
            "(the WAL's own filesystem unless wal.dir puts the WAL elsewhere).",
            registry=r,
        )
        self.state_fs_size_bytes = Gauge(
            "stemedb_state_fs_size_bytes",
            "Size in bytes of the filesystem holding the state database.",
            registry=r,
        )
        self.disk_guard_reserve_bytes = Gauge(
            "stemedb_disk_guard_reserve_bytes",
            "Free bytes the disk guard keeps in reserve: writes get 507 below it "
            "([wal] disk_reserve_bytes).",
            registry=r,
        )
        self.disk_guard_refusals_total = Counter(
            "stemedb_disk_guard_refusals_total",
            "Writes refused with 507 insufficient_storage by the disk guard.",
            registry=r,
        )
        self.storage_errors_total = Counter(
            "stemedb_storage_errors_total",
            "Failed storage operations, by operation (write, fsync, open, rotate, fallocate, "
            "rename, unlink, read, apply, sqlite, statvfs).",
            ["operation"],
            registry=r,
        )
        for operation in STORAGE_OPERATIONS:
            self.storage_errors_total.labels(operation=operation)

        # --- holds: what keeps WAL segments from being deleted --------------------------
        self.hold_lsn = Gauge(
            "stemedb_wal_hold_lsn",
            "LSN below which a hold allows WAL segments to be deleted, by hold.",
            ["hold"],
            registry=r,
        )
        self.hold_lag_bytes = Gauge(
            "stemedb_wal_hold_lag_bytes",
            "WAL bytes a hold keeps on disk (WAL end LSN minus the hold's LSN), by hold.",
            ["hold"],
            registry=r,
        )
        self.hold_last_advance_timestamp_seconds = Gauge(
            "stemedb_wal_hold_last_advance_timestamp_seconds",
            "Unix time a hold's LSN last moved forward, by hold.",
            ["hold"],
            registry=r,
        )

        # --- archive: continuous WAL archiving (stemedb.archive) --------------------------
        self.archive_last_success_timestamp_seconds = Gauge(
            "stemedb_archive_last_success_timestamp_seconds",
            "Unix time the archiver last stored a WAL object and read it back verified "
            "(0 before the first).",
            registry=r,
        )
        self.archive_failures_total = Counter(
            "stemedb_archive_failures_total",
            "Failed archive operations (each try of an upload, read-back, listing or hold "
            "move), by reason.",
            ["reason"],
            registry=r,
        )
        for reason in ARCHIVE_FAILURE_REASONS:
            self.archive_failures_total.labels(reason=reason)
        self.archive_backlog_bytes = Gauge(
            "stemedb_archive_backlog_bytes",
            "Durable WAL bytes not yet in the archive (kept on disk by the archive's hold).",
            registry=r,
        )
        self.archive_lag_seconds = Gauge(
            "stemedb_archive_lag_seconds",
            "Age in seconds of the oldest durable WAL record not yet archived; 0 when the "
            "archive has everything durable (the recovery point a lost disk would cost).",
            registry=r,
        )
        self.archive_max_backlog_bytes = Gauge(
            "stemedb_archive_max_backlog_bytes",
            "[archive] max_backlog_bytes: past it on_backlog_full acts.",
            registry=r,
        )
        self.archive_backlog_full = Gauge(
            "stemedb_archive_backlog_full",
            "1 while the archive backlog is at or past max_backlog_bytes.",
            registry=r,
        )
        self.archive_lsn = Gauge(
            "stemedb_archive_lsn",
            "LSN up to which the current timeline is archived and verified.",
            registry=r,
        )
        self.archive_timeline = Gauge(
            "stemedb_archive_timeline",
            "The timeline the archiver writes (it grows when WAL is dropped, or after a "
            "restore).",
            registry=r,
        )
        self.archive_objects_total = Counter(
            "stemedb_archive_objects_total",
            "WAL objects stored in the archive and verified.",
            registry=r,
        )
        self.archive_uploaded_bytes_total = Counter(
            "stemedb_archive_uploaded_bytes_total",
            "Bytes of WAL objects (compressed, encrypted when configured) stored in the "
            "archive.",
            registry=r,
        )
        self.archive_refused_writes_total = Counter(
            "stemedb_archive_refused_writes_total",
            "Writes refused with 507 archive_backlog_full (on_backlog_full=refuse_writes).",
            registry=r,
        )
        self.archive_drops_total = Counter(
            "stemedb_archive_drops_total",
            "Times WAL was released without being archived and a new timeline began "
            "(on_backlog_full=drop).",
            registry=r,
        )
        self.archive_dropped_bytes_total = Counter(
            "stemedb_archive_dropped_bytes_total",
            "WAL bytes released without being archived (on_backlog_full=drop).",
            registry=r,
        )
        self.archive_heartbeat_last_success_timestamp_seconds = Gauge(
            "stemedb_archive_heartbeat_last_success_timestamp_seconds",
            "Unix time [archive] heartbeat_url last answered 2xx (0: never, or none set).",
            registry=r,
        )
        self.archive_heartbeat_failures_total = Counter(
            "stemedb_archive_heartbeat_failures_total",
            "Heartbeat requests to [archive] heartbeat_url that failed or were not 2xx.",
            registry=r,
        )

        # --- base backups and restore drills (stemedb.backup) --------------------------
        self.backup_last_success_timestamp_seconds = Gauge(
            "stemedb_backup_last_success_timestamp_seconds",
            "Unix time the last base backup was stored with its manifest, every part read "
            "back (0: none since the server started and none in the archive).",
            registry=r,
        )
        self.backup_last_verified_timestamp_seconds = Gauge(
            "stemedb_backup_last_verified_timestamp_seconds",
            "Unix time the last restore drill passed: a backup restored, the archive "
            "replayed to its newest record and the result checked (0: never).",
            registry=r,
        )
        self.restore_drill_failures_total = Counter(
            "stemedb_restore_drill_failures_total",
            "Restore drills that failed (the restore, the replay or a check).",
            registry=r,
        )
        self.restore_drills_total = Counter(
            "stemedb_restore_drills_total",
            "Restore drills run, passed or failed.",
            registry=r,
        )
        self.backup_failures_total = Counter(
            "stemedb_backup_failures_total",
            "Base backups that failed (copy, upload or read-back).",
            registry=r,
        )
        self.backup_duration_seconds = Gauge(
            "stemedb_backup_duration_seconds",
            "Seconds the last successful base backup took, copy and upload.",
            registry=r,
        )
        self.backup_size_bytes = Gauge(
            "stemedb_backup_size_bytes",
            "Bytes of state in the last successful base backup (before compression).",
            registry=r,
        )
        self.backup_lsn = Gauge(
            "stemedb_backup_lsn",
            "The LSN the last successful base backup is consistent at.",
            registry=r,
        )
        self.backup_interval_seconds = Gauge(
            "stemedb_backup_interval_seconds",
            "[backup] interval_hours in seconds (0: no archive, or no scheduled backups); "
            "BackupStale compares the last backup's age with it.",
            registry=r,
        )
        self.backup_drill_interval_seconds = Gauge(
            "stemedb_backup_drill_interval_seconds",
            "[backup] drill_interval_hours in seconds (0: no archive, or no scheduled "
            "drills); RestoreDrillFailing compares the last passed drill's age with it.",
            registry=r,
        )

        # --- cluster and replication ---------------------------------------------------
        self.cluster_enabled = Gauge(
            "stemedb_cluster_enabled",
            "1 when the node is a member of a cluster ([cluster] name is set), 0 when it "
            "runs alone (and is its own leader).",
            registry=r,
        )
        self.cluster_is_leader = Gauge(
            "stemedb_cluster_is_leader",
            "1 while this node leads and may acknowledge writes (it holds the leader key "
            "and is before its lease deadline); a node without [cluster] is its own leader.",
            registry=r,
        )
        self.cluster_term = Gauge(
            "stemedb_cluster_term",
            "The highest leader term this node has seen (the etcd revision at which that "
            "leadership began); 0 before it has seen one.",
            registry=r,
        )
        self.cluster_leader_changes_total = Counter(
            "stemedb_cluster_leader_changes_total",
            "Leaderships this node has seen begin (the first one included).",
            registry=r,
        )
        self.replication_lag_bytes = Gauge(
            "stemedb_replication_lag_bytes",
            "On the leader, per replica: the leader's durable LSN minus the replica's "
            "durable LSN as the replica last reported it.",
            ["replica"],
            registry=r,
        )
        self.replication_lag_seconds = Gauge(
            "stemedb_replication_lag_seconds",
            "On the leader, per replica: how long the oldest record the replica does not "
            "yet hold durably has been durable on the leader (0 when caught up).",
            ["replica"],
            registry=r,
        )
        self.replication_connected = Gauge(
            "stemedb_replication_connected",
            "On the leader, per replica: 1 while the replica is streaming (it asked for WAL "
            "within the last replication_disconnect_seconds), 0 once it has not.",
            ["replica"],
            registry=r,
        )
        self.replication_hold_dropped_total = Counter(
            "stemedb_replication_hold_dropped_total",
            "On the leader, per replica: WAL holds dropped because the replica fell more "
            "than max_replica_lag_bytes behind (it must re-seed from a snapshot).",
            ["replica"],
            registry=r,
        )
        self.replication_streaming = Gauge(
            "stemedb_replication_streaming",
            "On a replica: 1 while it receives the leader's WAL, 0 otherwise (and on the "
            "leader).",
            registry=r,
        )
        self.replication_received_bytes_total = Counter(
            "stemedb_replication_received_bytes_total",
            "On a replica: WAL bytes received from the leader and made durable here.",
            registry=r,
        )
        self.replication_reseeds_total = Counter(
            "stemedb_replication_reseeds_total",
            "On a replica: times it replaced its state with a snapshot from the leader "
            "(a fresh data directory, a forked log, or a dropped hold).",
            registry=r,
        )
        self.replication_diverged_bytes_total = Counter(
            "stemedb_replication_diverged_bytes_total",
            "WAL bytes this node set aside because the leader's log does not have them "
            "(a former leader's tail).",
            registry=r,
        )

        # --- HTTP ----------------------------------------------------------------------
        self.http_requests_total = Counter(
            "stemedb_http_requests_total",
            "HTTP requests answered, by route template, method and status code.",
            ["route", "method", "status"],
            registry=r,
        )
        self.http_request_duration_seconds = Histogram(
            "stemedb_http_request_duration_seconds",
            "HTTP request duration in seconds, by route template and method.",
            ["route", "method"],
            buckets=HTTP_REQUEST_DURATION_BUCKETS_SECONDS,
            registry=r,
        )
        self.ready = Gauge(
            "stemedb_ready",
            "1 when /readyz answers 200: replay done, not draining, writes possible.",
            registry=r,
        )
        self.draining = Gauge(
            "stemedb_draining",
            "1 after POST /v1/admin/node/drain: the node takes no new writes.",
            registry=r,
        )
