"""Readiness during a real replay, drain, and SIGTERM/SIGINT, on real processes."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from stemedb.engine import Engine, EngineConfig
from tests._server import ServerProcess, server_env

GRACE_SECONDS = 10.0  # STEMEDB_SERVER_DRAIN_GRACE_SECONDS in the test servers
EXIT_BOUND_SECONDS = 2 * GRACE_SECONDS + 5  # in-flight grace plus the engine close grace


def _assertion(subject: str) -> dict[str, Any]:
    return {"subject": subject, "predicate": "p", "object": {"n": 1}, "author": "a"}


def _replayed_records(s: ServerProcess) -> int:
    with s.client() as c:
        n: int = c.get("/v1/admin/status").json()["node"]["recovery"]["records"]
        return n


def test_drain_stops_writes_keeps_reads_and_checkpoints(tmp_path: Path) -> None:
    with ServerProcess(tmp_path) as s:
        s.start()
        with s.client() as c:
            aid = c.post("/v1/assertions", json=_assertion("d")).json()["id"]
            r = c.post("/v1/admin/node/drain")
            assert r.status_code == 200, r.text
            report = r.json()
            assert report["draining"] is True and report["ready"] is False
            status = c.get("/v1/admin/status").json()
            # Checkpointed: everything written is in the state; nothing to replay.
            assert report["checkpoint_lsn"] == status["wal"]["end_lsn"]
            assert status["checkpoint"]["replay_debt_bytes"] == 0
            assert status["node"]["draining"] is True
            w = c.post("/v1/assertions", json=_assertion("after-drain"))
            assert w.status_code == 503
            assert w.json()["error"]["code"] == "draining"
            assert w.headers["Retry-After"] == "1"
            assert c.put(f"/v1/assertions/{aid}/votes/v", json={"value": 1}).status_code == 503
            assert c.post("/v1/epochs").status_code == 503
            assert c.get(f"/v1/assertions/{aid}").status_code == 200  # reads go on
            ready = c.get("/readyz")
            assert ready.status_code == 503 and ready.json()["reason"] == "draining"
            metrics = c.get("/metrics").text
            assert "stemedb_draining 1.0" in metrics and "stemedb_ready 0.0" in metrics
            assert c.post("/v1/admin/node/drain").status_code == 200  # idempotent
        assert s.stop() == 0
    with ServerProcess(tmp_path) as s2:
        s2.start()
        assert _replayed_records(s2) == 0
        with s2.client() as c:
            assert c.post("/v1/assertions", json=_assertion("again")).status_code == 201


def test_drain_finishes_writes_in_flight(tmp_path: Path) -> None:
    """Writes racing a drain either succeed (and are durable) or get 503; none is lost."""
    with ServerProcess(tmp_path) as s:
        s.start()
        acked, refused = _hammer_while(s, lambda: httpx.post(s.url + "/v1/admin/node/drain",
                                                             timeout=30))
        assert acked and refused, (len(acked), len(refused))
        with s.client() as c:
            status = c.get("/v1/admin/status").json()
            assert status["checkpoint"]["lsn"] == status["wal"]["end_lsn"]
            for aid in acked:
                assert c.get(f"/v1/assertions/{aid}").status_code == 200
        assert s.stop() == 0


def _hammer_while(s: ServerProcess, action: Any, writers: int = 4
                  ) -> tuple[list[int], list[int]]:
    """Write from ``writers`` threads, run ``action`` mid-way, return (acked ids, refusals)."""
    acked: list[int] = []
    refused: list[int] = []
    stop = threading.Event()
    lock = threading.Lock()

    def writer(n: int) -> None:
        with httpx.Client(base_url=s.url, timeout=30) as c:
            for i in range(100_000):  # bounded; stops when the server stops taking writes
                if stop.is_set():
                    return
                try:
                    r = c.post("/v1/assertions", json=_assertion(f"w{n}-{i}"))
                except httpx.TransportError:
                    return
                with lock:
                    if r.status_code == 201:
                        acked.append(r.json()["id"])
                    else:
                        assert r.status_code == 503, r.text
                        refused.append(r.status_code)
                        stop.set()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(writers)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while len(acked) < 50 and time.monotonic() < deadline:
        time.sleep(0.01)
    action()
    for t in threads:
        t.join(30)
    stop.set()
    return acked, refused


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_under_load_exits_0_and_the_next_start_replays_nothing(
        tmp_path: Path, sig: signal.Signals) -> None:
    s = ServerProcess(tmp_path)
    s.start()
    t0: list[float] = []

    def stop() -> None:
        t0.append(time.monotonic())
        s.send_signal(sig)

    try:
        acked, _ = _hammer_while(s, stop)
        code = s.wait_exit(EXIT_BOUND_SECONDS)
    finally:
        s.stop(signal.SIGKILL)
    assert code == 0, s.log()
    assert time.monotonic() - t0[0] < EXIT_BOUND_SECONDS
    assert acked
    log = s.log()
    assert f"{sig.name} received: stopping" in log
    assert "the next start replays nothing" in log
    with ServerProcess(tmp_path) as s2:
        s2.start()
        assert _replayed_records(s2) == 0
        with s2.client() as c:
            for aid in acked:  # every acknowledged write survived
                assert c.get(f"/v1/assertions/{aid}").status_code == 200


# --- readiness during a real, slow replay -------------------------------------------

REPLAY_ASSERTIONS = 30_000  # about 11 MiB of WAL: a replay of a second or more
REPLAY_BATCH_OPS = 250
_WRITE_CHILD = f"""
import os, sys
from stemedb.engine import Engine, EngineConfig, WriteRequest
from stemedb.wal import RecordType
# Checkpoints off and no fsync: the WAL is written fast and all of it is replay debt.
cfg = EngineConfig(fsync="never", disk_reserve_bytes=0, checkpoint_wal_bytes=2**50,
                   checkpoint_interval_seconds=1e9, replay_budget_seconds=1e9)
