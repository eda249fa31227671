"""A simulated file system for crash tests.

Each file (inode) keeps two images: ``data``, what reads see now, and ``durable``,
what survives a crash because it was synced.  Writes since the last sync are kept
in order as ``pending``.  A crash (:meth:`SimFileSystem.crash_image`) builds a new
file system in which every file holds its durable image plus a random prefix of
its pending writes, the last of which may be torn at a sector boundary; and in
which every directory holds the entries it had when it was last synced.

Every mutating call counts as one operation; with ``crash_after_ops=N`` the
N-th one raises :class:`SimCrash` before it happens.  All randomness comes from
the seed, so the same seed gives the same run.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field

from ..storage import DiskUsage

SECTOR_BYTES = 512


class SimCrash(BaseException):
    """The simulated machine lost power.  (BaseException: nothing may swallow it.)"""


@dataclass
class _Inode:
    data: bytearray = field(default_factory=bytearray)
    durable: bytearray = field(default_factory=bytearray)
    pending: list[tuple[int, bytes]] = field(default_factory=list)

    def write(self, offset: int, chunk: bytes) -> None:
        end = offset + len(chunk)
        if end > len(self.data):
            self.data.extend(bytes(end - len(self.data)))
        self.data[offset:end] = chunk
        self.pending.append((offset, bytes(chunk)))

    def sync(self) -> None:
        self.durable = bytearray(self.data)
        self.pending.clear()


class SimFile:
    def __init__(self, fs: SimFileSystem, inode: _Inode, name: str) -> None:
        self._fs = fs
        self._inode = inode
        self.name = name
        self._pos = 0
        self._closed = False

    def append(self, data: bytes) -> None:
        self._fs._op("write", self.name)
        self._inode.write(self._pos, bytes(data))
        self._pos += len(data)

    def seek_append(self, offset: int) -> None:
        self._pos = offset

    def pread(self, size: int, offset: int) -> bytes:
        return bytes(self._inode.data[offset:offset + size])

    def pwrite(self, data: bytes, offset: int) -> None:
        self._fs._op("pwrite", self.name)
        self._inode.write(offset, bytes(data))

    def sync(self) -> None:
        self._fs._op("fsync", self.name)
        self._inode.sync()

    def size(self) -> int:
        return len(self._inode.data)

    def allocate(self, length: int) -> None:
        self._fs._op("fallocate", self.name)
        if length > len(self._inode.data):
            self._inode.write(len(self._inode.data), bytes(length - len(self._inode.data)))

    def truncate(self, length: int) -> None:
        self._fs._op("truncate", self.name)
        if length < len(self._inode.data):
            del self._inode.data[length:]
            # A truncate is metadata: model it as durable only after the next sync.
            self._inode.pending.append((length, b""))
        else:
            self._inode.write(len(self._inode.data), bytes(length - len(self._inode.data)))

    def close(self) -> None:
        self._closed = True


class SimFileSystem:
    def __init__(self, seed: int = 0, *, crash_after_ops: int | None = None,
                 free_bytes: int = 1 << 40) -> None:
        self.rng = random.Random(seed)
        self.crash_after_ops = crash_after_ops
        self.ops = 0
        self.free_bytes = free_bytes
        self.ns: dict[str, _Inode] = {}
        self.durable_ns: dict[str, _Inode] = {}
        self.dirs: set[str] = set()
        self.log: list[str] = []  # the last operations, for failure reports

    # -- the crash ---------------------------------------------------------------
    def _op(self, kind: str, name: str) -> None:
        self.ops += 1
        self.log.append(f"{self.ops}:{kind}:{os.path.basename(name)}")
        if len(self.log) > 64:
            del self.log[:32]
        if self.crash_after_ops is not None and self.ops >= self.crash_after_ops:
            raise SimCrash(f"simulated crash at operation {self.ops} ({kind} {name})")

    def crash_image(self, rng: random.Random | None = None) -> SimFileSystem:
        """The file system as a machine would find it after losing power now."""
        rng = rng or self.rng
        out = SimFileSystem(rng.randrange(1 << 30), free_bytes=self.free_bytes)
        out.dirs = set(self.dirs)
        images: dict[int, _Inode] = {}
        for path, inode in sorted(self.durable_ns.items()):
            key = id(inode)
            if key not in images:
                images[key] = self._survivor(inode, rng)
            out.ns[path] = images[key]
            out.durable_ns[path] = images[key]
        return out

    @staticmethod
    def _survivor(inode: _Inode, rng: random.Random) -> _Inode:
        data = bytearray(inode.durable)
        pending = inode.pending
        k = rng.randint(0, len(pending))
        torn: tuple[int, bytes] | None = None
        if k < len(pending) and rng.random() < 0.7:
            off, chunk = pending[k]
            # Keep whole sectors of the interrupted write, up to a random boundary.
            first = (off // SECTOR_BYTES + 1) * SECTOR_BYTES
            bounds = list(range(first, off + len(chunk), SECTOR_BYTES))
            if bounds:
                cut = rng.choice(bounds)
                torn = (off, chunk[:cut - off])
        for off, chunk in [*pending[:k], *([torn] if torn else [])]:
            if not chunk:
                del data[off:]
                continue
            end = off + len(chunk)
            if end > len(data):
                data.extend(bytes(end - len(data)))
            data[off:end] = chunk
        return _Inode(data=data, durable=bytearray(data))

    # -- the FileSystem protocol ---------------------------------------------------
    def open(self, path: str, *, create: bool = False, exclusive: bool = False) -> SimFile:
        path = os.path.normpath(path)
        inode = self.ns.get(path)
        if inode is None:
            if not create:
                raise FileNotFoundError(2, "No such file or directory", path)
            if os.path.dirname(path) not in self.dirs:
                raise FileNotFoundError(2, "No such directory", os.path.dirname(path))
            self._op("create", path)
            inode = _Inode()
            self.ns[path] = inode
        elif exclusive:
            raise FileExistsError(17, "File exists", path)
        return SimFile(self, inode, path)

    def listdir(self, path: str) -> list[str]:
        path = os.path.normpath(path)
        if path not in self.dirs:
            raise FileNotFoundError(2, "No such directory", path)
        return sorted(os.path.basename(p) for p in self.ns if os.path.dirname(p) == path)

    def exists(self, path: str) -> bool:
        path = os.path.normpath(path)
        return path in self.ns or path in self.dirs

    def makedirs(self, path: str) -> None:
        path = os.path.normpath(path)
        while path not in self.dirs and path not in ("/", ""):
            self.dirs.add(path)
            path = os.path.dirname(path)

    def rename(self, src: str, dst: str) -> None:
        src, dst = os.path.normpath(src), os.path.normpath(dst)
        if src not in self.ns:
            raise FileNotFoundError(2, "No such file or directory", src)
        self._op("rename", dst)
        self.ns[dst] = self.ns.pop(src)

    def remove(self, path: str) -> None:
        path = os.path.normpath(path)
        if path not in self.ns:
            raise FileNotFoundError(2, "No such file or directory", path)
        self._op("unlink", path)
        del self.ns[path]

    def sync_dir(self, path: str) -> None:
        path = os.path.normpath(path)
        self._op("fsync-dir", path)
        for p in [p for p in self.durable_ns if os.path.dirname(p) == path]:
            del self.durable_ns[p]
        for p, inode in self.ns.items():
            if os.path.dirname(p) == path:
                self.durable_ns[p] = inode

    def disk_usage(self, path: str) -> DiskUsage:
        return DiskUsage(size_bytes=self.free_bytes * 2, free_bytes=self.free_bytes,
                         inodes=1 << 20, free_inodes=1 << 19)

    # -- helpers for tests -------------------------------------------------------------
    def read_file(self, path: str) -> bytes:
        return bytes(self.ns[os.path.normpath(path)].data)

    def write_file(self, path: str, data: bytes) -> None:
        """Replace a file's content durably (for corruption tests)."""
        inode = self.ns[os.path.normpath(path)]
        inode.data = bytearray(data)
        inode.sync()

    def copy(self) -> SimFileSystem:
        out = SimFileSystem(0, free_bytes=self.free_bytes)
        out.dirs = set(self.dirs)
        for p, inode in self.ns.items():
            out.ns[p] = _Inode(bytearray(inode.data), bytearray(inode.data))
            out.durable_ns[p] = out.ns[p]
        return out
