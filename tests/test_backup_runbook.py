"""The restore runbook's commands, run as written: the shell lines of
docs/operations/runbooks/restore-from-backup.md that use the archive (``export``,
``stemedb backup ...``, ``stemedb wal verify``), in the order the page gives them, with
only the host's paths and URLs swapped for a scratch archive, key, data directory and
server.  The alternative point-in-time lines (each into the same empty directory)
are left out; their flags are checked with every other flag by
tests/test_runbook_commands.py."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from stemedb.backup import BackupSettings
from tests._archive import archive_settings, assertion, engine, scratch, wait_for
from tests._backup import dump_dir, settle
from tests._server import TEST_SEGMENT_SIZE_BYTES, ServerProcess, server_env

RUNBOOK = (Path(__file__).resolve().parent.parent / "docs" / "operations" / "runbooks"
           / "restore-from-backup.md")
ALTERNATIVES = ("--to-time", "--to-lsn", "--to-epoch")


def _shell_lines() -> list[str]:
    text = RUNBOOK.read_text()
    lines: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        lines.extend(line.strip() for line in block.splitlines() if line.strip())
    return lines


def test_the_restore_runbook_runs_as_written(tmp_path: Path) -> None:
    lines = _shell_lines()
    wanted = [ln for ln in lines if ln.startswith(("export ", "stemedb backup ",
                                                   "stemedb wal verify"))]
    restores = [ln for ln in wanted if ln.startswith("stemedb backup restore")]
    assert len(restores) == 1 + len(ALTERNATIVES)
    with scratch("runbook", tmp_path) as d:
        key_file = d / "archive.key"
        key_file.write_text(os.urandom(32).hex())
        url = f"file://{d}/archive"
        eng = engine(d / "old", archive_settings(url, encryption_key_file=str(key_file)),
                     backup=BackupSettings(interval_hours=0, drill_interval_hours=0))
        try:
            wait_for("the first backup", lambda: eng.status()["backup"]["last_backup"]
                     is not None)
            for i in range(25):
                eng.write(assertion(f"s{i}"))
            settle(eng)
        finally:
            eng.close()
        live = dump_dir(d / "old")
        data = d / "var-lib-stemedb"
        config = (f'[archive]\nurl = "{url}"\nencryption_key_file = "{key_file}"\n'
                  f'interval_seconds = 0.05\n[backup]\ndrill_interval_hours = 0\n')
        server = ServerProcess(d, config_toml=config, data_dir=data)

        def swap(line: str) -> str:
            line = line.replace("s3://backups/stemedb/db1", url)
            line = line.replace("/etc/stemedb/archive.key", str(key_file))
            line = line.replace("/var/lib/stemedb", str(data))
            return line.replace("http://localhost:18180", server.url)

        env = dict(server_env(), STEMEDB_WAL_SEGMENT_SIZE_BYTES=str(TEST_SEGMENT_SIZE_BYTES))
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
        script = ["set -e"]
        seen_restore = False
        for line in wanted:
            if line.startswith("stemedb wal verify") and not seen_restore:
                continue  # the damaged directory of the diagnosis is gone in this test
            if line.startswith("stemedb backup restore") and any(
                    a in line for a in ALTERNATIVES):
                continue  # "or one of": each needs the empty directory the first took
            if line.startswith("stemedb backup create"):
                continue  # needs the server: run below, once it is up
            seen_restore = seen_restore or line.startswith("stemedb backup restore")
            script.append(swap(line))
        out = subprocess.run(["bash", "-c", "\n".join(script)], capture_output=True,
                             text=True, env=env, timeout=120, check=False)
        assert out.returncode == 0, f"{out.stdout}\n{out.stderr}"
        assert "verify: ok" in out.stdout and "drill passed" in out.stdout
        assert dump_dir(data) == live
        create = [swap(ln) for ln in wanted if ln.startswith("stemedb backup create")]
        assert create
        with server:
            server.start()
            out = subprocess.run(["bash", "-c", create[0]], capture_output=True, text=True,
                                 env=env, timeout=60, check=False)
            assert out.returncode == 0, out.stderr
            assert "timeline 2" in out.stdout
