"""The runbook's command lines (seeds/004, WALFsyncFailure), run verbatim in bash.

The runbook's scripts are copied below character for character.  The only change
made before running them is a path substitution: ``/var/lib/stemedb`` becomes a
temporary data directory (``str.replace`` on the script text, see ``runbook()``),
and in the strace collection ``sleep 30`` becomes ``sleep 2`` to keep the suite
fast.  ``systemctl`` is a stub on PATH that records its arguments (there is no
systemd in the test environment); the unit file it would start is checked on its own.
"""

from __future__ import annotations

import configparser
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from stemedb.cli import cli
from stemedb.config import load_config
from stemedb.engine import Engine
from stemedb.errors import CorruptionError
from stemedb.tools.testing import (
    DAMAGES,
    assertion_subjects,
    build_sample_wal,
    open_engine_replaying,
    sample_engine_config,
)
from tests._tmp import fast_dir

REPO = Path(__file__).resolve().parent.parent
BIN = os.path.dirname(sys.executable)

# --- verbatim from the runbook --------------------------------------------------------
WEEKLY_VERIFICATION = """\
# Weekly verification
cd /var/lib/stemedb/wal
for segment in segment.*.wal; do
  stemedb-wal-verify --file $segment || echo "ERROR: $segment corrupted"
done
"""

ATTEMPT_RECOVERY = """\
systemctl stop stemedb-api

# Backup corrupted segment
mv /var/lib/stemedb/wal/segment.001.wal \\
   /var/lib/stemedb/wal/segment.001.wal.corrupted

# Truncate at last known good position (if identified in logs)
stemedb-wal-repair \\
  --segment /var/lib/stemedb/wal/segment.001.wal.corrupted \\
  --output /var/lib/stemedb/wal/segment.001.wal \\
  --truncate-at

systemctl start stemedb-api
"""

CHECK_PARTITION = """\
# Disk space
df -h /var/lib/stemedb/wal

# Test write + fsync
cd /var/lib/stemedb/wal
time sh -c "dd if=/dev/zero of=test.dat bs=4k count=1000 && sync"
rm test.dat
"""

READ_ONLY_CHECK = """\
# Attempt write
touch /var/lib/stemedb/wal/test.file
"""

COLLECT_DIAGNOSTICS = """\
strace -p $(pgrep stemedb-api) -e fsync,fdatasync -o /tmp/fsync-trace.txt &
sleep 30
kill %1
grep -i error /tmp/fsync-trace.txt
"""

IDENTIFY_CORRUPTED = 'journalctl -u stemedb-api | grep "WAL.*corrupt" | tail -10'
# ----------------------------------------------------------------------------------------


