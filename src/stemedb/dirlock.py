"""One engine per data directory: an exclusive ``flock`` on ``<data-dir>/LOCK``.

Two processes writing one WAL would interleave records at the same LSNs and destroy
it; two engines applying to one SQLite state would diverge from the WAL.  So an engine
takes ``LOCK_EX | LOCK_NB`` on ``<data-dir>/LOCK`` before it touches anything (as
RocksDB's ``LOCK`` file and Prometheus's ``lock`` file do) and holds it until
:meth:`~stemedb.engine.Engine.close`.  The kernel drops the lock when the process
dies, however it dies, so a ``kill -9`` never leaves a stale lock behind and the file
is never removed (removing it would let a third process lock a new file while the
second still holds the old one).  The file says which process holds it, for the
message a second one gets.
"""

from __future__ import annotations

import fcntl
import os

from .errors import DataDirInUse

LOCK_NAME = "LOCK"
HOLDER_BYTES_MAX = 256  # what is read back from the file to name its holder


class DataDirLock:
    def __init__(self, data_dir: str) -> None:
        self.data_dir = data_dir
        self.path = os.path.join(data_dir, LOCK_NAME)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock (idempotent); :class:`DataDirInUse` if someone else has it."""
        if self._fd is not None:
            return
        os.makedirs(self.data_dir, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, HOLDER_BYTES_MAX, 0).decode("utf-8", "replace").strip()
            os.close(fd)
            raise DataDirInUse(
                f"data directory {self.data_dir} is in use by another StemeDB process "
                f"({holder or 'holder unknown'}; {self.path} is locked)",
                hint="stop that process, or give this one another --data-dir") from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None
