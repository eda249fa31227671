"""``stemedb backup expire``: retention of base backups, and of the WAL they need.

A backup is expired only when it is past **both** limits: not among the newest
``retain_count``, and older than ``retain_days``.  So a schedule that stops taking
backups never expires the last good ones, and a burst of manual backups never
shortens the time window.  The newest backup is never expired.

WAL objects go when no kept backup needs them: on each timeline a kept backup's path
crosses, the objects that end at or before the lowest LSN any kept backup replays
from there; and every object of a timeline older than the oldest kept backup's that
no kept path crosses.  A backup is removed manifest first (from then on it is not
listed), then its parts.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from ..archive import ArchiveReader, Target
from ..archive._naming import backup_dir
from ..errors import ArchiveError
from ._manifest import read_catalog
from ._plan import path_plans, read_history
from ._settings import BackupSettings

log = logging.getLogger("stemedb.backup")
DAY_SECONDS = 86_400


@dataclass
class ExpireReport:
    url: str
    dry_run: bool
    kept: list[str] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)
    wal_objects_removed: list[str] = field(default_factory=list)
    objects_removed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"url": self.url, "dry_run": self.dry_run, "kept": self.kept,
                "expired": self.expired, "wal_objects_removed": self.wal_objects_removed,
                "objects_removed": self.objects_removed}


def expire(target: Target, settings: BackupSettings, *, dry_run: bool = False,
           now_unix: float | None = None) -> ExpireReport:
    now = time.time() if now_unix is None else now_unix
    report = ExpireReport(target.url, dry_run)
    catalog = read_catalog(target)
    if catalog.faults:
        raise ArchiveError(f"{target.url}: expire changes nothing while a manifest is "
                           f"damaged: {'; '.join(f.message for f in catalog.faults)}",
                           reason="verify", hint="stemedb backup verify --from " + target.url)
    backups = sorted(catalog.backups, key=lambda b: (b.finished_unix, b.id))
    if not backups:
        return report
    cutoff = now - settings.retain_days * DAY_SECONDS
    keep_newest = set(b.id for b in backups[-settings.retain_count:])
    kept = [b for b in backups if b.id in keep_newest or b.finished_unix >= cutoff]
    gone = [b for b in backups if b not in kept]
    report.kept = [b.id for b in kept]
    report.expired = [b.id for b in gone]
    reader = ArchiveReader(target)
    history = read_history(reader, [b.timeline for b in backups])
    newest = history.newest()
    # The lowest LSN a kept backup replays from, per timeline its path crosses.
    need_from: dict[int, int] = {}
    cache: dict[int, Any] = {}
    for b in kept:
        line_top = newest if history.legs(b, newest) is not None else \
            history.newest_descending_from(b.timeline)
        for plan in path_plans(reader, history, b, line_top, cache) or []:
            t, s = plan.leg.timeline, plan.leg.start_lsn
            need_from[t] = min(need_from.get(t, s), s)
        need_from.setdefault(b.timeline, b.lsn)
        need_from[b.timeline] = min(need_from[b.timeline], b.lsn)
    oldest_kept_timeline = min(b.timeline for b in kept)
    for t in history.timelines:
        objs = cache.get(t) or reader.wal_objects(t)
        if t in need_from:
            drop = [o for o in objs if o.end_lsn <= need_from[t]]
        elif t < oldest_kept_timeline:
            drop = list(objs)
        else:
            drop = []
        report.wal_objects_removed.extend(o.name for o in drop)
    if dry_run:
        return report
    for b in gone:
        target.delete(b.name)  # first: from now on it is not a backup
        report.objects_removed += 1
        for name in list(target.list_names(backup_dir(b.timeline, b.id))):
            target.delete(name)
            report.objects_removed += 1
        log.info("expired base backup %s (timeline %d, LSN %d)", b.id, b.timeline, b.lsn)
    for name in report.wal_objects_removed:
        target.delete(name)
        report.objects_removed += 1
    return report


__all__ = ["ExpireReport", "expire"]
