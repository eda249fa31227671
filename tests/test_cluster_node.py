"""A cluster's members as clients and operators see them (a real etcd, three processes):
307 to the leader, linearizable reads on replicas, /v1/cluster, /leader and /replica,
the metrics, ``stemedb cluster``, and a former leader's tail set aside."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests._cluster import Cluster, read_all
from tests._server import run_serve

CLI = [sys.executable, "-c", "from stemedb.cli import main; main()"]
A = {"subject": "s", "predicate": "p", "object": 1, "author": "a"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with Cluster(tmp_path_factory.mktemp("cluster")) as c:
        c.start()
        yield c


def _replicas(c: Cluster) -> list[str]:
    lead = c.leader()
    return [n for n in c.nodes if n != lead]


def test_a_write_sent_to_a_replica_is_redirected_to_the_leader(cluster: Cluster) -> None:
    c = cluster
    lead = c.leader()
    assert lead is not None
    replica = _replicas(c)[0]
    r = httpx.post(c.nodes[replica].url + "/v1/batch?x=1", json={"ops": []}, timeout=10)
    assert r.status_code == 307, r.text
    assert r.headers["Location"] == c.nodes[lead].url + "/v1/batch?x=1"
    assert r.json()["error"]["code"] == "not_leader"
    r = httpx.post(c.nodes[replica].url + "/v1/assertions", json=A, timeout=10,
                   follow_redirects=True)
    assert r.status_code == 201, r.text
    assert int(r.headers["StemeDB-Term"]) == c.status(lead)["cluster"]["log_term"]


def test_a_replica_read_sees_every_write_acknowledged_before_it(cluster: Cluster) -> None:
    c = cluster
    lead = c.leader()
    assert lead is not None
    with httpx.Client(timeout=10) as h:
        for i in range(30):
            w = h.post(c.nodes[lead].url + "/v1/assertions",
                       json={**A, "subject": f"ryw-{i}"})
            assert w.status_code == 201
            for replica in _replicas(c):
                # No min_lsn, no waiting by the test: the replica asks the leader.
                r = h.get(c.nodes[replica].url + f"/v1/assertions/{w.json()['id']}")
                assert r.status_code == 200, r.text
                assert r.json()["subject"] == f"ryw-{i}"


def test_cluster_status_leader_and_replica_checks(cluster: Cluster) -> None:
    c = cluster
    lead = c.leader()
    assert lead is not None
    c.wait_caught_up(timeout_seconds=20)
    doc = httpx.get(c.nodes[_replicas(c)[0]].url + "/v1/cluster", timeout=10).json()
    assert doc["name"] == "test" and doc["leader"] == lead and doc["term"] > 0
    roles = {m["node"]: m["role"] for m in doc["members"]}
    assert roles == {n: ("leader" if n == lead else "replica") for n in c.nodes}
    on_leader = httpx.get(c.nodes[lead].url + "/v1/cluster", timeout=10).json()
    for m in on_leader["members"]:
        if m["role"] == "replica":
            assert m["state"] == "streaming" and m["lag_bytes"] is not None
    for n in c.nodes:
        assert (c.get(n, "/leader").status_code == 200) == (n == lead)  # type: ignore[union-attr]
        replica = c.get(n, "/replica?lag=100000000")
        assert replica is not None and (replica.status_code == 200) == (n != lead)


def test_metrics_say_who_leads_and_how_far_replicas_are(cluster: Cluster) -> None:
    c = cluster
    lead = c.leader()
    assert lead is not None
    httpx.post(c.nodes[lead].url + "/v1/assertions", json=A, timeout=10)
    c.wait_caught_up(timeout_seconds=20)
    time.sleep(0.2)  # the lag gauges are refreshed every 50 ms
    m = httpx.get(c.nodes[lead].url + "/metrics", timeout=10).text
    assert "stemedb_cluster_is_leader 1.0" in m and "stemedb_cluster_enabled 1.0" in m
    for replica in _replicas(c):
        assert f'stemedb_replication_lag_bytes{{replica="{replica}"}} 0.0' in m
        assert f'stemedb_replication_connected{{replica="{replica}"}} 1.0' in m
        rm = httpx.get(c.nodes[replica].url + "/metrics", timeout=10).text
        assert "stemedb_cluster_is_leader 0.0" in rm
        assert "stemedb_replication_streaming 1.0" in rm
    terms = {n: c.status(n)["cluster"]["term"] for n in c.nodes}
    assert len(set(terms.values())) == 1, terms


def test_stemedb_cluster_status_and_switchover(cluster: Cluster) -> None:
    c = cluster
    lead = c.leader()
    assert lead is not None
    out = subprocess.run([*CLI, "cluster", "status", "--server", c.nodes[lead].url],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert f"leader {lead}" in out.stdout and out.stdout.count("streaming") == 2
    target = _replicas(c)[1]
    out = subprocess.run([*CLI, "cluster", "switchover", "--candidate", target, "--json",
                          "--server", c.nodes[_replicas(c)[0]].url],
                         capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stderr + c.logs()
    assert json.loads(out.stdout)["leader"] == target
    assert c.wait_leader(timeout_seconds=10) == target
    c.wait_streaming(lead, timeout_seconds=30)
    out = subprocess.run([*CLI, "cluster", "switchover", "--candidate", "nobody",
                          "--server", c.nodes[target].url],
                         capture_output=True, text=True, timeout=90)
    assert out.returncode == 1 and "nobody" in out.stderr
    assert c.leader() == target


def test_replication_routes_answer_only_on_the_leader(cluster: Cluster) -> None:
    c = cluster
    replica = _replicas(c)[0]
    r = httpx.get(c.nodes[replica].url + "/v1/replication/wal",
                  params={"node": "x", "from": 0, "term": 0}, timeout=10)
    assert r.status_code == 503 and r.json()["error"]["code"] == "not_leader"
    lead = c.leader()
    assert lead is not None
    # A log that claims a term the leader never had is told it forked.
    r = httpx.get(c.nodes[lead].url + "/v1/replication/wal",
                  params={"node": "x", "from": 64, "term": 999_999_999}, timeout=10)
    assert r.status_code == 503  # a newer term than the leader's: it may be deposed
    r = httpx.get(c.nodes[lead].url + "/v1/replication/wal",
                  params={"node": "x", "from": 10**12, "term": 0}, timeout=10)
    assert r.status_code == 409 and r.json()["error"]["code"] == "log_diverged"
    assert [t["node"] for t in r.json()["history"]][-1] == lead


def test_a_former_leader_sets_aside_what_the_new_leader_never_had(tmp_path: Path) -> None:
    """K = 0: the replicas are paused while the leader acknowledges writes; the leader
    is paused, a replica takes over; the former leader comes back, finds its log forked,
    moves its tail aside (reported with its LSN range, dumpable) and follows."""
    with Cluster(tmp_path, synchronous_replicas=0) as c:
        c.start()
        old = c.leader()
        assert old is not None
        replicas = _replicas(c)
        for n in replicas:
            c.nodes[n].send_signal(signal.SIGSTOP)
        acked = {}
        with httpx.Client(timeout=10) as h:
            for i in range(5):
                r = h.post(c.nodes[old].url + "/v1/assertions", json={**A, "subject": f"t{i}"})
                assert r.status_code == 201, r.text
                acked[f"t{i}"] = r.json()["lsn"]
        c.nodes[old].send_signal(signal.SIGSTOP)
        for n in replicas:
            c.nodes[n].send_signal(signal.SIGCONT)
        try:
            new = c.wait_leader(timeout_seconds=30, other_than=old)
        finally:
            c.nodes[old].send_signal(signal.SIGCONT)
        w = httpx.post(c.nodes[new].url + "/v1/assertions", json={**A, "subject": "after"},
                       timeout=10)
        assert w.status_code == 201
        c.wait_streaming(old, timeout_seconds=60)
        c.wait_caught_up(timeout_seconds=30)
        aside = c.status(old)["cluster"]["set_aside"]
        assert len(aside) == 1 and aside[0]["reason"] == "diverged", aside
        lo, hi = aside[0]["from_lsn"], aside[0]["to_lsn"]
        final = read_all(c, new)
        assert read_all(c, old) == final
        # A stream response already on its way when the replicas were paused may have
        # carried the first writes over; the rest exist only in the set-aside tail.
        lost = {s: lsn for s, lsn in acked.items() if s not in final}
        assert lost and all(lo <= lsn < hi for lsn in lost.values()), (aside, acked)
        assert all(final[s][1] == lsn for s, lsn in acked.items() if s in final)
        dump = subprocess.run([*CLI, "wal", "dump", "--data-dir", aside[0]["dir"],
                               "--from-lsn", str(lo), "--json"],
                              capture_output=True, text=True, timeout=30)
        assert dump.returncode == 0, dump.stderr
        records = [json.loads(line) for line in dump.stdout.splitlines()]
        assert set(lost) <= set(json.dumps(records).split('"')), records
        m = httpx.get(c.nodes[old].url + "/metrics", timeout=10).text
        assert f"stemedb_replication_diverged_bytes_total {float(hi - lo)}" in m


def test_cluster_config_is_checked_at_start(tmp_path: Path) -> None:
    for toml, words in (
            ('[cluster]\nname = "c"\nnode_name = "a"\nadvertise_url = "http://x:1"\n',
             "etcd_endpoints"),
            ('[cluster]\nname = "c"\nadvertise_url = "http://x:1"\n'
             'etcd_endpoints = "http://127.0.0.1:1"\n', "node_name"),
            ('[cluster]\nname = "c"\nnode_name = "a"\nadvertise_url = "x:1"\n'
             'etcd_endpoints = "http://127.0.0.1:1"\n', "advertise_url"),
            ('[cluster]\nname = "c"\nnode_name = "a"\nadvertise_url = "http://x:1"\n'
             'etcd_endpoints = "http://127.0.0.1:1"\nsynchronous_replicas = -1\n',
             "synchronous_replicas"),
            ('[auth]\ntokens = [{ token = "t" }]\n[cluster]\nname = "c"\nnode_name = "a"\n'
             'advertise_url = "http://x:1"\netcd_endpoints = "http://127.0.0.1:1"\n',
             "replication_token")):
        cfg = tmp_path / "api.toml"
        cfg.write_text(toml)
        out = run_serve(tmp_path, ["--config", str(cfg), "--data-dir", str(tmp_path / "d")])
        assert out.returncode == 2, (toml, out.stderr)
        assert words in out.stderr, (toml, out.stderr)


def test_a_node_holding_another_database_is_refused_and_kept(cluster: Cluster,
                                                              tmp_path: Path) -> None:
    from stemedb.engine import Engine, EngineConfig, WriteRequest
    from stemedb.wal import RecordType
    from tests._server import TEST_SEGMENT_SIZE_BYTES, ServerProcess

    data = tmp_path / "data"
    eng = Engine(data, EngineConfig(segment_size_bytes=TEST_SEGMENT_SIZE_BYTES))
    eng.recover()
    eng.start()
    eng.write(WriteRequest(RecordType.ASSERT, [{"assert": {**A, "subject": "mine"}}]))
    eng.close()
    before = sorted(p.name for p in (data / "wal").iterdir())
    p = ServerProcess(tmp_path, data_dir=data)
    p.config_path.write_text(
        f'[cluster]\nname = "test"\nnode_name = "n9"\n'
        f'advertise_url = "http://127.0.0.1:{p.port}"\n'
        f'etcd_endpoints = "{cluster.etcd.url}"\nlease_ttl_seconds = 2\n')
    with p:
        p.start(wait="healthy")
        end = time.monotonic() + 20
        while "holds another database" not in p.log():  # bounded by the deadline
            assert time.monotonic() < end, p.log()
            time.sleep(0.05)
        with p.client() as c:
            assert c.get("/replica").status_code == 503
            r = c.get("/v1/assertions", params={"consistency": "stale"})
            assert [a["subject"] for a in r.json()["items"]] == ["mine"]
    assert sorted(x.name for x in (data / "wal").iterdir()) == before
    assert not (data / "diverged").exists()


def test_the_python_client_names_the_leader_when_it_writes_to_a_replica(
        cluster: Cluster) -> None:
    from stemedb.client import Client, NotLeader

    lead = cluster.leader()
    assert lead is not None
    replica = _replicas(cluster)[0]
    with Client(cluster.nodes[replica].url) as db:
        with pytest.raises(NotLeader) as info:
            db.create_assertion(**A)
        assert info.value.leader_url == cluster.nodes[lead].url + "/v1/assertions"
        assert db.get_assertion(1).id == 1  # reads are served here


def test_cluster_status_is_current_on_every_member_right_after_a_switchover(
        cluster: Cluster) -> None:
    c = cluster
    lead = c.leader()
    assert lead is not None
    target = _replicas(c)[0]
    r = httpx.post(c.nodes[lead].url + "/v1/admin/switchover", json={"candidate": target},
                   timeout=60)
    assert r.status_code == 200, r.text
    term = r.json()["term"]
    for n in c.nodes:  # at once: /v1/cluster reads etcd, not the loop's last view
        doc = httpx.get(c.nodes[n].url + "/v1/cluster", timeout=10).json()
        assert (doc["leader"], doc["term"]) == (target, term), (n, doc)
        roles = {m["node"]: m["role"] for m in doc["members"]}
        assert roles[target] == "leader" and roles[lead] == "replica", (n, doc)
    out = subprocess.run([*CLI, "cluster", "status", "--server", c.nodes[lead].url],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and f"leader {target}, term {term}" in out.stdout, out
