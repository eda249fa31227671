"""Reading an archive back: what it holds, whether the chain is whole, and each
object's records, verified.

This is what restore and ``stemedb backup verify`` build on; ``stemedb backup list``
uses :meth:`ArchiveReader.summary`.  A damaged object is an
:class:`~stemedb.errors.ArchiveCorruption` naming the object.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .. import limits
from ..errors import ArchiveCorruption, ArchiveError
from ._cipher import ArchiveKey
from ._format import FrameFault, ObjectFault, ObjectHeader, frames_of, unpack_object
from ._naming import (
    TIMELINES_PREFIX,
    WAL_PREFIX,
    WalObjectName,
    parse_timeline_dir,
    parse_wal_object_name,
    timeline_dir,
    timeline_history_name,
    wal_listing_start_after,
)
from ._target import Target


class Gap(NamedTuple):
    """LSNs ``[start_lsn, end_lsn)`` that no object of the archive holds."""

    timeline: int
    start_lsn: int
    end_lsn: int
    why: str

    def as_dict(self) -> dict[str, Any]:
        return {"timeline": self.timeline, "start_lsn": self.start_lsn,
                "end_lsn": self.end_lsn, "bytes": self.end_lsn - self.start_lsn,
                "why": self.why}


@dataclass
class TimelineChain:
    """The WAL objects of one timeline, the LSN ranges they cover without a break,
    the gaps between those ranges and any overlapping objects (a fault)."""

    timeline: int
    objects: list[WalObjectName] = field(default_factory=list)
    ranges: list[tuple[int, int]] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)
    overlaps: list[str] = field(default_factory=list)
    history: dict[str, Any] | None = None

    @property
    def start_lsn(self) -> int | None:
        return self.ranges[0][0] if self.ranges else None

    @property
    def end_lsn(self) -> int | None:
        return self.ranges[-1][1] if self.ranges else None

    def as_dict(self) -> dict[str, Any]:
        return {"timeline": self.timeline, "objects": len(self.objects),
                "start_lsn": self.start_lsn, "end_lsn": self.end_lsn,
                "ranges": [{"start_lsn": s, "end_lsn": e} for s, e in self.ranges],
                "gaps": [g.as_dict() for g in self.gaps], "overlaps": self.overlaps,
                "history": self.history}


class ArchivedWal(NamedTuple):
    """One object, verified: its name, header, and WAL frames."""

    name: WalObjectName
    header: ObjectHeader
    plaintext: bytes
    frames: list[tuple[int, int, int, int]]  # (lsn, type, offset in plaintext, size)

    def records(self) -> Iterator[tuple[int, int, bytes]]:
        """``(lsn, type, payload)`` of each record, in LSN order."""
        for lsn, rtype, at, _size in self.frames:
            length = int.from_bytes(self.plaintext[at + 8:at + 12], "little")
            yield lsn, rtype, self.plaintext[at + 24:at + 24 + length]


def build_chain(timeline: int, objects: list[WalObjectName]) -> TimelineChain:
    """Ranges, gaps and overlaps of a timeline's objects (sorted by their names)."""
    chain = TimelineChain(timeline, sorted(objects))
    for o in chain.objects:
        if not chain.ranges:
            chain.ranges.append((o.start_lsn, o.end_lsn))
            continue
        s, e = chain.ranges[-1]
        if o.start_lsn == e:
            chain.ranges[-1] = (s, o.end_lsn)
        elif o.start_lsn > e:
            chain.gaps.append(Gap(timeline, e, o.start_lsn,
                                  f"no object between LSN {e} and {o.start_lsn}"))
            chain.ranges.append((o.start_lsn, o.end_lsn))
        else:
            chain.overlaps.append(o.name)
            chain.ranges[-1] = (s, max(e, o.end_lsn))
    return chain


