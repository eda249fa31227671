"""The archive's dead man's switch: ``[archive] heartbeat_url``.

Alerts inside the monitoring stack cannot fire when the whole host is gone, or when
Prometheus itself stopped scraping it.  A heartbeat is the other way round: an outside
service (healthchecks.io, Dead Man's Snitch, Cronitor, an Alertmanager watchdog route)
expects a request every so often and alerts when requests *stop*.

The archiver calls :meth:`Heartbeat.beat` after each pass that left the archive holding
every durable record, so a beat says "everything acknowledged up to a moment ago is in
the archive".  A pass that failed, or that could not catch up, beats nothing.  Beats are
at most one per ``heartbeat_interval_seconds``; each is one HTTP GET with a bounded
timeout, on the archiver's thread.  A failed beat is logged and counted, never retried
early: the next caught-up pass after the interval tries again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from .. import limits
from ..metrics import Metrics

log = logging.getLogger("stemedb.archive")


def _get(url: str, timeout_seconds: float) -> int:
    import httpx  # the archiver thread only; no cost where there is no heartbeat

    return httpx.get(url, timeout=timeout_seconds, follow_redirects=True).status_code


class Heartbeat:
    def __init__(self, url: str, interval_seconds: float, metrics: Metrics, *,
                 get: Callable[[str, float], int] = _get,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.url = url
        self.interval_seconds = interval_seconds
        self.m = metrics
        self._get = get
        self._clock = clock
        self._last_try: float | None = None
        self.last_success_unix: float | None = None
        self.last_error: str | None = None

    def beat(self) -> bool:
        """One GET if the interval has passed since the last try; True when it was sent
        and answered 2xx."""
        now = self._clock()
        if self._last_try is not None and now - self._last_try < self.interval_seconds:
            return False
        self._last_try = now
        try:
            status = self._get(self.url, limits.archive_heartbeat_timeout_seconds)
        except Exception as exc:  # the heartbeat never takes the archiver down
            self._failed(f"{type(exc).__name__}: {exc}")
            return False
        if not 200 <= status < 300:
            self._failed(f"answered HTTP {status}")
            return False
        self.last_success_unix = time.time()
        self.last_error = None
        self.m.archive_heartbeat_last_success_timestamp_seconds.set(self.last_success_unix)
        return True

    def _failed(self, why: str) -> None:
        self.last_error = why
        self.m.archive_heartbeat_failures_total.inc()
        # The URL is not logged: heartbeat URLs carry their secret in the path.
        log.warning("archive heartbeat failed: %s", why)


__all__ = ["Heartbeat"]
