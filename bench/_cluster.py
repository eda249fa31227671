"""A StemeDB cluster for the cluster bench: one etcd and N ``stemedb serve`` processes
on 127.0.0.1, each a :class:`~bench.http_bench.StemeServer` with ``[cluster]`` set
through its ``STEMEDB_CLUSTER_*`` variables; and :class:`Writers`, threads that write
to whichever node leads and keep the time, node and term of every acknowledgement.

Several clusters may share one etcd (each under its own ``name``).  Every wait is
bounded; :meth:`BenchCluster.close` and :meth:`Etcd.stop` stop every process started
here (by its own process group).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import threading
import time
from typing import Any, NamedTuple

import httpx

from ._common import stop_process_group, wait_until_serving
from ._peers import free_port
from .http_bench import StemeServer

POLL_SECONDS = 0.05  # how often a wait looks again
START_TIMEOUT_SECONDS = 30.0  # etcd healthy, a node ready, a replica streaming
STOP_TIMEOUT_SECONDS = 30.0
STATUS_TIMEOUT_SECONDS = 5.0  # one GET of /leader, /replica or /v1/admin/status
TERM_HEADER = "StemeDB-Term"  # on every acknowledged write: the leader's term
# Writers: one request at a time each; after a refusal or an error, this pause before
# the next try.  It is also the resolution of the outage windows the bench reports.
WRITE_TIMEOUT_SECONDS = 5.0
WRITE_CONNECT_TIMEOUT_SECONDS = 1.0
RETRY_PAUSE_SECONDS = 0.01
ACKS_KEPT_MAX = 2_000_000  # acknowledgements one Writers keeps (memory bound)


class Etcd:
    """Debian's ``etcd`` (etcd-server) on free loopback ports, one member."""

    def __init__(self, root: str) -> None:
        self.root = os.path.join(root, "etcd")
        self.client_port = free_port()
        self.peer_port = free_port()
        self.url = f"http://127.0.0.1:{self.client_port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("etcd")
        if binary is None:
            raise RuntimeError("etcd is not on PATH; try: apt-get install -y etcd-server")
        os.makedirs(self.root, exist_ok=True)
        peer = f"http://127.0.0.1:{self.peer_port}"
        self.log = open(os.path.join(self.root, "etcd.log"), "ab")  # noqa: SIM115 - stop()
        self.proc = subprocess.Popen(
            [binary, "--name", "bench", "--data-dir", os.path.join(self.root, "data"),
             "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", f"bench={peer}", "--initial-cluster-state", "new",
             # One member elects itself after one election timeout: keep it short.
             "--heartbeat-interval", "50", "--election-timeout", "500"],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
        wait_until_serving(self.proc, self._healthy, "etcd", self.log.name,
                           START_TIMEOUT_SECONDS)

    def _healthy(self) -> bool:
        try:
            r = httpx.get(self.url + "/health", timeout=1.0)
        except httpx.HTTPError:
            return False
        return r.status_code == 200 and r.json().get("health") == "true"

    def version(self) -> str:
        try:
            return str(httpx.get(self.url + "/version", timeout=2.0).json()["etcdserver"])
        except (httpx.HTTPError, KeyError, ValueError):
            return "unknown"

    def stop(self) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        stop_process_group(proc, STOP_TIMEOUT_SECONDS)
        self.log.close()


class BenchCluster:
    """``nodes`` members of cluster ``name`` (``n1``..``nN``) in ``root/name``."""

    def __init__(self, root: str, etcd: Etcd, name: str, *, nodes: int, ttl_seconds: int,
                 synchronous_replicas: int) -> None:
        self.name = name
        self.ttl_seconds = ttl_seconds
        self.synchronous_replicas = synchronous_replicas
        self.root = os.path.join(root, name)
        self.nodes: dict[str, StemeServer] = {}
        for i in range(1, nodes + 1):
            node = f"n{i}"
            s = StemeServer(self.root, node, log_level="info")
            s.extra_env.update({
                "STEMEDB_CLUSTER_NAME": name, "STEMEDB_CLUSTER_NODE_NAME": node,
                "STEMEDB_CLUSTER_ADVERTISE_URL": s.url,
                "STEMEDB_CLUSTER_ETCD_ENDPOINTS": etcd.url,
                "STEMEDB_CLUSTER_LEASE_TTL_SECONDS": str(ttl_seconds),
                "STEMEDB_CLUSTER_SYNCHRONOUS_REPLICAS": str(synchronous_replicas)})
            self.nodes[node] = s
        self.urls = {n: s.url for n, s in self.nodes.items()}
        self._http = httpx.Client(timeout=STATUS_TIMEOUT_SECONDS)

    def start(self) -> BenchCluster:
        """The first node creates the cluster and leads; the others copy it and stream."""
        first, *others = self.nodes
        self.nodes[first].start()
        self.wait_leader(START_TIMEOUT_SECONDS)
        for n in others:
            self.nodes[n].start()
        for n in others:
            self.wait_streaming(n, START_TIMEOUT_SECONDS)
        return self

    def close(self) -> None:
        for s in self.nodes.values():
            with contextlib.suppress(Exception):
                s.stop()
        self._http.close()

    # -- faults ------------------------------------------------------------------------
    def kill(self, node: str) -> float:
        """``kill -9`` (no drain, no lease release); the monotonic time it was sent."""
        s = self.nodes[node]
        assert s.proc is not None, f"{node} is not running"
        os.kill(s.proc.pid, signal.SIGKILL)
        t = time.monotonic()
        s.proc.wait(STOP_TIMEOUT_SECONDS)
        s.stop()  # reaps it and closes its log; the data directory stays
        return t

    def restart(self, node: str, *, streaming: bool = True) -> None:
        """Start ``node`` again on its data directory (after a kill, or a clean stop
        here first); with ``streaming``, wait until it streams from the leader."""
        self.nodes[node].stop()
        self.nodes[node].start()
        if streaming:
            self.wait_streaming(node, START_TIMEOUT_SECONDS * 2)

    # -- looking -----------------------------------------------------------------------
    def alive(self) -> list[str]:
        return [n for n, s in self.nodes.items() if s.proc is not None
                and s.proc.poll() is None]

    def _get(self, node: str, path: str) -> httpx.Response | None:
        try:
            return self._http.get(self.urls[node] + path)
        except httpx.HTTPError:
            return None

    def leader(self) -> str | None:
        """The node that answers 200 on ``/leader`` (None when none or several do)."""
        leaders = [n for n in self.alive()
                   if (r := self._get(n, "/leader")) is not None and r.status_code == 200]
        return leaders[0] if len(leaders) == 1 else None

    def wait_leader(self, timeout_seconds: float, other_than: str | None = None) -> str:
        end = time.monotonic() + timeout_seconds
        while time.monotonic() < end:  # bounded by timeout_seconds
            n = self.leader()
            if n is not None and n != other_than:
                return n
            time.sleep(POLL_SECONDS)
        raise TimeoutError(f"{self.name}: no leader (other than {other_than}) within "
                           f"{timeout_seconds:.0f}s; logs in {self.root}")

    def wait_streaming(self, node: str, timeout_seconds: float) -> None:
        end = time.monotonic() + timeout_seconds
        while time.monotonic() < end:  # bounded by timeout_seconds
            r = self._get(node, "/replica")
            if r is not None and r.status_code == 200:
                return
            time.sleep(POLL_SECONDS)
        raise TimeoutError(f"{self.name}: {node} is not a streaming replica within "
                           f"{timeout_seconds:.0f}s; see {self.log_path(node)}")

    def status(self, node: str) -> dict[str, Any]:
        r = self._http.get(self.urls[node] + "/v1/admin/status")
        r.raise_for_status()
        body: dict[str, Any] = r.json()
        return body

    def term(self, node: str) -> int:
        return int(self.status(node)["cluster"]["term"])

    def roles(self) -> dict[str, str]:
        """node -> its role, the term it sees and the last term of its own log, as
        ``/v1/admin/status`` says (for the notes of a round that missed its target)."""
        out = {}
        for n in self.alive():
            try:
                c = self.status(n)["cluster"]
                out[n] = (f"role {c['role']}, term {c['term']}, log_term {c['log_term']}, "
                          f"leader {c['leader']}")
            except (httpx.HTTPError, KeyError, ValueError) as exc:
                out[n] = f"status unavailable ({exc})"
        return out

    def wait_caught_up(self, timeout_seconds: float) -> None:
        """Every replica the leader knows holds the leader's durable LSN."""
        end = time.monotonic() + timeout_seconds
        while time.monotonic() < end:  # bounded by timeout_seconds
            lead = self.leader()
            if lead is not None:
                replicas = self.status(lead)["cluster"]["replicas"]
                if len(replicas) >= len(self.alive()) - 1 and all(
                        r["lag_bytes"] == 0 for r in replicas.values()):
                    return
            time.sleep(POLL_SECONDS)
        raise TimeoutError(f"{self.name}: the replicas did not catch up within "
                           f"{timeout_seconds:.0f}s")

    def log_path(self, node: str) -> str:
        return os.path.join(self.nodes[node].root, "server.log")

    def log_lines(self, node: str, words: tuple[str, ...], lines_max: int) -> list[str]:
        """The last ``lines_max`` lines of ``node``'s log that hold one of ``words``."""
        try:
            with open(self.log_path(node), errors="replace") as f:
                hits = [ln.rstrip() for ln in f if any(w in ln for w in words)]
        except OSError:
            return []
        return hits[-lines_max:]


class Ack(NamedTuple):
    done_mono: float  # when the 201 arrived
    node: str
    term: int


class Writers:
    """``count`` threads, each with one ``POST /v1/assertions`` in flight, sent to the
    node last known to lead; a 307 is followed (and its target remembered); a refusal
    or a connection error sends the next try to the next node after
    RETRY_PAUSE_SECONDS.  Every 201 is kept as an :class:`Ack`; everything else is
    counted as refused."""

    def __init__(self, cluster: BenchCluster, count: int) -> None:
        self.cluster = cluster
        self.acks: list[Ack] = []
        self.refused = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._leader: str | None = None
        self._threads = [threading.Thread(target=self._run, args=(k,), daemon=True,
                                          name=f"bench-writer-{k}") for k in range(count)]

    def __enter__(self) -> Writers:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(WRITE_TIMEOUT_SECONDS * 3)

    def acked_since(self, mono: float) -> list[Ack]:
        with self._lock:
            return [a for a in self.acks if a.done_mono >= mono]

    def wait_ack(self, timeout_seconds: float, *, after_mono: float,
                 term_above: int = 0) -> Ack:
        """The first acknowledgement after ``after_mono`` in a term above ``term_above``."""
        end = time.monotonic() + timeout_seconds
        while time.monotonic() < end:  # bounded by timeout_seconds
            with self._lock:
                hit = next((a for a in self.acks
                            if a.done_mono >= after_mono and a.term > term_above), None)
            if hit is not None:
                return hit
            time.sleep(RETRY_PAUSE_SECONDS)
        raise TimeoutError(f"{self.cluster.name}: no write acknowledged in a term above "
                           f"{term_above} within {timeout_seconds:.0f}s")

    def wait_acks(self, n: int, timeout_seconds: float) -> None:
        start = time.monotonic()
        end = start + timeout_seconds
        while len(self.acked_since(start)) < n:  # bounded by timeout_seconds
            if time.monotonic() >= end:
                raise TimeoutError(f"{self.cluster.name}: fewer than {n} writes "
                                   f"acknowledged in {timeout_seconds:.0f}s")
            time.sleep(POLL_SECONDS)

    def _node_of(self, url: str) -> str | None:
        return next((n for n, u in self.cluster.urls.items() if url.startswith(u)), None)

    def _run(self, k: int) -> None:
        names = list(self.cluster.urls)
        rotation = itertools.cycle(names[k % len(names):] + names[:k % len(names)])
        timeout = httpx.Timeout(WRITE_TIMEOUT_SECONDS, connect=WRITE_CONNECT_TIMEOUT_SECONDS)
        with httpx.Client(timeout=timeout) as c:
            for seq in itertools.count():
                if self._stop.is_set():  # the loop ends with the writers
                    return
                node = self._leader or next(rotation)
                body = {"subject": f"urn:bench:w{k}/{seq}", "predicate": "reading",
                        "object": seq, "author": f"writer-{k}"}
                try:
                    r = c.post(self.cluster.urls[node] + "/v1/assertions", json=body)
                    if r.status_code == 307:
                        location = r.headers.get("Location", "")
                        node = self._node_of(location) or node
                        r = c.post(location, json=body)
                except httpx.HTTPError:
                    r = None
                if r is not None and r.status_code == 201:
                    self._leader = node
                    ack = Ack(time.monotonic(), node, int(r.headers[TERM_HEADER]))
                    with self._lock:
                        if len(self.acks) < ACKS_KEPT_MAX:
                            self.acks.append(ack)
                    continue
                with self._lock:
                    self.refused += 1
                if self._leader == node:
                    self._leader = None
                self._stop.wait(RETRY_PAUSE_SECONDS)


__all__ = ["Ack", "BenchCluster", "Etcd", "Writers"]
