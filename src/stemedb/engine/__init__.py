"""The engine: one data directory's WAL, state and the parts that keep them.

Modules, one idea each:

- :mod:`._types` — configuration, requests, results, reports; the checks a request
  passes before it is queued.
- :mod:`._committer` — the write path: queue, group commit, fdatasync, fence, disk
  guard; a write is acknowledged when its record is durable.
- :mod:`._view` — what the committer validates against instead of the state: next
  id, open epoch, keys durable but not yet applied.
- :mod:`._applier` — durable records into SQLite, in LSN order, one code path for live
  writes and replay.
- :mod:`._recovery` — where replay starts and stops; torn tails and corruption.
- :mod:`._retention` — checkpoints, holds, which segments can go.
- :mod:`._engine` — :class:`Engine`, the owner of their lifecycles.

The read index (:mod:`stemedb.read_index`) joins the applier to the readers.
"""

from ._engine import Engine
from ._types import (
    FSYNC_POLICIES,
    RECOVERY_MODES,
    CheckpointReport,
    EngineConfig,
    ReadResult,
    RecoveryReport,
    ReplayProgress,
    WriteRequest,
    WriteResult,
    body_digest,
    check_idempotency_key,
    parse_rfc3339,
    rfc3339,
    validate_request,
)

__all__ = [
    "FSYNC_POLICIES",
    "RECOVERY_MODES",
    "CheckpointReport",
    "Engine",
    "EngineConfig",
    "ReadResult",
    "RecoveryReport",
    "ReplayProgress",
    "WriteRequest",
    "WriteResult",
    "body_digest",
    "check_idempotency_key",
    "parse_rfc3339",
    "rfc3339",
    "validate_request",
]