def runbook(script: str, data_dir: Path, bin_dir: Path | None = None,
            **replace: str) -> subprocess.CompletedProcess[str]:
    text = script.replace("/var/lib/stemedb", str(data_dir))
    for old, new in replace.items():
        text = text.replace(old.replace("_", " "), new)
    path = f"{bin_dir}:{BIN}:{os.environ.get('PATH', '')}" if bin_dir else (
        f"{BIN}:{os.environ.get('PATH', '')}")
    return subprocess.run(["bash", "-c", text], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PATH": path}, check=False)


@pytest.fixture
def stub_bin(tmp_path: Path) -> Path:
    d = tmp_path / "bin"
    d.mkdir()
    (d / "systemctl").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/systemctl.log\n')
    (d / "systemctl").chmod(0o755)
    return d


@pytest.fixture
def fast_tmp(tmp_path: Path) -> Iterator[Path]:
    """tmpfs when there is one (fdatasync costs nothing there), else tmp_path."""
    d = fast_dir(os.urandom(4).hex(), tmp_path)
    try:
        yield d
    finally:
        if d != tmp_path:
            shutil.rmtree(d, ignore_errors=True)


def test_weekly_verification_loop(fast_tmp: Path) -> None:
    wal = build_sample_wal(str(fast_tmp / "data"), assertions=1100)
    assert wal.segments == ["segment.001.wal", "segment.002.wal", "segment.003.wal"]
    DAMAGES["bit_flip_middle_segment"](wal.wal_dir)
    res = runbook(WEEKLY_VERIFICATION, Path(wal.data_dir))
    assert res.returncode == 0, res.stderr
    errors = [line for line in res.stdout.splitlines() if line.startswith("ERROR:")]
    assert errors == ["ERROR: segment.002.wal corrupted"]
    assert "segment.001.wal: ok" in res.stdout and "segment.003.wal: ok" in res.stdout
    assert "FAULT corrupt_record: segment.002.wal offset" in res.stdout
    assert res.stderr == ""  # no progress bar or noise when piped


@pytest.mark.parametrize("case", ["bad_checksum", "torn_last_record", "zeroed_page"])
def test_attempt_recovery_flow(case: str, tmp_path: Path, stub_bin: Path) -> None:
    wal = build_sample_wal(str(tmp_path / "data"), assertions=150)
    assert wal.segments == ["segment.001.wal"]
    dmg = DAMAGES[case](wal.wal_dir)
    if case == "bad_checksum":
        # Replaying from the start (no state), the server refuses this WAL.
        probe = tmp_path / "probe"
        shutil.copytree(wal.data_dir, probe)
        with pytest.raises(CorruptionError):
            open_engine_replaying(str(probe))
    res = runbook(ATTEMPT_RECOVERY, Path(wal.data_dir), stub_bin)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (tmp_path / "systemctl.log").read_text() == "stop stemedb-api\nstart stemedb-api\n"
    assert f"records kept: {dmg.segment_records_kept}" in res.stdout
    assert f"first lost LSN: {dmg.lsn}" in res.stdout
    wal_dir = Path(wal.wal_dir)
    assert (wal_dir / "segment.001.wal.corrupted").exists()
    verify = CliRunner().invoke(cli, ["wal", "verify", "--file",
                                      str(wal_dir / "segment.001.wal")])
    assert verify.exit_code == 0, verify.output
    # The server starts on the repaired WAL with its state: nothing it applied is lost.
    eng = Engine(wal.data_dir, sample_engine_config())
    eng.recover()
    try:
        assert len(assertion_subjects(eng)) == 150
    finally:
        eng.close()
    # And from the WAL alone it serves every record before the cut.
    shutil.rmtree(wal_dir / "segment.002.wal", ignore_errors=True)
    for extra in wal_dir.glob("segment.00[2-9].wal"):
        extra.unlink()  # the segment the restart above began past the state
    eng = open_engine_replaying(wal.data_dir)
    try:
        assert assertion_subjects(eng) == [f"s{i}" for i in range(dmg.records_kept - 1)]
    finally:
        eng.close()


def test_corruption_is_found_by_the_journal_grep(tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """What `journalctl -u stemedb-api | grep "WAL.*corrupt"` greps is the engine's log."""
    wal = build_sample_wal(str(tmp_path / "data"), assertions=150)
    dmg = DAMAGES["bad_checksum"](wal.wal_dir)
    pattern = re.search(r'grep "([^"]+)"', IDENTIFY_CORRUPTED)
    assert pattern is not None
    with caplog.at_level(logging.ERROR), pytest.raises(CorruptionError) as exc:
        open_engine_replaying(wal.data_dir)
    lines = [r.getMessage() for r in caplog.records if re.search(pattern.group(1),
                                                                 r.getMessage())]
    assert lines and f"segment.001.wal corrupt at offset {dmg.offset}" in lines[0]
    assert exc.value.offset == dmg.offset


def test_partition_checks(tmp_path: Path) -> None:
    wal = build_sample_wal(str(tmp_path / "data"), assertions=3)
    res = runbook(CHECK_PARTITION + READ_ONLY_CHECK, Path(wal.data_dir))
    assert res.returncode == 0, res.stderr
    assert (Path(wal.wal_dir) / "test.file").exists()
    # The directory still verifies: the runbook's probe files are not segments.
    assert CliRunner().invoke(cli, ["wal", "verify", "--data-dir", wal.data_dir]).exit_code == 0


# -- the service ---------------------------------------------------------------------------

def test_systemd_unit_runs_the_console_script() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(REPO / "ops" / "systemd" / "stemedb-api.service")
    svc = unit["Service"]
    assert svc["ExecStart"] == "/usr/local/bin/stemedb-api --config /etc/stemedb/api.toml"
    assert (svc["User"], svc["StateDirectory"], svc["Restart"]) == (
        "stemedb", "stemedb", "on-failure")
    assert svc["KillSignal"] == "SIGTERM" and svc["TimeoutStopSec"] == "45"
    assert int(svc["LimitNOFILE"]) >= 65536
    assert svc["SyslogIdentifier"] == "stemedb-api"
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    program = os.path.basename(svc["ExecStart"].split()[0])
    assert program in scripts and scripts[program] == "stemedb.cli:serve_main"
    assert shutil.which(program, path=BIN) is not None


def test_example_config_loads() -> None:
    cfg = load_config(str(REPO / "ops" / "systemd" / "api.toml"), env={})
    assert cfg.data_dir == "/var/lib/stemedb"
    assert cfg.get("wal", "fsync") == "always"
    assert cfg.listen == ("127.0.0.1", 18180)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_server(data_dir: Path, port: int, prefix: list[str] | None = None
                  ) -> subprocess.Popen[bytes]:
    cmd = [*(prefix or []), os.path.join(BIN, "stemedb-api"), "--data-dir", str(data_dir),
           "--listen", f"127.0.0.1:{port}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # bounded wait for /readyz
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    err = proc.stderr.read() if proc.stderr else b""
    raise AssertionError(f"server did not become ready: {err!r}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    # Under strace the server is strace's child: signal it, and strace exits with it.
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    pids = children.read_text().split() if children.exists() else []
    if pids:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGTERM)
    else:
        proc.terminate()
    try:
        proc.wait(timeout=45)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stderr:
        proc.stderr.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    port = _free_port()
    proc = _start_server(tmp_path / "data", port)
    try:
        yield tmp_path / "data", port
    finally:
        _stop(proc)


def test_collect_diagnostics_with_strace_and_pgrep(tmp_path: Path) -> None:
    """The runbook's strace line, in a PID namespace so that `pgrep stemedb-api` finds
    only this test's server (other servers may run on the same host).

    Written as in the runbook (no -f), strace follows the main thread only.  The
    server runs its WAL writer on the main thread for exactly this reason, so the
    trace shows every WAL fdatasync; with `strace -f` it shows them too.
    """
    port = _free_port()
    trace, trace_f = tmp_path / "fsync-trace.txt", tmp_path / "fsync-trace-f.txt"
    writes = (f"(sleep 0.5; for i in 1 2 3; do curl -s -XPOST http://127.0.0.1:{port}"
              "/v1/assertions -H 'content-type: application/json' -d "
              "'{\"subject\":\"s\",\"predicate\":\"p\",\"object\":1,"
              "\"author\":\"a\"}' >/dev/null; done); sleep 1.5")
    block = COLLECT_DIAGNOSTICS.replace("sleep 30", writes)
    (tmp_path / "as-written.sh").write_text(block.replace("/tmp/fsync-trace.txt", str(trace)))
    (tmp_path / "with-f.sh").write_text(block.replace("/tmp/fsync-trace.txt", str(trace_f))
                                        .replace("strace -p", "strace -f -p"))
    # The server starts in a subshell, so that the runbook's `kill %1` is strace.
    script = (f"( {BIN}/stemedb-api --data-dir {tmp_path}/data --listen 127.0.0.1:{port} "
              f"2>/dev/null & )\n"
              f"for i in $(seq 100); do curl -sf http://127.0.0.1:{port}/readyz >/dev/null "
              f"&& break; sleep 0.1; done\n"
              f"pgrep stemedb-api > {tmp_path}/pgrep.txt\n"
              f"bash {tmp_path}/as-written.sh\n"
              f"bash {tmp_path}/with-f.sh\n"
              "kill $(pgrep stemedb-api); sleep 1\n")
    # As another user, a user namespace grants the PID namespace (and ptrace inside it).
    userns = [] if os.geteuid() == 0 else ["--map-root-user"]
    res = subprocess.run(["unshare", *userns, "--pid", "--fork", "--mount-proc", "bash", "-c",
                          script],
                         capture_output=True, text=True, timeout=90, check=False,
                         env={**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"})
    pids = (tmp_path / "pgrep.txt").read_text().split()
    assert len(pids) == 1, res.stderr
    assert trace.exists()
    as_written = trace.read_text()
    assert "fdatasync(" in as_written, as_written[:2000]
    assert not re.search("error", as_written, re.IGNORECASE)
    followed = trace_f.read_text()
    assert "fdatasync(" in followed, followed[:2000]
    assert not re.search("error", followed, re.IGNORECASE)


def test_doctor_against_a_live_server(server: tuple[Path, int]) -> None:
    data_dir, port = server
    res = CliRunner().invoke(cli, ["doctor", "--data-dir", str(data_dir), "--url",
                                   f"http://127.0.0.1:{port}", "--json",
                                   "--disk-reserve-bytes", "0"])
    doc = json.loads(res.stdout)
    found = {f["check"]: f["severity"] for f in doc["findings"]}
    assert found["server_fsync_errors"] == "ok"
    assert found["server_fenced"] == "ok"
    assert found["server_ready"] == "ok"
    assert found["wal_verify"] in ("ok", "info")


def test_doctor_finds_a_server_fenced_by_fsync_eio(tmp_path: Path) -> None:
    # A first start creates segment.001.wal; the second runs under strace, failing
    # every fdatasync of that segment (-P: SQLite's own fsyncs are left alone).
    port = _free_port()
    _stop(_start_server(tmp_path / "data", port))
    segment = tmp_path / "data" / "wal" / "segment.001.wal"
    strace = ["strace", "-f", "-e", "trace=fdatasync", "-e", "inject=fdatasync:error=EIO",
              "-P", str(segment), "-o", "/dev/null"]
    proc = _start_server(tmp_path / "data", port, strace)
    try:
        url = f"http://127.0.0.1:{port}"
        statuses = []
        for i in range(5):  # bounded: the third fdatasync fails, so one of these does
            r = httpx.post(f"{url}/v1/assertions", json={"subject": f"s{i}", "predicate": "p",
                                                           "object": i, "author": "a"})
            statuses.append(r.status_code)
            if r.status_code == 500:
                break
        assert 500 in statuses, statuses
        res = CliRunner().invoke(cli, ["doctor", "--data-dir", str(tmp_path / "data"),
                                       "--url", url, "--json", "--disk-reserve-bytes", "0"])
        doc = json.loads(res.stdout)
        found = {f["check"]: f for f in doc["findings"]}
        assert res.exit_code == 2
        assert found["server_fenced"]["severity"] == "critical"
        assert found["server_fsync_errors"]["severity"] == "critical"
        assert found["server_ready"]["severity"] == "warning"
    finally:
        _stop(proc)


# -- every command is documented, and its help has an example ---------------------------

def _commands() -> list[tuple[str, object]]:
    import click

    from stemedb.cli import _backup, _doctor, _wal
    cmds: list[tuple[str, click.Command]] = [
        ("stemedb wal verify", _wal.wal_verify_command),
        ("stemedb wal repair", _wal.wal_repair_command),
        ("stemedb wal dump", _wal.wal_dump_command),
        ("stemedb doctor", _doctor.doctor),
        ("stemedb backup list", _backup.backup_list),
        ("stemedb backup create", _backup.backup_create),
        ("stemedb backup restore", _backup.backup_restore),
        ("stemedb backup verify", _backup.backup_verify),
        ("stemedb backup drill", _backup.backup_drill),
        ("stemedb backup expire", _backup.backup_expire),
    ]
    return [(name, cmd) for name, cmd in cmds]


@pytest.mark.parametrize("name, command", _commands(), ids=[n for n, _ in _commands()])
def test_command_documented_with_every_flag(name: str, command: object) -> None:
    import click
    assert isinstance(command, click.Command)
    doc = (REPO / "docs" / "operations" / "tools.md").read_text()
    assert f"## `{name}`" in doc
    section = doc.split(f"## `{name}`", 1)[1].split("\n## ", 1)[0]
    for param in command.params:
        for opt in getattr(param, "opts", []):
            assert f"`{opt}" in section, f"{opt} of {name} is not in docs/operations/tools.md"
    res = CliRunner().invoke(command, ["--help"])
    assert res.exit_code == 0 and "Example" in res.output


@pytest.mark.parametrize("script", ["stemedb-wal-verify", "stemedb-wal-repair"])
def test_runbook_entry_points_have_help(script: str) -> None:
    res = subprocess.run([os.path.join(BIN, script), "--help"], capture_output=True,
                         text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stderr
    assert f"Usage: {script}" in res.stdout and "Example" in res.stdout
