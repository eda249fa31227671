"""`stemedb doctor`: findings on a healthy directory, a full-looking filesystem, a
read-only directory, a damaged WAL, a stuck hold, and a fenced server."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner

from stemedb.cli import cli
from stemedb.tools import run_doctor
from stemedb.tools.doctor import (
    Finding,
    check_archive,
    check_fsync,
    check_kernel_log,
    check_server,
    kernel_errors,
    mount_of,
    parse_metrics,
    parse_mountinfo,
    probe_server,
)
from stemedb.tools.testing import DAMAGES, SampleWal, build_sample_wal

QUIET_KERNEL = ("echo", "[    1.000000] EXT4-fs (vda): mounted filesystem")
LOCAL_CHECKS = ["disk_space", "write_test", "mount_options", "fsync_probe", "wal_verify",
                "replay_debt", "checkpoint_age", "holds"]


@pytest.fixture(scope="module")
def healthy_src(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SampleWal]:
    # On tmpfs when there is one: the fsync probe must see a fast device to call it ok.
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        base = shm / f"stemedb-test-{os.getpid()}-doctor"
        shutil.rmtree(base, ignore_errors=True)
        base.mkdir()
    else:
        base = tmp_path_factory.mktemp("doctor")
    yield build_sample_wal(str(base / "data"), assertions=200)
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def healthy(healthy_src: SampleWal) -> Iterator[Path]:
    dst = Path(f"{healthy_src.data_dir}-{os.urandom(4).hex()}")
    shutil.copytree(healthy_src.data_dir, dst)
    yield dst
    shutil.rmtree(dst, ignore_errors=True)


def severities(report_findings: list[Finding]) -> dict[str, str]:
    return {f.check: f.severity for f in report_findings}


def test_healthy_directory(healthy: Path) -> None:
    report = run_doctor(str(healthy), reserve_bytes=0, kernel_log_command=QUIET_KERNEL)
    sev = severities(report.findings)
    assert [f.check for f in report.findings] == [
        "disk_space", "write_test", "mount_options", "fsync_probe", "kernel_log",
        "wal_verify", "replay_debt", "checkpoint_age", "holds", "archive"]
    assert sev["disk_space"] in ("ok", "info")  # info: the host disk is over 70% used
    assert sev.pop("archive") == "info"  # no archive known, and no server to ask
    assert {k: v for k, v in sev.items() if k != "disk_space"} == {
        k: "ok" for k in sev if k != "disk_space"}
    assert report.exit_code == 0
    fs = report.by_check("fsync_probe")
    assert fs.data["writes"] == 64 and 0 <= fs.data["p50_ms"] <= fs.data["p99_ms"]
    assert report.by_check("replay_debt").data["debt_bytes"] == 0
    assert not [n for n in os.listdir(healthy / "wal") if "doctor" in n]  # probes removed


def test_healthy_cli_json(healthy: Path) -> None:
    res = CliRunner().invoke(cli, ["doctor", "--data-dir", str(healthy), "--json",
                                   "--disk-reserve-bytes", "0"])
    doc = json.loads(res.stdout)
    assert res.exit_code == doc["exit_code"]
    local = {f["check"]: f["severity"] for f in doc["findings"]
             if f["check"] in LOCAL_CHECKS}
    assert set(local) == set(LOCAL_CHECKS)
    assert all(v in ("ok", "info") for v in local.values()), local
    assert all(set(f) == {"check", "severity", "summary", "detail", "runbook", "data"}
               for f in doc["findings"])


@pytest.mark.parametrize("how", ["flag", "env"])
def test_full_looking_filesystem(how: str, healthy: Path) -> None:
    free = shutil.disk_usage(healthy).free
    reserve = str(free * 2)
    args = ["doctor", "--data-dir", str(healthy)]
    env = {}
    if how == "flag":
        args += ["--disk-reserve-bytes", reserve]
    else:
        env["STEMEDB_WAL_DISK_RESERVE_BYTES"] = reserve
    res = CliRunner(env=env).invoke(cli, args)
    assert res.exit_code == 2, res.output
    line = next(x for x in res.stdout.splitlines() if "disk_space" in x)
    assert line.startswith("CRITICAL") and "under the write reserve" in line
    assert "runbook: docs/operations/runbooks/WALDiskNearlyFull.md" in res.stdout
    assert res.stdout.rstrip().endswith("worst: critical (exit 2)")


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[str]:
    """Make ``path`` read-only: a read-only bind mount as root, else chmod 0555."""
    if os.geteuid() == 0:
        subprocess.run(["mount", "--bind", str(path), str(path)], check=True)
        try:
            subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], check=True)
            yield "EROFS"
        finally:
            subprocess.run(["umount", str(path)], check=True)
    else:
        os.chmod(path, 0o555)
        try:
            yield "EACCES"
        finally:
            os.chmod(path, 0o755)


def test_read_only_directory(healthy: Path) -> None:
    wal = healthy / "wal"
    with read_only(wal) as errno_name:
        report = run_doctor(str(healthy), reserve_bytes=0, kernel_log_command=QUIET_KERNEL)
    sev = severities(report.findings)
    assert sev["write_test"] == "critical"
    assert report.by_check("write_test").data["errno"] == errno_name
    if errno_name == "EROFS":
        assert "read-only" in report.by_check("write_test").summary
        assert sev["mount_options"] == "critical"
    assert sev["fsync_probe"] == "info"  # skipped, not crashed
    assert sev["wal_verify"] == "ok"  # the WAL is still read through a read-only mount
    assert report.exit_code == 2


def test_damaged_wal_is_critical_with_the_repair_command(healthy: Path) -> None:
    dmg = DAMAGES["bad_checksum"](str(healthy / "wal"))
    report = run_doctor(str(healthy), reserve_bytes=0, kernel_log_command=QUIET_KERNEL)
    f = report.by_check("wal_verify")
    assert f.severity == "critical" and report.exit_code == 2
    assert f"--truncate-at {dmg.offset}" in f.detail
    assert f.runbook == "docs/operations/runbooks/WALFsyncFailure.md"


def test_torn_tail_alone_is_a_warning(healthy: Path) -> None:
    DAMAGES["torn_last_record"](str(healthy / "wal"))
    report = run_doctor(str(healthy), reserve_bytes=0, kernel_log_command=QUIET_KERNEL)
    assert report.by_check("wal_verify").severity == "warning"
    assert report.exit_code == 1


def test_stuck_hold_and_old_checkpoint(tmp_path: Path) -> None:
    wal = build_sample_wal(str(tmp_path / "d"), assertions=6, clock_step_seconds=1000.0)
    conn = sqlite3.connect(Path(wal.data_dir) / "state.sqlite3")
    # The hold was last set long before the newest record; the checkpoint never ran.
    facts = Path(wal.data_dir) / "node.json"
    doc = json.loads(facts.read_text())
    for hold in doc["holds"].values():
        hold["updated_unix"] = 1764097200.0 - 7200
    facts.write_text(json.dumps(doc))
    conn.execute("UPDATE meta SET value=0 WHERE key='checkpoint_lsn'")
    conn.commit()
    conn.close()
    report = run_doctor(wal.data_dir, reserve_bytes=0, kernel_log_command=QUIET_KERNEL)
    holds = report.by_check("holds")
    assert holds.severity == "warning" and holds.runbook.endswith("HoldStuck.md")  # type: ignore[union-attr]
    assert "test" in holds.summary
    ck = report.by_check("checkpoint_age")
    assert ck.severity == "warning" and ck.runbook.endswith("CheckpointFailing.md")  # type: ignore[union-attr]
    debt = report.by_check("replay_debt")
    assert debt.data["debt_bytes"] > 0 and debt.severity == "ok"


def test_missing_data_dir_is_critical_not_a_crash(tmp_path: Path) -> None:
    report = run_doctor(str(tmp_path / "nope"), reserve_bytes=0,
                        kernel_log_command=QUIET_KERNEL)
    assert report.by_check("data_dir").severity == "critical"
    assert report.exit_code == 2


# -- kernel log, mounts, metrics: parsers as tables ---------------------------------

@pytest.mark.parametrize("line, is_error", [
    ("[12.3] blk_update_request: I/O error, dev sda, sector 2048", True),
    ("[12.3] Buffer I/O error on dev sdb1, logical block 0", True),
    ("[12.3] EXT4-fs error (device sdb1): ext4_find_entry:1455: inode #2", True),
    ("[12.3] EXT4-fs (sdb1): Remounting filesystem read-only", True),
    ("[12.3] XFS (nvme0n1p1): metadata I/O error in xfs_trans_read_buf", True),
    ("[12.3] nvme nvme0: I/O 12 QID 3 timeout, reset controller", True),
    ("[12.3] EXT4-fs (vda): mounted filesystem with ordered data mode", False),
    ("[12.3] usb 1-1: new high-speed USB device", False),
])
def test_kernel_error_lines(line: str, is_error: bool) -> None:
    assert bool(kernel_errors(line)) is is_error


def test_kernel_log_findings() -> None:
    bad = check_kernel_log(("printf", "[1.0] ok\n[2.0] blk_update_request: I/O error, dev sda\n"))
    assert bad.severity == "critical" and bad.data["count"] == 1
    assert bad.runbook == "docs/operations/runbooks/storage-errors.md"
    assert check_kernel_log(QUIET_KERNEL).severity == "ok"
    unreadable = check_kernel_log(("sh", "-c", "echo 'dmesg: read kernel buffer failed: "
                                   "Operation not permitted' >&2; exit 1"))
    assert unreadable.severity == "info" and "not readable" in unreadable.summary
    missing = check_kernel_log(("/nonexistent/dmesg",))
    assert missing.severity == "info"


MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
40 27 8:17 / /var/lib/stemedb rw,noatime - ext4 /dev/sdb1 rw,data=writeback
41 27 8:33 / /var/lib/stemedb/wal rw,noatime - ext4 /dev/sdc1 rw,data=ordered
42 27 8:49 / /mnt/ro\\040disk ro,relatime - xfs /dev/sdd1 ro,nobarrier
"""


