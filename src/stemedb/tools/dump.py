"""``stemedb wal dump``: who wrote what, and when - one line per WAL record.

Each record's payload is JSON: ``{"t": time, "ops": [...], "k": idempotency key,
"h": body sha256}`` (GENESIS and SEAL carry only ``t``).  The text form is one line
per record::

    LSN  TIME  TYPE  AUTHOR  CONTENT

and ``--json`` prints one JSON object per line with every field.  Filters combine
with AND: an LSN range (both ends inclusive), record types, authors or voters (a
record matches if any of its ops names one), and a time range (``since``
inclusive, ``until`` exclusive).
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..wal import (
    HeaderError,
    RecordType,
    SegmentScanner,
    load_chain,
)
from ._common import RO_FS, ToolError, record_type_name, resolve_wal_dir

TYPE_NAMES = tuple(t.name.lower() for t in RecordType)
BATCH_OPS_SHOWN_MAX = 3  # ops spelled out on a text line; --json has them all
AUTHOR_COLUMN_WIDTH = 12


def parse_time(text: str) -> float:
    """Unix seconds from RFC 3339 (``2025-11-25T19:00:00Z``), a date, or a number."""
    t = text.strip()
    try:
        return float(t)
    except ValueError:
        pass
    try:
        d = dt.datetime.fromisoformat(t.replace("z", "Z"))
    except ValueError as exc:
        raise ToolError(f"cannot read the time {text!r}",
                        hint="use RFC 3339 (2025-11-25T19:00:00Z), a date (2025-11-25) or "
                             "unix seconds") from exc
    if d.tzinfo is None:
        d = d.replace(tzinfo=dt.UTC)  # times in the WAL are UTC
    return d.timestamp()


@dataclass(frozen=True)
class DumpFilter:
    from_lsn: int | None = None
    to_lsn: int | None = None
    types: frozenset[str] = frozenset()
    authors: frozenset[str] = frozenset()
    since_unix: float | None = None
    until_unix: float | None = None

    def lsn_ok(self, lsn: int) -> bool:
        return ((self.from_lsn is None or lsn >= self.from_lsn)
                and (self.to_lsn is None or lsn <= self.to_lsn))

    def matches(self, rec: DumpRecord) -> bool:
        if not self.lsn_ok(rec.lsn):
            return False
        if self.types and rec.type not in self.types:
            return False
        if self.authors and not self.authors.intersection(rec.authors):
            return False
        if self.since_unix is not None or self.until_unix is not None:
            if rec.time_unix is None:
                return False
            if self.since_unix is not None and rec.time_unix < self.since_unix:
                return False
            if self.until_unix is not None and rec.time_unix >= self.until_unix:
                return False
        return True


@dataclass
class DumpRecord:
    lsn: int
    segment: str
    offset: int
    size: int
    type: str
    time: str | None
    time_unix: float | None
    authors: list[str]
    ops: list[dict[str, Any]]
    epoch: int | None = None  # the epoch the record was written in, when known
    assertion_ids: list[int] | None = None  # ids its assert ops got, when known
    idempotency_key: str | None = None
    body_sha256: str | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"lsn": self.lsn, "segment": self.segment, "offset": self.offset,
                "size": self.size, "type": self.type, "time": self.time,
                "epoch": self.epoch, "assertion_ids": self.assertion_ids,
                "authors": self.authors, "ops": self.ops,
                "idempotency_key": self.idempotency_key, "body_sha256": self.body_sha256,
                "error": self.error}

    def content(self) -> str:
        if self.error is not None:
            return f"<unreadable payload: {self.error}>"
        if self.type == "genesis":
            return "opens epoch 1"
        if self.type == "seal":
            if self.epoch is None:
                return "seals the open epoch, opens the next"
            return f"seals epoch {self.epoch}, opens epoch {self.epoch + 1}"
        ids = iter(self.assertion_ids or [])
        parts = [_op_text(op, next(ids, None) if "assert" in op else None)
                 for op in self.ops[:BATCH_OPS_SHOWN_MAX]]
        text = "; ".join(parts)
        if self.type == "batch":
            more = len(self.ops) - BATCH_OPS_SHOWN_MAX
            text = f"{len(self.ops)} ops: {text}" + (f"; (+{more} more)" if more > 0 else "")
        if self.idempotency_key is not None:
            text += f" [key={self.idempotency_key}]"
        return text

    def text_line(self) -> str:
        author = ",".join(self.authors) or "-"
        return (f"{self.lsn:>10}  {self.time or '-':<27}  {self.type:<7}  "
                f"{author:<{AUTHOR_COLUMN_WIDTH}}  {self.content()}")


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def _op_text(op: dict[str, Any], assertion_id: int | None = None) -> str:
    if "assert" in op:
        a = op["assert"]
        s = "assert" + ("" if assertion_id is None else f" #{assertion_id}")
        s += (f" subject={_compact(a.get('subject'))} "
             f"predicate={_compact(a.get('predicate'))} object={_compact(a.get('object'))}")
        if a.get("confidence") is not None:
            s += f" confidence={_compact(a['confidence'])}"
        if a.get("source") is not None:
            s += f" source={_compact(a['source'])}"
        return s
    if "vote" in op:
        v = op["vote"]
        value = v.get("value")
        shown = f"{value:+d}" if isinstance(value, int) else _compact(value)
        return f"vote assertion_id={_compact(v.get('assertion_id'))} value={shown}"
    return _compact(op)


def _authors(ops: list[dict[str, Any]]) -> list[str]:
    out: list[str] = []
    for op in ops:
        who = (op.get("assert") or {}).get("author") if "assert" in op else (
            (op.get("vote") or {}).get("voter"))
        if isinstance(who, str) and who not in out:
            out.append(who)
    return out


def decode(lsn: int, rtype: int, payload: bytes, segment: str, offset: int,
           size: int) -> DumpRecord:
    name = record_type_name(rtype)
    try:
        doc = json.loads(payload)
        if not isinstance(doc, dict):
            raise ValueError("payload is not a JSON object")
        ops = doc.get("ops") or []
        if not isinstance(ops, list):
            raise ValueError("ops is not a list")
        t = doc.get("t")
        t_unix = parse_time(t) if isinstance(t, str) else None
        return DumpRecord(lsn, segment, offset, size, name, t if isinstance(t, str) else None,
                          t_unix, _authors(ops), ops, idempotency_key=doc.get("k"),
                          body_sha256=doc.get("h"))
    except (ValueError, ToolError) as exc:
        return DumpRecord(lsn, segment, offset, size, name, None, None, [], [],
                          error=str(exc))


@dataclass
class Dump:
    """Iterate :meth:`records`; afterwards ``damage`` lists what could not be read."""

    paths: list[str]
    flt: DumpFilter = field(default_factory=DumpFilter)
    damage: list[str] = field(default_factory=list)
    scanned: int = 0

    @classmethod
    def of_file(cls, path: str, flt: DumpFilter | None = None) -> Dump:
        if not os.path.isfile(path):
            raise ToolError(f"segment {path} does not exist",
                            hint="list the segments with: ls <data-dir>/wal/segment.*.wal")
        return cls([path], flt or DumpFilter())

    @classmethod
    def of_dir(cls, data_dir: str, flt: DumpFilter | None = None) -> Dump:
        wal_dir = resolve_wal_dir(data_dir)
        try:
            chain = load_chain(RO_FS, wal_dir)
        except OSError as exc:
            raise ToolError(f"cannot read {wal_dir}: {exc.strerror or exc}") from exc
        d = cls([s.path for s in chain.segments], flt or DumpFilter())
        d.damage.extend(f"{f.segment}: {f.kind}: {f.reason}" for f in chain.faults)
        return d

    def records(self) -> Iterator[DumpRecord]:
        flt = self.flt
        # Epochs and assertion ids are counted from the genesis record, so they are
        # known only when the dump reads the log from its first segment.
        epoch: int | None = None
        next_id: int | None = None
        for path in self.paths:
            name = os.path.basename(path)
            try:
                sc = SegmentScanner(RO_FS, path)
            except HeaderError as exc:
                self.damage.append(f"{name}: bad_header: {exc.reason}")
                epoch = next_id = None
                continue
            except OSError as exc:
                raise ToolError(f"cannot read {path}: {exc.strerror or exc}") from exc
            with sc:
                h = sc.header
                # Segments wholly before --from-lsn are skipped, unless reading them
                # keeps the epoch count (which starts at the genesis record).
                if (flt.from_lsn is not None and h.end_lsn <= flt.from_lsn
                        and epoch is None and h.seq != 1):  # epoch None: nothing to count
                    continue
                if flt.to_lsn is not None and h.base_lsn > flt.to_lsn:
                    break
                for rec in sc.records():
                    self.scanned += 1
                    d = decode(rec.lsn, rec.type, rec.payload, name, rec.offset, rec.size)
                    if d.type == "genesis":
                        epoch, next_id = 1, 1
                    d.epoch = epoch
                    if next_id is not None and d.error is None:
                        n = sum(1 for op in d.ops if "assert" in op)
                        d.assertion_ids = list(range(next_id, next_id + n))
                        next_id += n
                    if d.type == "seal" and epoch is not None:
                        epoch += 1
                    if flt.matches(d):
                        yield d
                if sc.damage is not None:
                    off, reason, _ = sc.damage
                    self.damage.append(f"{name}: damaged at offset {off} (LSN "
                                       f"{h.base_lsn + off}): {reason}")
                    epoch = next_id = None


def json_line(rec: DumpRecord) -> str:
    return json.dumps(rec.as_dict(), ensure_ascii=False, separators=(",", ":"))
