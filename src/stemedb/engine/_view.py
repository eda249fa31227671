"""The admission view: what the committer checks a write against, without the state.

The committer acknowledges a write once its record is durable, before the applier has
put it into SQLite, so it cannot ask SQLite whether a vote's assertion exists or which
epoch is open.  It keeps what it needs itself, current to the last record it wrote:

- the next assertion id: ids are dense and assigned in LSN order, so an assertion
  exists exactly when ``1 <= id < next_id``;
- the open epoch;
- the idempotency keys whose records are durable but not yet applied (the applier's
  state answers for the rest), each with its first response once it is known.

Loaded from the state at start (after recovery has applied every durable record), then
advanced by the committer, one record at a time, and trimmed by the applier as it
applies.  Only the committer thread advances it; the lock covers the pending keys,
which the applier trims.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass, field
from typing import Any

from ..errors import NotFound
from ..wal import RecordType


@dataclass
class PendingKey:
    """A keyed record durable but not yet applied: its body hash, its LSN, and its
    response once known (an assertion's at once; a vote's or seal's when applied)."""

    body_sha256: str
    lsn: int
    created_unix: float
    status: int | None = None
    body: dict[str, Any] | None = None
    # Retries waiting for a response that only the applier can give.
    followers: list[Any] = field(default_factory=list)


@dataclass
class Admission:
    """What the view decided for one request: the ids its assertions get, in op order,
    and whether its response needs the state (a vote's ``created``, a seal's digest)."""

    first_id: int
    assertions: int
    needs_state: bool


class AdmissionView:
    def __init__(self, next_id: int, epoch: int) -> None:
        self.next_id = next_id
        self.epoch = epoch
        self._lock = threading.Lock()
        self._keys: dict[str, PendingKey] = {}

    @classmethod
    def load(cls, conn: sqlite3.Connection) -> AdmissionView:
        """The view of a state that has applied every durable record."""
        row = conn.execute("SELECT max(n) FROM epochs").fetchone()
        epoch = int(row[0]) if row and row[0] is not None else 0
        top = conn.execute("SELECT max(id) FROM assertions").fetchone()[0] or 0
        return cls(int(top) + 1, epoch)

    def admit(self, rtype: RecordType, ops: list[dict[str, Any]]) -> Admission:
        """Check a validated request against the view; raise what the state would
        (NotFound for a vote on an assertion that does not exist).  Changes nothing:
        :meth:`advance` does, once the record is planned."""
        first = self.next_id
        if rtype in (RecordType.SEAL, RecordType.GENESIS, RecordType.TERM):
            return Admission(first, 0, rtype == RecordType.SEAL)
        if self.epoch < 1:
            raise NotFound("no open epoch: the WAL's genesis record has not been applied")
        n = 0
        votes = False
        for op in ops:
            if "assert" in op:
                n += 1
                continue
            votes = True
            aid = op["vote"]["assertion_id"]
            if not 1 <= aid < first + n:  # an assertion earlier in the same batch counts
                raise NotFound(f"assertion {aid} does not exist")
        return Admission(first, n, votes)

    def advance(self, rtype: RecordType, admission: Admission) -> None:
        self.next_id = admission.first_id + admission.assertions
        if rtype == RecordType.SEAL:
            self.epoch += 1
        elif rtype == RecordType.GENESIS:
            self.epoch = 1

    # -- idempotency keys durable but not applied ---------------------------------
    def pending_key(self, key: str) -> PendingKey | None:
        with self._lock:
            return self._keys.get(key)

    def add_key(self, key: str, entry: PendingKey) -> None:
        with self._lock:
            self._keys[key] = entry

    def follow(self, entry: PendingKey, follower: Any) -> tuple[int, dict[str, Any]] | None:
        """A retry of ``entry``'s write: its response when known, else None and the
        retry waits for :meth:`resolve` with it."""
        with self._lock:
            if entry.status is not None:
                assert entry.body is not None
                return entry.status, entry.body
            entry.followers.append(follower)
            return None

    def resolve(self, entry: PendingKey, status: int | None, body: dict[str, Any] | None
                ) -> list[Any]:
        """The applier gave ``entry``'s response (None: it failed): the retries that
        waited for it."""
        with self._lock:
            entry.status, entry.body = status, body
            followers, entry.followers = entry.followers, []
            return followers

    def forget_keys_applied(self, end_lsn: int) -> None:
        """The applier committed every record before ``end_lsn``: their keys are in the
        state now (which answers a retry from here on)."""
        with self._lock:
            if not self._keys:
                return
            done = [k for k, e in self._keys.items() if e.lsn < end_lsn]
            for k in done:
                del self._keys[k]


__all__ = ["Admission", "AdmissionView", "PendingKey"]
