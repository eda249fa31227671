"""The read index: how far the state has applied the WAL, and reads waiting for it.

Two watermarks, both end LSNs (the LSN just past a record):

- ``durable_lsn``: the end of the last group the writer acknowledged.  Published
  *before* the group's callers are told, so a read that arrives after any
  acknowledgement sees a durable LSN that covers it.
- ``applied_lsn``: how far the state (SQLite) has applied the WAL, published by the
  applier after each of its transactions commits.

A linearizable read waits until ``applied_lsn >= durable_lsn`` as it was when the read
arrived (etcd's ReadIndex, on one node); a read-your-writes read waits until the record
at its ``min_lsn`` is applied (``applied_lsn > min_lsn``); a stale read does not wait,
but may refuse when the state has been behind for longer than it accepts.  Waiters are
kept in a heap by target and woken, per event loop, with one ``call_soon_threadsafe``
when the applied LSN passes them.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import heapq
import itertools
import threading
import time

from .errors import Unavailable


class LsnNotReached(Unavailable):
    """The state did not reach the LSN a read needs within its wait."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="lsn_not_reached",
                         hint="retry after Retry-After; if it persists, see "
                              "stemedb_state_apply_lag_bytes and /readyz")


class TooStale(Unavailable):
    """A stale read that accepts at most some lag found the state further behind."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="too_stale",
                         hint="retry, raise max_staleness_ms, or read without "
                              "consistency=stale")


class ReadIndex:
    """The durable and applied watermarks of one engine, and the reads waiting on them.

    Thread-safe: the writer publishes durable LSNs, the applier applied LSNs, and any
    thread or event loop waits.
    """

    def __init__(self, applied_lsn: int = 0) -> None:
        self._lock = threading.Lock()
        self._durable = applied_lsn
        self._applied = applied_lsn
        # (target, tie-breaker, loop or None, future): woken when applied >= target.
        self._waiters: list[tuple[int, int, asyncio.AbstractEventLoop | None, object]] = []
        self._tie = itertools.count()
        # (durable end LSN, monotonic time it became durable) not yet applied, oldest
        # first: what a stale read's staleness is measured from.  Bounded by the
        # groups in flight between the writer and the applier.
        self._unapplied: collections.deque[tuple[int, float]] = collections.deque()
        # (target, tie-breaker, loop, future): woken when durable >= target (the
        # replication stream's long poll).
        self._durable_waiters: list[tuple[int, int, asyncio.AbstractEventLoop, object]] = []

    @property
    def durable_lsn(self) -> int:
        return self._durable

    @property
    def applied_lsn(self) -> int:
        return self._applied

    def lag_bytes(self) -> int:
        """Durable minus applied: what the state still has to apply."""
        return max(0, self._durable - self._applied)

    def staleness_seconds(self, now: float | None = None) -> float:
        """How long the oldest durable, not yet applied group has waited (0 when the
        state has applied everything durable)."""
        with self._lock:
            if not self._unapplied:
                return 0.0
            since = self._unapplied[0][1]
        return max(0.0, (time.monotonic() if now is None else now) - since)

    def publish_durable(self, end_lsn: int) -> None:
        """The writer made the WAL durable up to ``end_lsn`` (before it acknowledges)."""
        woken: list[tuple[asyncio.AbstractEventLoop | None, object]] = []
        with self._lock:
            if end_lsn <= self._durable:
                return
            self._durable = end_lsn
            if end_lsn > self._applied:
                self._unapplied.append((end_lsn, time.monotonic()))
            while self._durable_waiters and self._durable_waiters[0][0] <= end_lsn:
                _, _, loop, fut = heapq.heappop(self._durable_waiters)
                woken.append((loop, fut))
        if woken:
            _wake(woken, end_lsn)

    async def wait_durable_async(self, target: int, timeout_seconds: float) -> int:
        """Wait until ``durable_lsn >= target`` or the timeout; return the durable LSN
        either way (a long poll, not an error)."""
        with self._lock:
            if self._durable >= target:
                return self._durable
            loop = asyncio.get_running_loop()
            fut: asyncio.Future[int] = loop.create_future()
            entry = (target, next(self._tie), loop, fut)
            heapq.heappush(self._durable_waiters, entry)
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout_seconds)
        except (TimeoutError, asyncio.CancelledError) as exc:
            with self._lock:
                try:
                    self._durable_waiters.remove(entry)
                    heapq.heapify(self._durable_waiters)
                except ValueError:
                    pass
            if isinstance(exc, asyncio.CancelledError):
                raise
            return self._durable

    def publish_applied(self, end_lsn: int) -> None:
        """The state committed every record up to ``end_lsn``: wake who waits for it."""
        woken: list[tuple[asyncio.AbstractEventLoop | None, object]] = []
        with self._lock:
            if end_lsn <= self._applied:
                return
            self._applied = end_lsn
            if end_lsn > self._durable:  # replay, or a policy that acknowledges first
                self._durable = end_lsn
                while self._durable_waiters and self._durable_waiters[0][0] <= end_lsn:
                    _, _, dloop, dfut = heapq.heappop(self._durable_waiters)
                    woken.append((dloop, dfut))
            while self._unapplied and self._unapplied[0][0] <= end_lsn:
                self._unapplied.popleft()
            while self._waiters and self._waiters[0][0] <= end_lsn:
                _, _, loop, fut = heapq.heappop(self._waiters)
                woken.append((loop, fut))
        _wake(woken, end_lsn)

    def target_for(self, min_lsn: int | None) -> int:
        """The applied LSN a read must wait for: the durable LSN now (linearizable), or
        just past the record at ``min_lsn`` (read-your-writes)."""
        return self._durable if min_lsn is None else min_lsn + 1

    async def wait_async(self, target: int, timeout_seconds: float) -> int:
        """Wait until ``applied_lsn >= target``; return it, or raise LsnNotReached."""
        with self._lock:
            if self._applied >= target:
                return self._applied
            loop = asyncio.get_running_loop()
            fut: asyncio.Future[int] = loop.create_future()
            entry = (target, next(self._tie), loop, fut)
            heapq.heappush(self._waiters, entry)
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout_seconds)
        except TimeoutError:
            self._forget(entry)
            raise self._not_reached(target, timeout_seconds) from None
        except asyncio.CancelledError:
            self._forget(entry)
            raise

    def wait(self, target: int, timeout_seconds: float) -> int:
        """:meth:`wait_async` for a thread."""
        with self._lock:
            if self._applied >= target:
                return self._applied
            event = threading.Event()
            entry = (target, next(self._tie), None, event)
            heapq.heappush(self._waiters, entry)
        if not event.wait(timeout_seconds):
            self._forget(entry)
            if self._applied >= target:
                return self._applied
            raise self._not_reached(target, timeout_seconds)
        return self._applied

    def _forget(self, entry: tuple[int, int, asyncio.AbstractEventLoop | None, object]
                ) -> None:
        with self._lock:
            try:
                self._waiters.remove(entry)
            except ValueError:
                return  # already woken
            heapq.heapify(self._waiters)

    def _not_reached(self, target: int, timeout_seconds: float) -> LsnNotReached:
        return LsnNotReached(f"the state has applied the WAL up to LSN {self._applied}, not "
                             f"{target}, after waiting {timeout_seconds:.3f}s (durable up "
                             f"to {self._durable})")

    def waiting(self) -> int:
        return len(self._waiters)


def _wake(woken: list[tuple[asyncio.AbstractEventLoop | None, object]], lsn: int) -> None:
    by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[int]]] = {}
    for loop, fut in woken:
        if loop is None:
            assert isinstance(fut, threading.Event)
            fut.set()
        else:
            assert isinstance(fut, asyncio.Future)
            by_loop.setdefault(loop, []).append(fut)
    for loop, futs in by_loop.items():
        def settle(futs: list[asyncio.Future[int]] = futs) -> None:
            for f in futs:
                if not f.done():
                    f.set_result(lsn)
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
            loop.call_soon_threadsafe(settle)


__all__ = ["LsnNotReached", "ReadIndex", "TooStale"]
