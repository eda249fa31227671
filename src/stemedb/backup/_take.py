"""Taking a base backup: a consistent copy of the state, uploaded in parts, verified,
then its manifest.

The copy is SQLite's online backup API run from a read-only connection in one step:
one read transaction, so the copy is exactly the state at the applied LSN it names,
while the applier goes on writing (SQLite's WAL mode lets one writer and readers run
together).  The copy is cut into parts of at most ``backup_part_bytes_max`` bytes,
each packed in the archive's object envelope (zstd, AES-256-GCM with the archive's key
when one is set, a SHA-256 of the plaintext; see :mod:`stemedb.archive._format`, where
for a part the two LSN fields hold the part's byte range in the file).  Each part is
read back before the next; the manifest goes last.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from importlib import metadata

from .. import limits
from .. import state as st
from ..archive import ArchiveKey, Target, pack_object
from ..archive._naming import backup_id_at, backup_part_name
from ..errors import ArchiveError
from ._manifest import BackupFile, BackupPart, Manifest

log = logging.getLogger("stemedb.backup")

STATE_FILE = "state.sqlite3"
SCRATCH_NAME = "backup.tmp"


def stemedb_version() -> str:
    try:
        return metadata.version("stemedb")
    except metadata.PackageNotFoundError:  # running from a source tree
        return "0+unknown"


def copy_state(db_path: str, dest_path: str) -> tuple[int, int, int]:
    """A consistent copy of the state at ``dest_path``: ``(applied LSN, applied records,
    open epoch)`` of the copy."""
    with contextlib.suppress(FileNotFoundError):
        os.remove(dest_path)
    src = st.connect(db_path, readonly=True,
                     cache_bytes=limits.state_page_cache_bytes_min)
    try:
        dest = sqlite3.connect(dest_path, isolation_level=None)
        try:
            src.backup(dest, pages=-1)  # one step: one read transaction of the source
            dest.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
            lsn = st.applied_end_lsn(dest)
            records = int(st.get_meta(dest, "applied_records") or 0)
            row = dest.execute("SELECT max(n) FROM epochs").fetchone()
        finally:
            dest.close()
    finally:
        src.close()
    if lsn is None:
        raise ArchiveError("the state has applied no WAL yet: nothing to back up",
                           reason="other")
    fd = os.open(dest_path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return lsn, records, int(row[0] or 0) if row else 0


def upload_file(target: Target, key: ArchiveKey | None, timeline: int, backup_id: str,
                path: str, name: str) -> BackupFile:
    """``path`` as parts of the backup, each stored and read back."""
    size = os.path.getsize(path)
    whole = hashlib.sha256()
    out = BackupFile(name, size, "")
    with open(path, "rb") as f:
        offset, part = 0, 0
        while offset < size or part == 0:  # bounded: backup_parts_max parts
            part += 1
            if part > limits.backup_parts_max:
                raise ArchiveError(f"{name} needs more than {limits.backup_parts_max} parts "
                                   f"of {limits.backup_part_bytes_max} bytes", reason="other")
            chunk = f.read(limits.backup_part_bytes_max)
            whole.update(chunk)
            obj = backup_part_name(timeline, backup_id, name, part)
            # The envelope's LSN fields hold the part's byte range; an empty file is
            # one part of zero bytes, stored as [0, 1) with nothing in it.
            _, data = pack_object(timeline, offset, offset + max(1, len(chunk)), 0, chunk, key)
            if not target.put_if_absent(obj, data):
                raise ArchiveError(f"{target.url}: {obj} exists already: another backup "
                                   f"with the same id?", reason="conflict")
            if target.get(obj) != data:
                raise ArchiveError(f"{target.url}: {obj} read back differs from what was "
                                   f"written", reason="verify")
            out.parts.append(BackupPart(obj, offset, len(chunk), len(data),
                                        hashlib.sha256(data).hexdigest()))
            offset += len(chunk)
            if not chunk:
                break
    out.sha256 = whole.hexdigest()
    return out


def take_base_backup(db_path: str, scratch_dir: str, *, target: Target,
                     key: ArchiveKey | None, timeline: int,
                     clock: Callable[[], float] = time.time) -> Manifest:
    """Copy the state, upload it, then its manifest; the manifest of the backup.

    Runs on the caller's thread (the engine's backup thread): it reads the disk and
    talks to the archive.  A crash or an error before the manifest is stored leaves
    parts without a manifest, which no listing counts as a backup."""
    started = clock()
    backup_id = backup_id_at(started)
    os.makedirs(scratch_dir, exist_ok=True)
    copy = os.path.join(scratch_dir, STATE_FILE)
    try:
        lsn, records, epoch = copy_state(db_path, copy)
        f = upload_file(target, key, timeline, backup_id, copy, STATE_FILE)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(copy)
    m = Manifest(id=backup_id, timeline=timeline, start_lsn=lsn, end_lsn=lsn,
                 applied_records=records, open_epoch=epoch, started_unix=round(started, 3),
                 finished_unix=round(clock(), 3), stemedb_version=stemedb_version(),
                 encrypted=key is not None,
                 key_id=key.key_id.hex() if key is not None else None, files=[f])
    data = m.encode()
    if not target.put_if_absent(m.name, data):
        raise ArchiveError(f"{target.url}: {m.name} exists already", reason="conflict")
    if target.get(m.name) != data:
        raise ArchiveError(f"{target.url}: {m.name} read back differs from what was "
                           f"written", reason="verify")
    log.info("base backup %s stored in %s: timeline %d, consistent at LSN %d, %d bytes "
             "of state in %d part(s), %.3fs", backup_id, target.url, timeline, lsn, f.size,
             len(f.parts), m.finished_unix - m.started_unix)
    return m


__all__ = ["SCRATCH_NAME", "STATE_FILE", "copy_state", "stemedb_version",
           "take_base_backup", "upload_file"]