@pytest.mark.parametrize("path, mount_point, source", [
    ("/var/lib/stemedb/wal/segment.001.wal", "/var/lib/stemedb/wal", "/dev/sdc1"),
    ("/var/lib/stemedb/state.sqlite3", "/var/lib/stemedb", "/dev/sdb1"),
    ("/var/lib/stemedbx", "/", "/dev/vda"),
    ("/mnt/ro disk/wal", "/mnt/ro disk", "/dev/sdd1"),
])
def test_mount_of(path: str, mount_point: str, source: str) -> None:
    m = mount_of(path, parse_mountinfo(MOUNTINFO))
    assert m is not None and (m.mount_point, m.source) == (mount_point, source)


@pytest.mark.parametrize("path, severity", [
    ("/var/lib/stemedb/wal", "ok"),
    ("/var/lib/stemedb", "warning"),  # data=writeback
    ("/mnt/ro disk", "critical"),  # ro
])
def test_mount_findings(path: str, severity: str, tmp_path: Path) -> None:
    from stemedb.tools.doctor import check_mount
    mi = tmp_path / "mountinfo"
    mi.write_text(MOUNTINFO)
    assert check_mount(path, str(mi)).severity == severity


def test_fsync_probe_reports_quantiles(tmp_path: Path) -> None:
    f = check_fsync(str(tmp_path), writes=8)
    assert f.data["writes"] == 8 and f.data["p50_ms"] <= f.data["p99_ms"] <= f.data["max_ms"]
    assert os.listdir(tmp_path) == []


