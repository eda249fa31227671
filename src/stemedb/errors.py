"""One error tree for StemeDB, rooted in :class:`StemeError`.

Every error carries a stable snake_case ``code`` (what the HTTP API and scripts
see) and an optional ``hint`` saying what to try next.
"""

from __future__ import annotations


class StemeError(Exception):
    """Base of every error StemeDB raises on purpose."""

    code = "internal_error"
    http_status = 500
    # Set on an error of a read: the state's applied LSN in the snapshot that read it.
    applied_lsn: int | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} (try: {self.hint})"
        return self.message


class InvalidInput(StemeError):
    """The request is malformed; nothing was written."""

    code = "invalid_input"
    http_status = 400

    def __init__(self, message: str, *, code: str | None = None, hint: str | None = None):
        super().__init__(message, hint=hint)
        if code is not None:
            self.code = code


class NotFound(StemeError):
    code = "not_found"
    http_status = 404


class Conflict(StemeError):
    code = "conflict"
    http_status = 409


class IdempotencyConflict(Conflict):
    code = "idempotency_key_reused"


class TooLarge(StemeError):
    code = "too_large"
    http_status = 413


class Unavailable(StemeError):
    """Temporarily unable to take the request (replaying, draining, queue full)."""

    code = "unavailable"
    http_status = 503

    def __init__(self, message: str, *, code: str = "unavailable", hint: str | None = None):
        super().__init__(message, hint=hint)
        self.code = code


class InsufficientStorage(StemeError):
    """The disk guard refuses writes: free space on the WAL filesystem is under the reserve."""

    code = "insufficient_storage"
    http_status = 507


class WalFsyncFailed(StemeError):
    """The WAL could not be made durable.  The writer is fenced until restart."""

    code = "wal_fsync_failed"
    http_status = 500

    def __init__(self, message: str, *, segment: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.segment = segment


class StateApplyFailed(StemeError):
    """The state (SQLite) failed under a write.

    ``lsn`` is None when nothing reached the WAL (the write did not happen).  Otherwise
    the record is in the WAL from ``lsn`` on, ``durable`` says whether it was synced,
    and a restart's replay applies it: the message says so, for a write that is not
    lost must never be reported as failed.  The writer is fenced until that restart.
    """

    code = "state_apply_failed"
    http_status = 500

    def __init__(self, message: str, *, lsn: int | None, durable: bool,
                 hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.lsn = lsn
        self.durable = durable


class CorruptionError(StemeError):
    """A WAL record that was durable is unreadable.  Recovery stops; nothing is guessed."""

    code = "wal_corrupt"
    http_status = 500

    def __init__(self, segment: str, offset: int, reason: str, *, lsn: int | None = None,
                 kind: str = "corrupt_record") -> None:
        self.segment = segment
        self.offset = offset
        self.reason = reason
        self.lsn = lsn
        self.kind = kind
        hint = (f"stemedb wal verify --file {segment}, then stemedb-wal-repair "
                f"--segment {segment} --output <new> --truncate-at {offset}")
        where = f"offset {offset}" if lsn is None else f"offset {offset} (LSN {lsn})"
        super().__init__(f"WAL segment {segment} corrupt at {where}: {reason}",
                         hint=hint)


class ConfigError(StemeError):
    code = "config_error"
    http_status = 500


class Closed(StemeError):
    code = "closed"
    http_status = 503


class DataDirInUse(StemeError):
    """Another process (or another Engine in this one) has the data directory open."""

    code = "data_dir_in_use"
    http_status = 503


class ArchiveBacklogFull(InsufficientStorage):
    """``[archive] on_backlog_full = "refuse_writes"``: the WAL kept for an archive that
    does not take it has reached ``max_backlog_bytes``.  Reads go on."""

    code = "archive_backlog_full"


class ArchiveNotConfigured(Conflict):
    """A base backup or a drill was asked of a node that does not archive."""

    code = "archive_not_configured"


class ArchiveError(StemeError):
    """An archive (``[archive] url``) could not be read or written.

    ``reason`` is one of :data:`stemedb.archive.FAILURE_REASONS`, the label of
    ``stemedb_archive_failures_total``; the message carries the target's own error.
    """

    code = "archive_error"
    http_status = 502

    def __init__(self, message: str, *, reason: str = "other", hint: str | None = None
                 ) -> None:
        super().__init__(message, hint=hint)
        self.reason = reason


class ArchiveObjectConflict(ArchiveError):
    """An object name the archiver would write already holds other bytes: another
    history writes to the same place.  Never overwritten."""

    code = "archive_object_conflict"
    http_status = 409

    def __init__(self, message: str, *, name: str, hint: str | None = None) -> None:
        super().__init__(message, reason="conflict", hint=hint)
        self.name = name


class ArchiveCorruption(ArchiveError):
    """An archived object fails its checks (header, checksum, decryption, frames)."""

    code = "archive_corrupt"

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"archived object {name} is damaged: {reason}", reason="verify",
                         hint=f"compare {name} with the copy on the node, if it still "
                              "has it; a base backup taken after it does not need it")
        self.name = name
        self.detail = reason
