"""Leadership: who may acknowledge writes, decided by an etcd key and a local clock.

A node campaigns with a txn that creates ``leader`` only if it does not exist
(create_revision == 0), attached to the node's session lease.  The revision of that
creation is the leader's **term**: etcd's revisions only grow, so every later leadership
has a higher term.

The node acknowledges writes only while :meth:`Leadership.may_acknowledge` says so:
it holds the key, has published its term (history entry, status), is not fenced, and
its own monotonic clock is before the **deadline**: the send time of the last keepalive
that succeeded and was followed by a read showing the key still ours, plus the TTL,
minus the retry margin (:mod:`._lease_clock`).  Nothing etcd says about the lease's
remaining time moves that deadline.  When etcd cannot be reached the deadline simply
passes and the leader stops acknowledging; if etcd comes back while the lease (and so
the key) still lives, the first keepalive and read restore the same term.

One thread per node runs :meth:`Leadership.tick` in a loop: renew the lease, read the
cluster (one txn), confirm or drop its own leadership, publish its member record, and
campaign when there is no leader and the node may (the node's eligibility callback,
a pending switchover naming another node, or a hold-off after stepping down say no).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

from . import _limits as limits
from ._errors import ClusterError
from ._etcd import EtcdClient
from ._records import HistoryRecord, LeaderRecord, MemberRecord, Positions, StatusRecord
from ._session import Session
from ._store import ClusterStore, ClusterView, LeaderInfo, now_rfc3339

__all__ = ["Eligibility", "Leadership", "LeadershipEvent"]

log = logging.getLogger("stemedb.cluster")

Eligibility = Callable[[ClusterView], bool]


class LeadershipEvent(NamedTuple):
    mono: float  # the node's monotonic clock
    kind: str  # elected, acknowledging, deadline_passed, lost, stepped_down, fenced,
    #            unfenced, leader_seen
    term: int
    detail: str


class _Holding(NamedTuple):
    term: int
    lease_id: int
    # Acknowledge until this moment of the node's monotonic clock; 0.0 while the term
    # is not yet published.
    deadline_mono: float


def _always(_view: ClusterView) -> bool:
    return True


def _no_positions() -> Positions:
    return Positions(0, 0)


class Leadership:
    """One node's membership and leadership in one cluster."""

    def __init__(self, client: EtcdClient, cluster: str, node: str, url: str, *,
                 lease_ttl_seconds: int = limits.lease_ttl_seconds_default,
                 positions: Callable[[], Positions] = _no_positions,
                 eligible: Eligibility = _always,
                 clock: Callable[[], float] = time.monotonic,
                 loop_interval_seconds: float | None = None) -> None:
        self.client = client
        self.store = ClusterStore(client, cluster)
        self.node = node
        self.url = url
        self.store.keys.member(node)  # checks the name
        self.positions = positions
        self.eligible = eligible
        self.clock = clock
        self.session = Session(client, lease_ttl_seconds, clock=clock)
        if loop_interval_seconds is None:
            loop_interval_seconds = min(limits.loop_interval_seconds_max,
                                        self.session.renew_interval_seconds)
        self.loop_interval_seconds = max(loop_interval_seconds, limits.loop_interval_seconds_min)
        self._op_lock = threading.RLock()  # tick, campaign, step_down, fence: one at a time
        self._holding: _Holding | None = None
        self._fenced = False
        self._resigning_term = 0  # a term we stepped down from whose key may linger
        self._hold_off_until_mono = 0.0
        self._deadline_noted = False
        self._last_seen_term = 0
        self._leader_changes = 0
        self._view: ClusterView | None = None
        self._events: deque[LeadershipEvent] = deque(maxlen=limits.events_kept_max)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_error = ""

    # --- what the write path and the metrics read ------------------------------------

    def may_acknowledge(self, now_mono: float | None = None) -> bool:
        """Whether a write made durable now may be acknowledged as this node's.

        The write path asks after the write is durable and before it answers; a False
        means the write must not be reported as done by this leader.
        """
        h = self._holding
        if h is None or self._fenced:
            return False
        now = self.clock() if now_mono is None else now_mono
        return now < h.deadline_mono

    @property
    def deadline(self) -> float | None:
        """Until when (monotonic clock) this node may acknowledge; None if it may not."""
        h = self._holding
        if h is None or self._fenced or h.deadline_mono == 0.0:
            return None
        return h.deadline_mono

    @property
    def is_leader(self) -> bool:
        """Holds the leadership and its deadline has not passed (fenced or not):
        ``stemedb_cluster_is_leader``."""
        h = self._holding
        return h is not None and self.clock() < h.deadline_mono

    @property
    def held_term(self) -> int | None:
        """The term this node holds the leader key in, even past its deadline."""
        h = self._holding
        return None if h is None else h.term

    @property
    def term(self) -> int:
        """The highest leader term this node has seen (0: none yet):
        ``stemedb_cluster_term``."""
        return self._last_seen_term

    @property
    def leader_changes(self) -> int:
        """Leaderships seen by this node, the first included:
        ``stemedb_cluster_leader_changes_total``."""
        return self._leader_changes

    @property
    def last_keepalive_age_seconds(self) -> float | None:
        sent = self.session.lease_clock.last_renewed_sent_mono
        return None if sent is None else self.clock() - sent

    @property
    def fenced(self) -> bool:
        return self._fenced

    @property
    def last_view(self) -> ClusterView | None:
        return self._view

    def events(self) -> list[LeadershipEvent]:
        return list(self._events)

    def current_leader(self) -> LeaderInfo | None:
        """The leader as etcd has it now (one read)."""
        return self.store.leader()

    # --- internal state changes (under _op_lock) ----------------------------------------

    def _event(self, kind: str, term: int, detail: str = "") -> None:
        self._events.append(LeadershipEvent(self.clock(), kind, term, detail))
        level = logging.DEBUG if kind == "leader_seen" else logging.INFO
        if kind in ("lost", "deadline_passed"):
            level = logging.WARNING
        log.log(level, "cluster %s node %s: %s term %d%s", self.store.keys.cluster,
                self.node, kind, term, f" ({detail})" if detail else "")

    def _note_term(self, term: int) -> None:
        if term > self._last_seen_term:
            self._last_seen_term = term
            self._leader_changes += 1
            self._event("leader_seen", term)

    def _drop_holding(self, reason: str) -> None:
        h = self._holding
        self._holding = None  # first: from here on nothing is acknowledged
        if h is not None:
            self._event("lost", h.term, reason)

    def _publish_term(self, confirmed_sent_mono: float) -> None:
        h = self._holding
        assert h is not None
        pos = self.positions()
        ok = self.store.publish_term(
            h.term, LeaderRecord(node=self.node, url=self.url, term=h.term), h.lease_id,
            HistoryRecord(term=h.term, leader=self.node, start_lsn=pos.durable_lsn,
                          started_at=now_rfc3339()),
            StatusRecord(term=h.term, durable_lsn=pos.durable_lsn))
        if not ok:
            self._drop_holding("the leader key changed before the term was published")
            return
        self._extend(h, confirmed_sent_mono)
        self._event("acknowledging", h.term)

    def _extend(self, h: _Holding, confirmed_sent_mono: float) -> None:
        lc = self.session.lease_clock
        deadline = confirmed_sent_mono + lc.ttl_seconds - lc.margin_seconds
        if deadline > h.deadline_mono:
            self._holding = h._replace(deadline_mono=deadline)
            self._deadline_noted = False

    def _adopt(self, leader: LeaderInfo, confirmed_sent_mono: float) -> None:
        self._holding = _Holding(leader.term, leader.lease_id, 0.0)
        self._note_term(leader.term)
        self._event("elected", leader.term)
        self._publish_term(confirmed_sent_mono)

    # --- operations ---------------------------------------------------------------------

    def renew(self) -> bool:
        """One keepalive of the session's lease; False (and the leadership dropped) if
        etcd says the lease is gone.  Raises :class:`EtcdUnavailable` when it cannot
        tell; the deadline then stays where it was."""
        with self._op_lock:
            if self.session.keepalive():
                return True
            self._drop_holding("the lease is gone in etcd")
            return False

    def campaign(self) -> bool:
        """Try to become the leader: True if this node now holds the leader key.

        Only with a lease this node may still rely on.  Acknowledging starts once the
        term is published (normally in this call; else on the next tick).
        """
        with self._op_lock:
            if self._holding is not None:
                return True
            s = self.session
            lease_id = s.lease_id
            confirmed = s.lease_clock.last_renewed_sent_mono
            if lease_id is None or confirmed is None or not s.lease_clock.valid(self.clock()):
                return False
            created, leader = self.store.create_leader(
                LeaderRecord(node=self.node, url=self.url), lease_id)
            # Not created, yet ours: an earlier try of this txn went through on an
            # endpoint that then timed out.
            if leader is None or (not created and leader.lease_id != lease_id):
                if leader is not None:
                    self._note_term(leader.term)
                return False
            self._adopt(leader, confirmed)
            return True

    def step_down(self, *, hold_off_seconds: float | None = None) -> bool:
        """Give up the leadership: stop acknowledging, then delete the leader key (only
        if it is still the one of our term).  This node does not campaign again for
        ``hold_off_seconds`` (default: one TTL).  False if it was not the leader."""
        with self._op_lock:
            h = self._holding
            if h is None:
                return False
            self._holding = None  # stop acknowledging before the key goes
            self._fenced = False  # a fence belongs to the term it was set in
            self._resigning_term = h.term
            if hold_off_seconds is None:
                hold_off_seconds = self.session.ttl_seconds * limits.step_down_hold_off_fraction
            self._hold_off_until_mono = self.clock() + hold_off_seconds
            self._event("stepped_down", h.term)
            self.store.delete_leader(h.term)
            return True

    def fence(self, reason: str) -> None:
        """Stop acknowledging while keeping the leader key (a switchover's first step)."""
        with self._op_lock:
            self._fenced = True
            self._event("fenced", self.held_term or 0, reason)

    def unfence(self) -> None:
        with self._op_lock:
            if self._fenced:
                self._fenced = False
                self._event("unfenced", self.held_term or 0)

    def tick(self) -> None:
        """One pass of the loop (the thread calls it; tests may too)."""
        with self._op_lock:
            self._tick_locked()

    def _tick_locked(self) -> None:
        s = self.session
        now = self.clock()
        h = self._holding
        if h is not None and now >= h.deadline_mono > 0.0 and not self._deadline_noted:
            self._deadline_noted = True  # said once per lapse, even while etcd is away
            self._event("deadline_passed", h.term, "no confirmed keepalive in time")
        if s.lease_id is None:
            self._drop_holding("no lease")
            s.grant()
        elif now >= s.next_renew_mono and not s.keepalive():
            self._drop_holding("the lease is gone in etcd")
            s.grant()
        confirmed = s.lease_clock.last_renewed_sent_mono  # before the read that confirms
        view = self.store.view()
        self._view = view
        leader = view.leader
        if leader is not None:
            self._note_term(leader.term)
        h = self._holding
        if h is not None:
            if leader is None or leader.term != h.term or leader.lease_id != h.lease_id:
                self._drop_holding("the leader key is no longer ours")
            elif confirmed is not None:
                if h.deadline_mono == 0.0:
                    self._publish_term(confirmed)
                elif self.store.publish_status(
                        h.term, StatusRecord(term=h.term,
                                             durable_lsn=self.positions().durable_lsn)):
                    self._extend(h, confirmed)
                else:
                    self._drop_holding("the leader key is no longer ours")
        elif leader is not None and leader.lease_id == s.lease_id and confirmed is not None:
            if leader.term == self._resigning_term:
                self.store.delete_leader(leader.term)  # a step-down whose delete failed
            else:
                self._adopt(leader, confirmed)  # a campaign whose answer was lost
        h = self._holding
        if h is not None and view.switchover is not None \
                and view.switchover.candidate == self.node:
            self.store.delete_switchover(h.term)  # the switchover it asked for is done
        self._publish_member()
        if self._holding is None and leader is None and self._may_campaign(view) \
                and self.campaign() and view.switchover is not None:
            h = self._holding
            if h is not None and view.switchover.candidate == self.node:
                self.store.delete_switchover(h.term)  # done: the next one may start

    def _may_campaign(self, view: ClusterView) -> bool:
        if view.switchover is not None:
            # The named candidate goes at once, even within its own hold-off (it may
            # have stepped down from an earlier switchover moments ago).
            return view.switchover.candidate == self.node
        if self.clock() < self._hold_off_until_mono:
            return False
        return self.eligible(view)

    def _publish_member(self) -> None:
        lease_id = self.session.lease_id
        if lease_id is None:
            return
        pos = self.positions()
        self.store.publish_member(MemberRecord(
            node=self.node, url=self.url,
            role="leader" if self._holding is not None else "replica",
            applied_lsn=pos.applied_lsn, durable_lsn=pos.durable_lsn,
            term=self._last_seen_term, log_term=pos.log_term), lease_id)

    # --- the thread -------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the leadership loop is already running")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"stemedb-cluster-{self.node}")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
                if self._last_error:
                    log.info("cluster node %s: etcd answers again", self.node)
                    self._last_error = ""
            except ClusterError as e:
                if str(e) != self._last_error:
                    log.warning("cluster node %s: %s", self.node, e)
                self._last_error = str(e)
            except Exception:
                log.exception("cluster node %s: the leadership loop failed a pass", self.node)
            wait = min(self.loop_interval_seconds,
                       max(self.session.next_renew_mono - self.clock(),
                           limits.loop_interval_seconds_min))
            self._stop.wait(wait)

    def stop(self, *, release: bool = True) -> None:
        """Stop the loop and acknowledging.  ``release``: revoke the lease, which
        removes this node's member record and, if it leads, the leader key at once;
        without it they stay until the lease expires, as after a crash."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(limits.loop_stop_timeout_seconds)
        with self._op_lock:
            self._drop_holding("stopped")
            if release:
                try:
                    self.session.revoke()
                except ClusterError as e:
                    log.warning("cluster node %s: lease not revoked (%s); it expires by "
                                "itself", self.node, e)

    def switchover(self, candidate: str, *,
                   caught_up: Callable[[str, int], bool] | None = None,
                   timeout_seconds: float = limits.switchover_timeout_seconds_default
                   ) -> LeaderInfo:
        """Hand the leadership to ``candidate``: see :func:`._switchover.switchover`."""
        from ._switchover import switchover

        return switchover(self, candidate, caught_up=caught_up, timeout_seconds=timeout_seconds)