eng = Engine(sys.argv[1], cfg)
eng.recover()
eng.start()
obj = {{"text": "x" * 300}}
futs = []
for b in range({REPLAY_ASSERTIONS} // {REPLAY_BATCH_OPS}):
    ops = [{{"assert": {{"subject": f"s{{b}}-{{i}}", "predicate": "p", "object": obj,
                         "author": "a"}}}} for i in range({REPLAY_BATCH_OPS})]
    futs.append(eng.submit(WriteRequest(RecordType.BATCH, ops)))
for f in futs:
    f.result()
eng.writer.sync()
os._exit(0)  # a crash: no final checkpoint
"""


def _build_replay_debt(data: Path) -> None:
    """A data directory whose state is at genesis and whose WAL holds every write.

    A SIGKILL alone leaves SQLite's own WAL file behind, which already holds the
    applied state; a machine crash can lose that file.  So, as the crash simulation
    does, the state is rolled back to its last durable checkpoint (a copy taken after
    a clean close at genesis) and every record after it must be replayed.
    """
    eng = Engine(data, EngineConfig(disk_reserve_bytes=0))
    eng.recover()
    eng.start()
    eng.close()
    checkpoint_copy = data.parent / "state-at-genesis.sqlite3"
    shutil.copy(data / "state.sqlite3", checkpoint_copy)
    subprocess.run([sys.executable, "-c", _WRITE_CHILD, str(data)], check=True, timeout=120,
                   env=server_env())
    for suffix in ("-wal", "-shm"):
        (data / f"state.sqlite3{suffix}").unlink(missing_ok=True)
    shutil.copy(checkpoint_copy, data / "state.sqlite3")


@pytest.fixture(scope="module")
def replay_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built once (it takes seconds); each test replays a copy of it."""
    data = tmp_path_factory.mktemp("replay") / "data"
    _build_replay_debt(data)
    return data


def _copy(template: Path, tmp_path: Path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(template, data, ignore=shutil.ignore_patterns("segment.next.tmp"))
    return data


def test_readiness_during_a_real_replay(tmp_path: Path, replay_template: Path) -> None:
    data = _copy(replay_template, tmp_path)
    s = ServerProcess(tmp_path, data_dir=data,
                      env={"STEMEDB_WAL_SEGMENT_SIZE_BYTES": str(64 * 1024 * 1024)})
    seen: dict[str, Any] = {}
    try:
        s.start(wait=None)
        deadline = time.monotonic() + 60
        with s.client(timeout=5) as c:
            while time.monotonic() < deadline:  # bounded
                try:
                    ready = c.get("/readyz")
                except httpx.TransportError:
                    time.sleep(0.005)  # not listening yet
                    continue
                if ready.status_code == 200:
                    seen["ready"] = ready.json()
                    break
                body = ready.json()
                assert ready.status_code == 503 and body["ready"] is False
                assert ready.headers["Retry-After"] == "1"
                if body["phase"] == "replaying" and body["bytes_total"] > 0:
                    seen.setdefault("replaying", body)
                    seen["last"] = body
                    if "probed" not in seen:
                        seen["probed"] = True
                        seen["healthz"] = c.get("/healthz").status_code
                        seen["metrics"] = c.get("/metrics")
                        seen["write"] = c.post("/v1/assertions", json=_assertion("early"))
                        seen["read"] = c.get("/v1/epochs/current")
                        seen["status"] = c.get("/v1/admin/status")
                time.sleep(0.01)
        assert "replaying" in seen, f"never saw the replay; make the data bigger\n{s.log()}"
        assert "ready" in seen, s.log()
        assert seen["replaying"]["reason"] == "replaying"
        assert seen["healthz"] == 200
        assert seen["metrics"].status_code == 200
        assert "stemedb_replay_in_progress 1.0" in seen["metrics"].text
        assert "stemedb_ready 0.0" in seen["metrics"].text
        assert seen["write"].status_code == 503
        assert seen["write"].json()["error"]["code"] == "replaying"
        assert seen["write"].headers["Retry-After"] == "1"
        assert seen["read"].status_code == 503
        assert seen["status"].status_code == 200
        assert seen["status"].json()["replay"]["phase"] == "replaying"
        with s.client() as c:
            assert c.get("/v1/epochs/current").json()["assertions"] == REPLAY_ASSERTIONS
            status = c.get("/v1/admin/status").json()
            assert status["node"]["recovery"]["records"] == REPLAY_ASSERTIONS // \
                REPLAY_BATCH_OPS
            assert c.post("/v1/assertions", json=_assertion("late")).status_code == 201
        assert s.stop() == 0
    finally:
        s.stop(signal.SIGKILL)


def test_sigterm_during_replay_exits_promptly(tmp_path: Path, replay_template: Path) -> None:
    data = _copy(replay_template, tmp_path)
    s = ServerProcess(tmp_path, data_dir=data,
                      env={"STEMEDB_WAL_SEGMENT_SIZE_BYTES": str(64 * 1024 * 1024)})
    try:
        s.start(wait="healthy")
        with s.client() as c:
            for _ in range(1000):  # bounded: until the replay itself has begun
                ready = c.get("/readyz").json()
                if ready["ready"] or ready["bytes_total"] > 0:
                    break
                time.sleep(0.005)
        if ready["ready"]:
            pytest.fail("replay finished before the signal; make the data bigger")
        t0 = time.monotonic()
        s.send_signal(signal.SIGTERM)
        assert s.wait_exit(EXIT_BOUND_SECONDS) == 0
        assert time.monotonic() - t0 < 5
        assert "during WAL replay" in s.log()
    finally:
        s.stop(signal.SIGKILL)
    # The next start finishes the replay and loses nothing.
    with ServerProcess(tmp_path, data_dir=data,
                       env={"STEMEDB_WAL_SEGMENT_SIZE_BYTES": str(64 * 1024 * 1024)}) as s2:
        s2.start()
        with s2.client() as c:
            assert c.get("/v1/epochs/current").json()["assertions"] == REPLAY_ASSERTIONS
