"""The archive under faults that happen in production: the server killed (``kill -9``)
while it archives, and connections to the object store cut in the middle of uploads (a
small TCP proxy between the archiver and a real S3 protocol server resets connections
after a few kilobytes, in the middle of uploads, as Litestream's tests do with toxiproxy).

Either way: nothing acknowledged is missing from the archive, no object overlaps
another, each one reads back whole, and nothing half-written counts as archived.
"""

from __future__ import annotations

import contextlib
import random
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from stemedb.archive import ArchiveReader, open_target
from stemedb.cli import cli
from tests._archive import (
    archive_settings,
    archived_records,
    assertion,
    caught_up,
    engine,
    scratch,
    wait_for,
)
from tests._backup import dump_dir, restore_cli, settle
from tests._moto import BUCKET, S3Server, moto_s3_server
from tests._server import ServerProcess

SEED = 20261204  # every random choice below comes from it
KILL_ROUNDS = 3
WRITES_PER_ROUND_MAX = 400  # bounded: each round is killed long before
PROXY_CUTS = 4  # connections to the store cut, one after another ...
PROXY_CUT_AFTER_BYTES = 3000  # ... once this many of their bytes went through (mid-PUT)
PROXY_IO_BYTES = 65536
PROXY_ACCEPT_TIMEOUT_SECONDS = 0.2  # how often the proxy looks whether to stop
CATCH_UP_SECONDS = 60.0


def _chain_is_whole(url: str, acked: list[int]) -> None:
    records = archived_records(url)  # fetches and verifies every object
    assert list(records) == [1], records.keys()
    lsns = [lsn for lsn, _t, _p in records[1]]
    assert lsns == sorted(set(lsns)), "objects overlap or are out of order"
    missing = sorted(set(acked) - set(lsns))
    assert not missing, f"{len(missing)} acknowledged writes not archived: {missing[:5]}"
    (chain,) = ArchiveReader(open_target(url)).summary()
    assert not chain.gaps, chain.gaps
    listed = CliRunner().invoke(cli, ["backup", "list", "--from", url])
    assert listed.exit_code == 0, listed.output


def _writer(url: str, start: int, acked: list[int], stop: threading.Event) -> None:
    with httpx.Client(base_url=url, timeout=5) as c:
        for i in range(start, start + WRITES_PER_ROUND_MAX):  # bounded
            if stop.is_set():
                return
            try:
                r = c.post("/v1/assertions", json={"subject": f"k9/{i}", "predicate": "p",
                                                   "object": "x" * 300, "author": "a"})
            except httpx.HTTPError:
                return  # the server is gone: what was not answered was not acknowledged
            if r.status_code == 201:
                acked.append(r.json()["lsn"])


