"""The alert rules, their promtool unit tests, and the Grafana dashboard.

promtool must be installed (Debian: apt-get install prometheus); these tests fail, not
skip, without it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from stemedb.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "ops" / "prometheus" / "stemedb.rules.yml"
RULES_TEST = ROOT / "ops" / "prometheus" / "stemedb.rules.test.yml"
# NoLeader's cases, evaluated every 5 s: a failover takes seconds (see the file's header).
RULES_FAILOVER_TEST = ROOT / "ops" / "prometheus" / "stemedb.rules.failover.test.yml"
RULES_TESTS = (RULES_TEST, RULES_FAILOVER_TEST)
PROMETHEUS_EXAMPLE = ROOT / "ops" / "prometheus" / "prometheus.example.yml"
DASHBOARD = ROOT / "ops" / "grafana" / "stemedb-wal-health.json"
RUNBOOKS = ROOT / "docs" / "operations" / "runbooks"
RUNBOOK_URL_PREFIX = "https://github.com/stemedb/stemedb/blob/main/docs/operations/runbooks/"

CONTRACT_ALERTS = ("WALFsyncFailure", "WALFsyncSlow", "WALDiskNearlyFull", "HighStorageErrorRate")
SEVERITIES = ("info", "warning", "critical")

# Metric names that come from elsewhere: Prometheus itself, and node_exporter on the host.
# node_exporter names are listed one by one so that a typo still fails.
EXTERNAL_METRICS = {
    "up",
    "node_memory_SUnreclaim_bytes",
    "node_memory_MemTotal_bytes",
    "node_filesystem_avail_bytes",
    "node_filesystem_size_bytes",
    "node_filesystem_files_free",
    "node_filesystem_files",
    "node_filesystem_readonly",
}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is not installed; the alert rules cannot be checked without it. "
            "Install it with: apt-get install -y prometheus"
        )
    return path


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], capture_output=True, text=True, timeout=300, check=False
    )


def load_rules() -> dict[str, Any]:
    document = yaml.safe_load(RULES.read_text())
    assert isinstance(document, dict)
    return document


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_rules()["groups"] for rule in group["rules"] if "alert" in rule]


def alert_names() -> list[str]:
    return sorted({rule["alert"] for rule in alert_rules()})


def declared_metric_names() -> set[str]:
    """Every sample name a fresh Metrics() can export, labelled families included."""
    suffixes = {
        "counter": ("_total", "_created"),
        "gauge": ("",),
        "summary": ("", "_sum", "_count", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "info": ("_info",),
        "unknown": ("",),
    }
    names: set[str] = set()
    for family in Metrics(CollectorRegistry()).registry.collect():
        names.update(family.name + suffix for suffix in suffixes[family.type])
        names.update(sample.name for sample in family.samples)
    return names


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_IDENTIFIER = re.compile(r"(?<![\w:$])([a-zA-Z_:][a-zA-Z0-9_:]*)")


def metric_names_in(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that look like our families."""
    without_strings = _STRING.sub('""', expr)
    found = set()
    for name in _IDENTIFIER.findall(without_strings):
        if name.startswith(("stemedb_", "process_", "node_")) or name == "up":
            found.add(name)
    return found


def dashboard_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from dashboard_panels(panel.get("panels", []))


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [
        target["expr"]
        for panel in dashboard_panels(dashboard["panels"])
        for target in panel.get("targets", [])
    ]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            text = query["query"] if isinstance(query, dict) else query
            match = re.fullmatch(r"label_values\((\w+),\s*\w+\)", text)
            assert match, text
            exprs.append(match.group(1))
    return exprs


# --- promtool ----------------------------------------------------------------------------


def test_promtool_check_rules() -> None:
    proc = run_promtool("check", "rules", str(RULES))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_promtool_test_rules() -> None:
    proc = run_promtool("test", "rules", *map(str, RULES_TESTS))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("SUCCESS") == len(RULES_TESTS), proc.stdout