def test_parse_metrics() -> None:
    text = ('# HELP x y\nstemedb_wal_fsync_errors_total{segment="segment.001.wal"} 15.0\n'
            'stemedb_wal_writes_fenced 1.0\n'
            'stemedb_wal_fsync_duration_seconds{quantile="0.99"} NaN\n')
    m = parse_metrics(text)
    assert m["stemedb_wal_fsync_errors_total"] == [({"segment": "segment.001.wal"}, 15.0)]
    assert m["stemedb_wal_writes_fenced"] == [({}, 1.0)]


# -- a fenced server ---------------------------------------------------------------

FENCED_METRICS = """\
# TYPE stemedb_wal_fsync_errors_total counter
stemedb_wal_fsync_errors_total{segment="segment.001.wal"} 3.0
# TYPE stemedb_wal_writes_fenced gauge
stemedb_wal_writes_fenced 1.0
stemedb_storage_errors_total{operation="fsync"} 3.0
stemedb_wal_fsync_duration_seconds{quantile="0.99"} 0.004
"""
FENCED_STATUS = {"fsync": {"fenced": True, "error": "fsync failed: Error: Failed to fsync "
                           "WAL segment segment.001.wal: Input/output error"},
                 "checkpoint": {"lsn": 0, "last_unix": None, "last_error": None,
                                "replay_debt_bytes": 0, "replay_debt_seconds": 0.0},
                 "disk": {"free_bytes": 10, "reserve_bytes": 0, "refusing_writes": False},
                 "holds": {}}


@pytest.fixture
def fake_server() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            routes = {"/metrics": (200, "text/plain; version=0.0.4", FENCED_METRICS),
                      "/readyz": (503, "application/json",
                                  json.dumps({"ready": False, "reason": "writes fenced"})),
                      "/v1/admin/status": (200, "application/json",
                                           json.dumps(FENCED_STATUS))}
            code, ctype, body = routes.get(self.path, (404, "text/plain", "no"))
            data = body.encode()
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            return

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()
        t.join()


