"""A node's session: one etcd lease, kept alive, judged by :class:`LeaseClock`.

The member record and, while the node leads, the leader key are attached to this one
lease, so that a node that stops renewing leaves the cluster with all its keys at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from . import _limits as limits
from ._etcd import EtcdClient
from ._lease_clock import LeaseClock

__all__ = ["Session"]

log = logging.getLogger("stemedb.cluster")


class Session:
    def __init__(self, client: EtcdClient, ttl_seconds: int, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not limits.lease_ttl_seconds_min <= ttl_seconds <= limits.lease_ttl_seconds_max:
            raise ValueError(f"lease_ttl_seconds {ttl_seconds}: between "
                             f"{limits.lease_ttl_seconds_min} and {limits.lease_ttl_seconds_max}")
        self.client = client
        self.ttl_seconds = ttl_seconds
        self.clock = clock
        self.lease_clock = LeaseClock(ttl_seconds)
        self._lock = threading.Lock()
        self.lease_id: int | None = None
        self.next_renew_mono = 0.0

    @property
    def renew_interval_seconds(self) -> float:
        return self.ttl_seconds * limits.renew_fraction

    def _renewed(self, sent: float) -> None:
        self.lease_clock.renewed(sent)
        self.next_renew_mono = sent + self.renew_interval_seconds

    def grant(self) -> int:
        """Grant a fresh lease (forgetting any previous one)."""
        with self._lock:
            self.lease_clock.forget()
            self.lease_id = None
            sent = self.clock()
            grant = self.client.lease_grant(self.ttl_seconds)
            if grant.ttl_seconds < self.ttl_seconds:
                # etcd never grants less than asked; if it did, our clock would lie.
                self.client.lease_revoke(grant.lease_id)
                raise ValueError(f"etcd granted {grant.ttl_seconds} s for {self.ttl_seconds} s")
            self.lease_id = grant.lease_id
            self._renewed(sent)
            log.info("cluster session: lease %x granted (ttl %d s)", grant.lease_id,
                     self.ttl_seconds)
            return grant.lease_id

    def keepalive(self) -> bool:
        """One keepalive: True if the lease lives on, False if etcd says it is gone (the
        session then has no lease).  Raises when etcd cannot be reached, and schedules
        the next try sooner."""
        with self._lock:
            lease_id = self.lease_id
            if lease_id is None:
                return False
            sent = self.clock()
            self.next_renew_mono = sent + self.ttl_seconds * limits.renew_retry_fraction
            ttl = self.client.lease_keepalive(
                lease_id, timeout_seconds=min(self.client.timeout_seconds,
                                              self.renew_interval_seconds))
            if ttl <= 0:
                log.warning("cluster session: lease %x is gone in etcd", lease_id)
                self.lease_clock.forget()
                self.lease_id = None
                return False
            self._renewed(sent)
            return True

    def revoke(self) -> None:
        """Drop the lease and every key attached to it."""
        with self._lock:
            lease_id, self.lease_id = self.lease_id, None
            self.lease_clock.forget()
            if lease_id is not None:
                self.client.lease_revoke(lease_id)
