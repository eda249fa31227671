"""Backups through a real ``stemedb serve``: POST /v1/admin/backup and ``stemedb backup
create`` answer a stored backup's id and LSN, the status and metrics say so, and a
restored directory starts with ``stemedb serve`` on a new timeline whose archiving
continues the LSNs and never touches the old history's objects."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

from stemedb.archive import ArchiveReader, open_target
from tests._archive import scratch, wait_for
from tests._backup import dump_dir, run_cli
from tests._server import TEST_SEGMENT_SIZE_BYTES, ServerProcess, server_env

CLI = [sys.executable, "-c", "from stemedb.cli import main; main()"]


def _config(url: str) -> str:
    return (f'[archive]\nurl = "{url}"\ninterval_seconds = 0.05\n'
            f'[backup]\ndrill_interval_hours = 0\n')


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in the metrics")


def test_backup_route_cli_and_a_restored_node_on_a_new_timeline(tmp_path: Path) -> None:
    with scratch("srv", tmp_path) as d:
        url = f"file://{d}/archive"
        (d / "one").mkdir()
        with ServerProcess(d / "one", config_toml=_config(url)) as s:
            s.start()
            with s.client() as c:
                ids = [c.post("/v1/assertions", json={"subject": f"s{i}", "predicate": "p",
                                                      "object": i, "author": "a"}).json()["id"]
                       for i in range(20)]
                r = c.post("/v1/admin/backup")
                assert r.status_code == 201, r.text
                b = r.json()
                assert b["timeline"] == 1 and b["lsn"] > 0 and b["id"]
                out = subprocess.run([*CLI, "backup", "create", "--server", s.url, "--json"],
                                     capture_output=True, text=True, timeout=60,
                                     env=server_env())
                assert out.returncode == 0, out.stderr
                created = json.loads(out.stdout)
                assert created["lsn"] >= b["lsn"] and created["id"] != b["id"]
                c.post("/v1/epochs")
                status = c.get("/v1/admin/status").json()
                assert status["backup"]["last_backup"]["id"] == created["id"]
                metrics = c.get("/metrics").text
                assert _metric(metrics, "stemedb_backup_last_success_timestamp_seconds") > 0
                assert _metric(metrics, "stemedb_backup_lsn") == created["lsn"]
                wait_for("the archive", lambda: c.get("/v1/admin/status").json()["archive"]
                         ["backlog_bytes"] == 0)
        live = dump_dir(s.data_dir)
        old = _snapshot(d / "archive")
        res = run_cli("restore", "--from", url, "--data-dir", str(d / "two" / "data"),
                      "--segment-size-bytes", str(TEST_SEGMENT_SIZE_BYTES), "--json")
        assert res.exit_code == 0, res.output
        restored = json.loads(res.output)
        assert restored["timeline"] == 2 and dump_dir(d / "two" / "data") == live
        with ServerProcess(d / "two", config_toml=_config(url)) as s2:
            s2.start()
            with s2.client() as c:
                r = c.post("/v1/assertions", json={"subject": "after", "predicate": "p",
                                                   "object": 1, "author": "a"})
                assert r.status_code == 201, r.text
                assert r.json()["id"] == ids[-1] + 1 and r.json()["lsn"] == restored["end_lsn"]
                wait_for("the new timeline's first backup and WAL", lambda: (
                    (st := c.get("/v1/admin/status").json())["archive"]["backlog_bytes"] == 0
                    and (st["backup"]["last_backup"] or {}).get("timeline") == 2))
                assert c.get("/v1/admin/status").json()["archive"]["timeline"] == 2
        now = _snapshot(d / "archive")
        assert {k: v for k, v in now.items() if k in old} == old  # nothing overwritten
        new = sorted(set(now) - set(old))
        assert new and all(k.startswith(("wal/00000002/", "backups/00000002/",
                                         "timelines/00000002")) for k in new), new
        reader = ArchiveReader(open_target(url))
        (obj,) = reader.wal_objects(2)
        assert obj.start_lsn == restored["end_lsn"]
        assert run_cli("verify", "--from", url).exit_code == 0