def test_fenced_server(fake_server: str, healthy: Path) -> None:
    res = CliRunner().invoke(cli, ["doctor", "--data-dir", str(healthy), "--url",
                                   fake_server, "--json", "--disk-reserve-bytes", "0"])
    doc = json.loads(res.stdout)
    assert res.exit_code == 2
    found = {f["check"]: f for f in doc["findings"]}
    assert found["server_fsync_errors"]["severity"] == "critical"
    assert found["server_fsync_errors"]["runbook"].endswith("WALFsyncFailure.md")
    assert "segment.001.wal: 3" in found["server_fsync_errors"]["detail"]
    assert found["server_fenced"]["severity"] == "critical"
    assert found["server_fenced"]["runbook"].endswith("WritesFenced.md")
    assert "Input/output error" in found["server_fenced"]["detail"]
    assert found["server_ready"]["severity"] == "warning"
    assert "writes fenced" in found["server_ready"]["detail"]
    assert found["server_storage_errors"]["severity"] == "warning"


def test_unreachable_server_is_a_finding(healthy: Path) -> None:
    view = probe_server("http://127.0.0.1:9")  # discard port: nothing listens
    assert not view.reachable
    [f] = check_server("http://127.0.0.1:9", view)
    assert f.severity == "warning" and "not reachable" in f.summary


def test_help_has_an_example() -> None:
    res = CliRunner().invoke(cli, ["doctor", "--help"])
    assert res.exit_code == 0 and "stemedb doctor --data-dir /var/lib/stemedb" in res.output


# -- the WAL archive ------------------------------------------------------------------

_LIVE_ARCHIVE = {"configured": True, "url": "s3://b/db1", "timeline": 1,
                 "archived_lsn": 9000, "durable_lsn": 9400, "backlog_bytes": 400,
                 "max_backlog_bytes": 1 << 30, "backlog_full": False,
                 "refusing_writes": False, "lag_seconds": 0.4, "consecutive_failures": 0,
                 "last_error": None, "drops": []}


@pytest.mark.parametrize("change, severity, says", [
    ({}, "ok", "archive at LSN 9000 of 9400"),
    ({"consecutive_failures": 3, "last_error": "AccessDenied (HTTP 403)"}, "warning",
     "last tries failed"),
    ({"lag_seconds": 600.0, "consecutive_failures": 40}, "critical", "stalled"),
    ({"backlog_full": True, "refusing_writes": True}, "critical", "writes are refused"),
    ({"drops": [{"parent_end_lsn": 9000, "start_lsn": 80000, "timeline": 2,
                 "parent_timeline": 1}]}, "critical", "LSN 9000..80000"),
    ({"configured": False}, "info", "no WAL archive"),
], ids=["moving", "failing", "stalled", "cap_refuses", "dropped", "off"])
def test_archive_findings_from_the_server(tmp_path: Path, change: dict[str, object],
                                          severity: str, says: str) -> None:
    f = check_archive(str(tmp_path), {"archive": {**_LIVE_ARCHIVE, **change}})
    assert f.severity == severity and says in f.summary, f
    if severity in ("warning", "critical"):
        assert f.runbook is not None and "runbooks/Archive" in f.runbook


def test_a_base_backup_after_the_drop_clears_it(tmp_path: Path) -> None:
    drop = {"parent_end_lsn": 9000, "start_lsn": 80000, "timeline": 2, "parent_timeline": 1}
    archive = {**_LIVE_ARCHIVE, "timeline": 2, "drops": [drop]}
    before = {"timeline": 1, "end_lsn": 8000, "id": "old"}
    after = {"timeline": 2, "end_lsn": 80000, "id": "new"}
    assert check_archive(str(tmp_path), {"archive": archive, "backup": {
        "last_backup": before}}).severity == "critical"
    assert check_archive(str(tmp_path), {"archive": archive, "backup": {
        "last_backup": after}}).severity == "ok"
    # Offline: node.json's backup facts.
    (tmp_path / "node.json").write_text(json.dumps({"archive": {"timeline": 2, "drops": [drop]},
                                                    "backup": {"last_backup": after}}))
    assert check_archive(str(tmp_path), None).severity == "info"


def test_dropped_wal_is_critical_offline_too(tmp_path: Path) -> None:
    """node.json keeps the drops across restarts: doctor without a server still exits 2."""
    (tmp_path / "node.json").write_text(json.dumps({"holds": {}, "archive": {
        "timeline": 2, "drops": [{"parent_end_lsn": 100, "start_lsn": 5000}]}}))
    f = check_archive(str(tmp_path), None)
    assert f.severity == "critical" and "100..5000" in f.summary
    (tmp_path / "node.json").write_text(json.dumps({"holds": {}, "archive": {"timeline": 1}}))
    assert check_archive(str(tmp_path), None).severity == "info"
