"""Which WAL a base backup needs: timelines, their history, and the legs of a path.

A restore follows one line of history, as PostgreSQL's recovery does with its
timelines: the *newest* timeline (or the newest one that descends from the chosen
backup's), and its ancestors back to the backup's timeline.  Each timeline after the
first has a history object (``timelines/NNNNNNNN.json``) naming its parent, where the
parent's WAL stops counting (``parent_end_lsn``) and where its own starts
(``start_lsn``).  A restore made it when the two are equal; WAL dropped under
``on_backlog_full = "drop"`` made it when ``start_lsn`` is later, and that range is a
gap no restore crosses.

A *leg* is the part of one timeline a path replays: records with ``start_lsn <= LSN <
end_lsn`` (no end: to the timeline's newest record).  :func:`plan_leg` says which
objects hold a leg, how far they reach without a break, and the first gap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .. import limits
from ..archive import ArchiveReader, Gap, WalObjectName
from ..archive._naming import WAL_PREFIX, parse_timeline_dir
from ._manifest import Manifest


class Leg(NamedTuple):
    timeline: int
    start_lsn: int
    end_lsn: int | None  # None: to the newest record of the timeline


@dataclass
class LegPlan:
    """The objects that hold a leg, in order; ``reached_lsn``: the leg's records are
    whole up to there; ``gap``: the break that stopped it (None when the leg is
    whole, up to ``end_lsn`` or to the timeline's newest record)."""

    leg: Leg
    objects: list[WalObjectName] = field(default_factory=list)
    reached_lsn: int = 0
    gap: Gap | None = None

    @property
    def complete(self) -> bool:
        return self.gap is None


def plan_leg(leg: Leg, objects: list[WalObjectName]) -> LegPlan:
    """The objects of ``leg`` among its timeline's ``objects`` (sorted), and how far
    they reach from ``leg.start_lsn`` without a hole."""
    plan = LegPlan(leg, reached_lsn=leg.start_lsn)
    pos, end = leg.start_lsn, leg.end_lsn
    for o in objects:  # bounded by the listing
        if end is not None and pos >= end:
            break
        if o.end_lsn <= pos:
            continue
        if o.start_lsn > pos:
            plan.gap = Gap(leg.timeline, pos, o.start_lsn,
                           f"no object of timeline {leg.timeline} holds LSN {pos}.."
                           f"{o.start_lsn}")
            return plan
        plan.objects.append(o)
        pos = o.end_lsn
        plan.reached_lsn = pos if end is None else min(pos, end)
    if end is not None and plan.reached_lsn < end:
        plan.gap = Gap(leg.timeline, plan.reached_lsn, end,
                       f"timeline {leg.timeline} is archived up to LSN {plan.reached_lsn}, "
                       f"not up to LSN {end} where the next timeline branches off")
    return plan


@dataclass
class History:
    """The timelines of an archive and how each began."""

    timelines: list[int]
    parents: dict[int, dict[str, Any]]  # timeline -> its history document
    # Timelines that hold a WAL object or a base backup.  A restore claims its
    # timeline (the history object) before the restored node writes anything there;
    # until it does, that timeline is no one's newest, so trying several targets one
    # after the other always starts from the same history.
    with_data: set[int] = field(default_factory=set)

    def newest(self) -> int:
        return max(self.with_data or self.timelines or [1])

    def ancestry(self, timeline: int) -> list[int]:
        """``timeline`` and its ancestors, newest first."""
        out = [timeline]
        for _ in range(limits.backup_timelines_max):  # bounded: a runaway guard
            doc = self.parents.get(out[-1])
            if doc is None:
                return out
            parent = int(doc.get("parent_timeline", 0))
            if parent < 1 or parent >= out[-1]:
                return out
            out.append(parent)
        return out

    def newest_descending_from(self, timeline: int) -> int:
        """The newest timeline whose ancestry holds ``timeline``."""
        best = timeline
        for t in self.with_data:
            if t > best and timeline in self.ancestry(t):
                best = t
        return best

    def legs(self, backup: Manifest, newest: int) -> list[Leg] | None:
        """The legs from ``backup`` to the newest record of ``newest``, or None when the
        backup is not on that line of history (another branch, or past a branch
        point)."""
        line = list(reversed(self.ancestry(newest)))  # oldest first
        if backup.timeline not in line:
            return None
        line = line[line.index(backup.timeline):]
        legs: list[Leg] = []
        start = backup.lsn
        for i, t in enumerate(line):
            child = line[i + 1] if i + 1 < len(line) else None
            end = int(self.parents[child]["parent_end_lsn"]) if child is not None else None
            if end is not None and start > end:
                return None  # the backup was taken after this line left the timeline
            legs.append(Leg(t, start, end))
            if child is not None:
                start = max(end or 0, int(self.parents[child].get("start_lsn", end or 0)))
        return legs


def read_history(reader: ArchiveReader, extra_timelines: list[int]) -> History:
    timelines = sorted(set(reader.timelines()) | set(extra_timelines))
    with_data = {t for t in (parse_timeline_dir(d) for d in reader.target.children(WAL_PREFIX))
                 if t is not None} | set(extra_timelines)
    parents: dict[int, dict[str, Any]] = {}
    for t in timelines:
        if t > 1:
            doc = reader.history(t)
            if doc is not None and "parent_end_lsn" in doc and "parent_timeline" in doc:
                parents[t] = doc
    return History(timelines, parents, with_data)


def path_plans(reader: ArchiveReader, history: History, backup: Manifest, newest: int,
               cache: dict[int, list[WalObjectName]] | None = None) -> list[LegPlan] | None:
    """Each leg of the backup's path, planned, up to the first incomplete one (a break
    between two legs is that leg's gap: a timeline that begins later than its parent
    ends)."""
    legs = history.legs(backup, newest)
    if legs is None:
        return None
    cache = {} if cache is None else cache
    plans: list[LegPlan] = []
    for i, leg in enumerate(legs):
        if leg.timeline not in cache:
            cache[leg.timeline] = reader.wal_objects(leg.timeline)
        plan = plan_leg(leg, cache[leg.timeline])
        plans.append(plan)
        if not plan.complete:
            break
        nxt = legs[i + 1] if i + 1 < len(legs) else None
        if nxt is not None and leg.end_lsn is not None and nxt.start_lsn > leg.end_lsn:
            doc = history.parents.get(nxt.timeline) or {}
            plan.gap = Gap(nxt.timeline, leg.end_lsn, nxt.start_lsn,
                           f"between timeline {leg.timeline} and {nxt.timeline}: "
                           f"{doc.get('reason') or 'the next timeline starts later'}")
            break
    return plans


__all__ = ["History", "Leg", "LegPlan", "path_plans", "plan_leg", "read_history"]
