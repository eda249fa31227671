"""The node as a member of a cluster: its role, and the moves between roles.

One thread (``stemedb-cluster-role``) watches the leadership (:mod:`stemedb.cluster`)
and moves the node between roles; the HTTP layer asks it whether a write may be taken
and acknowledged.

Roles::

    starting / bootstrapping -> replica <-> promoting -> leader
                        |  ^                    |
                        v  |                    v
                     reseeding  <----------  replica (demoted)

- **starting**: a data directory with a state, while recovery replays it; it does not
  campaign until the replay is done.
- **bootstrapping**: a data directory with no state.  If another node leads, the node
  copies a snapshot of it; if no node leads a cluster that has never had a leader, the
  node may campaign, and creates the database if it wins.
- **replica**: the engine refuses writes of its own; a receiver thread streams the
  leader's WAL.  Writes sent here are answered 307 to the leader.
- **promoting**: the node won the leader key.  It stops the stream, waits until its
  state has applied every record it holds, and writes its TERM record (durable and
  applied) before it takes a write.
- **leader**: takes writes; each is acknowledged only once durable here, on
  ``synchronous_replicas`` replicas, and while the lease rule allows
  (``Leadership.may_acknowledge``).
- **reseeding**: the log forked from the leader's, or the WAL this replica needs is gone
  from the leader.  The state and segments are set aside under ``<data-dir>/diverged/``
  (never deleted) and a snapshot of the leader replaces them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import threading
import time
from typing import TYPE_CHECKING, Any

import httpx

from ..archive import WalSource
from ..cluster import (
    ClusterError,
    ClusterView,
    EtcdClient,
    Leadership,
    Positions,
)
from ..config import ClusterSettings
from ..metrics import Metrics
from ..replication import (
    HOLD_PREFIX,
    SNAPSHOT_LSN_HEADER,
    SNAPSHOT_SEGMENT_HEADER,
    SNAPSHOT_SHA256_HEADER,
    SNAPSHOT_STATE_BYTES_HEADER,
    LeaderRef,
    Outcome,
    Receiver,
    Replicas,
    Snapshot,
    SnapshotError,
    Term,
    install,
    list_set_aside,
    set_aside,
)
from ..replication import _limits as rlimits
from ..storage import OsFileSystem

if TYPE_CHECKING:
    from ._node import Node

log = logging.getLogger("stemedb.cluster")

ROLES = ("starting", "bootstrapping", "replica", "promoting", "leader", "reseeding",
         "stopped")


class Member:
    def __init__(self, node: Node, settings: ClusterSettings, metrics: Metrics) -> None:
        self.node = node
        self.s = settings
        self.m = metrics
        self.client = EtcdClient(settings.etcd_endpoints)
        self.leadership = Leadership(
            self.client, settings.name, settings.node_name, settings.advertise_url,
            lease_ttl_seconds=settings.lease_ttl_seconds, positions=self._positions,
            eligible=self._eligible)
        self.replicas = Replicas(lambda: self.node.engine, metrics,
                                 synchronous_replicas=settings.synchronous_replicas,
                                 max_replica_lag_bytes=settings.max_replica_lag_bytes)
        self.role = "bootstrapping"
        self.history: list[Term] = []  # this log's terms (TERM records), oldest first
        self.database_id = ""  # the state's identity (stemedb.state.database_id)
        self.receiver: Receiver | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.verify: ssl.SSLContext | bool = True
        if settings.tls_ca_file:
            self.verify = ssl.create_default_context(cafile=settings.tls_ca_file)
        self.headers = ({"Authorization": f"Bearer {settings.replication_token}"}
                        if settings.replication_token else {})
        self.last_error = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._leadership_started = False
        self._changes_seen = 0
        self._aclient: httpx.AsyncClient | None = None
        self._refresh_task: asyncio.Task[None] | None = None
        self._source: WalSource | None = None
        self._source_engine: object = None
        self.m.cluster_enabled.set(1)
        self.m.cluster_is_leader.set(0)

    # -- what the leadership asks ---------------------------------------------------------
    def _positions(self) -> Positions:
        eng = self.node.engine
        if not eng.started:
            return Positions(0, 0)
        ri = eng.read_index
        return Positions(ri.applied_lsn, ri.durable_lsn, self.log_term)

    @property
    def log_term(self) -> int:
        """The term of the last TERM record in this node's log (the receiver's copy
        of the history is the newer one while it streams)."""
        r = self.receiver
        history = r.history if r is not None else self.history
        return history[-1].term if history else 0

    def _eligible(self, view: ClusterView) -> bool:
        if self.role == "bootstrapping":
            # Only a cluster that never had a leader is created by a fresh node.
            return view.status is None and all(
                m.durable_lsn == 0 for name, m in view.members.items()
                if name != self.s.node_name)
        if self.role != "replica":
            return False
        if view.status is not None and self.log_term < view.status.term \
                and not self._prefix_of_last_term(view.status.term):
            # This log has not followed the last leader: it may hold what that leader
            # never had (a former leader's tail).
            return False
        mine = self._positions()
        if view.status is not None and \
                view.status.durable_lsn - mine.durable_lsn > self.s.maximum_lag_on_failover_bytes:
            return False
        # No member may hold a more up-to-date log: a newer last term, or the same
        # term and more of it.  A former leader's forked tail is in an older term, so
        # it does not outrank the log that followed the newer leader.
        return all((m.log_term, m.durable_lsn) <= (mine.log_term, mine.durable_lsn)
                   for name, m in view.members.items() if name != self.s.node_name)

    # -- start and stop ---------------------------------------------------------------------
    def _prefix_of_last_term(self, last_term: int) -> bool:
        """Whether this log, though it never saw ``last_term``'s TERM record, is a
        prefix of that leader's log: it followed the term before it and ends at or
        before the LSN where ``last_term`` began (etcd's history record)."""
        history = self.leadership.store.history()
        starts = {h.term: h.start_lsn for h in history}
        earlier = [h.term for h in history if h.term < last_term]
        if last_term not in starts or not earlier or max(earlier) != self.log_term:
            return False
        return self._positions().durable_lsn <= starts[last_term]

    def prepare(self) -> None:
        """Before recovery, on the recovery thread: a data directory with no state is
        seeded from the leader, or left to become a new cluster's first leader."""
        self._start_leadership()
        if os.path.exists(self.node.engine.db_path):
            # Its own state: recovery replays it; only then may it campaign.
            self.role = "starting"
            return
        log.info("cluster %s: %s has no state yet; waiting for a leader to copy, or for "
                 "the leadership of a new cluster", self.s.name, self.s.node_name)
        while not self._stop.is_set():  # bounded by stop()
            if self.leadership.held_term is not None:
                log.info("cluster %s: %s leads a new cluster; creating the database",
                         self.s.name, self.s.node_name)
                return
            view = self.leadership.last_view
            if view is not None and view.leader is not None \
                    and view.leader.node != self.s.node_name:
                try:
                    self._seed_from(LeaderRef(view.leader.node, view.leader.url,
                                              view.leader.term))
                    self.role = "replica"
                    return
                except Exception as exc:
                    self.last_error = f"seeding from {view.leader.node}: {exc}"
                    log.warning("%s", self.last_error)
            self._stop.wait(rlimits.bootstrap_wait_seconds)
        raise RuntimeError("stopped before the node had a state")

    def _start_leadership(self) -> None:
        if not self._leadership_started:
            self._leadership_started = True
            self.leadership.start()

    def started(self, loop: asyncio.AbstractEventLoop) -> None:
        """After recovery: the engine runs.  Starts the role thread."""
        self.loop = loop
        eng = self.node.engine
        self.history = [Term(*t) for t in eng.terms()]
        self.database_id = eng.database_id() or ""
        for name in eng.holds():
            if name.startswith(HOLD_PREFIX):
                # Replicas of an earlier leadership of this node: a new leadership
                # holds WAL for the replicas that stream from it then.
                eng.set_hold(name, -1).result(rlimits.promote_timeout_seconds)
                log.info("released the WAL hold %s of an earlier leadership", name)
        if self.role in ("bootstrapping", "starting"):
            self.role = "replica"  # until the role thread sees a leadership of its own
        eng.set_follower(True)
        self._start_leadership()
        self._thread = threading.Thread(target=self._run, name="stemedb-cluster-role",
                                        daemon=True)
        self._thread.start()
        loop.call_soon_threadsafe(self._start_refresh)

    def _start_refresh(self) -> None:
        self._refresh_task = asyncio.ensure_future(self._refresh_loop())

    async def _refresh_loop(self) -> None:
        while not self._stop.is_set():  # bounded by stop()
            if self.role == "leader":
                with contextlib.suppress(Exception):
                    self.replicas.refresh()
            await asyncio.sleep(0.05)

    def stop(self) -> None:
        """Leave the cluster: stop streaming, release the lease (a clean stop hands the
        leadership on at once, not after a TTL)."""
        self._stop.set()
        was = self.role
        self.role = "stopped"
        if self.receiver is not None:
            self.receiver.stop()
        t = self._thread
        if t is not None:
            t.join(rlimits.request_timeout_seconds)
        self.leadership.stop(release=True)
        self.m.cluster_is_leader.set(0)
        if was == "leader":
            log.info("cluster %s: %s stopped leading (its lease is released)", self.s.name,
                     self.s.node_name)

    async def aclose(self) -> None:
        """On the loop, after :meth:`stop`."""
        if self._refresh_task is not None:
            self._refresh_task.cancel()
        if self._aclient is not None:
            await self._aclient.aclose()

    # -- the role thread ----------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():  # bounded by stop()
            try:
                self._step()
            except Exception as exc:
                self.last_error = repr(exc)
                log.exception("cluster %s: the role thread failed a pass", self.s.name)
                self._stop.wait(1.0)
            self._publish_metrics()
            self._stop.wait(rlimits.role_poll_seconds)

    def _publish_metrics(self) -> None:
        lead = self.leadership
        self.m.cluster_is_leader.set(int(self.role == "leader" and lead.is_leader))
        self.m.cluster_term.set(lead.term)
        changes = lead.leader_changes
        if changes > self._changes_seen:
            self.m.cluster_leader_changes_total.inc(changes - self._changes_seen)
            self._changes_seen = changes

    def _step(self) -> None:
        lead = self.leadership
        held = lead.held_term
        if self.role == "replica":
            if held is not None and lead.may_acknowledge():
                self._promote(held)
                return
            rcv = self.receiver
            if rcv is None:
                self._start_receiver()
            elif rcv.done.is_set():
                self.receiver = None
                out = rcv.outcome
                if out is not None and out.kind in ("diverged", "gone"):
                    self._reseed(out)
                elif out is not None:
                    self.last_error = out.detail
                    self._stop.wait(1.0)  # said in the log; try again
        elif self.role == "leader" and held is None:
            self._demote()

    def _leader_ref(self) -> LeaderRef | None:
        held = self.leadership.held_term
        if held is not None:  # newer than the last view when the campaign just won
            return LeaderRef(self.s.node_name, self.s.advertise_url, held)
        view = self.leadership.last_view
        if view is None or view.leader is None:
            return None
        return LeaderRef(view.leader.node, view.leader.url, view.leader.term)

    def _start_receiver(self) -> None:
        r = Receiver(self.node.engine, self.s.node_name, self.s.advertise_url,
                     self._leader_ref, history=self.history, headers=self.headers,
                     verify=self.verify, metrics=self.m)
        self.receiver = r
        r.start()

    def _stop_receiver(self) -> None:
        r = self.receiver
        if r is not None:
            r.stop()
            self.history = list(r.history)
        self.receiver = None

    def _promote(self, term: int) -> None:
        self.role = "promoting"
        t0 = time.monotonic()
        self._stop_receiver()
        eng = self.node.engine
        try:
            eng.promote(rlimits.promote_timeout_seconds)
            lsn = eng.write_term(term, self.s.node_name, rlimits.promote_timeout_seconds)
        except Exception as exc:
            log.error("cluster %s: %s won term %d but could not take over (%s); stepping "
                      "down", self.s.name, self.s.node_name, term, exc)
            eng.set_follower(True)
            self.role = "replica"
            with contextlib.suppress(Exception):
                self.leadership.step_down()
            return
        self.history.append(Term(term, lsn, self.s.node_name))
        self.role = "leader"
        log.info("cluster %s: %s leads in term %d from LSN %d (took over in %.3fs)",
                 self.s.name, self.s.node_name, term, lsn, time.monotonic() - t0)

    def _demote(self) -> None:
        log.warning("cluster %s: %s no longer leads (term %s); following the new leader",
                    self.s.name, self.s.node_name, self.log_term)
        self.role = "replica"
        self.node.engine.set_follower(True)
        if self.loop is not None:
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self.replicas.forget_all)

    # -- seeding --------------------------------------------------------------------------------
    def _fetch_snapshot(self, leader: LeaderRef) -> Snapshot:
        timeout = httpx.Timeout(rlimits.snapshot_timeout_seconds,
                                connect=rlimits.connect_timeout_seconds)
        with httpx.Client(timeout=timeout, verify=self.verify, headers=self.headers) as c:
            r = c.get(f"{leader.url}/v1/replication/snapshot",
                      params={"node": self.s.node_name})
        if r.status_code != 200:
            raise SnapshotError(f"{leader.node} answered the snapshot request with HTTP "
                                f"{r.status_code}: {r.text[:200]}")
        n = int(r.headers[SNAPSHOT_STATE_BYTES_HEADER])
        snap = Snapshot(int(r.headers[SNAPSHOT_LSN_HEADER]), r.content[:n],
                        r.headers[SNAPSHOT_SEGMENT_HEADER], r.content[n:])
        if snap.sha256() != r.headers[SNAPSHOT_SHA256_HEADER]:
            raise SnapshotError(f"the snapshot from {leader.node} does not match its SHA-256")
        return snap

    def _seed_from(self, leader: LeaderRef) -> None:
        eng = self.node.engine
        snap = self._fetch_snapshot(leader)
        install(snap, eng.data_dir, eng.wal_dir, eng.config.segment_size_bytes)
        self.m.replication_reseeds_total.inc()

    def _reseed(self, outcome: Outcome) -> None:
        """Set this node's state and log aside and start again from the leader's."""
        self.role = "reseeding"
        node = self.node
        eng = node.engine
        end = eng.read_index.durable_lsn
        at = outcome.diverged_at
        log.warning("cluster %s: %s re-seeds from the leader: %s", self.s.name,
                    self.s.node_name, outcome.detail)
        eng.close()
        dest = set_aside(eng.data_dir, eng.wal_dir, at, end, outcome.kind)
        if at is not None and end > at:
            self.m.replication_diverged_bytes_total.inc(end - at)
            log.error("cluster %s: %s set aside WAL LSN %d..%d that the leader does not "
                      "have (with the state and every segment) in %s; `stemedb wal dump "
                      "--data-dir %s --from-lsn %d` shows the records", self.s.name,
                      self.s.node_name, at, end, dest, dest, at)
        while not self._stop.is_set():  # bounded by stop()
            leader = self._leader_ref()
            if leader is not None and leader.node != self.s.node_name:
                try:
                    self._seed_from(leader)
                    break
                except Exception as exc:
                    self.last_error = f"re-seeding from {leader.node}: {exc}"
                    log.warning("%s", self.last_error)
            self._stop.wait(rlimits.bootstrap_wait_seconds)
        else:
            return
        eng = node.reopen_engine()
        self.history = [Term(*t) for t in eng.terms()]
        self.database_id = eng.database_id() or ""
        eng.set_follower(True)
        self.role = "replica"
        log.info("cluster %s: %s re-seeded at LSN %d; streaming from the leader",
                 self.s.name, self.s.node_name, eng.read_index.durable_lsn)

    # -- what the HTTP layer asks --------------------------------------------------------------
    def wal_source(self) -> WalSource:
        """The reader of this node's segments for the stream (one per engine: a re-seed
        replaces the segments, and the reader caches their headers)."""
        eng = self.node.engine
        if self._source is None or self._source_engine is not eng:
            self._source = WalSource(OsFileSystem(), eng.wal_dir)
            self._source_engine = eng
        return self._source

    @property
    def is_leader(self) -> bool:
        return self.role == "leader" and self.leadership.may_acknowledge()

    def leader_url(self) -> str | None:
        ref = self._leader_ref()
        if ref is None or ref.node == self.s.node_name:
            return None
        return ref.url

    async def before_ack(self, lsn: int) -> str | None:
        """Why the durable write at ``lsn`` may not be acknowledged, or None."""
        if self.s.synchronous_replicas > 0:
            try:
                ok = await self.replicas.wait_replicated(lsn, rlimits.sync_wait_seconds)
            except LookupError:
                return ("this node stopped leading before enough replicas held the write; "
                        "it may or may not survive")
            if not ok:
                return (f"the write is durable on this node but not yet on "
                        f"{self.s.synchronous_replicas} replica(s) after "
                        f"{rlimits.sync_wait_seconds:g}s (synchronous_replicas)")
        if not self.is_leader:
            return ("this node stopped leading before the write could be acknowledged; "
                    "it may or may not survive")
        return None

    async def leader_durable_lsn(self) -> int:
        """The leader's durable LSN, asked over HTTP (a replica's linearizable read)."""
        url = self.leader_url()
        if url is None:
            raise LookupError("no leader")
        if self._aclient is None:
            self._aclient = httpx.AsyncClient(
                timeout=httpx.Timeout(rlimits.read_index_timeout_seconds,
                                      connect=rlimits.connect_timeout_seconds),
                verify=self.verify, headers=self.headers)
        r = await self._aclient.get(f"{url}/v1/replication/read-index")
        if r.status_code != 200:
            raise LookupError(f"the leader answered HTTP {r.status_code}")
        return int(r.json()["durable_lsn"])

    def replica_lag_bytes(self) -> int | None:
        r = self.receiver
        if self.role != "replica" or r is None or r.streaming_from is None:
            return None
        return max(0, r.leader_durable - self.node.engine.read_index.durable_lsn)

    def switchover(self, candidate: str | None, timeout_seconds: float) -> dict[str, Any]:
        """Blocking (run on a thread): hand the leadership to ``candidate`` (default: the
        connected replica with the highest durable LSN)."""
        if candidate is None:
            best = sorted(((r["durable_lsn"], n) for n, r in self.replicas.status().items()
                           if r["connected"]), reverse=True)
            if not best:
                from ..cluster import SwitchoverFailed
                raise SwitchoverFailed("no connected replica to hand the leadership to")
            candidate = best[0][1]
        eng = self.node.engine

        def caught_up(name: str, target: int) -> bool:
            r = self.replicas.replicas.get(name)
            return r is not None and r.durable_lsn >= max(target, eng.read_index.durable_lsn)

        t0 = time.monotonic()
        new = self.leadership.switchover(candidate, caught_up=caught_up,
                                         timeout_seconds=timeout_seconds)
        return {"leader": new.node, "term": new.term, "url": new.url,
                "seconds": round(time.monotonic() - t0, 3)}

    def fresh_view(self) -> ClusterView | None:
        """The cluster as etcd has it now (one read; blocking), or the leadership
        loop's last view (at most a loop old) when etcd does not answer."""
        try:
            return self.leadership.store.view()
        except ClusterError as exc:
            log.debug("GET /v1/cluster from the last view: %s", exc)
            return self.leadership.last_view

    def status(self, view: ClusterView | None = None) -> dict[str, Any]:
        """``GET /v1/cluster``, from ``view`` (default: the loop's last view)."""
        lead = self.leadership
        if view is None:
            view = lead.last_view
        ref = self._leader_ref()
        if lead.held_term is None and view is not None:
            ref = (LeaderRef(view.leader.node, view.leader.url, view.leader.term)
                   if view.leader is not None else None)
        leader = ref if ref is not None and ref.node else None
        mine = self.replicas.status() if self.role == "leader" else {}
        members = []
        for name, rec in sorted((view.members if view is not None else {}).items()):
            r = mine.get(name)
            if leader is not None and leader.node == name:
                state, lag_b, lag_s = "running", None, None
            elif r is not None:
                state = "streaming" if r["connected"] else "disconnected"
                lag_b, lag_s = r["lag_bytes"], r["lag_seconds"]
            else:
                state, lag_b, lag_s = "unknown", None, None
                if name == self.s.node_name:
                    state = self.role
            members.append({"node": name, "url": rec.url,
                            "role": "leader" if leader is not None and leader.node == name
                            else "replica", "state": state,
                            "applied_lsn": rec.applied_lsn, "durable_lsn": rec.durable_lsn,
                            "lag_bytes": lag_b, "lag_seconds": lag_s})
        return {"name": self.s.name, "leader": leader.node if leader else None,
                "term": max(lead.term, leader.term if leader is not None else 0),
                "members": members}

    def node_status(self) -> dict[str, Any]:
        """The ``cluster`` object of ``/v1/admin/status``: this node's side."""
        lead = self.leadership
        r = self.receiver
        return {
            "name": self.s.name, "node": self.s.node_name, "role": self.role,
            "term": lead.term, "log_term": self.log_term,
            "leader": (self._leader_ref() or LeaderRef("", "", 0)).node or None,
            "may_acknowledge": lead.may_acknowledge(),
            "last_keepalive_age_seconds": lead.last_keepalive_age_seconds,
            "synchronous_replicas": self.s.synchronous_replicas,
            "replicas": self.replicas.status() if self.role == "leader" else {},
            "streaming_from": r.streaming_from if r is not None else None,
            "replica_lag_bytes": self.replica_lag_bytes(),
            "receiver_error": (r.last_error if r is not None else "") or None,
            "set_aside": list_set_aside(self.node.engine.data_dir),
            "history": [t._asdict() for t in self.history],
            "last_error": self.last_error or None,
        }


__all__ = ["ROLES", "Member"]