def test_promtool_test_rules_catches_a_broken_rule(tmp_path: Path) -> None:
    # The unit tests must fail when an alert stops firing: break WALFsyncSlow's threshold.
    broken = RULES.read_text().replace(
        'stemedb_wal_fsync_duration_seconds{quantile="0.99"} > 0.1',
        'stemedb_wal_fsync_duration_seconds{quantile="0.99"} > 10',
    )
    assert broken != RULES.read_text()
    (tmp_path / RULES.name).write_text(broken)
    (tmp_path / RULES_TEST.name).write_text(RULES_TEST.read_text())
    proc = run_promtool("test", "rules", str(tmp_path / RULES_TEST.name))
    assert proc.returncode != 0
    assert "WALFsyncSlow" in proc.stdout + proc.stderr


@pytest.mark.parametrize("duration", ["10s", "25s", "35s", "1m"])
def test_no_leader_unit_tests_pin_its_30s(tmp_path: Path, duration: str) -> None:
    # Shorter, a failover within 15 s would page; longer, a cluster without a leader would
    # page late.  The 5 s evaluation tells either from 30 s.
    text = RULES.read_text()
    start = text.index("- alert: NoLeader")
    end = text.index("for: 30s", start)
    broken = text[:end] + f"for: {duration}" + text[end + len("for: 30s") :]
    (tmp_path / RULES.name).write_text(broken)
    (tmp_path / RULES_FAILOVER_TEST.name).write_text(RULES_FAILOVER_TEST.read_text())
    proc = run_promtool("test", "rules", str(tmp_path / RULES_FAILOVER_TEST.name))
    assert proc.returncode != 0, duration
    assert "NoLeader" in proc.stdout + proc.stderr


def test_prometheus_example_config_loads_the_rules() -> None:
    config = yaml.safe_load(PROMETHEUS_EXAMPLE.read_text())
    assert config["rule_files"] == [RULES.name]
    assert any("stemedb" in job["job_name"] for job in config["scrape_configs"])
    proc = run_promtool("check", "config", str(PROMETHEUS_EXAMPLE))
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- the rules' shape --------------------------------------------------------------------


def test_contract_alerts_exist() -> None:
    for name in CONTRACT_ALERTS:
        assert name in alert_names(), name


def test_wal_fsync_slow_is_the_runbook_alert() -> None:
    (rule,) = [r for r in alert_rules() if r["alert"] == "WALFsyncSlow"]
    assert rule["expr"].strip() == 'stemedb_wal_fsync_duration_seconds{quantile="0.99"} > 0.1'
    assert rule["for"] == "5m"
    assert rule["labels"]["severity"] == "warning"
    assert rule["annotations"]["summary"].startswith("WAL fsync latency degrading (p99 > 100ms)")


def test_wal_fsync_failure_matches_the_runbook_trigger() -> None:
    (rule,) = [r for r in alert_rules() if r["alert"] == "WALFsyncFailure"]
    assert "stemedb_wal_fsync_errors_total" in rule["expr"]
    assert rule["for"] == "1m"
    assert rule["labels"]["severity"] == "critical"


def test_wal_disk_nearly_full_has_the_tiers() -> None:
    rules = [r for r in alert_rules() if r["alert"] == "WALDiskNearlyFull"]
    tiers = {r["labels"]["tier"]: r["labels"]["severity"] for r in rules}
    assert tiers["70"] == "info"
    assert tiers["80"] == "warning"
    assert tiers["90"] == "critical"
    assert tiers["guard"] == "critical"
    (guard,) = [r for r in rules if r["labels"]["tier"] == "guard"]
    assert "stemedb_disk_guard_refusals_total" in guard["expr"]
    for rule in rules:
        if rule["labels"]["tier"] in ("70", "80", "90"):
            assert f"> {rule['labels']['tier']}\n" in rule["expr"]


