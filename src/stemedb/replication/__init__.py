"""Replication: the leader's WAL streamed to replicas, byte for byte, at its LSNs.

Modules, one idea each:

- :mod:`._protocol` — the stream's headers, frames, terms and where two logs fork.
- :mod:`._replicas` — the leader's view of its replicas: holds, lag, synchronous acks.
- :mod:`._receiver` — a replica's thread that asks for WAL and writes it.
- :mod:`._snapshot` — seeding a replica from a copy of the leader's state.
- :mod:`._limits` — every bound of the above, with its unit.

The node decides who is leader (:mod:`stemedb.cluster`) and wires these together
(:mod:`stemedb.server._member`).
"""

from ._protocol import (
    DURABLE_HEADER,
    NEXT_HEADER,
    SEGMENT_SIZE_HEADER,
    SNAPSHOT_LSN_HEADER,
    SNAPSHOT_SEGMENT_HEADER,
    SNAPSHOT_SHA256_HEADER,
    SNAPSHOT_STATE_BYTES_HEADER,
    TERM_HEADER,
    StreamError,
    Term,
    divergence,
    split_frames,
    term_at,
)
from ._receiver import LeaderRef, Outcome, Receiver
from ._replicas import HOLD_PREFIX, Replica, Replicas
from ._snapshot import (
    DIVERGED_DIR,
    Snapshot,
    SnapshotError,
    install,
    list_set_aside,
    set_aside,
    take,
)

__all__ = [
    "DIVERGED_DIR", "DURABLE_HEADER", "HOLD_PREFIX", "NEXT_HEADER", "SEGMENT_SIZE_HEADER",
    "SNAPSHOT_LSN_HEADER", "SNAPSHOT_SEGMENT_HEADER", "SNAPSHOT_SHA256_HEADER",
    "SNAPSHOT_STATE_BYTES_HEADER", "TERM_HEADER", "LeaderRef", "Outcome", "Receiver",
    "Replica", "Replicas", "Snapshot", "SnapshotError", "StreamError", "Term",
    "divergence", "install", "list_set_aside", "set_aside", "split_frames", "take", "term_at",
]
