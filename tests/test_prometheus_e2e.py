"""End to end: a real Prometheus scrapes a real StemeDB, a real fault fires the alert.

The rules are ops/prometheus/stemedb.rules.yml with only their ``for:`` durations
shortened to 1s, so a test does not wait minutes; the durations themselves are
covered by ``promtool test rules`` (tests/test_alert_rules.py).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests._server import ServerProcess, free_port

RULES = Path(__file__).resolve().parents[1] / "ops" / "prometheus" / "stemedb.rules.yml"
ALERT_TIMEOUT_SECONDS = 90.0


def _binary(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is required (Debian package prometheus/strace; .ci/run installs it)"
    return path


class Prometheus:
    def __init__(self, workdir: Path, target: str) -> None:
        self.port = free_port()
        self.dir = workdir / "prometheus"
        self.dir.mkdir()
        rules = re.sub(r"(?m)^(\s+)for: \S+$", r"\1for: 1s", RULES.read_text())
        (self.dir / "rules.yml").write_text(rules)
        (self.dir / "prometheus.yml").write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "rule_files: [rules.yml]\n"
            "scrape_configs:\n  - job_name: stemedb\n"
            f"    static_configs: [{{targets: ['{target}']}}]\n")
        self.log = open(self.dir / "prometheus.log", "wb")  # noqa: SIM115 - closed in stop
        self.proc = subprocess.Popen(
            [_binary("prometheus"), f"--config.file={self.dir / 'prometheus.yml'}",
             f"--storage.tsdb.path={self.dir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=self.dir)
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_alert(self, name: str, want: dict[str, str] | None = None) -> dict[str, Any]:
        deadline = time.monotonic() + ALERT_TIMEOUT_SECONDS
        seen: list[Any] = []
        with httpx.Client(timeout=5) as c:
            while time.monotonic() < deadline:  # bounded by the deadline
                assert self.proc.poll() is None, (self.dir / "prometheus.log").read_text()
                try:
                    seen = c.get(self.url + "/api/v1/alerts").json()["data"]["alerts"]
                except (httpx.TransportError, ValueError, KeyError):
                    seen = []
                for a in seen:
                    labels = a["labels"]
                    if labels.get("alertname") == name and a["state"] == "firing" and all(
                            labels.get(k) == v for k, v in (want or {}).items()):
                        return dict(a)
                time.sleep(0.5)
        raise AssertionError(f"{name} never fired; alerts seen: {seen}")

    def wait_resolved(self, name: str) -> None:
        """Wait until no alert ``name`` is pending or firing."""
        deadline = time.monotonic() + ALERT_TIMEOUT_SECONDS
        seen: list[Any] = []
        with httpx.Client(timeout=5) as c:
            while time.monotonic() < deadline:  # bounded by the deadline
                try:
                    seen = c.get(self.url + "/api/v1/alerts").json()["data"]["alerts"]
                except (httpx.TransportError, ValueError, KeyError):
                    time.sleep(0.5)
                    continue
                if not any(a["labels"].get("alertname") == name for a in seen):
                    return
                time.sleep(0.5)
        raise AssertionError(f"{name} never resolved; alerts seen: {seen}")

    def wait_scraped(self) -> None:
        """Wait until Prometheus has scraped the target at least once."""
        deadline = time.monotonic() + ALERT_TIMEOUT_SECONDS
        with httpx.Client(timeout=5) as c:
            while time.monotonic() < deadline:  # bounded by the deadline
                try:
                    res = c.get(self.url + "/api/v1/query", params={"query": "up"}).json()
                    if any(r["value"][1] == "1" for r in res["data"]["result"]):
                        return
                except (httpx.TransportError, ValueError, KeyError):
                    pass
                time.sleep(0.25)
        raise AssertionError("Prometheus never scraped StemeDB")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(20)
        self.log.close()


class StracedServer(ServerProcess):
    """A server run under strace (which injects the fault); ServerProcess.stop signals
    the server itself, not strace."""

    def __init__(self, workdir: Path, strace_args: list[str], **kw: Any) -> None:
        super().__init__(workdir, **kw)
        self.prefix = [_binary("strace"), "-f", "-o", "/dev/null", *strace_args]


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path


def _assert(client: httpx.Client, i: int) -> httpx.Response:
    return client.post("/v1/assertions", json={"subject": f"s{i}", "predicate": "p",
                                                "object": i, "author": "e2e"})


def test_fsync_failure_fires_WALFsyncFailure_in_real_prometheus(workdir: Path) -> None:
    server = StracedServer(workdir, ["-e", "trace=fdatasync",
                                     "-e", "inject=fdatasync:error=EIO:when=12+"])
    server.start()
    prom = None
    try:
        prom = Prometheus(workdir, f"127.0.0.1:{server.port}")
        prom.wait_scraped()
        statuses = []
        with server.client() as c:
            for i in range(40):  # bounded: the fault arrives within the first few writes
                r = _assert(c, i)
                statuses.append(r.status_code)
                if r.status_code == 500:
                    assert r.json()["error"]["code"] == "wal_fsync_failed"
                    break
            assert statuses[-1] == 500, f"no fsync failure surfaced: {statuses}"
            assert _assert(c, 999).status_code == 500  # fenced: every later write fails
            metrics = c.get("/metrics").text
        assert re.search(r'stemedb_wal_fsync_errors_total\{segment="segment\.\d{3,}\.wal"\} 1',
                         metrics)
        alert = prom.wait_alert("WALFsyncFailure")
        assert alert["labels"]["severity"] == "critical"
        assert alert["annotations"]["runbook_url"].endswith("runbooks/WALFsyncFailure.md")
        prom.wait_alert("WritesFenced")
        assert "Failed to fsync WAL segment" in server.log()
    finally:
        if prom is not None:
            prom.stop()
        server.stop()


def test_disk_guard_fires_WALDiskNearlyFull_in_real_prometheus(workdir: Path) -> None:
    # A reserve larger than any disk: the guard refuses every write with 507.
    server = ServerProcess(workdir, env={"STEMEDB_WAL_DISK_RESERVE_BYTES": str(1 << 62)})
    server.start(wait="healthy")
    prom = None
    try:
        prom = Prometheus(workdir, f"127.0.0.1:{server.port}")
        prom.wait_scraped()
        with server.client() as c:
            r = _assert(c, 1)
            assert r.status_code == 507, r.text
            assert r.json()["error"]["code"] == "insufficient_storage"
            assert c.get("/v1/epochs/current").status_code == 200  # reads keep working
            time.sleep(3)  # a first scrape of the refusal counter, then another refusal
            assert _assert(c, 2).status_code == 507
        alert = prom.wait_alert("WALDiskNearlyFull", {"tier": "guard"})
        assert alert["labels"]["severity"] == "critical"
        assert alert["annotations"]["runbook_url"].endswith("runbooks/WALDiskNearlyFull.md")
    finally:
        if prom is not None:
            prom.stop()
        server.stop()


ARCHIVE_CAP_BYTES = 64 * 1024  # the smallest [archive] max_backlog_bytes
ARCHIVE_WRITES_MAX = 5000  # bounded: ~200 WAL bytes a write reach the cap long before


def test_a_broken_archive_fires_ArchiveFailing_holds_the_wal_and_recovers(
        workdir: Path) -> None:
    """The seed incident, replayed in minutes: the archive stops taking WAL.  The alert
    fires on progress, the WAL is held, the cap refuses writes (reads go on); once the
    archive answers again the backlog drains, writes resume, the alerts resolve, and the
    archive holds every acknowledged write."""
    from tests._archive import archived_records

    archive = workdir / "archive"
    archive.write_bytes(b"not a directory")  # every upload fails (reason io)
    url = f"file://{archive}"
    server = ServerProcess(workdir, env={
        "STEMEDB_ARCHIVE_URL": url, "STEMEDB_ARCHIVE_INTERVAL_SECONDS": "0.05",
        "STEMEDB_ARCHIVE_MAX_BACKLOG_BYTES": str(ARCHIVE_CAP_BYTES)})
    server.start()
    prom = None
    acked: list[int] = []
    try:
        prom = Prometheus(workdir, f"127.0.0.1:{server.port}")
        prom.wait_scraped()
        with server.client() as c:
            refused = None
            for i in range(ARCHIVE_WRITES_MAX):
                r = _assert(c, i)
                if r.status_code == 507:
                    refused = r.json()["error"]["code"]
                    break
                assert r.status_code == 201, r.text
                acked.append(r.json()["lsn"])
            assert refused == "archive_backlog_full", f"no refusal after {len(acked)} writes"
            assert c.get(f"/v1/assertions/{len(acked)}").status_code == 200  # reads go on
            ready = c.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["reason"] == "archive_backlog_full"
            status = c.get("/v1/admin/status").json()
            assert status["holds"]["archive"]["lsn"] <= acked[0]  # the WAL is held
        alert = prom.wait_alert("ArchiveFailing")
        assert alert["labels"]["severity"] == "critical"
        assert alert["annotations"]["runbook_url"].endswith("runbooks/ArchiveFailing.md")
        cap = prom.wait_alert("ArchiveBacklogGrowing", {"tier": "cap"})
        assert cap["labels"]["severity"] == "critical"
        with server.client() as c:
            assert re.search(r'stemedb_archive_failures_total\{reason="io"\} [1-9]',
                             c.get("/metrics").text)

        archive.unlink()  # the archive answers again
        archive.mkdir()
        deadline = time.monotonic() + ALERT_TIMEOUT_SECONDS
        with server.client() as c:
            while True:  # bounded by the deadline; the archiver backs off up to 30 s
                r = _assert(c, ARCHIVE_WRITES_MAX)
                if r.status_code == 201:
                    acked.append(r.json()["lsn"])
                    break
                assert r.status_code == 507, r.text
                assert time.monotonic() < deadline, "writes never resumed"
                time.sleep(0.5)
        with server.client() as c:
            assert c.get("/readyz").status_code == 200
        prom.wait_resolved("ArchiveBacklogGrowing")
        prom.wait_resolved("ArchiveFailing")
    finally:
        if prom is not None:
            prom.stop()
        server.stop()
    # Stopped cleanly: the last pass shipped everything; every acknowledged write is there.
    lsns = {lsn for recs in archived_records(url).values() for lsn, _, _ in recs}
    missing = [lsn for lsn in acked if lsn not in lsns]
    assert not missing, f"{len(missing)} acknowledged writes not archived: {missing[:5]}"


def test_revoked_s3_credentials_fire_ArchiveFailing_until_they_are_restored(
        workdir: Path) -> None:
    """The seed once more, on S3 (moto's server, authentication on): the archiver's
    credentials are revoked under load; uploads fail with AccessDenied, ArchiveFailing
    fires, the WAL is held; the credentials come back, the backlog drains, the alert
    resolves, and the bucket holds every acknowledged write."""
    from tests._archive import archived_records
    from tests._moto import BUCKET, REGION, moto_s3_server

    s3_servers = moto_s3_server()
    s3 = next(s3_servers)
    url = f"s3://{BUCKET}/e2e"
    aws = {"AWS_ENDPOINT_URL": s3.endpoint, "AWS_ACCESS_KEY_ID": s3.key_id,
           "AWS_SECRET_ACCESS_KEY": s3.secret, "AWS_DEFAULT_REGION": REGION,
           "AWS_CONFIG_FILE": str(workdir / "aws-config-none"),
           "AWS_SHARED_CREDENTIALS_FILE": str(workdir / "aws-credentials-none"),
           "AWS_EC2_METADATA_DISABLED": "true"}
    try:
        acked = _revoke_and_restore(workdir, s3, url, aws)
        records = archived_records_with(aws, url, archived_records)
    finally:
        with contextlib.suppress(StopIteration):
            next(s3_servers)  # stops the S3 server
    lsns = {lsn for recs in records.values() for lsn, _, _ in recs}
    missing = [lsn for lsn in acked if lsn not in lsns]
    assert not missing, f"{len(missing)} acknowledged writes not archived: {missing[:5]}"


def _revoke_and_restore(workdir: Path, s3: Any, url: str, aws: dict[str, str]) -> list[int]:
    server = ServerProcess(workdir, env={"STEMEDB_ARCHIVE_URL": url,
                                         "STEMEDB_ARCHIVE_INTERVAL_SECONDS": "0.05", **aws})
    server.start()
    prom = None
    acked: list[int] = []
    try:
        prom = Prometheus(workdir, f"127.0.0.1:{server.port}")
        prom.wait_scraped()
        s3.revoke()
        with server.client() as c:
            for i in range(50):
                r = _assert(c, i)
                assert r.status_code == 201, r.text  # far below the 1 GiB cap
                acked.append(r.json()["lsn"])
            alert = prom.wait_alert("ArchiveFailing")
            assert alert["labels"]["severity"] == "critical"
            metrics = c.get("/metrics").text
            assert re.search(r'stemedb_archive_failures_total\{reason="auth"\} [1-9]',
                             metrics)
            status = c.get("/v1/admin/status").json()
            assert "AccessDenied" in (status["archive"]["last_error"] or "")
            assert status["holds"]["archive"]["lsn"] <= acked[0]  # the WAL is held
        s3.restore()
        prom.wait_resolved("ArchiveFailing")
    finally:
        if prom is not None:
            prom.stop()
        server.stop()  # a clean stop: one last pass ships everything durable
    return acked


def archived_records_with(env: dict[str, str], url: str, read: Any) -> Any:
    """``read(url)`` with the AWS variables of ``env`` set, and set back after."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return read(url)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _family(name: str) -> str:
    for suffix in ("_bucket", "_sum", "_count", "_created"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def test_live_scrape_passes_promtool_and_has_every_metric_in_rules_and_dashboard(
        workdir: Path) -> None:
    from tests.test_alert_rules import (
        EXTERNAL_METRICS,
        alert_rules,
        dashboard_exprs,
        metric_names_in,
    )
    with ServerProcess(workdir) as server:
        server.start()
        with server.client() as c:
            assert _assert(c, 1).status_code == 201
            text = c.get("/metrics").text
    check = subprocess.run([_binary("promtool"), "check", "metrics"], input=text,
                           capture_output=True, text=True, timeout=60, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    # Families present in the live exposition (HELP/TYPE lines list labelled families
    # even before their first child, e.g. fsync errors before any error).
    live = set(re.findall(r"^# (?:HELP|TYPE) (\S+)", text, re.MULTILINE))
    live |= {_family(m) for m in re.findall(r"^([a-zA-Z_:][\w:]*)[{ ]", text, re.MULTILINE)}
    used: set[str] = set()
    for rule in alert_rules():
        used |= metric_names_in(rule["expr"])
    for expr in dashboard_exprs():
        used |= metric_names_in(expr)
    missing = {n for n in used - EXTERNAL_METRICS
               if n not in live and _family(n) not in live
               and n.removesuffix("_total") not in live}
    assert not missing, f"named in rules/dashboard but not in a live /metrics: {missing}"
    assert 'stemedb_wal_fsync_duration_seconds{quantile="0.99"}' in text
