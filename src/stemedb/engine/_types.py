"""The engine's vocabulary: its configuration, what a write is and what it answers,
the reports of recovery and checkpoints, and the checks every request passes before it
reaches the committer."""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from .. import limits
from ..archive import ArchiveSettings
from ..backup._settings import BackupSettings
from ..errors import InvalidInput
from ..model import validate_assertion, validate_batch, validate_vote
from ..wal import RecordType

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
    # How far the state may lag the durable WAL before the committer waits for it.
    max_apply_lag_bytes: int = limits.max_apply_lag_bytes_default
    # Drills and tests: the applier sleeps this long before each transaction.
    apply_delay_ms: int = 0
    # [archive]: continuous WAL archiving (stemedb.archive); off while its url is "".
    archive: ArchiveSettings = field(default_factory=ArchiveSettings)
    # [backup]: base backups and restore drills (stemedb.backup), with archiving on.
    backup: BackupSettings = field(default_factory=BackupSettings)

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
        if self.max_apply_lag_bytes < limits.max_apply_lag_bytes_min:
            raise InvalidInput(f"state.max_apply_lag_bytes must be at least "
                               f"{limits.max_apply_lag_bytes_min}, got "
                               f"{self.max_apply_lag_bytes}")
        if not 0 <= self.apply_delay_ms <= limits.apply_delay_ms_max:
            raise InvalidInput(f"state.apply_delay_ms must be between 0 and "
                               f"{limits.apply_delay_ms_max}, got {self.apply_delay_ms}")
        self.archive.validate()
        self.backup.validate()
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


def validate_request(request: WriteRequest) -> None:
    """Normalize and check a request's ops in place (see stemedb.model)."""
    t = request.type
    if t in (RecordType.GENESIS, RecordType.TERM):
        raise InvalidInput(f"the {t.name.lower()} record is written by the engine itself")
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
