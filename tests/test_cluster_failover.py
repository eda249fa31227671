"""Failover with real processes: a real etcd and three ``stemedb serve`` on 127.0.0.1.

Writers run through every fault and record each outcome; :func:`check_history` then
compares them with the final log on every member:

- every acknowledged write is there, at the id and LSN it was acknowledged with
  (``synchronous_replicas = 1``), or, with ``0``, is lost only if its term's tail was
  cut by a newer term (the loss is counted and bounded by the lag);
- every acknowledged write lies in the span of the log of the term it was acknowledged
  in, and each term was acknowledged by one node only: no two leaders acknowledged in
  one term, and a leader paused past its lease acknowledged nothing afterwards;
- every member holds the same records, and sealed epochs have the same digests.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests._cluster import Cluster, Load, check_history

TTL = 2
FAILOVER_BOUND_SECONDS = TTL + 3  # unplanned failover within lease TTL + 3 s, at any TTL


@pytest.fixture()
def cluster_k1(tmp_path: Path) -> Iterator[Cluster]:
    with Cluster(tmp_path, ttl_seconds=TTL, synchronous_replicas=1) as c:
        c.start()
        yield c


@pytest.fixture()
def cluster_k0(tmp_path: Path) -> Iterator[Cluster]:
    with Cluster(tmp_path, ttl_seconds=TTL, synchronous_replicas=0) as c:
        c.start()
        yield c


def _seal_and_compare_digests(c: Cluster) -> None:
    lead = c.leader()
    assert lead is not None
    r = httpx.post(c.nodes[lead].url + "/v1/epochs", timeout=10)
    assert r.status_code == 201, r.text
    n = int(r.json()["epoch"]) if "epoch" in r.json() else int(r.json()["sealed"])
    c.wait_caught_up(timeout_seconds=20)
    digests = {}
    for node in c.alive():
        e = httpx.get(c.nodes[node].url + f"/v1/epochs/{n}",
                      params={"consistency": "stale"}, timeout=10)
        assert e.status_code == 200, (node, e.text)
        digests[node] = e.json()["digest"]
    assert len(set(digests.values())) == 1, digests


def _kill_leader_and_time(c: Cluster, load: Load) -> tuple[str, str, float]:
    old = c.leader()
    assert old is not None
    load.wait_acked(50, timeout_seconds=20)
    c.kill(old)
    t0 = time.monotonic()
    new = c.wait_leader(timeout_seconds=30, other_than=old)
    load.wait_acked(1, timeout_seconds=30)
    return old, new, time.monotonic() - t0


def test_kill9_of_the_leader_under_load_loses_nothing_with_one_sync_replica(
        cluster_k1: Cluster) -> None:
    c = cluster_k1
    with Load(c) as load:
        old, _new, seconds = _kill_leader_and_time(c, load)
        assert seconds <= FAILOVER_BOUND_SECONDS, seconds
        load.wait_acked(50, timeout_seconds=20)
        c.nodes[old].start(wait="healthy")  # the former leader rejoins as a replica
        c.wait_streaming(old, timeout_seconds=60)
        load.wait_acked(50, timeout_seconds=20)
    verdict = check_history(c, load, lossless=True)
    assert verdict.acked > 150
    assert len({t["term"] for t in verdict.history}) >= 2
    _seal_and_compare_digests(c)


def test_kill9_with_async_replicas_loses_only_the_cut_tail_and_sets_it_aside(
        cluster_k0: Cluster) -> None:
    c = cluster_k0
    with Load(c) as load:
        old, _new, seconds = _kill_leader_and_time(c, load)
        assert seconds <= FAILOVER_BOUND_SECONDS, seconds
        c.nodes[old].start(wait="healthy")
        c.wait_streaming(old, timeout_seconds=60)
        load.wait_acked(50, timeout_seconds=20)
    verdict = check_history(c, load, lossless=False)
    status = c.status(old)["cluster"]
    if verdict.lost:
        # What the new leader did not have was set aside on the former leader, with
        # its range, and the lost writes lie in it.
        aside = status["set_aside"]
        assert aside, status
        lo = min(a["from_lsn"] for a in aside if a["from_lsn"] is not None)
        hi = max(a["to_lsn"] for a in aside)
        assert all(lo <= op.lsn < hi for op in verdict.lost), (aside, verdict.lost[:3])
        for a in aside:
            assert os.path.isdir(a["dir"]) and os.listdir(os.path.join(a["dir"], "wal"))
    _seal_and_compare_digests(c)


def test_a_leader_paused_past_its_lease_acknowledges_nothing_after(
        cluster_k1: Cluster) -> None:
    c = cluster_k1
    with Load(c) as load:
        old = c.leader()
        assert old is not None
        load.wait_acked(50, timeout_seconds=20)
        c.nodes[old].send_signal(signal.SIGSTOP)
        try:
            new = c.wait_leader(timeout_seconds=30, other_than=old)
            load.wait_acked(50, timeout_seconds=20)
        finally:
            c.nodes[old].send_signal(signal.SIGCONT)
        c.wait_streaming(old, timeout_seconds=60)
        load.wait_acked(50, timeout_seconds=20)
    assert new != old
    check_history(c, load, lossless=True)


def test_switchover_loop_is_lossless_and_the_old_leader_follows(
        cluster_k1: Cluster) -> None:
    c = cluster_k1
    seconds = []
    with Load(c) as load:
        for _ in range(3):
            lead = c.leader()
            assert lead is not None
            load.wait_acked(30, timeout_seconds=20)
            t0 = time.monotonic()
            r = httpx.post(c.nodes[lead].url + "/v1/admin/switchover", json={},
                           timeout=60)
            assert r.status_code == 200, r.text
            seconds.append(time.monotonic() - t0)
            assert r.json()["leader"] != lead
            c.wait_streaming(lead, timeout_seconds=30)
        load.wait_acked(30, timeout_seconds=20)
    check_history(c, load, lossless=True)
    assert max(seconds) < 10, seconds
    # The old leaders rejoined without setting anything aside.
    for node in c.alive():
        assert c.status(node)["cluster"]["set_aside"] == [], node


def test_etcd_down_and_back_keeps_the_leader_and_its_term(cluster_k0: Cluster) -> None:
    c = cluster_k0
    lead = c.leader()
    assert lead is not None
    term = c.status(lead)["cluster"]["term"]
    c.etcd.stop()
    time.sleep(TTL + 1)
    # No etcd: the leader stops acknowledging at its deadline; nobody else leads.
    r = httpx.post(c.nodes[lead].url + "/v1/assertions", timeout=10, json={
        "subject": "s", "predicate": "p", "object": 1, "author": "a"})
    assert r.status_code == 503, r.text
    assert c.leader() is None
    # Past its lease the leader cannot vouch for a linearizable read; a stale one it can.
    r = httpx.get(c.nodes[lead].url + "/v1/epochs/current", timeout=10)
    assert r.status_code == 503 and r.json()["error"]["code"] == "not_leader", r.text
    r = httpx.get(c.nodes[lead].url + "/v1/epochs/current?consistency=stale", timeout=10)
    assert r.status_code == 200, r.text
    c.etcd.start()
    back = c.wait_leader(timeout_seconds=30)
    assert back == lead
    assert c.status(lead)["cluster"]["term"] == term
    r = httpx.post(c.nodes[lead].url + "/v1/assertions", timeout=10, json={
        "subject": "s", "predicate": "p", "object": 2, "author": "a"})
    assert r.status_code == 201, r.text


def test_a_replica_far_behind_reseeds_from_a_snapshot(tmp_path: Path) -> None:
    with Cluster(tmp_path, ttl_seconds=TTL, synchronous_replicas=0,
                 extra_toml="max_replica_lag_bytes = 1048576\n") as c:
        c.start()
        lead = c.leader()
        assert lead is not None
        gone = next(n for n in c.nodes if n != lead)
        c.nodes[gone].stop()
        url = c.nodes[lead].url
        with httpx.Client(timeout=10) as h:
            # Several 1 MiB segments, then a checkpoint: the WAL the replica needs goes.
            big = "x" * 60_000
            for i in range(80):
                r = h.post(url + "/v1/assertions", json={
                    "subject": f"big{i}", "predicate": "p", "object": big, "author": "a"})
                assert r.status_code == 201, r.text
            # The other replica's hold moves once a second: checkpoint until the
            # segment the stopped replica needs is gone.
            removed: list[str] = []
            for _ in range(20):
                r = h.post(url + "/v1/admin/checkpoint")
                assert r.status_code == 200, r.text
                removed += r.json()["removed_segments"]
                if "segment.001.wal" in removed:
                    break
                time.sleep(0.25)
            assert "segment.001.wal" in removed
        c.nodes[gone].start(wait="healthy")
        c.wait_streaming(gone, timeout_seconds=60)
        c.wait_caught_up(timeout_seconds=30)
        m = httpx.get(c.nodes[gone].url + "/metrics", timeout=10).text
        assert "stemedb_replication_reseeds_total 1.0" in m
        status = c.status(gone)["cluster"]
        assert [a["reason"] for a in status["set_aside"]] == ["gone"]
        from tests._cluster import read_all
        assert read_all(c, gone) == read_all(c, lead)


def test_kill9_of_a_replica_mid_stream_and_back(cluster_k1: Cluster) -> None:
    """The replica's own WAL may end torn; it recovers it, streams on, and with K = 1
    the leader goes on acknowledging through the other replica meanwhile."""
    c = cluster_k1
    with Load(c) as load:
        load.wait_acked(50, timeout_seconds=20)
        lead = c.leader()
        victim = next(n for n in c.nodes if n != lead)
        c.kill(victim)
        load.wait_acked(50, timeout_seconds=20)
        c.nodes[victim].start(wait="healthy")
        c.wait_streaming(victim, timeout_seconds=60)
        load.wait_acked(50, timeout_seconds=20)
    check_history(c, load, lossless=True)
    assert c.leader() == lead


def test_a_replica_whose_fsync_fails_fences_itself_and_loses_nothing(
        cluster_k1: Cluster) -> None:
    """fdatasync returns EIO on a replica (strace injects it): the replica stops taking
    the stream, loudly; the leader acknowledges through the other replica; restarted,
    the replica recovers what it had made durable and catches up."""
    strace = shutil.which("strace")
    assert strace, "strace is required (apt-get install strace; .ci/run installs it)"
    c = cluster_k1
    lead = c.leader()
    victim = next(n for n in c.nodes if n != lead)
    c.nodes[victim].stop()
    c.nodes[victim].prefix = [strace, "-f", "-o", "/dev/null", "-e", "trace=fdatasync",
                              "-e", "inject=fdatasync:error=EIO:when=30"]
    c.nodes[victim].start(wait="healthy")
    with Load(c) as load:
        end = time.monotonic() + 60
        while "Failed to fsync WAL segment" not in c.nodes[victim].log():  # bounded
            assert time.monotonic() < end, c.nodes[victim].log()[-3000:]
            time.sleep(0.1)
        load.wait_acked(50, timeout_seconds=20)
        m = httpx.get(c.nodes[victim].url + "/metrics", timeout=10).text
        assert "stemedb_wal_writes_fenced 1.0" in m and "stemedb_ready 0.0" in m
        assert "writes are fenced until restart" in c.nodes[victim].log()
        c.nodes[victim].stop()
        c.nodes[victim].prefix = []
        c.nodes[victim].start(wait="healthy")
        c.wait_streaming(victim, timeout_seconds=60)
        load.wait_acked(50, timeout_seconds=20)
    check_history(c, load, lossless=True)


def test_two_failovers_in_a_row_each_find_a_leader(cluster_k0: Cluster) -> None:
    """Replicas that streamed through a change of leader know its term: when the second
    leader dies too, one of them leads (nobody waits for a dead node)."""
    c = cluster_k0
    with Load(c) as load:
        first, second, seconds = _kill_leader_and_time(c, load)
        assert seconds <= FAILOVER_BOUND_SECONDS, seconds
        c.nodes[first].start(wait="healthy")
        c.wait_streaming(first, timeout_seconds=60)
        load.wait_acked(30, timeout_seconds=20)
        killed, third, seconds = _kill_leader_and_time(c, load)
        assert killed == second and third != second, (killed, third)
        assert seconds <= FAILOVER_BOUND_SECONDS, seconds
        c.nodes[second].start(wait="healthy")
        c.wait_streaming(second, timeout_seconds=60)
        load.wait_acked(30, timeout_seconds=20)
    verdict = check_history(c, load, lossless=False)
    assert len({t["term"] for t in verdict.history}) >= 3
