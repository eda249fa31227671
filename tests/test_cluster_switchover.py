"""Switchover against a real etcd: to the named candidate, and only once it caught up."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from stemedb.cluster import NotLeader, Positions, SwitchoverFailed, failover_eligibility

from ._etcd import (
    TTL,
    AckRecorder,
    EtcdServer,
    cluster_name,
    etcd_server,
    node,
    running,
    wait_leader,
    wait_until,
)


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    yield from etcd_server(tmp_path_factory.mktemp("etcd-switchover"))


def test_switchover_waits_for_the_candidate_and_hands_over_to_it_only(
        etcd: EtcdServer) -> None:
    cluster = cluster_name()
    lsns = {"a": Positions(1000, 1000), "b": Positions(500, 500), "c": Positions(2000, 2000)}

    def make(name: str):  # type: ignore[no-untyped-def]
        def positions() -> Positions:
            return lsns[name]
        return node(etcd, cluster, name, positions=positions,
                    eligible=failover_eligibility(name, positions, 10**9))

    a, b, c = make("a"), make("b"), make("c")
    with running(a):
        wait_leader([a])
        with running(b, c), AckRecorder({"a": a, "b": b, "c": c}) as rec:
            term = a.held_term
            assert term is not None
            wait_until(lambda: set(a.store.members()) == {"a", "b", "c"}, 2 * TTL,
                       "three members")
            with pytest.raises(NotLeader):
                b.switchover("a")
            with pytest.raises(SwitchoverFailed, match="no member"):
                a.switchover("zed")

            # b is behind a's durable LSN: the switchover times out, a goes on leading.
            started = time.monotonic()
            with pytest.raises(SwitchoverFailed, match="did not reach durable LSN 1000"):
                a.switchover("b", timeout_seconds=1.0)
            aborted = time.monotonic()
            assert a.held_term == term and a.may_acknowledge() and not a.fenced
            view = a.store.view()
            assert view.switchover is None and view.leader is not None
            assert view.leader.term == term
            # ... and it did not acknowledge while it waited (fenced).
            assert not any(started + 0.05 < t < aborted - 0.05 and n == "a"
                           for t, n, _ in rec.samples)

            # A caller's own check says no: same outcome.
            with pytest.raises(SwitchoverFailed):
                a.switchover("b", caught_up=lambda cand, lsn: False, timeout_seconds=0.3)
            assert a.may_acknowledge()

            lsns["b"] = Positions(1000, 1000)  # caught up (c is further ahead still)
            new = a.switchover("b", timeout_seconds=3 * TTL)
            assert new.node == "b" and new.term > term
            assert b.held_term == new.term
            wait_until(b.may_acknowledge, TTL, "b to acknowledge")
            assert not a.may_acknowledge() and not c.may_acknowledge()
            wait_until(lambda: b.store.view().switchover is None, 2 * TTL,
                       "b to clear the request")
            history = [(h.term, h.leader) for h in a.store.history()]
            assert history == [(term, "a"), (new.term, "b")]
        rec.assert_never_overlap()


def test_switchover_target_is_read_after_the_fence(etcd: EtcdServer) -> None:
    """The target LSN is the leader's durable LSN read once it stopped acknowledging:
    a check that sees the target gets every acknowledged write."""
    cluster = cluster_name()
    a, b = node(etcd, cluster, "a"), node(etcd, cluster, "b")
    seen: list[tuple[bool, int]] = []
    durable = {"a": 0}

    def positions() -> Positions:
        durable["a"] += 1  # a write between any two reads
        return Positions(durable["a"], durable["a"])

    a.positions = positions
    with running(a):
        wait_leader([a])
        with running(b):
            wait_until(lambda: "b" in a.store.members(), 2 * TTL, "b's record")

            def caught_up(candidate: str, target: int) -> bool:
                seen.append((a.may_acknowledge(), target))
                return True

            new = a.switchover("b", caught_up=caught_up, timeout_seconds=3 * TTL)
            assert new.node == "b"
    assert seen and all(ack is False for ack, _ in seen)
    assert len({target for _, target in seen}) == 1
