"""What leader and replica say to each other: headers, frames, terms and forks.

The stream is plain HTTP: a replica asks ``GET /v1/replication/wal?node=N&from=LSN&term=T``
(``from``: the end of its durable log, ``term``: the term its last record was written in).
The leader answers with whole WAL frames, byte for byte as its segments hold them, from
``from`` on, or ``409 log_diverged`` with its term history when the replica's log is not
a prefix of its own.  Each request also tells the leader how far the replica is durable.
"""

from __future__ import annotations

from typing import NamedTuple

from ..archive._format import FrameFault, check_frame
from ..errors import StemeError
from ..wal import FRAME_HEADER_SIZE, decode_frame_header

TERM_HEADER = "StemeDB-Term"
DURABLE_HEADER = "StemeDB-Durable-LSN"
SEGMENT_SIZE_HEADER = "StemeDB-Segment-Size"
NEXT_HEADER = "StemeDB-Next-LSN"
SNAPSHOT_LSN_HEADER = "StemeDB-Snapshot-LSN"
SNAPSHOT_STATE_BYTES_HEADER = "StemeDB-State-Bytes"
SNAPSHOT_SEGMENT_HEADER = "StemeDB-Segment-Name"
SNAPSHOT_SHA256_HEADER = "StemeDB-Snapshot-SHA256"


class Term(NamedTuple):
    term: int
    start_lsn: int  # the LSN of the leader's TERM record
    node: str


class StreamError(StemeError):
    """A stream response that cannot be taken (damaged, out of order, an older term)."""

    http_status = 502
    code = "replication_stream_invalid"


def split_frames(data: bytes, start_lsn: int) -> list[tuple[int, int, bytes]]:
    """The (type, lsn, payload) records of a stream response, each checked (CRC-32C,
    type, padding), in increasing LSN order from ``start_lsn`` on."""
    out: list[tuple[int, int, bytes]] = []
    at = 0
    last = start_lsn - 1
    view = memoryview(data)
    while at < len(data):  # bounded: each pass takes one frame or raises
        try:
            lsn, rtype, size = check_frame(view, at)
        except FrameFault as exc:
            raise StreamError(f"replication stream: {exc.reason} at byte {at}") from exc
        if lsn <= last or lsn < start_lsn:
            raise StreamError(f"replication stream: record at LSN {lsn} after {last}")
        length = decode_frame_header(view[at:at + FRAME_HEADER_SIZE]).length
        out.append((rtype, lsn, bytes(view[at + FRAME_HEADER_SIZE:
                                           at + FRAME_HEADER_SIZE + length])))
        last = lsn
        at += size
    return out


def term_at(history: list[Term], lsn: int) -> int:
    """The term the record at ``lsn`` was written in (0: before any term)."""
    term = 0
    for t in history:
        if t.start_lsn <= lsn:
            term = t.term
        else:
            break
    return term


def divergence(local: list[Term], leader: list[Term], local_end: int,
               leader_durable: int) -> int | None:
    """Where a log ending at ``local_end`` with term history ``local`` leaves the
    leader's log: the first LSN the leader's log does not have as this one does, or
    None when this log is a prefix of the leader's."""
    point: int | None = None
    for i, mine in enumerate(local):
        if i >= len(leader):
            point = mine.start_lsn  # a term the leader never saw
            break
        theirs = leader[i]
        if (mine.term, mine.start_lsn) != (theirs.term, theirs.start_lsn):
            point = min(mine.start_lsn, theirs.start_lsn)
            break
    else:
        if len(leader) > len(local):
            point = leader[len(local)].start_lsn  # the leader went on in a newer term
    if point is None or point >= local_end:
        point = None
    if point is None and local_end > leader_durable:
        point = leader_durable  # records in the same term the leader no longer has
    return point


__all__ = [
    "DURABLE_HEADER", "NEXT_HEADER", "SEGMENT_SIZE_HEADER", "SNAPSHOT_LSN_HEADER",
    "SNAPSHOT_SEGMENT_HEADER", "SNAPSHOT_SHA256_HEADER", "SNAPSHOT_STATE_BYTES_HEADER",
    "TERM_HEADER", "StreamError", "Term", "divergence", "split_frames", "term_at"
]
