"""``file:///path``: an archive in a local (or mounted) directory.

Object names become paths below the directory.  A new object is written to a
temporary file beside its final name, fsynced, then *hard-linked* to the final name:
``link(2)`` fails with EEXIST when the name exists, so creation is atomic and never
replaces an object (a rename would).  The directory is fsynced after, so the name is
durable when ``put_if_absent`` returns.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

from .. import limits
from ..errors import ArchiveError
from ..storage import sync_dir

_TMP_MARK = ".tmp-"


class FileTarget:
    def __init__(self, root: str, *, url: str) -> None:
        self.root = root
        self.url = url

    def _path(self, name: str) -> str:
        if name.startswith("/") or ".." in name.split("/"):
            raise ValueError(f"bad object name {name!r}")
        return os.path.join(self.root, *name.split("/"))

    def _fail(self, what: str, exc: OSError) -> ArchiveError:
        reason = "not_found" if isinstance(exc, FileNotFoundError) else "io"
        return ArchiveError(f"{self.url}: {what}: {exc}", reason=reason)

    def _makedirs(self, path: str) -> None:
        """Create ``path`` and its missing parents, each made durable in its parent."""
        missing = []
        d = path
        while not os.path.isdir(d):  # bounded by the path's depth
            missing.append(d)
            parent = os.path.dirname(d)
            if parent == d:
                break
            d = parent
        for d in reversed(missing):
            try:
                os.mkdir(d)
            except FileExistsError:
                if not os.path.isdir(d):
                    raise
            sync_dir(os.path.dirname(d))

    def put_if_absent(self, name: str, data: bytes) -> bool:
        path = self._path(name)
        parent = os.path.dirname(path)
        tmp = f"{path}{_TMP_MARK}{uuid.uuid4().hex}"
        try:
            self._makedirs(parent)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            try:
                view = memoryview(data)
                while view:  # bounded: each write takes at least one byte or raises
                    n = os.write(fd, view)
                    view = view[n:]
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(tmp, path)
                created = True
            except FileExistsError:
                created = False
            os.unlink(tmp)
            sync_dir(parent)
            return created
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise self._fail(f"write {name}", exc) from exc

    def get(self, name: str) -> bytes:
        try:
            with open(self._path(name), "rb") as f:
                return f.read()
        except OSError as exc:
            raise self._fail(f"read {name}", exc) from exc

    def list_names(self, prefix: str, start_after: str = "") -> Iterator[str]:
        top = self._path(prefix.rstrip("/")) if prefix.strip("/") else self.root
        names: list[str] = []
        try:
            for dirpath, dirnames, filenames in os.walk(top, onerror=_raise):
                dirnames.sort()
                rel = os.path.relpath(dirpath, self.root).replace(os.sep, "/")
                for fn in filenames:
                    if _TMP_MARK in fn:
                        continue  # an upload that a crash interrupted
                    name = fn if rel == "." else f"{rel}/{fn}"
                    if name.startswith(prefix) and name > start_after:
                        names.append(name)
                        if len(names) > limits.archive_list_keys_max:
                            raise ArchiveError(f"{self.url}: more than "
                                               f"{limits.archive_list_keys_max} objects "
                                               f"under {prefix}", reason="other")
        except FileNotFoundError:
            return iter(())
        except OSError as exc:
            raise self._fail(f"list {prefix}", exc) from exc
        return iter(sorted(names))

    def children(self, prefix: str) -> list[str]:
        top = self._path(prefix.rstrip("/")) if prefix.strip("/") else self.root
        try:
            entries = sorted(e.name for e in os.scandir(top) if e.is_dir())
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise self._fail(f"list {prefix}", exc) from exc
        return [f"{prefix}{e}/" for e in entries]

    def delete(self, name: str) -> None:
        path = self._path(name)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise self._fail(f"delete {name}", exc) from exc
        try:
            sync_dir(os.path.dirname(path))
        except OSError as exc:
            raise self._fail(f"delete {name}", exc) from exc
        # Directories left empty go too (a store of keys has none to leave behind).
        d = os.path.dirname(path)
        root = os.path.abspath(self.root)
        while os.path.abspath(d) != root and d.startswith(root):  # bounded by the depth
            try:
                os.rmdir(d)
            except OSError:
                break  # not empty (or already gone): it stays
            d = os.path.dirname(d)

    def close(self) -> None:
        pass


def _raise(exc: OSError) -> None:
    raise exc




__all__ = ["FileTarget"]