def test_writes_fenced_is_latched() -> None:
    (rule,) = [r for r in alert_rules() if r["alert"] == "WritesFenced"]
    assert "max_over_time(stemedb_wal_writes_fenced[15m]) == 1" in rule["expr"]
    assert "increase(stemedb_wal_fenced_total[15m]) > 0" in rule["expr"]
    assert rule["labels"]["severity"] == "critical"


def test_every_alert_is_labelled_annotated_and_has_a_runbook() -> None:
    rules = alert_rules()
    assert len(rules) >= 10
    for rule in rules:
        name = rule["alert"]
        assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", name), name
        assert rule["labels"]["severity"] in SEVERITIES, name
        annotations = rule["annotations"]
        assert set(annotations) >= {"summary", "description", "runbook_url"}, name
        assert annotations["summary"].strip() and annotations["description"].strip(), name
        assert annotations["runbook_url"] == f"{RUNBOOK_URL_PREFIX}{name}.md", name
        assert (RUNBOOKS / f"{name}.md").is_file(), f"missing runbook for {name}"


def test_no_leader_is_judged_per_scrape_job() -> None:
    (rule,) = [r for r in alert_rules() if r["alert"] == "NoLeader"]
    assert rule["for"] == "30s"
    assert rule["labels"]["severity"] == "critical"
    # One cluster per job; standalone nodes (enabled 0, their own leader) are left out.
    assert "max by (job) (stemedb_cluster_enabled) == 1" in rule["expr"]
    assert "stemedb_cluster_enabled == 1" in rule["expr"].split("unless", 1)[1]


def test_replica_alerts_read_only_the_leaders_view() -> None:
    for rule in alert_rules():
        if rule["alert"] in ("ReplicaLagHigh", "ReplicaDisconnected"):
            if "stemedb_replication_hold_dropped_total" in rule["expr"]:
                continue  # a drop in the last hour stays true after a leader change
            assert "and on (instance, job) stemedb_cluster_is_leader == 1" in rule["expr"]


def test_alerts_with_one_name_differ_in_labels() -> None:
    # Two rules with one alert name and the same labels would produce duplicate alerts.
    seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    for rule in alert_rules():
        key = (rule["alert"], tuple(sorted(rule["labels"].items())))
        assert key not in seen, key
        seen.add(key)


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    tests = [case for path in RULES_TESTS for case in yaml.safe_load(path.read_text())["tests"]]
    fires: dict[str, set[str]] = {}
    quiet: set[str] = set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            name = check["alertname"]
            expected = check.get("exp_alerts") or []
            if not expected:
                quiet.add(name)
            for alert in expected:
                fires.setdefault(name, set()).add(alert["exp_labels"].get("tier", ""))
                url = alert["exp_annotations"]["runbook_url"]
                assert url == f"{RUNBOOK_URL_PREFIX}{name}.md", (case["name"], url)
    for name in alert_names():
        assert name in fires, f"no unit test where {name} fires"
        assert name in quiet, f"no unit test where {name} stays quiet"
    for name in alert_names():
        tiers = {r["labels"].get("tier", "") for r in alert_rules() if r["alert"] == name}
        assert fires[name] == tiers, f"{name}: tiers that never fire in a unit test"


# --- metric names in the rules and the dashboard --------------------------------------------


def test_metric_name_extraction() -> None:
    expr = (
        'sum by (instance) (rate(stemedb_http_requests_total{status=~"5..",job="stemedb_x"}'
        "[$__rate_interval])) and on (instance) up == 0 and process_open_fds > node_load1"
    )
    assert metric_names_in(expr) == {
        "stemedb_http_requests_total",
        "up",
        "process_open_fds",
        "node_load1",
    }


def test_metrics_used_by_the_rules_are_declared() -> None:
    declared = declared_metric_names()
    used: set[str] = set()
    for rule in alert_rules():
        used |= metric_names_in(rule["expr"])
    assert "stemedb_wal_fsync_duration_seconds" in used
    assert "process_resident_memory_bytes" in used
    assert "node_memory_SUnreclaim_bytes" in used
    unknown = sorted(used - declared - EXTERNAL_METRICS)
    assert not unknown, f"not declared by stemedb.metrics.Metrics: {unknown}"


