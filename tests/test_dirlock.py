"""One engine per data directory: a second one is refused, loudly, and changes nothing."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from stemedb.dirlock import LOCK_NAME
from stemedb.engine import Engine, EngineConfig, WriteRequest
from stemedb.errors import DataDirInUse
from stemedb.wal import RecordType
from tests._server import ServerProcess


def cfg() -> EngineConfig:
    return EngineConfig(segment_size_bytes=64 * 1024, disk_reserve_bytes=0)


def A(subject: str) -> WriteRequest:
    return WriteRequest(RecordType.ASSERT, [{"assert": {"subject": subject, "predicate": "p",
                                                        "object": 1, "author": "a"}}])


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != LOCK_NAME}


def test_a_second_engine_on_the_same_directory_is_refused(tmp_path: Path) -> None:
    first = Engine(tmp_path / "db", cfg())
    first.recover()
    first.start()
    first.write(A("one"))
    first.checkpoint().result()
    before = _files(tmp_path / "db")
    second = Engine(tmp_path / "db", cfg())
    with pytest.raises(DataDirInUse) as err:
        second.recover()
    assert f"pid {os.getpid()}" in str(err.value) and "--data-dir" in str(err.value)
    assert err.value.code == "data_dir_in_use"
    assert _files(tmp_path / "db") == before  # the refused engine touched nothing
    first.write(A("two"))  # the first is unaffected
    first.close()
    second.close()
    third = Engine(tmp_path / "db", cfg())  # closed: the directory is free again
    third.recover()
    assert third.read_now(lambda c: c.execute("SELECT count(*) FROM assertions")
                          .fetchone()[0]) == 2
    third.close()


HOLDER = """
import sys, time
from stemedb.engine import Engine, EngineConfig
e = Engine(sys.argv[1], EngineConfig(disk_reserve_bytes=0))
e.recover()
e.start()
print("READY", flush=True)
time.sleep(60)
"""


def test_kill_9_leaves_no_stale_lock(tmp_path: Path) -> None:
    data = tmp_path / "db"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(data)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "READY"
        e = Engine(data, cfg())
        with pytest.raises(DataDirInUse, match=f"pid {proc.pid}"):
            e.recover()
        e.close()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)  # reaps it and closes its stdout
    e = Engine(data, cfg())  # the kernel dropped the lock with the process
    e.recover()
    e.close()
    assert (data / LOCK_NAME).exists()  # never removed: see stemedb.dirlock


def test_a_second_server_on_the_same_data_dir_refuses_before_listening(
        tmp_path: Path) -> None:
    with ServerProcess(tmp_path) as first:
        first.start()
        second = ServerProcess(tmp_path, data_dir=first.data_dir)
        with second:
            second.start(wait=None)
            assert second.wait_exit() == 2
        log = second.log()
        assert "cannot open the data directory" in log and "in use by another" in log
        with socket.socket() as s:  # it never listened
            assert s.connect_ex(("127.0.0.1", second.port)) != 0
        with first.client() as c:
            assert c.post("/v1/assertions", json={"subject": "s", "predicate": "p",
                                                  "object": 1, "author": "a"}).status_code == 201
