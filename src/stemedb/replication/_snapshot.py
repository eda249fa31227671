"""Seeding a replica: a consistent copy of the leader's state plus the WAL before it.

A replica with no data, or one whose log forked from the leader's, starts from a
snapshot, as a PostgreSQL standby starts from ``pg_basebackup``:

1. The leader copies its state with SQLite's backup API (one read transaction): the copy
   has applied every record before LSN ``A``.
2. The leader adds the first ``A - base`` bytes of its segment that holds ``A`` (its
   header and the records before ``A``), so the replica's log starts with a segment that
   is byte for byte the leader's and ends exactly at ``A``; the stream continues from
   there at the leader's LSNs.
3. The replica writes both (fsynced), and opens them as any data directory: recovery
   finds nothing to replay.

Whatever the replica had is first *set aside* under ``<data-dir>/diverged/<when>/``
(state and segments, never deleted), with the LSN range the leader does not have in
the directory's name and in the log.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import time
from typing import Any, NamedTuple

from ..backup._take import copy_state
from ..errors import StemeError
from ..storage import OsFileSystem, sync_dir
from ..wal import SEGMENT_HEADER_SIZE, SegmentHeader, list_segment_names, segment_name

log = logging.getLogger("stemedb.replication")

SCRATCH_NAME = "snapshot.tmp"
DIVERGED_DIR = "diverged"


class Snapshot(NamedTuple):
    lsn: int  # the state has applied every record before it
    state: bytes  # the SQLite database, one self-contained file
    segment: str  # the name of the leader's segment that holds ``lsn``
    segment_prefix: bytes  # that segment's bytes before ``lsn``

    def sha256(self) -> str:
        h = hashlib.sha256(self.state)
        h.update(self.segment_prefix)
        return h.hexdigest()


class SnapshotError(StemeError):
    http_status = 503
    code = "snapshot_failed"


def take(db_path: str, wal_dir: str, scratch_dir: str) -> Snapshot:
    """The leader's side (blocking: run it on a thread)."""
    scratch = os.path.join(scratch_dir, SCRATCH_NAME)
    try:
        lsn, _records, _epoch = copy_state(db_path, scratch)
        with open(scratch, "rb") as f:
            state = f.read()
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(scratch)
    fs = OsFileSystem()
    for seq, name in reversed(list_segment_names(fs, wal_dir)):
        path = os.path.join(wal_dir, name)
        with open(path, "rb") as f:
            head = SegmentHeader.decode(f.read(SEGMENT_HEADER_SIZE))
            if head.base_lsn + SEGMENT_HEADER_SIZE <= lsn <= head.end_lsn:
                f.seek(0)
                prefix = f.read(lsn - head.base_lsn)
                if len(prefix) != lsn - head.base_lsn:
                    raise SnapshotError(f"{name}: short read of the bytes before LSN {lsn}")
                assert seq == head.seq
                return Snapshot(lsn, state, name, prefix)
    raise SnapshotError(f"no segment holds LSN {lsn} (the state's applied LSN)")


def set_aside(data_dir: str, wal_dir: str, start_lsn: int | None, end_lsn: int,
              reason: str) -> str | None:
    """Move the state and every segment under
    ``<data-dir>/diverged/<stamp>-<reason>-lsn-<start>-<end>/`` (the segments into its
    ``wal/``); never deletes.  ``start_lsn``: where the leader's log leaves this one
    (None: nothing diverged, the copy is only kept).  Returns the directory, or None
    when there was nothing to move."""
    names = [n for _, n in list_segment_names(OsFileSystem(), wal_dir)]
    state_files = [n for n in ("state.sqlite3", "state.sqlite3-wal", "state.sqlite3-shm")
                   if os.path.exists(os.path.join(data_dir, n))]
    if not names and not state_files:
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    label = f"{stamp}-{reason}-lsn-{start_lsn if start_lsn is not None else 'none'}-{end_lsn}"
    dest = os.path.join(data_dir, DIVERGED_DIR, label)
    n = 0
    while os.path.exists(dest):  # bounded by the names already taken
        n += 1
        dest = os.path.join(data_dir, DIVERGED_DIR, f"{label}.{n}")
    os.makedirs(os.path.join(dest, "wal"))
    for name in state_files:
        shutil.move(os.path.join(data_dir, name), os.path.join(dest, name))
    for name in names:
        shutil.move(os.path.join(wal_dir, name), os.path.join(dest, "wal", name))
    sync_dir(os.path.join(dest, "wal"))
    sync_dir(dest)
    sync_dir(data_dir)
    sync_dir(wal_dir)
    return dest


_ASIDE = re.compile(r"^(\d{8}T\d{6}Z)-([a-z]+)-lsn-(\d+|none)-(\d+)(?:\.\d+)?$")


def list_set_aside(data_dir: str) -> list[dict[str, Any]]:
    """What earlier re-seeds set aside here, oldest first, read from the directory
    names (so it survives restarts): when, why, the LSN range the leader did not have
    (``from_lsn`` None when nothing had diverged), and where."""
    root = os.path.join(data_dir, DIVERGED_DIR)
    try:
        names = sorted(os.listdir(root))
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        m = _ASIDE.match(name)
        if m is None:
            continue
        out.append({"time": m.group(1), "reason": m.group(2),
                    "from_lsn": None if m.group(3) == "none" else int(m.group(3)),
                    "to_lsn": int(m.group(4)), "dir": os.path.join(root, name)})
    return out


def install(snapshot: Snapshot, data_dir: str, wal_dir: str, segment_size_bytes: int
            ) -> None:
    """The replica's side: write the state and the first segment (fsynced).  The data
    directory holds no state and no segment (set them aside first)."""
    head = SegmentHeader.decode(snapshot.segment_prefix[:SEGMENT_HEADER_SIZE])
    if head.capacity_bytes != segment_size_bytes:
        raise SnapshotError(
            f"the leader's segments are {head.capacity_bytes} bytes and this node's "
            f"[wal] segment_size_bytes is {segment_size_bytes}: members of a cluster share "
            "one segment size (a replica's LSNs are its leader's)")
    os.makedirs(wal_dir, exist_ok=True)
    state_path = os.path.join(data_dir, "state.sqlite3")
    tmp = state_path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(snapshot.state)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, state_path)
    seg = os.path.join(wal_dir, segment_name(head.seq))
    with open(seg + ".tmp", "wb") as f:
        f.write(snapshot.segment_prefix)
        f.truncate(head.capacity_bytes)  # zeros after the data: the end of the log
        f.flush()
        os.fsync(f.fileno())
    os.replace(seg + ".tmp", seg)
    sync_dir(wal_dir)
    sync_dir(data_dir)
    log.info("installed a snapshot of the leader at LSN %d (%d bytes of state, %s)",
             snapshot.lsn, len(snapshot.state), snapshot.segment)


__all__ = ["DIVERGED_DIR", "Snapshot", "SnapshotError", "install", "list_set_aside",
           "set_aside", "take"]
