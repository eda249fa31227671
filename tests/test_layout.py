"""The WAL on a disk of its own: ``[wal] dir`` / ``--wal-dir`` (stemedb.layout).

The data directory links ``wal`` to the WAL directory on the first start; every later
start checks the link, and every way of pairing a state with the wrong WAL is refused
with the way out in the message.  The disk guard and doctor then watch the state's
filesystem too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from stemedb.cli import cli
from stemedb.config import load_config
from stemedb.engine import Engine, EngineConfig, WriteRequest
from stemedb.errors import ConfigError, InsufficientStorage
from stemedb.layout import place_wal_dir
from stemedb.metrics import Metrics
from stemedb.storage import DiskUsage, OsFileSystem
from stemedb.tools import doctor
from stemedb.wal import RecordType
from tests._server import ServerProcess

QUIET_KERNEL = ("true",)


def cfg(**kw: Any) -> EngineConfig:
    base: dict[str, Any] = {"segment_size_bytes": 64 * 1024, "disk_reserve_bytes": 0}
    base.update(kw)
    return EngineConfig(**base)


def A(subject: str) -> WriteRequest:
    return WriteRequest(RecordType.ASSERT, [{"assert": {
        "subject": subject, "predicate": "p", "object": "x" * 500, "author": "a"}}])


def count(e: Engine) -> int:
    n: int = e.read_now(lambda c: c.execute("SELECT COUNT(*) FROM assertions").fetchone()[0])
    return n


def test_the_wal_goes_to_its_directory_and_the_data_dir_links_there(tmp_path: Path) -> None:
    data, waldisk = tmp_path / "data", tmp_path / "disk2" / "wal"
    e = Engine(data, cfg(wal_dir=str(waldisk)))
    e.recover()
    e.start()
    for i in range(300):  # several 64 KiB segments
        e.submit(A(f"s{i}")).result()
    status = e.status()
    e.close()
    assert os.path.islink(data / "wal") and os.readlink(data / "wal") == str(waldisk)
    segments = sorted(p.name for p in waldisk.glob("segment.*.wal"))
    assert segments and segments[-1] >= "segment.003.wal"  # rotated there (and cleaned)
    assert status["wal"]["resolved_dir"] == str(waldisk)
    assert (data / "state.sqlite3").exists() and not (waldisk / "state.sqlite3").exists()
    # Restarted with the same setting, and with none: the link is the record.
    for setting in (str(waldisk), ""):
        e2 = Engine(data, cfg(wal_dir=setting))
        e2.recover()
        assert count(e2) == 300
        e2.close()


def test_a_lost_state_replays_from_the_linked_wal(tmp_path: Path) -> None:
    """A state lost before its first checkpoint is rebuilt from the WAL on the other
    disk (``test_faults_real`` kills a writer with the WAL linked, too)."""
    data, waldisk = tmp_path / "data", tmp_path / "waldisk"
    e = Engine(data, cfg(wal_dir=str(waldisk), checkpoint_wal_bytes=10**12))
    e.recover()
    e.start()
    for i in range(50):
        e.submit(A(f"s{i}")).result()
    e.close()
    (data / "state.sqlite3").unlink()  # a power loss before the first checkpoint
    for suffix in ("-wal", "-shm"):
        (data / f"state.sqlite3{suffix}").unlink(missing_ok=True)
    e2 = Engine(data, cfg(wal_dir=str(waldisk)))
    report = e2.recover()
    assert report.records >= 50 and count(e2) == 50
    e2.close()


@pytest.mark.parametrize(("layout", "expect"), [
    ("linked elsewhere", "leads to"),
    ("plain directory", "mv "),
    ("target not empty", "not empty (it holds stray.txt)"),
    ("target is a mount point", "mount point: use a directory under it"),
    ("target is the data dir", "directory above it"),
    ("target above the data dir", "directory above it"),
])
def test_a_data_dir_paired_with_another_wal_is_refused(tmp_path: Path, layout: str,
                                                        expect: str) -> None:
    data, target = tmp_path / "data", tmp_path / "target"
    data.mkdir()
    if layout == "linked elsewhere":
        (tmp_path / "first").mkdir()
        os.symlink(tmp_path / "first", data / "wal")
    elif layout == "plain directory":
        (data / "wal").mkdir()
        (data / "wal" / "segment.001.wal").write_bytes(b"")
    elif layout == "target not empty":
        target.mkdir()
        (target / "stray.txt").write_text("x")
    elif layout == "target is a mount point":
        (target / "lost+found").mkdir(parents=True)
    elif layout == "target is the data dir":
        target = data
    else:
        target = tmp_path
    before = sorted(os.listdir(data))
    with pytest.raises(ConfigError) as info:
        place_wal_dir(str(data), str(target))
    assert "wal.dir" in info.value.message and expect in info.value.message
    assert sorted(os.listdir(data)) == before  # refused: nothing changed
    # The engine refuses the same way, before it opens anything.
    e = Engine(data, cfg(wal_dir=str(target)))
    with pytest.raises(ConfigError):
        e.recover()
    assert not (data / "state.sqlite3").exists()


def test_the_default_location_named_explicitly_is_the_default_layout(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert place_wal_dir(str(data), str(data / "wal")) is False
    assert not os.path.lexists(data / "wal")
    e = Engine(data, cfg(wal_dir=str(data / "wal")))
    e.recover()
    e.close()
    assert (data / "wal").is_dir() and not (data / "wal").is_symlink()


def test_a_link_whose_directory_was_lost_in_a_crash_is_made_whole(tmp_path: Path) -> None:
    data, target = tmp_path / "data", tmp_path / "new" / "wal"
    assert place_wal_dir(str(data), str(target)) is True
    os.rmdir(target)  # the directory's creation never became durable; the link did
    assert place_wal_dir(str(data), str(target)) is False
    assert target.is_dir()


class LowStateDisk(OsFileSystem):
    """The real file system, except that the state's filesystem looks nearly full."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = str(data_dir)
        self.low = True

    def disk_usage(self, path: str) -> DiskUsage:
        real = super().disk_usage(path)
        if self.low and os.path.abspath(path) == os.path.abspath(self.data_dir):
            return DiskUsage(size_bytes=real.size_bytes, free_bytes=1000,
                             inodes=real.inodes, free_inodes=real.free_inodes)
        return real


