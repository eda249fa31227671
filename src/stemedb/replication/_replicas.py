"""The leader's view of its replicas: positions, WAL holds, lag and synchronous acks.

Every stream request reports how far its replica is durable (its ``from``).  From those
reports the leader keeps, per replica:

- a WAL hold (``replica:<node>``), as PostgreSQL's replication slots: segments the
  replica has not received are not deleted.  A replica more than
  ``max_replica_lag_bytes`` behind loses its hold, loudly (a log line and
  ``stemedb_replication_hold_dropped_total``); if it comes back after its WAL is gone it
  re-seeds itself from a snapshot;
- its lag in bytes and in seconds (how long the oldest record it lacks has been durable
  here), and whether it is connected;
- with ``synchronous_replicas = K``, the writes waiting until K replicas hold them.

Runs on the event loop; the engine's hold is moved through the writer thread.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..engine import Engine
from ..metrics import Metrics
from . import _limits as limits

log = logging.getLogger("stemedb.replication")

HOLD_PREFIX = "replica:"


@dataclass
class Replica:
    node: str
    durable_lsn: int
    last_seen_mono: float
    hold_lsn: int = -1
    hold_set_mono: float = 0.0
    dropped: bool = False
    url: str = ""


class Replicas:
    def __init__(self, engine: Callable[[], Engine], metrics: Metrics, *,
                 synchronous_replicas: int, max_replica_lag_bytes: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._engine = engine
        self.m = metrics
        self.synchronous_replicas = synchronous_replicas
        self.max_replica_lag_bytes = max_replica_lag_bytes
        self.clock = clock
        self.replicas: dict[str, Replica] = {}
        # (durable end LSN, monotonic time it became durable here), ascending.
        self._samples: collections.deque[tuple[int, float]] = collections.deque(
            maxlen=limits.durable_samples_max)
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    # -- reports ---------------------------------------------------------------------
    def sample(self, durable_lsn: int) -> None:
        if not self._samples or durable_lsn > self._samples[-1][0]:
            self._samples.append((durable_lsn, self.clock()))

    def report(self, node: str, durable_lsn: int, url: str = "") -> None:
        """A replica asked for WAL from ``durable_lsn``: it holds everything before it."""
        now = self.clock()
        r = self.replicas.get(node)
        if r is None:
            r = self.replicas[node] = Replica(node, durable_lsn, now)
            log.info("replica %s connected at LSN %d", node, durable_lsn)
        elif self.clock() - r.last_seen_mono > limits.disconnect_seconds:
            log.info("replica %s reconnected at LSN %d", node, durable_lsn)
        r.durable_lsn = durable_lsn
        r.last_seen_mono = now
        if url:
            r.url = url
        self.m.replication_connected.labels(replica=node).set(1)
        if r.dropped and self._lag_bytes(r) <= self.max_replica_lag_bytes:
            r.dropped = False
        if not r.dropped and ((r.hold_lsn != durable_lsn and
                              now - r.hold_set_mono >= limits.hold_update_seconds)
                              or r.hold_lsn < 0):
            r.hold_lsn = durable_lsn
            r.hold_set_mono = now
            with contextlib.suppress(Exception):  # the engine may be closing
                self._engine().set_hold(HOLD_PREFIX + node, durable_lsn)
        self._wake()

    def forget_all(self) -> None:
        """This node no longer leads: its replicas' holds go (the new leader keeps its
        own), and writes waiting for replicas are told."""
        for r in self.replicas.values():
            with contextlib.suppress(Exception):
                self._engine().set_hold(HOLD_PREFIX + r.node, -1)
            for series in (self.m.replication_lag_bytes, self.m.replication_lag_seconds,
                           self.m.replication_connected):
                with contextlib.suppress(KeyError):
                    series.remove(r.node)
        self.replicas.clear()
        for _, fut in self._waiters:
            if not fut.done():
                fut.set_exception(LookupError("leadership lost"))
        self._waiters.clear()

    # -- lag ---------------------------------------------------------------------------
    def _lag_bytes(self, r: Replica) -> int:
        return max(0, self._engine().read_index.durable_lsn - r.durable_lsn)

    def _lag_seconds(self, r: Replica) -> float:
        """How long the first record ``r`` lacks has been durable here."""
        if r.durable_lsn >= self._engine().read_index.durable_lsn:
            return 0.0
        i = bisect.bisect_right(self._samples, (r.durable_lsn, float("inf")))
        if i >= len(self._samples):
            return 0.0
        return max(0.0, self.clock() - self._samples[i][1])

    def refresh(self) -> None:
        """Lag gauges, connection, and the hold cap; called often on the loop."""
        now = self.clock()
        self.sample(self._engine().read_index.durable_lsn)
        for r in self.replicas.values():
            lag = self._lag_bytes(r)
            self.m.replication_lag_bytes.labels(replica=r.node).set(lag)
            self.m.replication_lag_seconds.labels(replica=r.node).set(self._lag_seconds(r))
            connected = now - r.last_seen_mono <= limits.disconnect_seconds
            self.m.replication_connected.labels(replica=r.node).set(int(connected))
            if not r.dropped and r.hold_lsn >= 0 and lag > self.max_replica_lag_bytes:
                r.dropped = True
                r.hold_lsn = -1
                self.m.replication_hold_dropped_total.labels(replica=r.node).inc()
                log.error("replica %s is %d bytes behind (max_replica_lag_bytes=%d): its WAL "
                          "hold is dropped; once its WAL is deleted here it re-seeds from a "
                          "snapshot", r.node, lag, self.max_replica_lag_bytes)
                with contextlib.suppress(Exception):
                    self._engine().set_hold(HOLD_PREFIX + r.node, -1)

    def status(self) -> dict[str, dict[str, Any]]:
        now = self.clock()
        return {r.node: {
            "durable_lsn": r.durable_lsn, "lag_bytes": self._lag_bytes(r),
            "lag_seconds": round(self._lag_seconds(r), 3),
            "connected": now - r.last_seen_mono <= limits.disconnect_seconds,
            "last_seen_seconds_ago": round(now - r.last_seen_mono, 3),
            "hold_lsn": r.hold_lsn if r.hold_lsn >= 0 else None,
            "hold_dropped": r.dropped, "url": r.url,
        } for r in self.replicas.values()}

    # -- synchronous replication ---------------------------------------------------------
    def replicated_lsn(self, k: int) -> int:
        """The end LSN that at least ``k`` connected replicas hold durably."""
        if k <= 0:
            return self._engine().read_index.durable_lsn
        now = self.clock()
        have = sorted((r.durable_lsn for r in self.replicas.values()
                       if now - r.last_seen_mono <= limits.disconnect_seconds), reverse=True)
        return have[k - 1] if len(have) >= k else 0

    async def wait_replicated(self, lsn: int, timeout_seconds: float) -> bool:
        """Wait until ``synchronous_replicas`` replicas hold the record at ``lsn``
        durably; False after the timeout."""
        k = self.synchronous_replicas
        if k <= 0 or self.replicated_lsn(k) > lsn:
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (lsn, fut)
        self._waiters.append(entry)
        try:
            await asyncio.wait_for(asyncio.shield(fut), timeout_seconds)
        except TimeoutError:
            return False
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(entry)
        return True

    def _wake(self) -> None:
        if not self._waiters:
            return
        have = self.replicated_lsn(self.synchronous_replicas)
        for lsn, fut in self._waiters:
            if lsn < have and not fut.done():
                fut.set_result(None)


__all__ = ["HOLD_PREFIX", "Replica", "Replicas"]
