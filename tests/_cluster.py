"""A StemeDB cluster for tests: a real etcd and several ``stemedb serve`` processes on
127.0.0.1, each with its own data directory, and the waits that tests need.

Every wait is bounded; every process started here is stopped by :meth:`Cluster.close`.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest

from tests._etcd import EtcdServer
from tests._server import ServerProcess

POLL_SECONDS = 0.05
TTL_SECONDS = 2  # short leases keep failover tests quick


class Cluster:
    def __init__(self, tmp: Path, *, nodes: int = 3, ttl_seconds: int = TTL_SECONDS,
                 synchronous_replicas: int = 0, name: str = "test",
                 extra_toml: str = "") -> None:
        self.tmp = tmp
        self.etcd = EtcdServer(tmp / "etcd-data")
        self.name = name
        self.ttl_seconds = ttl_seconds
        self.nodes: dict[str, ServerProcess] = {}
        for i in range(1, nodes + 1):
            node = f"n{i}"
            d = tmp / node
            d.mkdir()
            p = ServerProcess(d)
            p.config_path.write_text(
                f'[cluster]\nname = "{name}"\nnode_name = "{node}"\n'
                f'advertise_url = "http://127.0.0.1:{p.port}"\n'
                f'etcd_endpoints = "{self.etcd.url}"\n'
                f"lease_ttl_seconds = {ttl_seconds}\n"
                f"synchronous_replicas = {synchronous_replicas}\n{extra_toml}")
            self.nodes[node] = p

    def start(self) -> Cluster:
        self.etcd.start()
        first = next(iter(self.nodes))
        self.nodes[first].start(wait="healthy")
        self.wait_leader(timeout_seconds=30)
        for name, p in self.nodes.items():
            if name != first:
                p.start(wait="healthy")
        for name in self.nodes:
            if name != first:
                self.wait_streaming(name, timeout_seconds=30)
        return self

    def close(self) -> None:
        for p in self.nodes.values():
            with contextlib.suppress(Exception):
                if p.proc is not None and p.proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        p.proc.send_signal(signal.SIGCONT)
                p.stop()
        self.etcd.stop()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def kill(self, node: str) -> None:
        """``kill -9``: no drain, no lease release."""
        p = self.nodes[node]
        assert p.proc is not None
        p.proc.kill()
        p.wait_exit(10)

    # -- looking ---------------------------------------------------------------------
    def alive(self) -> dict[str, ServerProcess]:
        return {n: p for n, p in self.nodes.items()
                if p.proc is not None and p.proc.poll() is None}

    def get(self, node: str, path: str, timeout: float = 2.0) -> httpx.Response | None:
        try:
            return httpx.get(self.nodes[node].url + path, timeout=timeout)
        except httpx.HTTPError:
            return None

    def leader(self) -> str | None:
        """The node that answers 200 on /leader (None when none or several do)."""
        leaders = []
        for n in self.alive():
            r = self.get(n, "/leader", timeout=1.0)
            if r is not None and r.status_code == 200:
                leaders.append(n)
        return leaders[0] if len(leaders) == 1 else None

    def wait_leader(self, *, timeout_seconds: float, other_than: str | None = None) -> str:
        end = time.monotonic() + timeout_seconds
        while time.monotonic() < end:  # bounded by timeout_seconds
            n = self.leader()
            if n is not None and n != other_than:
                return n
            time.sleep(POLL_SECONDS)
        pytest.fail(f"no leader (other than {other_than}) within {timeout_seconds}s:\n"
                    + self.logs())

    def wait_streaming(self, node: str, *, timeout_seconds: float, lag: int | None = None
                       ) -> None:
        end = time.monotonic() + timeout_seconds
        path = "/replica" if lag is None else f"/replica?lag={lag}"
        while time.monotonic() < end:  # bounded by timeout_seconds
            r = self.get(node, path, timeout=1.0)
            if r is not None and r.status_code == 200:
                return
            time.sleep(POLL_SECONDS)
        pytest.fail(f"{node} is not a streaming replica within {timeout_seconds}s:\n"
                    + self.logs())

    def status(self, node: str) -> dict[str, Any]:
        r = httpx.get(self.nodes[node].url + "/v1/admin/status", timeout=5.0)
        r.raise_for_status()
        body: dict[str, Any] = r.json()
        return body

    def durable_lsn(self, node: str) -> int:
        return int(self.status(node)["state"]["durable_lsn"])

    def wait_caught_up(self, *, timeout_seconds: float) -> None:
        """Every live node has the leader's durable LSN applied."""
        end = time.monotonic() + timeout_seconds
        while time.monotonic() < end:  # bounded by timeout_seconds
            lead = self.leader()
            if lead is not None:
                target = self.durable_lsn(lead)
                if all(int(self.status(n)["state"]["applied_lsn"]) >= target
                       for n in self.alive()):
                    return
            time.sleep(POLL_SECONDS)
        pytest.fail(f"the members did not catch up within {timeout_seconds}s:\n"
                    + self.logs())

    def logs(self, chars: int = 4000) -> str:
        return "\n".join(f"--- {n} ---\n{p.log()[-chars:]}" for n, p in self.nodes.items())


# --- a history of client operations, and its check ------------------------------------

TERM_HEADER = "StemeDB-Term"
REQUEST_TIMEOUT_SECONDS = 5.0


class Op(NamedTuple):
    subject: str
    outcome: str  # "ok" | "fail" (refused, nothing written) | "unknown"
    node: str
    term: int
    lsn: int
    id: int
    t_done: float


