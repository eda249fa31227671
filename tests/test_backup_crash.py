"""``kill -9`` in the middle of a base backup and of a restore, at chosen points: the
child process SIGKILLs itself at the N-th call it makes to the archive.  After a backup
killed anywhere the archive verifies (parts without a manifest are no backup); after a
restore killed anywhere the directory is refused by the engine, and running the same
restore again gives the whole state."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from stemedb.archive import open_target
from stemedb.backup import read_catalog
from stemedb.engine import Engine, EngineConfig
from stemedb.errors import InvalidInput
from stemedb.wal import RecordType
from tests._archive import SEGMENT_BYTES, assertion, scratch
from tests._backup import backup_engine, dump_dir, restore_cli, run_cli, settle

CHILD = textwrap.dedent("""
    import os, signal, sys
    from stemedb.archive import open_target
    what, url, n, path = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    inner = open_target(url)

    class Killing:
        url = inner.url
        calls = 0

        def _tick(self):
            Killing.calls += 1
            if Killing.calls >= n:
                os.kill(os.getpid(), signal.SIGKILL)

        def put_if_absent(self, name, data):
            created = inner.put_if_absent(name, data)
            self._tick()
            return created

        def get(self, name):
            self._tick()
            return inner.get(name)

        def list_names(self, prefix, start_after=""):
            return inner.list_names(prefix, start_after)

        def children(self, prefix):
            return inner.children(prefix)

        def delete(self, name):
            inner.delete(name)

        def close(self):
            inner.close()

    if what == "backup":
        from stemedb.backup import take_base_backup
        take_base_backup(path + "/state.sqlite3", path + "/backup.tmp", target=Killing(),
                         key=None, timeline=1)
    else:
        from stemedb.backup import restore
        restore(Killing(), path, segment_size_bytes=SEGMENT_BYTES)
    print("finished")
""").replace("SEGMENT_BYTES", str(SEGMENT_BYTES))


def _child(what: str, url: str, n: int, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", CHILD, what, url, str(n), str(path)],
                          capture_output=True, text=True, timeout=60, check=False)


def _archive(d: Path) -> tuple[str, dict[str, object]]:
    url = f"file://{d}/archive"
    eng = backup_engine(d / "db", url)
    try:
        for r in range(3):
            for i in range(40):
                eng.write(assertion(f"r{r}-{i}", 400))
            eng.archive_now()
        from stemedb.engine import WriteRequest

        eng.write(WriteRequest(RecordType.SEAL))
        settle(eng)
    finally:
        eng.close()
    return url, dump_dir(d / "db")


@pytest.mark.parametrize("kill_at", [1, 2, 3, 4])  # put part, get part, put manifest, get
def test_kill_9_during_a_base_backup_leaves_the_archive_consistent(
        tmp_path: Path, kill_at: int) -> None:
    with scratch(f"kbk{kill_at}", tmp_path) as d:
        url, _ = _archive(d)
        before = [b.id for b in read_catalog(open_target(url)).backups]
        out = _child("backup", url, kill_at, d / "db")
        assert out.returncode == -9, out.stderr
        after = read_catalog(open_target(url))
        assert not after.faults
        # Killed before the manifest was stored: no new backup; after: a whole one.
        assert len(after.backups) == len(before) + (1 if kill_at >= 3 else 0)
        res = run_cli("verify", "--from", url)
        assert res.exit_code == 0, res.output
        res = restore_cli(url, d / "r")
        assert res.exit_code == 0, res.output


@pytest.mark.parametrize("kill_at", [1, 3, 4, 6, 8])
def test_kill_9_mid_restore_is_refused_at_start_and_the_restore_can_run_again(
        tmp_path: Path, kill_at: int) -> None:
    with scratch(f"krs{kill_at}", tmp_path) as d:
        url, live = _archive(d)
        out = _child("restore", url, kill_at, d / "r")
        assert out.returncode == -9, out.stderr
        if kill_at > 2:  # past reading the catalog: the directory is made and marked
            assert (d / "r" / "RESTORE_INCOMPLETE").exists()
            eng = Engine(d / "r", EngineConfig(segment_size_bytes=SEGMENT_BYTES))
            with pytest.raises(InvalidInput, match="restore that did not finish"):
                eng.recover()
            eng.close()
        res = restore_cli(url, d / "r")
        assert res.exit_code == 0, res.output
        assert dump_dir(d / "r") == live
        assert not (d / "r" / "RESTORE_INCOMPLETE").exists()
