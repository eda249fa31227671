"""The small file-system interface the WAL is written against.

The WAL never calls :mod:`os` directly: it goes through a :class:`FileSystem`, so
that crash tests can swap in :class:`stemedb.testing.SimFileSystem`, which loses
un-synced writes, tears the last write and forgets directory entries that were
never synced.  :class:`OsFileSystem` is the real one.

Appends use ``write(2)`` on a descriptor positioned at the end of the data (not
``pwrite``), so that ``strace -e inject=write:error=ENOSPC -P <segment>`` hits the
WAL and nothing else.  Durability uses ``fdatasync(2)`` for data and ``fsync(2)`` on
the directory after a create, rename or delete.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class DiskUsage:
    size_bytes: int
    free_bytes: int  # available to an unprivileged writer
    inodes: int
    free_inodes: int


class File(Protocol):
    """An open file.  Not thread-safe: one owner at a time."""

    name: str

    def append(self, data: bytes) -> None:
        """Write ``data`` at the current append position and advance it."""

    def seek_append(self, offset: int) -> None:
        """Set the position the next :meth:`append` writes at."""

    def pread(self, size: int, offset: int) -> bytes: ...

    def pwrite(self, data: bytes, offset: int) -> None: ...

    def sync(self) -> None:
        """Make written data durable (fdatasync)."""

    def size(self) -> int: ...

    def allocate(self, length: int) -> None:
        """Reserve ``length`` bytes from offset 0 (posix_fallocate); reads as zeros."""

    def truncate(self, length: int) -> None: ...

    def close(self) -> None: ...


class FileSystem(Protocol):
    def open(self, path: str, *, create: bool = False, exclusive: bool = False) -> File: ...

    def listdir(self, path: str) -> list[str]: ...

    def exists(self, path: str) -> bool: ...

    def makedirs(self, path: str) -> None: ...

    def rename(self, src: str, dst: str) -> None: ...

    def remove(self, path: str) -> None: ...

    def sync_dir(self, path: str) -> None: ...

    def disk_usage(self, path: str) -> DiskUsage: ...


class OsFile:
    def __init__(self, path: str, fd: int) -> None:
        self.name = path
        self._fd = fd

    def append(self, data: bytes) -> None:
        view = memoryview(data)
        # A short write is possible on some file systems; loop until it is all out.
        # Bounded: each pass writes at least one byte or raises.
        while view:
            n = os.write(self._fd, view)
            if n <= 0:
                raise OSError(f"write returned {n} on {self.name}")
            view = view[n:]

    def seek_append(self, offset: int) -> None:
        os.lseek(self._fd, offset, os.SEEK_SET)

    def pread(self, size: int, offset: int) -> bytes:
        return os.pread(self._fd, size, offset)

    def pwrite(self, data: bytes, offset: int) -> None:
        view = memoryview(data)
        while view:
            n = os.pwrite(self._fd, view, offset)
            if n <= 0:
                raise OSError(f"pwrite returned {n} on {self.name}")
            view = view[n:]
            offset += n

    def sync(self) -> None:
        os.fdatasync(self._fd)

    def size(self) -> int:
        return os.fstat(self._fd).st_size

    def allocate(self, length: int) -> None:
        try:
            os.posix_fallocate(self._fd, 0, length)
        except OSError as exc:
            # Some file systems (tmpfs on old kernels, overlay) cannot fallocate; fall
            # back to extending the file, which still reserves the size in the inode.
            if exc.errno not in (95,):  # EOPNOTSUPP
                raise
            if self.size() < length:
                os.ftruncate(self._fd, length)

    def truncate(self, length: int) -> None:
        os.ftruncate(self._fd, length)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def sync_dir(path: str) -> None:
    """fsync a directory, so that names created, renamed or removed in it are durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class OsFileSystem:
    """The real file system."""

    def open(self, path: str, *, create: bool = False, exclusive: bool = False) -> OsFile:
        flags = os.O_RDWR | getattr(os, "O_CLOEXEC", 0)
        if create:
            flags |= os.O_CREAT
        if exclusive:
            flags |= os.O_EXCL
        fd = os.open(path, flags, 0o644)
        return OsFile(path, fd)

    def listdir(self, path: str) -> list[str]:
        return sorted(os.listdir(path))

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def makedirs(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)

    def rename(self, src: str, dst: str) -> None:
        os.rename(src, dst)

    def remove(self, path: str) -> None:
        os.remove(path)

    def sync_dir(self, path: str) -> None:
        sync_dir(path)

    def disk_usage(self, path: str) -> DiskUsage:
        st = os.statvfs(path)
        return DiskUsage(
            size_bytes=st.f_blocks * st.f_frsize,
            free_bytes=st.f_bavail * st.f_frsize,
            inodes=st.f_files,
            free_inodes=st.f_favail,
        )
