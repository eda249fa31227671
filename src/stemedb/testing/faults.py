"""A real file system with faults on demand: the WAL's fdatasync fails or waits.

:class:`FaultyFileSystem` is :class:`stemedb.storage.OsFileSystem` (real files, the
data directory's lock included) whose WAL segment files can be told, from a test, to
fail their next ``sync()`` with an errno, or to block in it until released, as a disk
that returns EIO or never answers would.  Syscall-level injection (``strace -e
inject``) proves the same of the real process; this one lets an embedded engine's test
choose exactly which group commit meets the fault::

    fs = FaultyFileSystem()
    eng = Engine(path, fs=fs)
    fs.fail_next_sync(errno.EIO)     # the next WAL fdatasync raises EIO
    fs.fail_next_sync(after=2)       # then two succeed, and the third raises EIO
    fs.hold_syncs()                  # syncs wait in fs.syncs_waiting ... fs.release_syncs()
"""

from __future__ import annotations

import errno as errno_mod
import os
import threading

from ..storage import OsFile, OsFileSystem
from ..wal import parse_segment_name

SYNC_HOLD_SECONDS_MAX = 60.0  # a held sync gives up waiting after this, so a test never hangs


class FaultyFileSystem(OsFileSystem):
    """OsFileSystem whose WAL segment syncs fail or wait when told to.

    A file is faulted while its name is a segment's (``segment.NNN.wal``): the
    preallocated next file is not while it is being prepared, and is from the moment it
    is renamed into place.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[int | None] = []  # per coming sync: None succeeds
        self._released = threading.Event()
        self._released.set()
        self.sync_waiting = threading.Event()  # set while a sync is held
        self._open: dict[str, list[_FaultyFile]] = {}  # by path, for renames

    def fail_next_sync(self, errno: int = errno_mod.EIO, *, after: int = 0) -> None:
        """The WAL segment sync after ``after`` more good ones raises ``OSError(errno)``
        (calls queue up: each names the next fault after the one before)."""
        with self._lock:
            self._faults.extend([None] * after)
            self._faults.append(errno)

    def hold_syncs(self) -> None:
        """Every WAL segment sync from now waits until :meth:`release_syncs`."""
        self._released.clear()

    def release_syncs(self) -> None:
        self._released.set()

    def _sync(self, f: _FaultyFile) -> None:
        if parse_segment_name(os.path.basename(f.name)) is None:
            OsFile.sync(f)  # not (yet) a segment
            return
        if not self._released.is_set():
            self.sync_waiting.set()
            self._released.wait(SYNC_HOLD_SECONDS_MAX)
            self.sync_waiting.clear()
        with self._lock:
            code = self._faults.pop(0) if self._faults else None
        if code is not None:
            raise OSError(code, os.strerror(code))
        OsFile.sync(f)

    def open(self, path: str, *, create: bool = False, exclusive: bool = False) -> OsFile:
        f = super().open(path, create=create, exclusive=exclusive)
        if not os.path.basename(path).startswith("segment."):
            return f
        ff = _FaultyFile(self, f)
        with self._lock:
            self._open.setdefault(path, []).append(ff)
        return ff

    def rename(self, src: str, dst: str) -> None:
        super().rename(src, dst)
        with self._lock:
            for ff in self._open.pop(src, []):
                ff.name = dst
                self._open.setdefault(dst, []).append(ff)


class _FaultyFile(OsFile):
    def __init__(self, fs: FaultyFileSystem, f: OsFile) -> None:
        super().__init__(f.name, f._fd)
        self._fs = fs

    def sync(self) -> None:
        self._fs._sync(self)


__all__ = ["FaultyFileSystem"]
