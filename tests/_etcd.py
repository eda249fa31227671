"""A real etcd on 127.0.0.1 for the cluster tests: Debian's ``etcd-server`` binary.

Each server gets free ports and its own data directory; ``stop()`` and ``start()``
keep both, so a restart finds its keys and leases again.  A missing binary fails the
test (scripts/test.sh installs it): the cluster tests are never skipped.
"""

from __future__ import annotations

import contextlib
import itertools
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import httpx
import pytest

from stemedb.cluster import EtcdClient, FaultHook, Leadership, Positions, retry_margin_seconds
from tests._ports import free_port

START_TIMEOUT_SECONDS = 15.0
STOP_TIMEOUT_SECONDS = 5.0
POLL_SECONDS = 0.05


def etcd_binary() -> str:
    path = shutil.which("etcd")
    if path is None:
        pytest.fail("the etcd binary is missing: apt-get install etcd-server "
                    "(scripts/test.sh installs it)")
    return path


@dataclass
class EtcdServer:
    data_dir: Path
    client_port: int = field(default_factory=free_port)
    peer_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.log"

    def start(self) -> None:
        assert self.proc is None, "already running"
        peer = f"http://127.0.0.1:{self.peer_port}"
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [etcd_binary(), "--name", "t", "--data-dir", str(self.data_dir),
             "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", f"t={peer}", "--initial-cluster-state", "new",
             # A single member elects itself after one election timeout: keep it short.
             "--heartbeat-interval", "50", "--election-timeout", "500"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        end = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < end:  # bounded by START_TIMEOUT_SECONDS
            if self.proc.poll() is not None:
                break
            with contextlib.suppress(httpx.HTTPError):
                r = httpx.get(self.url + "/health", timeout=1.0)
                if r.status_code == 200 and r.json().get("health") == "true":
                    return
            time.sleep(POLL_SECONDS)
        tail = self.log_path.read_text(errors="replace")[-3000:]
        self.stop()
        pytest.fail(f"etcd did not become healthy on {self.url}:\n{tail}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT_SECONDS)


def etcd_server(tmp: Path) -> Iterator[EtcdServer]:
    """Start an etcd in ``tmp``; stop it (and remove its data) when done."""
    server = EtcdServer(tmp / "etcd-data")
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.data_dir, ignore_errors=True)


# --- helpers of the leadership tests -------------------------------------------------

def wait_until(predicate: Callable[[], bool], timeout_seconds: float, what: str) -> None:
    end = time.monotonic() + timeout_seconds
    while not predicate():  # bounded by timeout_seconds
        if time.monotonic() >= end:
            pytest.fail(f"not within {timeout_seconds} s: {what}")
        time.sleep(POLL_SECONDS / 5)


class Cut:
    """A fault hook: while ``on``, every request of the client fails as if etcd were
    unreachable."""

    def __init__(self) -> None:
        self.on = False

    def __call__(self, endpoint: str, path: str) -> None:
        if self.on:
            raise httpx.ConnectError(f"cut by the test: {endpoint}{path}")


class Window(NamedTuple):
    node: str
    term: int
    first_mono: float
    last_mono: float


class AckRecorder:
    """Asks every node ``may_acknowledge`` every ``interval_seconds`` on one thread, as a
    write path would before each acknowledgement, and keeps the yeses: (time, node, term).
    """

    def __init__(self, nodes: dict[str, Leadership], interval_seconds: float = 0.002,
                 samples_max: int = 2_000_000) -> None:
        self.nodes = nodes
        self.interval_seconds = interval_seconds
        self.samples_max = samples_max
        self.samples: list[tuple[float, str, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="ack-recorder")

    def __enter__(self) -> AckRecorder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set() and len(self.samples) < self.samples_max:
            for name, node in self.nodes.items():
                term = node.held_term
                now = time.monotonic()
                if node.may_acknowledge(now) and node.held_term == term and term is not None:
                    self.samples.append((now, name, term))
            self._stop.wait(self.interval_seconds)

    def windows(self) -> list[Window]:
        """Per (node, term): the first and last yes, in the order they began."""
        spans: dict[tuple[str, int], list[float]] = {}
        for t, name, term in self.samples:
            span = spans.setdefault((name, term), [t, t])
            span[1] = t
        return sorted((Window(n, term, a, b) for (n, term), (a, b) in spans.items()),
                      key=lambda w: w.first_mono)

    def saw(self, node: str, term: int) -> bool:
        return any(n == node and tm == term for _, n, tm in self.samples)

    def last(self, node: str, term: int) -> float:
        return max(t for t, n, tm in self.samples if n == node and tm == term)

    def first(self, node: str, term: int) -> float:
        return min(t for t, n, tm in self.samples if n == node and tm == term)

    def assert_never_overlap(self) -> list[Window]:
        """No two leaderships acknowledge at the same time; later ones have higher terms."""
        windows = self.windows()
        for before, after in itertools.pairwise(windows):
            assert before.last_mono < after.first_mono, f"overlap: {before} and {after}"
            assert before.term < after.term, f"term did not grow: {before} then {after}"
        return windows


# --- nodes of the leadership tests, with short leases --------------------------------

TTL = 2  # seconds: etcd's minimum at the test server's election timeout is 1
MARGIN = retry_margin_seconds(TTL)
TAKEOVER_SECONDS = 3 * TTL + 2  # a lease to lapse, etcd to notice, a loop to campaign
_names = itertools.count()


def cluster_name() -> str:
    return f"c{next(_names)}"


def node(etcd: EtcdServer, cluster: str, name: str, *,
         positions: Callable[[], Positions] | None = None,
         eligible: Callable[..., bool] | None = None,
         hook: FaultHook | None = None) -> Leadership:
    client = EtcdClient(etcd.url, timeout_seconds=0.5, fault_hook=hook)
    kw: dict[str, object] = {}
    if positions is not None:
        kw["positions"] = positions
    if eligible is not None:
        kw["eligible"] = eligible
    return Leadership(client, cluster, name, f"http://127.0.0.1:18180/{name}",
                      lease_ttl_seconds=TTL, **kw)  # type: ignore[arg-type]


@contextlib.contextmanager
def running(*nodes: Leadership) -> Iterator[None]:
    try:
        for n in nodes:
            n.start()
        yield
    finally:
        for n in nodes:
            n.stop()
            n.client.close()


def acking(nodes: list[Leadership]) -> list[Leadership]:
    return [n for n in nodes if n.may_acknowledge()]


def wait_leader(nodes: list[Leadership], *, above_term: int = 0,
                timeout_seconds: float = TAKEOVER_SECONDS) -> Leadership:
    wait_until(lambda: any((n.held_term or 0) > above_term for n in acking(nodes)),
               timeout_seconds, f"a leader above term {above_term}")
    [leader] = [n for n in acking(nodes) if (n.held_term or 0) > above_term]
    return leader
