"""Continuous WAL archiving: the node's durable WAL, shipped to an object store.

An archive is a ``file:///path`` directory or an ``s3://bucket/prefix`` on any
S3-compatible store.  It holds WAL *objects*, each a run of whole records named by its
timeline and LSN range, zstd-compressed, checksummed with SHA-256 and optionally
sealed with AES-256-GCM.  docs/operations/archive.md has the bytes and the names.

Lifecycle: the engine owns one :class:`Archiver` when ``[archive] url`` is set.  It
reads durable records from the segments, uploads them at least every
``interval_seconds``, reads each object back, and only then moves the engine's
``archive`` hold, so a checkpoint deletes a segment only once the archive has every
byte of it.  ``max_backlog_bytes`` bounds what the hold can keep; ``on_backlog_full``
says what happens past it (refuse writes with 507, or drop the WAL and start a new
timeline), loudly either way.

Modules, one idea each:

- :mod:`._settings` — the ``[archive]`` keys and their checks.
- :mod:`._naming` — object names: one format string names and parses them.
- :mod:`._format` — an object's bytes: header, zstd body, checksum, frames.
- :mod:`._cipher` — AES-256-GCM and the key file.
- :mod:`._target` — the target interface and :func:`open_target`;
  :mod:`._file_target` and :mod:`._s3_target` implement it.
- :mod:`._wal_source` — durable records read from the local segments.
- :mod:`._archiver` — the thread: ship, verify, hold, retry, cap.
- :mod:`._reader` — list an archive, check chain continuity, fetch and verify objects.
"""

from ..metrics import ARCHIVE_FAILURE_REASONS as FAILURE_REASONS
from ._archiver import HOLD_NAME, Archiver, drop_covered
from ._cipher import ArchiveKey, DecryptionFailed, load_key
from ._format import (
    OBJECT_HEADER_SIZE,
    FrameFault,
    ObjectFault,
    ObjectHeader,
    frames_of,
    pack_object,
    unpack_object,
)
from ._naming import (
    WAL_OBJECT_NAME_FORMAT,
    WalObjectName,
    parse_wal_object_name,
    timeline_history_name,
    wal_object_name,
)
from ._reader import ArchivedWal, ArchiveReader, Gap, TimelineChain, build_chain, verify_object
from ._settings import BACKLOG_POLICIES, ArchiveSettings, check_url
from ._target import Target, open_target
from ._wal_source import WalChunk, WalGone, WalSource

__all__ = [
    "BACKLOG_POLICIES",
    "FAILURE_REASONS",
    "HOLD_NAME",
    "OBJECT_HEADER_SIZE",
    "WAL_OBJECT_NAME_FORMAT",
    "ArchiveKey",
    "ArchiveReader",
    "ArchiveSettings",
    "ArchivedWal",
    "Archiver",
    "DecryptionFailed",
    "FrameFault",
    "Gap",
    "ObjectFault",
    "ObjectHeader",
    "Target",
    "TimelineChain",
    "WalChunk",
    "WalGone",
    "WalObjectName",
    "WalSource",
    "build_chain",
    "check_url",
    "drop_covered",
    "frames_of",
    "load_key",
    "open_target",
    "pack_object",
    "parse_wal_object_name",
    "timeline_history_name",
    "unpack_object",
    "verify_object",
    "wal_object_name",
]
