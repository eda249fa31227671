"""Where archived objects go: a target, opened from its URL.

A target stores whole objects by name and never replaces one: :meth:`Target.put_if_absent`
creates an object or reports that the name is taken, and the caller decides whether
what is there is the same content (a re-upload after a crash) or another history's
(a loud error).  Every failure is an :class:`~stemedb.errors.ArchiveError` whose
``reason`` is a label of ``stemedb_archive_failures_total`` and whose message carries
the target's own error.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from ._settings import check_url


class Target(Protocol):
    """An object store holding one archive (a ``file://`` directory or an S3 prefix)."""

    #: The URL it was opened from, for logs and status (it never holds a secret).
    url: str

    def put_if_absent(self, name: str, data: bytes) -> bool:
        """Store ``data`` as ``name`` unless the name exists: True when created, False
        when it was already there (nothing written).  Durable once it returns True."""
        ...

    def get(self, name: str) -> bytes:
        """The object's bytes; ArchiveError(reason="not_found") when there is none."""
        ...

    def list_names(self, prefix: str, start_after: str = "") -> Iterator[str]:
        """Names under ``prefix`` sorting after ``start_after``, in order, bounded by
        ``limits.archive_list_keys_max``."""
        ...

    def children(self, prefix: str) -> list[str]:
        """The next level below ``prefix`` ("directories", each ending in "/")."""
        ...

    def delete(self, name: str) -> None:
        """Remove an object (``stemedb backup expire`` only; the archiver never
        deletes).  Removing a name that is not there is not an error."""
        ...

    def close(self) -> None: ...


def open_target(url: str) -> Target:
    """The target of an archive URL (``file:///path`` or ``s3://bucket/prefix``)."""
    scheme, bucket, path = check_url(url)
    if scheme == "file":
        from ._file_target import FileTarget

        return FileTarget(path, url=url)
    from ._s3_target import S3Target  # boto3 loads only for an s3:// archive

    return S3Target(bucket, path, url=url)


__all__ = ["Target", "open_target"]