class ArchiveReader:
    def __init__(self, target: Target, key: ArchiveKey | None = None, *,
                 plaintext_bytes_max: int = limits.archive_object_bytes_max) -> None:
        self.target = target
        self.key = key
        self.plaintext_bytes_max = plaintext_bytes_max

    def timelines(self) -> list[int]:
        out = {t for t in (parse_timeline_dir(d) for d in self.target.children(WAL_PREFIX))
               if t is not None}
        for name in self.target.list_names(TIMELINES_PREFIX):
            h = name[len(TIMELINES_PREFIX):].removesuffix(".json")
            if h.isdigit():
                out.add(int(h))
        return sorted(out)

    def wal_objects(self, timeline: int, from_lsn: int | None = None
                    ) -> list[WalObjectName]:
        """The timeline's WAL objects in LSN order (those starting at or after
        ``from_lsn`` when it is given)."""
        after = "" if from_lsn is None else wal_listing_start_after(timeline, from_lsn)
        out = []
        for name in self.target.list_names(timeline_dir(timeline), after):
            parts = parse_wal_object_name(name)
            if parts is not None and parts.timeline == timeline:
                out.append(parts)
        return sorted(out)

    def history(self, timeline: int) -> dict[str, Any] | None:
        """What started ``timeline`` (``timelines/NNNNNNNN.json``), when it says."""
        try:
            raw = self.target.get(timeline_history_name(timeline))
        except ArchiveError as exc:
            if exc.reason == "not_found":
                return None
            raise
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            raise ArchiveCorruption(timeline_history_name(timeline),
                                    f"not JSON: {exc}") from exc
        return doc if isinstance(doc, dict) else None

    def chain(self, timeline: int) -> TimelineChain:
        chain = build_chain(timeline, self.wal_objects(timeline))
        chain.history = self.history(timeline) if timeline > 1 else None
        return chain

    def summary(self) -> list[TimelineChain]:
        """Every timeline's chain; a timeline that began past the end of the one before
        it (a "drop", or WAL the archive never got) gets that range as a gap."""
        chains = [self.chain(t) for t in self.timelines()]
        for prev, cur in itertools.pairwise(chains):
            start = cur.start_lsn
            if start is None and cur.history is not None:
                start = int(cur.history.get("start_lsn", 0))
            if prev.end_lsn is not None and start is not None and start > prev.end_lsn:
                why = (cur.history or {}).get("reason") or "the next timeline starts later"
                cur.gaps.insert(0, Gap(cur.timeline, prev.end_lsn, start,
                                       f"between timeline {prev.timeline} and "
                                       f"{cur.timeline}: {why}"))
        return chains

    def fetch(self, obj: WalObjectName | str) -> ArchivedWal:
        """Download an object, check header, checksum, decryption and every frame;
        ArchiveCorruption naming the object when any fails."""
        parts = parse_wal_object_name(obj) if isinstance(obj, str) else obj
        if parts is None:
            raise ArchiveError(f"{obj!r} is not a WAL object name", reason="other")
        data = self.target.get(parts.name)
        return verify_object(parts, data, self.key, self.plaintext_bytes_max)


def verify_object(parts: WalObjectName, data: bytes, key: ArchiveKey | None,
                  plaintext_bytes_max: int = limits.archive_object_bytes_max) -> ArchivedWal:
    """An object's bytes checked against its name; ArchiveCorruption naming it."""
    name = parts.name
    try:
        header, plaintext = unpack_object(data, key, plaintext_bytes_max)
    except ObjectFault as exc:
        raise ArchiveCorruption(name, str(exc)) from exc
    if (header.timeline, header.start_lsn, header.end_lsn) != tuple(parts):
        raise ArchiveCorruption(name, f"its header says timeline {header.timeline}, LSN "
                                      f"{header.start_lsn}..{header.end_lsn}")
    try:
        frames = frames_of(plaintext, header.start_lsn, header.end_lsn).items
    except FrameFault as exc:
        raise ArchiveCorruption(name, f"WAL frame at plaintext {exc}") from exc
    if len(frames) != header.records:
        raise ArchiveCorruption(name, f"{len(frames)} records, the header says "
                                      f"{header.records}")
    return ArchivedWal(parts, header, plaintext, frames)


__all__ = ["ArchiveReader", "ArchivedWal", "Gap", "TimelineChain", "build_chain",
           "verify_object"]
