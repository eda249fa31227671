"""Object names in an archive: one format string names them and the same string,
turned into a pattern, parses them.

WAL objects are ``wal/<timeline>/<start_lsn>-<end_lsn>.swal``, every number zero-padded
in decimal, so a plain listing is in timeline and LSN order::

    wal/00000001/00000000000000000000-00000000000000004712.swal
    wal/00000001/00000000000000004712-00000000000000009984.swal
    timelines/00000002.json
    backups/00000001/20261204T050056123Z/manifest.json
    backups/00000001/20261204T050056123Z/state.sqlite3.000001

A base backup lives under ``backups/<timeline>/<id>/``: its parts first, its manifest
last (a backup without a manifest is one that did not finish, and is not a backup).
Its id is the UTC time it was taken, to the millisecond, so a listing is in timeline
and time order.

An object covers the LSNs ``[start_lsn, end_lsn)``: every record whose LSN is in that
range, and nothing else.  ``end_lsn`` is the end of its last record, and the next
object of the timeline starts there, so a chain of objects has no holes when each one
starts where the one before it ends (the unused tail of a segment and the next
segment's header are inside an object's range, with no record there).
"""

from __future__ import annotations

import re
import time
from typing import NamedTuple

WAL_PREFIX = "wal/"
TIMELINES_PREFIX = "timelines/"
WAL_OBJECT_NAME_FORMAT = "wal/{timeline:08d}/{start_lsn:020d}-{end_lsn:020d}.swal"
TIMELINE_DIR_FORMAT = "wal/{timeline:08d}/"
TIMELINE_HISTORY_NAME_FORMAT = "timelines/{timeline:08d}.json"
BACKUPS_PREFIX = "backups/"
BACKUP_ID_FORMAT = "%Y%m%dT%H%M%S{ms:03d}Z"
BACKUP_DIR_FORMAT = "backups/{timeline:08d}/{backup_id}/"
BACKUP_MANIFEST = "manifest.json"
BACKUP_PART_FORMAT = "{file}.{part:06d}"
LSN_MAX = 10**20 - 1  # 20 decimal digits: every 64-bit LSN
TIMELINE_MAX = 10**8 - 1

_FIELD = re.compile(r"\{(\w+):0(\d+)d\}")


def _pattern_of(fmt: str) -> re.Pattern[str]:
    """The pattern that matches exactly what ``fmt.format(...)`` produces."""
    out, pos = [], 0
    for m in _FIELD.finditer(fmt):
        out.append(re.escape(fmt[pos:m.start()]))
        out.append(rf"(?P<{m.group(1)}>\d{{{m.group(2)}}})")
        pos = m.end()
    out.append(re.escape(fmt[pos:]))
    return re.compile("^" + "".join(out) + "$")


_WAL_OBJECT_RE = _pattern_of(WAL_OBJECT_NAME_FORMAT)
_TIMELINE_DIR_RE = _pattern_of(TIMELINE_DIR_FORMAT)
_TIMELINE_HISTORY_RE = _pattern_of(TIMELINE_HISTORY_NAME_FORMAT)


class WalObjectName(NamedTuple):
    """A WAL object's place in the archive: its timeline and the LSNs it covers."""

    timeline: int
    start_lsn: int
    end_lsn: int

    @property
    def name(self) -> str:
        return wal_object_name(self.timeline, self.start_lsn, self.end_lsn)


def wal_object_name(timeline: int, start_lsn: int, end_lsn: int) -> str:
    if not 1 <= timeline <= TIMELINE_MAX:
        raise ValueError(f"timeline must be between 1 and {TIMELINE_MAX}, got {timeline}")
    if not 0 <= start_lsn < end_lsn <= LSN_MAX:
        raise ValueError(f"an object covers 0 <= start < end LSNs, got {start_lsn}..{end_lsn}")
    return WAL_OBJECT_NAME_FORMAT.format(timeline=timeline, start_lsn=start_lsn,
                                         end_lsn=end_lsn)