def test_metrics_used_by_the_dashboard_are_declared() -> None:
    declared = declared_metric_names()
    used: set[str] = set()
    for expr in dashboard_exprs():
        used |= metric_names_in(expr)
    assert "stemedb_wal_fsync_duration_seconds" in used
    unknown = sorted(used - declared - EXTERNAL_METRICS)
    assert not unknown, f"not declared by stemedb.metrics.Metrics: {unknown}"


def test_declared_names_include_suffixes() -> None:
    declared = declared_metric_names()
    for name in (
        "stemedb_wal_fsync_errors_total",
        "stemedb_wal_fsync_duration_seconds",
        "stemedb_wal_fsync_duration_seconds_count",
        "stemedb_wal_fsync_latency_seconds_bucket",
        "stemedb_http_request_duration_seconds_bucket",
        "stemedb_wal_hold_lag_bytes",
        "process_resident_memory_bytes",
    ):
        assert name in declared, name
    assert "stemedb_wal_fsync_errors" not in declared  # the family name is not a sample


# --- the dashboard -----------------------------------------------------------------------


def test_dashboard_is_provisionable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] == "StemeDB WAL Health"
    assert dashboard["uid"] == "stemedb-wal"
    assert dashboard["id"] is None
    assert 36 <= dashboard["schemaVersion"] <= 39
    assert "__inputs" not in dashboard  # import-only placeholders break file provisioning
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = list(dashboard_panels(dashboard["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"


def test_dashboard_panels_do_not_overlap() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard_panels(dashboard["panels"]):
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, (panel["title"], cells.get((x, y)))
                cells[(x, y)] = panel["title"]


def test_dashboard_covers_the_wal_health_signals() -> None:
    used: set[str] = set()
    for expr in dashboard_exprs():
        used |= metric_names_in(expr)
    for name in (
        "stemedb_wal_fsync_duration_seconds",
        "stemedb_wal_fsync_latency_seconds_bucket",
        "stemedb_wal_fsync_errors_total",
        "stemedb_wal_writes_fenced",
        "stemedb_wal_size_bytes",
        "stemedb_wal_replay_debt_bytes",
        "stemedb_wal_replay_debt_seconds",
        "stemedb_wal_fs_free_bytes",
        "stemedb_wal_fs_free_inodes",
        "stemedb_checkpoint_last_success_timestamp_seconds",
        "stemedb_checkpoint_duration_seconds_bucket",
        "stemedb_checkpoint_failures_total",
        "stemedb_replay_bytes_done",
        "stemedb_http_requests_total",
        "stemedb_http_request_duration_seconds_bucket",
        "stemedb_group_commit_batch_records_bucket",
        "stemedb_wal_hold_lag_bytes",
        "process_resident_memory_bytes",
    ):
        assert name in used, name


def test_dashboard_covers_the_cluster() -> None:
    used: set[str] = set()
    for expr in dashboard_exprs():
        used |= metric_names_in(expr)
    for name in (
        "stemedb_cluster_is_leader",
        "stemedb_cluster_term",
        "stemedb_cluster_leader_changes_total",
        "stemedb_replication_lag_bytes",
        "stemedb_replication_lag_seconds",
        "stemedb_replication_connected",
        "stemedb_replication_hold_dropped_total",
        "stemedb_replication_streaming",
        "stemedb_replication_received_bytes_total",
        "stemedb_replication_reseeds_total",
        "stemedb_replication_diverged_bytes_total",
    ):
        assert name in used, name


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    # promtool parses every expression of a rule file: wrap each query in a recording rule,
    # with Grafana's variables replaced by values Prometheus understands.
    rules = []
    for n, expr in enumerate(dashboard_exprs()):
        concrete = expr.replace("$__rate_interval", "1m").replace("$instance", ".*")
        assert "$" not in concrete, expr
        rules.append({"record": f"dashboard:query_{n}", "expr": concrete})
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = run_promtool("check", "rules", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
