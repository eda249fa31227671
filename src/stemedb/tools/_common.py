"""Shared pieces of the operator tools: a read-only file system and path resolution.

The tools read segments through :class:`ReadOnlyFileSystem`, which opens every file
``O_RDONLY``: verify, dump and doctor must work on a read-only mount, on files the
operator may not write, and must never be able to change the file they inspect.
"""

from __future__ import annotations

import os

from ..storage import DiskUsage
from ..wal import RecordType, parse_segment_name

RECORD_TYPE_NAMES: dict[int, str] = {int(t): t.name.lower() for t in RecordType}


def record_type_name(rtype: int) -> str:
    return RECORD_TYPE_NAMES.get(rtype, f"type{rtype}")


class ReadOnlyFile:
    """A file opened ``O_RDONLY``; every write method raises."""

    def __init__(self, path: str) -> None:
        self.name = path
        self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))

    def pread(self, size: int, offset: int) -> bytes:
        return os.pread(self._fd, size, offset)

    def size(self) -> int:
        return os.fstat(self._fd).st_size

    def _refuse(self) -> None:
        raise PermissionError(f"{self.name} is open read-only")

    def append(self, data: bytes) -> None:
        self._refuse()

    def seek_append(self, offset: int) -> None:
        self._refuse()

    def pwrite(self, data: bytes, offset: int) -> None:
        self._refuse()

    def sync(self) -> None:
        self._refuse()

    def allocate(self, length: int) -> None:
        self._refuse()

    def truncate(self, length: int) -> None:
        self._refuse()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class ReadOnlyFileSystem:
    """The :class:`stemedb.storage.FileSystem` the tools read through."""

    def open(self, path: str, *, create: bool = False,
             exclusive: bool = False) -> ReadOnlyFile:
        if create or exclusive:
            raise PermissionError(f"{path}: the read-only file system creates nothing")
        return ReadOnlyFile(path)

    def listdir(self, path: str) -> list[str]:
        return sorted(os.listdir(path))

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def makedirs(self, path: str) -> None:
        raise PermissionError(f"{path}: the read-only file system creates nothing")

    def rename(self, src: str, dst: str) -> None:
        raise PermissionError(f"{src}: the read-only file system renames nothing")

    def remove(self, path: str) -> None:
        raise PermissionError(f"{path}: the read-only file system removes nothing")

    def sync_dir(self, path: str) -> None:
        return None

    def disk_usage(self, path: str) -> DiskUsage:
        st = os.statvfs(path)
        return DiskUsage(size_bytes=st.f_blocks * st.f_frsize,
                         free_bytes=st.f_bavail * st.f_frsize,
                         inodes=st.f_files, free_inodes=st.f_favail)


RO_FS = ReadOnlyFileSystem()


class ToolError(Exception):
    """A usage or I/O problem (exit code 2), with what to try next."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\nTry: {self.hint}" if self.hint else self.message


def resolve_wal_dir(data_dir: str) -> str:
    """The WAL directory of a data directory.

    ``DIR/wal`` when it exists; ``DIR`` itself when it holds segments (so that an
    operator standing in ``/var/lib/stemedb/wal`` can pass ``--data-dir .``).
    """
    if not os.path.isdir(data_dir):
        raise ToolError(f"data directory {data_dir} does not exist",
                        hint="pass --data-dir with the server's data_dir "
                             "(see [data_dir] in /etc/stemedb/api.toml)")
    wal = os.path.join(data_dir, "wal")
    if os.path.isdir(wal):
        return wal
    try:
        names = os.listdir(data_dir)
    except OSError as exc:
        raise ToolError(f"cannot list {data_dir}: {exc.strerror or exc}",
                        hint="run as the user the server runs as (stemedb) or root") from exc
    if any(parse_segment_name(n) is not None for n in names):
        return data_dir
    raise ToolError(f"{data_dir} has no wal/ directory and no segment.NNN.wal files",
                    hint="pass the server's data directory, e.g. --data-dir /var/lib/stemedb")


def state_path_for(wal_dir: str) -> str | None:
    """``<data-dir>/state.sqlite3`` for a WAL directory, when it exists."""
    parent = os.path.dirname(os.path.abspath(wal_dir))
    for cand in (os.path.join(parent, "state.sqlite3"),
                 os.path.join(os.path.abspath(wal_dir), "state.sqlite3")):
        if os.path.exists(cand):
            return cand
    return None
