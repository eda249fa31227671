"""A base backup's manifest, and the catalog of the backups an archive holds.

The manifest is JSON, written last under ``backups/<timeline>/<id>/manifest.json``:
a backup whose manifest is missing did not finish and is not listed.  It is never
encrypted (it holds sizes, LSNs and checksums, no data), so ``backup list`` needs no
key, and it checksums itself: ``manifest_sha256`` is the SHA-256 of the canonical JSON
(sorted keys, no spaces) of every other field.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from .. import limits
from ..archive import Target
from ..archive._naming import BACKUPS_PREFIX, backup_manifest_name, parse_backup_manifest_name
from ..errors import ArchiveCorruption, ArchiveError

MANIFEST_FORMAT = 1


@dataclass
class BackupPart:
    """One uploaded piece of a file: bytes ``[offset, offset + size)`` of it."""

    object: str
    offset: int
    size: int
    stored_bytes: int
    stored_sha256: str  # of the object's bytes as stored (compressed, maybe sealed)


@dataclass
class BackupFile:
    name: str
    size: int
    sha256: str
    parts: list[BackupPart] = field(default_factory=list)


@dataclass
class Manifest:
    """What a base backup is: the state consistent at ``lsn`` on ``timeline``."""

    id: str
    timeline: int
    # The state's applied LSN: the copy holds every record before it and none after.
    # Start and end are the same LSN: the copy is one read transaction of SQLite.
    start_lsn: int
    end_lsn: int
    applied_records: int
    open_epoch: int
    started_unix: float
    finished_unix: float
    stemedb_version: str
    encrypted: bool
    key_id: str | None
    files: list[BackupFile]
    format: int = MANIFEST_FORMAT

    @property
    def lsn(self) -> int:
        return self.end_lsn

    @property
    def name(self) -> str:
        return backup_manifest_name(self.timeline, self.id)

    @property
    def size_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def stored_bytes(self) -> int:
        return sum(p.stored_bytes for f in self.files for p in f.parts)

    def body(self) -> dict[str, Any]:
        return asdict(self)

    def encode(self) -> bytes:
        body = self.body()
        doc = dict(body, manifest_sha256=_digest(body))
        return json.dumps(doc, sort_keys=True, indent=1).encode()

    def summary(self) -> dict[str, Any]:
        return {"id": self.id, "timeline": self.timeline, "start_lsn": self.start_lsn,
                "end_lsn": self.end_lsn, "time_unix": self.finished_unix,
                "size_bytes": self.size_bytes, "stored_bytes": self.stored_bytes,
                "open_epoch": self.open_epoch, "encrypted": self.encrypted,
                "stemedb_version": self.stemedb_version, "manifest": self.name}

    @classmethod
    def decode(cls, name: str, data: bytes) -> Manifest:
        """The manifest stored as ``name``; ArchiveCorruption naming it otherwise."""
        try:
            doc = json.loads(data)
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
            want = doc.pop("manifest_sha256", None)
            if want != _digest(doc):
                raise ValueError("manifest_sha256 does not match its content")
            if doc.get("format") != MANIFEST_FORMAT:
                raise ValueError(f"unsupported manifest format {doc.get('format')!r}")
            files = [BackupFile(f["name"], int(f["size"]), str(f["sha256"]),
                                [BackupPart(**p) for p in f["parts"]])
                     for f in doc.pop("files")]
            m = cls(files=files, **doc)
        except (ValueError, KeyError, TypeError) as exc:
            raise ArchiveCorruption(name, f"not a valid backup manifest: {exc}") from exc
        where = parse_backup_manifest_name(name)
        if where != (m.timeline, m.id):
            raise ArchiveCorruption(name, f"it describes backup {m.id} of timeline "
                                          f"{m.timeline}, not the one its name says")
        return m


def _digest(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
                          ).hexdigest()


@dataclass
class Catalog:
    """The base backups of an archive, oldest first, and the manifests that could not
    be read (faults, each naming its object)."""

    backups: list[Manifest]
    faults: list[ArchiveError]

    def find(self, backup_id: str) -> Manifest | None:
        return next((b for b in self.backups if b.id == backup_id), None)


def read_catalog(target: Target) -> Catalog:
    """Every manifest in the archive, read and checked (parts are not downloaded)."""
    backups: list[Manifest] = []
    faults: list[ArchiveError] = []
    for name in target.list_names(BACKUPS_PREFIX):  # bounded: archive_list_keys_max
        if parse_backup_manifest_name(name) is None:
            continue
        try:
            data = target.get(name)
            if len(data) > limits.backup_manifest_bytes_max:
                raise ArchiveCorruption(name, f"{len(data)} bytes, more than the "
                                              f"{limits.backup_manifest_bytes_max}-byte cap")
            backups.append(Manifest.decode(name, data))
        except ArchiveError as exc:
            faults.append(exc)
    backups.sort(key=lambda b: (b.finished_unix, b.timeline, b.id))
    return Catalog(backups, faults)


__all__ = ["MANIFEST_FORMAT", "BackupFile", "BackupPart", "Catalog", "Manifest",
           "read_catalog"]
