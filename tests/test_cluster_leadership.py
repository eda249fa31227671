"""Leadership against a real etcd: one leader at a time, growing terms, the lease rule.

Every test runs its nodes in one process, each with its own etcd client (and, where
the test cuts it from etcd, its own fault hook), and records from the outside when
each node would have acknowledged a write (:class:`AckRecorder`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from stemedb.cluster import EtcdClient, LeaderRecord, Positions, failover_eligibility

from ._etcd import (
    MARGIN,
    TAKEOVER_SECONDS,
    TTL,
    AckRecorder,
    Cut,
    EtcdServer,
    acking,
    cluster_name,
    etcd_server,
    node,
    running,
    wait_leader,
    wait_until,
)


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    yield from etcd_server(tmp_path_factory.mktemp("etcd-leadership"))


@pytest.fixture
def own_etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    """An etcd for one test, which it may stop and start."""
    yield from etcd_server(tmp_path)



@pytest.mark.parametrize("count", [2, 3])
def test_exactly_one_leader_and_everyone_agrees_on_its_term(etcd: EtcdServer,
                                                            count: int) -> None:
    cluster = cluster_name()
    nodes = [node(etcd, cluster, f"n{i}") for i in range(count)]
    with running(*nodes), AckRecorder({n.node: n for n in nodes}) as rec:
        leader = wait_leader(nodes)
        term = leader.held_term
        assert term is not None
        wait_until(lambda: all(n.term == term for n in nodes), 2 * TTL, "all see the term")
        time.sleep(TTL)  # several renewals
        assert acking(nodes) == [leader]
        view = leader.store.view()
        assert view.leader is not None and view.leader.node == leader.node
        assert view.leader.term == term and view.status is not None
        assert {m.role for m in view.members.values()} == {"leader", "replica"}
        assert all(n.leader_changes == 1 for n in nodes)
        assert leader.is_leader and not any(n.is_leader for n in nodes if n is not leader)
        age = leader.last_keepalive_age_seconds
        assert age is not None and age < TTL / 3 + 0.5
    windows = rec.assert_never_overlap()
    assert [(w.node, w.term) for w in windows] == [(leader.node, term)]


def test_terms_strictly_increase_across_leader_changes(etcd: EtcdServer) -> None:
    cluster = cluster_name()
    nodes = [node(etcd, cluster, f"n{i}") for i in range(3)]
    terms: list[tuple[int, str]] = []
    with running(*nodes), AckRecorder({n.node: n for n in nodes}) as rec:
        leader = wait_leader(nodes)
        for _ in range(4):  # four handovers
            term = leader.held_term
            assert term is not None
            terms.append((term, leader.node))
            time.sleep(0.1)  # long enough for the recorder to see it
            assert leader.step_down()
            assert not leader.may_acknowledge()  # at once, before the key is gone
            successor = wait_leader(nodes, above_term=term)
            assert successor is not leader  # the one that stepped down holds off
            leader = successor
        final = leader.held_term
        assert final is not None
        terms.append((final, leader.node))
        wait_until(lambda: all(n.term == final for n in nodes), 2 * TTL, "all see the term")
        history = leader.store.history()
    assert [t for t, _ in terms] == sorted({t for t, _ in terms})  # strictly increasing
    assert [(h.term, h.leader) for h in history] == terms
    windows = rec.assert_never_overlap()
    assert [(w.term, w.node) for w in windows] == terms
    assert max(n.leader_changes for n in nodes) <= len(terms)


def test_a_leader_cut_from_etcd_stops_acknowledging_before_its_lease_expires(
        etcd: EtcdServer) -> None:
    cluster = cluster_name()
    cut = Cut()
    old = node(etcd, cluster, "old", hook=cut)
    new = node(etcd, cluster, "new")
    seen: list[tuple[float, int]] = []  # (time, term of the leader key, 0: none)
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():  # bounded by the test's own waits
            kv = watcher.get(old.store.keys.leader)
            seen.append((time.monotonic(), 0 if kv is None else kv.create_revision))
            stop.wait(0.005)

    with EtcdClient(etcd.url, timeout_seconds=0.5) as watcher, running(old):
        wait_leader([old])
        with running(new), AckRecorder({"old": old, "new": new}) as rec:
            old_term = old.held_term
            assert old_term is not None
            time.sleep(TTL / 2)
            watcher_thread = threading.Thread(target=watch, daemon=True)
            watcher_thread.start()
            cut.on = True  # from now on no keepalive of the old leader reaches etcd
            cut_at = time.monotonic()
            successor = wait_leader([old, new], above_term=old_term)
            new_term = successor.held_term
            assert new_term is not None
            wait_until(lambda: rec.saw(successor.node, new_term), 1.0, "a recorded sample")
            stop.set()
            watcher_thread.join(5)
            assert successor is new
            # The old leader still believes it holds the key, yet it stopped in time.
            assert old.held_term == old_term and not old.is_leader
            assert "deadline_passed" in [e.kind for e in old.events()]

            old_last_ack = rec.last("old", old_term)
            key_last_seen = max(t for t, term in seen if term == old_term)
            assert new_term > old_term
            # Acknowledging stopped while etcd still held the old leader's key ...
            assert old_last_ack < key_last_seen
            # ... by the margin, judged by its own clock: the last keepalive that
            # succeeded was sent before the cut.
            assert old_last_ack < cut_at + TTL - MARGIN
            # and the new leader began after that key was gone.
            assert rec.first("new", new_term) > key_last_seen
            rec.assert_never_overlap()

            cut.on = False  # back: etcd says its lease is gone; it rejoins as a replica
            wait_until(lambda: old.held_term is None, 2 * TTL, "the old leader to let go")
            wait_until(lambda: old.term == new_term, 2 * TTL, "it to see the new term")
            wait_until(lambda: "old" in new.store.members(), 2 * TTL, "its member record")
            assert new.store.members()["old"].role == "replica"
        assert new.may_acknowledge() is False  # stopped
    rec.assert_never_overlap()


def test_member_records_carry_positions_and_vanish_with_the_lease(etcd: EtcdServer) -> None:
    cluster = cluster_name()
    lsns = {"a": Positions(100, 150), "b": Positions(90, 140), "c": Positions(80, 80)}
    nodes = {name: node(etcd, cluster, name, positions=lambda name=name: lsns[name])
             for name in lsns}
    a, b, c = nodes["a"], nodes["b"], nodes["c"]
    with running(a):
        for n in (b, c):
            n.start()
        wait_until(lambda: set(a.store.members()) == {"a", "b", "c"}, 2 * TTL,
                   "three member records")
        lsns["b"] = Positions(120, 160)  # published on b's next loop
        wait_until(lambda: a.store.members()["b"].durable_lsn == 160, 2 * TTL,
                   "b's new position")
        members = a.store.members()
        assert (members["a"].applied_lsn, members["a"].durable_lsn) == (100, 150)
        assert (members["b"].applied_lsn, members["b"].durable_lsn) == (120, 160)
        assert members["a"].url == "http://127.0.0.1:18180/a"
        leader = a.current_leader()
        assert leader is not None and members[leader.node].role == "leader"

        c.stop()  # a clean stop revokes the lease: the record goes at once
        assert "c" not in a.store.members()
        b.stop(release=False)  # as a crash: the record stays until the lease lapses
        crashed_at = time.monotonic()
        assert "b" in a.store.members()
        wait_until(lambda: "b" not in a.store.members(), TTL + 2, "b's record to lapse")
        assert time.monotonic() - crashed_at > TTL - MARGIN
        for n in (b, c):
            n.client.close()


def test_etcd_restart_keeps_the_leader_and_never_makes_two(own_etcd: EtcdServer) -> None:
    """Chosen behaviour: while etcd is down the leader stops acknowledging at its
    deadline; etcd keeps leases across a restart, so when it is back the leader's first
    keepalive and read restore the same term, and no other node ever leads meanwhile."""
    server = own_etcd
    cluster = cluster_name()
    a, b = node(server, cluster, "a"), node(server, cluster, "b")
    with running(a):
        wait_leader([a])
        with running(b), AckRecorder({"a": a, "b": b}) as rec:
            term = a.held_term
            assert term is not None
            time.sleep(TTL / 2)
            server.stop()
            stopped_at = time.monotonic()
            wait_until(lambda: not a.may_acknowledge(), TTL, "the leader to stop")
            assert time.monotonic() - stopped_at < TTL - MARGIN + 0.1
            time.sleep(TTL + 0.5)  # longer than the lease: only the deadline counts
            assert not a.may_acknowledge() and not b.may_acknowledge()
            restarted_at = time.monotonic()
            server.start()
            leader = wait_leader([a, b], timeout_seconds=TAKEOVER_SECONDS)
            assert leader is a and a.held_term == term
            time.sleep(TTL)
            assert acking([a, b]) == [a]
        assert not any(stopped_at + TTL - MARGIN < t < restarted_at
                       for t, _, _ in rec.samples)
        rec.assert_never_overlap()


def test_step_down_hands_over_and_holds_off(etcd: EtcdServer) -> None:
    cluster = cluster_name()
    a, b = node(etcd, cluster, "a"), node(etcd, cluster, "b")
    with running(a):
        wait_leader([a])
        with running(b):
            term = a.held_term
            assert term is not None
            assert a.step_down(hold_off_seconds=3 * TTL)
            assert a.step_down() is False  # not the leader any more
            wait_leader([a, b], above_term=term)
            assert b.held_term is not None and b.held_term > term
            assert b.step_down(hold_off_seconds=3 * TTL)
            time.sleep(TTL)  # a still holds off: nobody leads
            assert acking([a, b]) == []
            assert a.current_leader() is None


def test_failover_policy_prefers_the_highest_durable_lsn_within_the_lag(
        etcd: EtcdServer) -> None:
    cluster = cluster_name()
    lsns = {"low": Positions(10, 10), "high": Positions(500, 500)}
    nodes = [node(etcd, cluster, name, positions=lambda name=name: lsns[name],
                  eligible=failover_eligibility(name, lambda name=name: lsns[name],
                                                maximum_lag_on_failover_bytes=100))
             for name in lsns]
    low, high = nodes
    with running(low):
        # Alone, "low" leads: no member is ahead of it and no leader came before.
        first = wait_leader(nodes)
        assert first is low
        lsns["low"] = Positions(1000, 1000)  # it writes; its status says 1000
        time.sleep(TTL / 2)
        with running(high):
            wait_until(lambda: "high" in low.store.members(), 2 * TTL, "high's record")
            low.stop()  # gone; "high" is 500 bytes behind the last leader's status
            time.sleep(TTL)
            assert high.current_leader() is None and not high.may_acknowledge()
            lsns["high"] = Positions(950, 950)  # within 100 bytes now
            second = wait_leader(nodes, above_term=first.held_term or 0)
            assert second is high


def test_a_campaign_whose_answer_was_lost_is_adopted(etcd: EtcdServer) -> None:
    cluster = cluster_name()
    a = node(etcd, cluster, "a", eligible=lambda view: False)
    try:
        a.tick()  # a lease, a member record, no campaign (not eligible)
        assert a.current_leader() is None
        lease_id = a.session.lease_id
        assert lease_id is not None
        # The txn went through on etcd, but its answer never reached the node.
        created, info = a.store.create_leader(LeaderRecord(node="a", url=a.url), lease_id)
        assert created and info is not None and a.held_term is None
        a.tick()
        assert a.held_term == info.term and a.may_acknowledge()
        assert [h.term for h in a.store.history()] == [info.term]
    finally:
        a.stop()
        a.client.close()
