"""``stemedb backup verify``: every object checked, every manifest read, and the WAL
chain from the base backups to the newest record.

A *fault* names an object (and its LSN range when it holds WAL) or a range of LSNs no
object holds.  Faults: a manifest, part or WAL object that fails a check; no base
backup at all; a gap on the path from the newest base backup (or from ``--backup``) to
the newest record.  A gap that only an older backup would have to cross is a *note*:
the newer backup covers it (a restore from the older one reaches up to the gap).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..archive import ArchiveKey, ArchiveReader, Target
from ..errors import ArchiveError, InvalidInput
from ._fetch import fetch_file
from ._manifest import Manifest, read_catalog
from ._plan import History, path_plans, read_history


@dataclass
class Fault:
    object: str | None
    what: str
    start_lsn: int | None = None
    end_lsn: int | None = None
    timeline: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"object": self.object, "timeline": self.timeline,
                "start_lsn": self.start_lsn, "end_lsn": self.end_lsn, "what": self.what}

    def __str__(self) -> str:
        where = []
        if self.object:
            where.append(self.object)
        if self.start_lsn is not None:
            where.append(f"timeline {self.timeline} LSN {self.start_lsn}..{self.end_lsn}")
        return f"{', '.join(where)}: {self.what}" if where else self.what


@dataclass
class VerifyReport:
    url: str
    backups: list[dict[str, Any]] = field(default_factory=list)
    wal_objects: int = 0
    parts: int = 0
    newest_timeline: int | None = None
    newest_lsn: int | None = None
    faults: list[Fault] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.faults

    def as_dict(self) -> dict[str, Any]:
        return {"url": self.url, "ok": self.ok, "backups": self.backups,
                "wal_objects": self.wal_objects, "parts": self.parts,
                "newest_timeline": self.newest_timeline, "newest_lsn": self.newest_lsn,
                "faults": [f.as_dict() for f in self.faults], "notes": self.notes}


def verify_archive(target: Target, key: ArchiveKey | None = None,
                   backup_id: str | None = None) -> VerifyReport:
    report = VerifyReport(target.url)
    reader = ArchiveReader(target, key)
    catalog = read_catalog(target)
    for exc in catalog.faults:
        report.faults.append(Fault(getattr(exc, "name", None), exc.message))
    backups = catalog.backups
    if backup_id is not None:
        one = catalog.find(backup_id)
        if one is None:
            raise InvalidInput(f"{target.url} holds no base backup {backup_id}",
                               hint="stemedb backup list --from " + target.url)
        backups = [one]
    history = read_history(reader, [b.timeline for b in catalog.backups])
    # Every object's checksum: parts, then WAL.
    for m in backups:
        _check_backup(target, key, m, report)
    objects: dict[int, list[Any]] = {}
    for t in history.timelines:
        chain = reader.chain(t)
        objects[t] = chain.objects
        for name in chain.overlaps:
            report.faults.append(Fault(name, "covers LSNs another object of the timeline "
                                             "covers", timeline=t))
        for o in chain.objects:
            report.wal_objects += 1
            try:
                reader.fetch(o)
            except ArchiveError as exc:
                report.faults.append(Fault(o.name, exc.message, o.start_lsn, o.end_lsn, t))
        if chain.end_lsn is not None:
            report.newest_timeline, report.newest_lsn = t, chain.end_lsn
    # The chain from the backups to the newest record.
    if not catalog.backups:
        report.faults.append(Fault(None, "the archive holds no base backup: nothing to "
                                         "restore from"))
        return report
    _check_chains(reader, history, backups, backup_id is not None, objects, report)
    return report


def _check_backup(target: Target, key: ArchiveKey | None, m: Manifest,
                  report: VerifyReport) -> None:
    entry = dict(m.summary(), ok=True)
    report.backups.append(entry)
    if m.encrypted and key is None:
        report.faults.append(Fault(m.name, f"encrypted (key id {m.key_id}) and no key was "
                                           f"given: its parts cannot be checked"))
        entry["ok"] = False
        return
    for f in m.files:
        report.parts += len(f.parts)
        try:
            fetch_file(target, key, m, f)
        except ArchiveError as exc:
            report.faults.append(Fault(getattr(exc, "name", m.name), exc.message))
            entry["ok"] = False


def _check_chains(reader: ArchiveReader, history: History, backups: list[Manifest],
                  one: bool, objects: dict[int, list[Any]], report: VerifyReport) -> None:
    newest = history.newest()
    if one:
        newest = history.newest_descending_from(backups[0].timeline)
    on_line = [b for b in backups if history.legs(b, newest) is not None]
    if not on_line:
        report.faults.append(Fault(None, f"no base backup is on timeline {newest}'s line of "
                                         f"history: the newest WAL cannot be restored"))
        return
    newest_backup = max(on_line, key=lambda b: (b.lsn, b.finished_unix))
    for b in on_line:
        plans = path_plans(reader, history, b, newest, dict(objects)) or []
        gap = next((p.gap for p in plans if p.gap is not None), None)
        entry = next(e for e in report.backups if e["id"] == b.id)
        entry["reaches_lsn"] = plans[-1].reached_lsn if plans else b.lsn
        if gap is None:
            continue
        entry["gap"] = gap.as_dict()
        if b is newest_backup or one:
            report.faults.append(Fault(None, f"backup {b.id} cannot reach the newest record "
                                             f"(timeline {newest}): {gap.why}",
                                       gap.start_lsn, gap.end_lsn, gap.timeline))
        else:
            report.notes.append(f"backup {b.id} reaches LSN {gap.start_lsn} only ({gap.why});"
                                f" backup {newest_backup.id} is past the gap")


__all__ = ["Fault", "VerifyReport", "verify_archive"]
