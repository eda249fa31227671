"""Downloading a base backup's files, every part checked: the stored bytes against
the manifest's SHA-256, the envelope (zstd, AES-256-GCM, the plaintext's SHA-256),
the byte range, and the whole file against its SHA-256."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable

from .. import limits
from ..archive import ArchiveKey, ObjectFault, Target, unpack_object
from ..errors import ArchiveCorruption
from ._manifest import BackupFile, BackupPart, Manifest


def fetch_part(target: Target, key: ArchiveKey | None, part: BackupPart) -> bytes:
    """The plaintext of one part; ArchiveCorruption naming its object."""
    data = target.get(part.object)
    if len(data) != part.stored_bytes or hashlib.sha256(data).hexdigest() != part.stored_sha256:
        raise ArchiveCorruption(part.object, f"{len(data)} bytes with SHA-256 "
                                             f"{hashlib.sha256(data).hexdigest()[:16]}…, "
                                             f"the manifest says {part.stored_bytes} bytes "
                                             f"with {part.stored_sha256[:16]}…")
    try:
        header, plain = unpack_object(data, key, limits.backup_part_bytes_max)
    except ObjectFault as exc:
        raise ArchiveCorruption(part.object, str(exc)) from exc
    if header.start_lsn != part.offset or len(plain) != part.size:
        raise ArchiveCorruption(part.object, f"holds {len(plain)} bytes at offset "
                                             f"{header.start_lsn}, the manifest says "
                                             f"{part.size} at {part.offset}")
    return plain


def fetch_file(target: Target, key: ArchiveKey | None, manifest: Manifest, f: BackupFile,
               write: Callable[[bytes], None] | None = None) -> None:
    """Every part of ``f`` in order, checked, handed to ``write`` (None: checked
    only); ArchiveCorruption naming the part or the manifest that is wrong."""
    whole = hashlib.sha256()
    offset = 0
    for part in f.parts:  # bounded: backup_parts_max at upload
        if part.offset != offset:
            raise ArchiveCorruption(manifest.name, f"{f.name}: part {part.object} starts "
                                                   f"at {part.offset}, not {offset}")
        plain = fetch_part(target, key, part)
        whole.update(plain)
        if write is not None:
            write(plain)
        offset += len(plain)
    if offset != f.size or whole.hexdigest() != f.sha256:
        raise ArchiveCorruption(manifest.name, f"{f.name}: the parts make {offset} bytes "
                                               f"with SHA-256 {whole.hexdigest()[:16]}…, "
                                               f"the manifest says {f.size} bytes with "
                                               f"{f.sha256[:16]}…")


def download_backup(target: Target, key: ArchiveKey | None, manifest: Manifest,
                    dest_dir: str) -> None:
    """Every file of the backup into ``dest_dir``, checked and fsynced."""
    for f in manifest.files:
        if "/" in f.name or f.name.startswith("."):
            raise ArchiveCorruption(manifest.name, f"bad file name {f.name!r}")
        path = os.path.join(dest_dir, f.name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        try:
            def write(data: bytes, fd: int = fd) -> None:
                view = memoryview(data)
                while view:  # bounded: each write takes at least one byte or raises
                    view = view[os.write(fd, view):]

            fetch_file(target, key, manifest, f, write)
            os.fsync(fd)
        finally:
            os.close(fd)


__all__ = ["download_backup", "fetch_file", "fetch_part"]