@pytest.mark.parametrize("how", ["wal.dir", "a link made by hand"])
def test_the_disk_guard_watches_the_state_filesystem_too(tmp_path: Path, how: str) -> None:
    data, waldisk = tmp_path / "data", tmp_path / "waldisk"
    fs, m = LowStateDisk(data), Metrics()
    if how == "wal.dir":
        config = cfg(wal_dir=str(waldisk), disk_reserve_bytes=1 << 20)
    else:  # the documented move of an existing WAL, before wal.dir is set
        waldisk.mkdir()
        data.mkdir()
        os.symlink(waldisk, data / "wal")
        config = cfg(disk_reserve_bytes=1 << 20)
    e = Engine(data, config, fs=fs, metrics=m)
    e.recover()
    e.start()
    with pytest.raises(InsufficientStorage) as info:
        e.submit(A("refused")).result()
    assert "the state's filesystem" in info.value.message and "1000 bytes free" in \
        info.value.message
    assert m.registry.get_sample_value("stemedb_state_fs_free_bytes") == 1000
    assert m.registry.get_sample_value("stemedb_wal_linked") == 1
    wal_free = m.registry.get_sample_value("stemedb_wal_fs_free_bytes")
    assert wal_free is not None and wal_free > 1 << 20
    status = e.status()
    assert status["disk"]["refusing_writes"] is True
    assert status["disk"]["state_free_bytes"] == 1000
    assert status["wal"]["resolved_dir"] == str(waldisk)
    assert count(e) == 0  # reads work; nothing was written
    fs.low = False
    assert e.committer is not None
    e.committer.forget_disk_probe()  # re-probe now
    assert e.submit(A("after")).result().status == 201
    e.close()


def test_without_wal_dir_the_state_gauges_repeat_the_wal_filesystem(tmp_path: Path) -> None:
    m = Metrics()
    e = Engine(tmp_path / "data", cfg(), metrics=m)
    e.recover()
    e.start()
    e.submit(A("one")).result()
    e.close()
    assert m.registry.get_sample_value("stemedb_state_fs_size_bytes") == \
        m.registry.get_sample_value("stemedb_wal_fs_size_bytes") > 0
    assert m.registry.get_sample_value("stemedb_wal_linked") == 0


def test_config_key_env_and_flag(tmp_path: Path) -> None:
    toml = tmp_path / "api.toml"
    toml.write_text('[wal]\ndir = "/srv/wal-disk/stemedb"\n')
    assert load_config(str(toml), env={}).engine_config().wal_dir == "/srv/wal-disk/stemedb"
    assert load_config(str(toml), env={"STEMEDB_WAL_DIR": "/w2"}).engine_config().wal_dir \
        == "/w2"
    assert load_config(str(toml), env={"STEMEDB_WAL_DIR": "/w2"},
                       overrides={("wal", "dir"): "/w3"}).engine_config().wal_dir == "/w3"
    toml.write_text("[wal]\ndir = 5\n")
    with pytest.raises(ConfigError, match=r"wal\.dir"):
        load_config(str(toml), env={})


def test_serve_with_wal_dir_and_refusal_at_start(tmp_path: Path) -> None:
    waldisk = tmp_path / "waldisk"
    with ServerProcess(tmp_path, args=("--wal-dir", str(waldisk))) as s:
        s.start()
        with s.client() as c:
            assert c.post("/v1/assertions", json={"subject": "s", "predicate": "p",
                                                  "object": 1, "author": "a"}).status_code == 201
            assert c.get("/v1/admin/status").json()["wal"]["resolved_dir"] == str(waldisk)
        assert '"wal.dir": "' + str(waldisk) + '"' in s.log()
    assert os.readlink(s.data_dir / "wal") == str(waldisk)
    assert list(waldisk.glob("segment.001.wal"))
    # The same data directory with another WAL directory: refused before it listens.
    other = ServerProcess(tmp_path, args=("--wal-dir", str(tmp_path / "other")))
    with other:
        other.start(wait=None)
        assert other.wait_exit() == 2
    assert f"leads to {waldisk}" in other.log()
    assert not (tmp_path / "other").exists()


def test_doctor_checks_the_state_filesystem_when_it_is_another(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    e = Engine(data, cfg(wal_dir=str(tmp_path / "waldisk")))
    e.recover()
    e.close()
    assert doctor._on_another_filesystem(str(data), str(data / "wal")) is False  # one disk
    checks = [f.check for f in doctor.run_doctor(str(data), reserve_bytes=0,
                                                 kernel_log_command=QUIET_KERNEL).findings]
    assert "state_disk_space" not in checks
    monkeypatch.setattr(doctor, "_on_another_filesystem", lambda a, b: True)
    free = os.statvfs(data).f_bavail * os.statvfs(data).f_frsize
    report = doctor.run_doctor(str(data), reserve_bytes=free * 2,
                               kernel_log_command=QUIET_KERNEL)
    f = report.by_check("state_disk_space")
    assert f.severity == "critical" and "under the write reserve" in f.summary
    res = CliRunner().invoke(cli, ["doctor", "--data-dir", str(data),
                                   "--disk-reserve-bytes", "0"])
    assert "state_disk_space" in res.stdout