def parse_wal_object_name(name: str) -> WalObjectName | None:
    """The parts of a WAL object's name, or None when ``name`` is not one."""
    m = _WAL_OBJECT_RE.match(name)
    if m is None:
        return None
    parts = WalObjectName(int(m["timeline"]), int(m["start_lsn"]), int(m["end_lsn"]))
    if parts.timeline < 1 or parts.start_lsn >= parts.end_lsn:
        return None
    return parts


def timeline_dir(timeline: int) -> str:
    return TIMELINE_DIR_FORMAT.format(timeline=timeline)


def parse_timeline_dir(name: str) -> int | None:
    m = _TIMELINE_DIR_RE.match(name)
    return int(m["timeline"]) if m is not None and int(m["timeline"]) >= 1 else None


def timeline_history_name(timeline: int) -> str:
    return TIMELINE_HISTORY_NAME_FORMAT.format(timeline=timeline)


def parse_timeline_history_name(name: str) -> int | None:
    m = _TIMELINE_HISTORY_RE.match(name)
    return int(m["timeline"]) if m is not None and int(m["timeline"]) >= 1 else None


_BACKUP_ID_RE = re.compile(r"^\d{8}T\d{9}Z$")
_BACKUP_MANIFEST_RE = re.compile(r"^backups/(?P<timeline>\d{8})/(?P<id>[^/]+)/manifest\.json$")


def backup_id_at(unix: float) -> str:
    """The id of a backup taken at ``unix`` (UTC, to the millisecond)."""
    ms = int(unix * 1000)
    return time.strftime(BACKUP_ID_FORMAT, time.gmtime(ms // 1000)).format(ms=ms % 1000)


def check_backup_id(backup_id: str) -> str:
    if not _BACKUP_ID_RE.match(backup_id):
        raise ValueError(f"a backup id looks like 20261204T050056123Z, got {backup_id!r}")
    return backup_id


def backup_dir(timeline: int, backup_id: str) -> str:
    return BACKUP_DIR_FORMAT.format(timeline=timeline, backup_id=check_backup_id(backup_id))


def backup_manifest_name(timeline: int, backup_id: str) -> str:
    return backup_dir(timeline, backup_id) + BACKUP_MANIFEST


def backup_part_name(timeline: int, backup_id: str, file: str, part: int) -> str:
    return backup_dir(timeline, backup_id) + BACKUP_PART_FORMAT.format(file=file, part=part)


def parse_backup_manifest_name(name: str) -> tuple[int, str] | None:
    """``(timeline, backup id)`` of a manifest's name, or None when it is not one."""
    m = _BACKUP_MANIFEST_RE.match(name)
    if m is None or not _BACKUP_ID_RE.match(m["id"]) or int(m["timeline"]) < 1:
        return None
    return int(m["timeline"]), m["id"]


def wal_listing_start_after(timeline: int, lsn: int) -> str:
    """A name that sorts after every object of ``timeline`` starting below ``lsn`` and
    before every one starting at or after it (a listing's exclusive start-after): the
    shared prefix of the latter, which sorts before them for being shorter."""
    return timeline_dir(timeline) + f"{lsn:020d}"


__all__ = [
    "BACKUPS_PREFIX",
    "LSN_MAX",
    "TIMELINES_PREFIX",
    "TIMELINE_DIR_FORMAT",
    "TIMELINE_HISTORY_NAME_FORMAT",
    "TIMELINE_MAX",
    "WAL_OBJECT_NAME_FORMAT",
    "WAL_PREFIX",
    "WalObjectName",
    "backup_dir",
    "backup_id_at",
    "backup_manifest_name",
    "backup_part_name",
    "check_backup_id",
    "parse_backup_manifest_name",
    "parse_timeline_dir",
    "parse_timeline_history_name",
    "parse_wal_object_name",
    "timeline_dir",
    "timeline_history_name",
    "wal_listing_start_after",
    "wal_object_name",
]