class Load:
    """Writer threads creating assertions with unique subjects on whichever node leads,
    following 307s, recording every outcome."""

    def __init__(self, cluster: Cluster, writers: int = 4, pause_seconds: float = 0.0
                 ) -> None:
        self.cluster = cluster
        self.writers = writers
        self.pause_seconds = pause_seconds
        self.ops: list[Op] = []
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(k,), daemon=True,
                                          name=f"writer-{k}") for k in range(writers)]
        self._leader: str | None = None

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(REQUEST_TIMEOUT_SECONDS * 3)

    def acked(self) -> list[Op]:
        with self.lock:
            return [o for o in self.ops if o.outcome == "ok"]

    def count(self) -> int:
        return len(self.acked())

    def wait_acked(self, n: int, timeout_seconds: float) -> None:
        start = self.count()
        end = time.monotonic() + timeout_seconds
        while self.count() < start + n:  # bounded by timeout_seconds
            if time.monotonic() >= end:
                pytest.fail(f"fewer than {n} writes acknowledged in {timeout_seconds}s:\n"
                            + self.cluster.logs())
            time.sleep(POLL_SECONDS)

    def _target(self) -> str | None:
        lead = self._leader
        alive = self.cluster.alive()
        if lead is None or lead not in alive:
            lead = self._leader = self.cluster.leader()
        return lead

    def _run(self, k: int) -> None:
        seq = 0
        with httpx.Client(timeout=REQUEST_TIMEOUT_SECONDS) as c:
            while not self._stop.is_set():  # bounded by stop()
                node = self._target()
                if node is None:
                    time.sleep(POLL_SECONDS)
                    continue
                seq += 1
                subject = f"w{k}-{seq}"
                url = self.cluster.nodes[node].url
                body = {"subject": subject, "predicate": "p", "object": seq,
                        "author": f"w{k}"}
                try:
                    r = c.post(url + "/v1/assertions", json=body)
                    if r.status_code == 307:
                        loc = r.headers["Location"]
                        node = next((n for n, p in self.cluster.nodes.items()
                                     if loc.startswith(p.url)), node)
                        self._leader = node
                        r = c.post(loc, json=body)
                except httpx.HTTPError:
                    self._note(Op(subject, "unknown", node, 0, 0, 0, time.monotonic()))
                    self._leader = None
                    continue
                if r.status_code == 201:
                    j = r.json()
                    self._note(Op(subject, "ok", node, int(r.headers[TERM_HEADER]),
                                  int(j["lsn"]), int(j["id"]), time.monotonic()))
                else:
                    # 307 again, 503 (no leader, not acknowledged): the write may or may
                    # not be in the log.
                    self._note(Op(subject, "unknown", node, 0, 0, 0, time.monotonic()))
                    self._leader = None
                    time.sleep(POLL_SECONDS)
                if self.pause_seconds:
                    time.sleep(self.pause_seconds)

    def _note(self, op: Op) -> None:
        with self.lock:
            self.ops.append(op)


def read_all(cluster: Cluster, node: str) -> dict[str, tuple[int, int]]:
    """subject -> (id, lsn) of every assertion on ``node`` (a stale read: as it is)."""
    out: dict[str, tuple[int, int]] = {}
    after = 0
    with httpx.Client(timeout=10.0) as c:
        while True:  # bounded: each page moves the cursor past its last id
            r = c.get(cluster.nodes[node].url + "/v1/assertions", params={
                "after": after, "limit": 1000, "consistency": "stale"})
            r.raise_for_status()
            items = r.json()["items"]
            for it in items:
                assert it["subject"] not in out, f"{it['subject']} twice on {node}"
                out[it["subject"]] = (int(it["id"]), int(it["lsn"]))
            if len(items) < 1000:
                return out
            after = int(items[-1]["id"])


def term_at(history: list[dict[str, Any]], lsn: int) -> int:
    term = 0
    for t in history:
        if int(t["start_lsn"]) <= lsn:
            term = int(t["term"])
    return term


class Verdict(NamedTuple):
    acked: int
    lost: list[Op]
    history: list[dict[str, Any]]


def check_history(cluster: Cluster, load: Load, *, lossless: bool,
                  timeout_seconds: float = 30.0) -> Verdict:
    """The checks every failover test ends with.  Returns what was lost (empty when
    ``lossless``, else asserted to be only writes of a term the log does not keep)."""
    cluster.wait_caught_up(timeout_seconds=timeout_seconds)
    lead = cluster.leader()
    assert lead is not None
    history = cluster.status(lead)["cluster"]["history"]
    states = {n: read_all(cluster, n) for n in cluster.alive()}
    final = states[lead]
    for n, s in states.items():
        assert s == final, f"{n} differs from the leader {lead}"
    sent = {o.subject for o in load.ops}
    assert set(final) <= sent, f"records nobody sent: {sorted(set(final) - sent)[:5]}"
    acked = load.acked()
    lost: list[Op] = []
    by_term: dict[int, set[str]] = {}
    for op in acked:
        by_term.setdefault(op.term, set()).add(op.node)
        got = final.get(op.subject)
        if got is None:
            lost.append(op)
            continue
        assert got == (op.id, op.lsn), f"{op.subject} acknowledged as {op} but holds {got}"
        assert term_at(history, op.lsn) == op.term, (
            f"{op.subject} was acknowledged in term {op.term} by {op.node} but its record "
            f"at LSN {op.lsn} lies in term {term_at(history, op.lsn)} of {history}")
    for term, nodes in by_term.items():
        assert len(nodes) == 1, f"term {term} acknowledged by {sorted(nodes)}"
    if lossless:
        assert not lost, f"{len(lost)} acknowledged writes lost, e.g. {lost[:3]}"
    else:
        kept = {int(t["term"]) for t in history}
        for op in lost:
            assert op.term not in kept or op.lsn >= min(
                int(t["start_lsn"]) for t in history if int(t["term"]) > op.term), op
    return Verdict(len(acked), lost, history)
