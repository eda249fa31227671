"""The lease rule: how long a lease holder may act, judged by its own clock alone.

etcd counts a lease's TTL from the moment it handles a keepalive, which is after the
moment the keepalive was sent.  So the lease cannot expire in etcd before
``sent + ttl`` by the holder's monotonic clock (up to the rate difference of two
clocks, which the margin covers), whatever etcd later says or fails to say.  The
holder therefore acts only until

    deadline = (send time of the last keepalive that succeeded) + ttl - margin

and never takes etcd's answers about the remaining TTL into account: etcd resets a
lease's remaining TTL when etcd's own leader changes (etcd issue #9395), which can only
make the real expiry later, never earlier, than this deadline.

The margin (``retry_margin_seconds``) leaves room for an acknowledgement that passed
the check just before the deadline to leave the process, for a scheduling stall, and
for clock rates.
"""

from __future__ import annotations

import threading

from . import _limits as limits

__all__ = ["LeaseClock", "retry_margin_seconds"]


def retry_margin_seconds(ttl_seconds: float) -> float:
    """How long before the earliest possible expiry the holder stops acting."""
    return max(ttl_seconds * limits.retry_margin_fraction, limits.retry_margin_seconds_min)


class LeaseClock:
    """When a lease was last known alive, and until when it may be relied on."""

    def __init__(self, ttl_seconds: float, margin_seconds: float | None = None) -> None:
        margin = retry_margin_seconds(ttl_seconds) if margin_seconds is None else margin_seconds
        if not 0 <= margin < ttl_seconds:
            raise ValueError(f"retry margin {margin} s must be in [0, ttl {ttl_seconds} s)")
        self.ttl_seconds = ttl_seconds
        self.margin_seconds = margin
        self._lock = threading.Lock()
        self._sent_mono: float | None = None

    def renewed(self, sent_mono: float) -> None:
        """A keepalive (or the grant) sent at ``sent_mono`` succeeded."""
        with self._lock:
            if self._sent_mono is None or sent_mono > self._sent_mono:
                self._sent_mono = sent_mono

    def forget(self) -> None:
        """The lease is gone (revoked, expired, or replaced)."""
        with self._lock:
            self._sent_mono = None

    @property
    def last_renewed_sent_mono(self) -> float | None:
        return self._sent_mono

    @property
    def deadline_mono(self) -> float | None:
        sent = self._sent_mono
        return None if sent is None else sent + self.ttl_seconds - self.margin_seconds

    @property
    def earliest_expiry_mono(self) -> float | None:
        """The earliest moment etcd could expire the lease (by this clock)."""
        sent = self._sent_mono
        return None if sent is None else sent + self.ttl_seconds

    def valid(self, now_mono: float) -> bool:
        deadline = self.deadline_mono
        return deadline is not None and now_mono < deadline