def test_kill_9_while_archiving_loses_nothing_and_never_overlaps(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    archive = tmp_path / "archive"
    archive.mkdir()
    url = f"file://{archive}"
    env = {"STEMEDB_ARCHIVE_URL": url, "STEMEDB_ARCHIVE_INTERVAL_SECONDS": "0.02"}
    data_dir = tmp_path / "data"
    acked: list[int] = []
    for k in range(KILL_ROUNDS):
        (tmp_path / f"run{k}").mkdir()
        server = ServerProcess(tmp_path / f"run{k}", env=env, data_dir=data_dir)
        server.start()
        stop = threading.Event()
        t = threading.Thread(target=_writer, args=(server.url, k * WRITES_PER_ROUND_MAX,
                                                   acked, stop))
        t.start()
        time.sleep(rng.uniform(0.3, 1.2))  # mid-write, mid-archive
        server.stop(sig=9)
        stop.set()
        t.join(30)
        assert not t.is_alive()
    assert len(acked) > 50, "too few writes to mean anything"
    (tmp_path / "final").mkdir()
    with ServerProcess(tmp_path / "final", env=env, data_dir=data_dir) as server:
        server.start()
        with server.client() as c:
            deadline = time.monotonic() + CATCH_UP_SECONDS
            while True:  # bounded by the deadline
                a = c.get("/v1/admin/status").json()["archive"]
                if a["archived_lsn"] >= a["durable_lsn"]:
                    break
                assert time.monotonic() < deadline, f"the archive did not catch up: {a}"
                time.sleep(0.05)
            assert a["failures"].get("conflict", 0) == 0, a
    _chain_is_whole(url, acked)


RESTORE_TRIES_MAX = 5  # a restore cut short is run again, at most this often


class CuttingProxy:
    """TCP from 127.0.0.1 to a target; the first ``cuts_max`` times a connection carries
    more than ``PROXY_CUT_AFTER_BYTES`` in one direction (a request body up, an object
    down), it is reset there (clients keep connections alive, so counting connections
    would not)."""

    def __init__(self, target: tuple[str, int], cuts_max: int = PROXY_CUTS) -> None:
        self.target = target
        self.cuts_max = cuts_max
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(PROXY_ACCEPT_TIMEOUT_SECONDS)
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self.cuts = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accept = threading.Thread(target=self._serve, daemon=True)
        self._accept.start()

    def _serve(self) -> None:
        while not self._stop.is_set():  # bounded by stop()
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            t = threading.Thread(target=self._pipe, args=(client,), daemon=True)
            t.start()
            self._threads.append(t)

    @staticmethod
    def _reset(*socks: socket.socket) -> None:
        """Reset both ends now: linger 0, then shutdown (which also wakes the other
        direction's thread out of its recv), then close."""
        for s in socks:
            with contextlib.suppress(OSError):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()

    def _take_cut(self) -> bool:
        with self._lock:
            if self.cuts >= self.cuts_max:
                return False
            self.cuts += 1
            return True

    def _pipe(self, client: socket.socket) -> None:
        upstream = socket.create_connection(self.target)
        sent = 0
        done = threading.Event()

        def back() -> None:
            got = 0
            with contextlib.suppress(OSError):
                while not done.is_set():  # bounded by the connection's end
                    data = upstream.recv(PROXY_IO_BYTES)
                    if not data:
                        break
                    if got + len(data) > PROXY_CUT_AFTER_BYTES and self._take_cut():
                        client.sendall(data[:max(0, PROXY_CUT_AFTER_BYTES - got)])
                        self._reset(client, upstream)  # mid-response
                        break
                    client.sendall(data)
                    got += len(data)
            done.set()

        b = threading.Thread(target=back, daemon=True)
        b.start()
        with contextlib.suppress(OSError):
            while not done.is_set():  # bounded by the connection's end
                data = client.recv(PROXY_IO_BYTES)
                if not data:
                    break
                if sent + len(data) > PROXY_CUT_AFTER_BYTES and self._take_cut():
                    upstream.sendall(data[:max(0, PROXY_CUT_AFTER_BYTES - sent)])
                    break
                upstream.sendall(data)
                sent += len(data)
        done.set()
        self._reset(client, upstream)
        b.join(10)

    def stop(self) -> None:
        self._stop.set()
        self.listener.close()
        self._accept.join(10)
        for t in self._threads:
            t.join(10)


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    yield from moto_s3_server()


def test_connections_cut_mid_upload_are_retried_and_nothing_half_written_counts(
        s3: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(SEED)
    host, port = s3.endpoint.removeprefix("http://").split(":")
    proxy = CuttingProxy((host, int(port)))
    try:
        s3.env(monkeypatch, str(tmp_path))
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{proxy.port}")
        url = f"s3://{BUCKET}/cut"
        with scratch("cut", tmp_path) as d:
            eng = engine(d / "db", archive_settings(url))
            try:
                acked = []
                for i in range(120):  # objects of tens of kilobytes: cut mid-body
                    req = assertion(f"cut-{i}")
                    # Random text, so that compression leaves the objects large.
                    req.ops[0]["assert"]["object"] = rng.randbytes(1000).hex()
                    acked.append(eng.write(req).lsn)
                    if i % 20 == 19:
                        time.sleep(0.05)  # several passes, several objects
                wait_for("the archive to catch up through the cuts", lambda: caught_up(eng),
                         CATCH_UP_SECONDS)
                assert proxy.cuts == PROXY_CUTS, (
                    f"the proxy cut {proxy.cuts} of {proxy.connections} connections")
                failures = eng.status()["archive"]["failures"]
                # The cuts failed operations that the archiver counted and retried (a cut
                # of an idle pooled connection may be retried by the HTTP client itself).
                assert sum(failures.values()) >= 1, failures
            finally:
                eng.close()
        _chain_is_whole(url, acked)  # the cuts are spent: read back without them
    finally:
        proxy.stop()


def test_a_restore_through_cut_connections_completes_or_says_why(
        s3: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Downloads reset mid-object: each restore either completes with exactly the live state, or
    exits non-zero saying why and leaves no directory that a server would start on; run
    again, it completes."""
    rng = random.Random(SEED)
    s3.env(monkeypatch, str(tmp_path))
    url = f"s3://{BUCKET}/restore-cut"
    with scratch("rcut", tmp_path) as d:
        eng = engine(d / "db", archive_settings(url))
        try:
            wait_for("the first backup", lambda: eng.status()["backup"]["last_backup"]
                     is not None, CATCH_UP_SECONDS)
            for i in range(80):
                req = assertion(f"r-{i}")
                req.ops[0]["assert"]["object"] = rng.randbytes(1000).hex()
                eng.write(req)
            settle(eng)
        finally:
            eng.close()
        live = dump_dir(d / "db")
        host, port = s3.endpoint.removeprefix("http://").split(":")
        proxy = CuttingProxy((host, int(port)), cuts_max=2)
        try:
            monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{proxy.port}")
            outcomes = []
            for _ in range(RESTORE_TRIES_MAX):  # bounded: the proxy's cuts run out
                res = restore_cli(url, d / "restored")
                outcomes.append(res.exit_code)
                if res.exit_code == 0:
                    break
                assert res.output.strip(), "a failed restore must say why"
                # What a failed restore leaves is refused by the engine, or is nothing.
                left = d / "restored"
                assert not left.exists() or not any(left.iterdir()) or \
                    (left / "RESTORE_INCOMPLETE").exists(), list(left.iterdir())
            assert outcomes[-1] == 0, outcomes
            assert proxy.cuts == 2, f"the proxy cut {proxy.cuts} connections"
        finally:
            proxy.stop()
        assert dump_dir(d / "restored") == live
