"""The metrics module: the sliding-window summary, the exposition, and promtool's lint.

Every test builds a fresh ``CollectorRegistry()``; nothing touches the global one.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import (
    generate_latest as generate_latest_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families

from stemedb.metrics import STORAGE_OPERATIONS, Metrics, SlidingWindowSummary


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def summary(
    clock: FakeClock,
    *,
    window_seconds: float = 60.0,
    samples_max: int = 4096,
    registry: CollectorRegistry | None = None,
) -> SlidingWindowSummary:
    return SlidingWindowSummary(
        "test_fsync_duration_seconds",
        "test summary",
        window_seconds=window_seconds,
        samples_max=samples_max,
        registry=registry,
        clock=clock,
    )


def exposition(metrics: Metrics) -> str:
    return generate_latest(metrics.registry).decode()


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is not installed; it is required to lint the exposition. "
            "Install it with: apt-get install -y prometheus"
        )
    return path


# --- SlidingWindowSummary ---------------------------------------------------------


def test_quantiles_are_nearest_rank_over_the_window() -> None:
    s = summary(FakeClock())
    for v in range(1, 101):  # 1..100, observed out of order
        s.observe(float((v * 37) % 100 + 1))
    assert s.quantile(0.5) == 50.0
    assert s.quantile(0.9) == 90.0
    assert s.quantile(0.99) == 99.0
    assert s.quantile(1.0) == 100.0
    assert s.quantile(0.0) == 1.0


def test_quantile_of_a_single_sample_is_that_sample() -> None:
    s = summary(FakeClock())
    s.observe(0.25)
    assert [s.quantile(q) for q in (0.0, 0.5, 0.9, 0.99, 1.0)] == [0.25] * 5


def test_empty_window_is_nan() -> None:
    s = summary(FakeClock())
    assert math.isnan(s.quantile(0.5))
    assert math.isnan(s.quantile(0.99))


def test_samples_older_than_the_window_are_dropped() -> None:
    clock = FakeClock()
    s = summary(clock, window_seconds=60.0)
    for _ in range(10):
        s.observe(5.0)  # a slow spell
    clock.advance(30.0)
    for _ in range(10):
        s.observe(0.001)
    assert s.quantile(0.99) == 5.0  # both spells are in the window
    clock.advance(29.9)
    assert s.quantile(0.99) == 5.0  # the slow spell is 59.9 s old: still kept
    clock.advance(0.1)
    assert s.quantile(0.99) == 0.001  # 60 s old: gone
    assert s.quantile(0.0) == 0.001
    clock.advance(30.0)
    assert math.isnan(s.quantile(0.5))  # everything expired, no new observation


def test_expiry_applies_at_scrape_time_and_keeps_sum_and_count() -> None:
    clock = FakeClock()
    registry = CollectorRegistry()
    s = summary(clock, window_seconds=10.0, registry=registry)
    s.observe(2.0)
    s.observe(4.0)
    clock.advance(11.0)
    values = {
        (sample.name, sample.labels.get("quantile")): sample.value
        for family in registry.collect()
        for sample in family.samples
    }
    assert math.isnan(values[("test_fsync_duration_seconds", "0.99")])
    # _sum and _count are cumulative over the life of the process, not the window.
    assert values[("test_fsync_duration_seconds_count", None)] == 2
    assert values[("test_fsync_duration_seconds_sum", None)] == 6.0


def test_samples_are_bounded_oldest_dropped_first() -> None:
    s = summary(FakeClock(), samples_max=10)
    for v in range(1, 101):
        s.observe(float(v))
    # Only the 10 most recent observations (91..100) remain.
    assert s.quantile(0.0) == 91.0
    assert s.quantile(1.0) == 100.0
    assert s.quantile(0.5) == 95.0


def test_collect_exports_the_quantile_sum_and_count_samples() -> None:
    registry = CollectorRegistry()
    s = summary(FakeClock(), registry=registry)
    for v in (0.001, 0.002, 0.003, 0.5):
        s.observe(v)
    families = list(registry.collect())
    assert [f.type for f in families] == ["summary"]
    samples = [(x.name, x.labels, x.value) for x in families[0].samples]
    assert samples == [
        ("test_fsync_duration_seconds", {"quantile": "0.5"}, 0.002),
        ("test_fsync_duration_seconds", {"quantile": "0.9"}, 0.5),
        ("test_fsync_duration_seconds", {"quantile": "0.99"}, 0.5),
        ("test_fsync_duration_seconds_count", {}, 4),
        ("test_fsync_duration_seconds_sum", {}, pytest.approx(0.506)),
    ]


def test_observe_and_collect_are_thread_safe() -> None:
    clock = FakeClock()
    registry = CollectorRegistry()
    s = summary(clock, samples_max=512, registry=registry)
    threads_n, per_thread = 8, 2000
    start = threading.Barrier(threads_n + 1)
    scrapes: list[int] = []

    def writer(k: int) -> None:
        start.wait()
        for i in range(per_thread):
            s.observe(float(k * per_thread + i))

    def scraper() -> None:
        start.wait()
        for _ in range(200):
            generate_latest(registry)
            scrapes.append(1)

    workers = [threading.Thread(target=writer, args=(k,)) for k in range(threads_n)]
    workers.append(threading.Thread(target=scraper))
    for t in workers:
        t.start()
    for t in workers:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in workers)
    assert len(scrapes) == 200
    total = threads_n * per_thread
    values = {
        sample.name: sample.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for sample in family.samples
    }
    assert values["test_fsync_duration_seconds_count"] == total
    assert values["test_fsync_duration_seconds_sum"] == float(sum(range(total)))
    assert 0.0 <= s.quantile(0.0) <= s.quantile(0.5) <= s.quantile(1.0) < total


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"window_seconds": 0.0}, "window_seconds"),
        ({"window_seconds": -1.0}, "window_seconds"),
        ({"samples_max": 0}, "samples_max"),
        ({"quantiles": ()}, "quantiles"),
        ({"quantiles": (0.5, 1.5)}, "quantile"),
        ({"quantiles": (0.5, 0.5)}, "distinct"),
    ],
)
def test_invalid_arguments_are_refused(kwargs: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {"window_seconds": 60.0, "samples_max": 16}
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        SlidingWindowSummary("x_seconds", "x", **arguments)  # type: ignore[arg-type]


def test_nan_and_out_of_range_quantiles_are_refused() -> None:
    s = summary(FakeClock())
    with pytest.raises(ValueError, match="NaN"):
        s.observe(math.nan)
    with pytest.raises(ValueError, match="quantile"):
        s.quantile(1.01)


def test_registering_the_same_name_twice_fails() -> None:
    registry = CollectorRegistry()
    summary(FakeClock(), registry=registry)
    with pytest.raises(ValueError, match="Duplicated"):
        summary(FakeClock(), registry=registry)


# --- Metrics: the exposition -------------------------------------------------------------


def test_fsync_summary_exposes_the_runbook_quantile_lines() -> None:
    metrics = Metrics(CollectorRegistry())
    for v in (0.002, 0.003, 0.25):
        metrics.wal_fsync_duration.observe(v)
    text = exposition(metrics)
    assert "# TYPE stemedb_wal_fsync_duration_seconds summary" in text
    assert re.search(r'^stemedb_wal_fsync_duration_seconds\{quantile="0\.5"\} 0\.003$', text, re.M)
    assert re.search(r'^stemedb_wal_fsync_duration_seconds\{quantile="0\.9"\} 0\.25$', text, re.M)
    assert re.search(r'^stemedb_wal_fsync_duration_seconds\{quantile="0\.99"\} 0\.25$', text, re.M)
    assert re.search(r"^stemedb_wal_fsync_duration_seconds_count 3\.0$", text, re.M)


def test_fsync_summary_quantiles_are_nan_before_any_fsync() -> None:
    text = exposition(Metrics(CollectorRegistry()))
    assert 'stemedb_wal_fsync_duration_seconds{quantile="0.99"} NaN\n' in text


def test_fsync_errors_expose_the_runbook_line() -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.wal_fsync_errors_total.labels(segment="segment.001.wal").inc()
    text = exposition(metrics)
    # The runbook greps for this line: curl -s .../metrics | grep wal_fsync_errors
    assert re.search(
        r'^stemedb_wal_fsync_errors_total\{segment="segment\.001\.wal"\} 1\.0$', text, re.M
    )


def test_openmetrics_exposition_keeps_the_quantile_lines() -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.wal_fsync_duration.observe(0.2)
    text = generate_latest_openmetrics(metrics.registry).decode()
    assert 'stemedb_wal_fsync_duration_seconds{quantile="0.99"} 0.2\n' in text
    assert text.endswith("# EOF\n")


# Metric names the product contract (SPEC.md) and the runbook depend on, with their type.
CONTRACT_METRICS = {
    "stemedb_wal_fsync_errors": "counter",
    "stemedb_wal_fsync_duration_seconds": "summary",
    "stemedb_wal_segment_rotations": "counter",
    "stemedb_wal_size_bytes": "gauge",
    "stemedb_wal_replay_debt_bytes": "gauge",
    "stemedb_wal_fs_free_bytes": "gauge",
    "stemedb_wal_fs_free_inodes": "gauge",
    "stemedb_storage_errors": "counter",
    "stemedb_replay_bytes_done": "gauge",
    "stemedb_replay_bytes_target": "gauge",
    "stemedb_replay_last_duration_seconds": "gauge",
    "stemedb_checkpoint_last_success_timestamp_seconds": "gauge",
    "stemedb_http_requests": "counter",
    "stemedb_http_request_duration_seconds": "histogram",
    "stemedb_group_commit_batch_records": "histogram",
    "stemedb_group_commit_batch_bytes": "histogram",
    "stemedb_wal_writes_fenced": "gauge",
    "process_resident_memory_bytes": "gauge",
    "process_open_fds": "gauge",
}


def test_contract_metrics_are_declared_with_their_types() -> None:
    families = {f.name: f.type for f in Metrics(CollectorRegistry()).registry.collect()}
    for name, kind in CONTRACT_METRICS.items():
        assert families.get(name) == kind, name


def test_every_metric_has_help_text() -> None:
    text = exposition(Metrics(CollectorRegistry()))
    for family in text_string_to_metric_families(text):
        assert family.documentation.strip(), family.name


def test_labels_are_the_declared_ones() -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.http_requests_total.labels(
        route="/v1/assertions/{id}", method="GET", status="200"
    ).inc()
    metrics.http_request_duration_seconds.labels(route="/v1/assertions/{id}", method="GET").observe(
        0.004
    )
    metrics.hold_lag_bytes.labels(hold="checkpoint").set(4096)
    text = exposition(metrics)
    assert (
        'stemedb_http_requests_total{method="GET",route="/v1/assertions/{id}",status="200"} 1.0'
        in text
    )
    assert (
        'stemedb_http_request_duration_seconds_bucket{le="0.005",method="GET",'
        'route="/v1/assertions/{id}"} 1.0' in text
    )
    assert 'stemedb_wal_hold_lag_bytes{hold="checkpoint"} 4096.0' in text
    with pytest.raises(ValueError):
        metrics.storage_errors_total.labels(op="write")


def test_storage_error_series_exist_at_zero_before_the_first_error() -> None:
    # rate() and increase() only see the first error if the series existed before it.
    text = exposition(Metrics(CollectorRegistry()))
    operations = ("write", "fsync", "fallocate", "rename", "unlink", "read", "open", "sqlite")
    for operation in (*operations, "rotate", "apply", "statvfs"):  # the last three: the engine's
        assert operation in STORAGE_OPERATIONS
        assert f'stemedb_storage_errors_total{{operation="{operation}"}} 0.0' in text


def test_histogram_buckets() -> None:
    metrics = Metrics(CollectorRegistry())
    text = exposition(metrics)

    def buckets(name: str) -> list[str]:
        return re.findall(rf'^{name}_bucket\{{le="([^"]+)"\}}', text, re.M)

    assert buckets("stemedb_wal_fsync_latency_seconds")[0] == "5e-05"
    assert buckets("stemedb_wal_fsync_latency_seconds")[-2:] == ["10.0", "+Inf"]
    assert "0.1" in buckets("stemedb_wal_fsync_latency_seconds")  # the WALFsyncSlow threshold
    assert buckets("stemedb_group_commit_batch_records") == [
        "1.0", "2.0", "4.0", "8.0", "16.0", "32.0", "64.0", "128.0", "256.0", "512.0",
        "1024.0", "+Inf",
    ]  # fmt: skip
    assert buckets("stemedb_group_commit_batch_bytes")[0] == "256.0"
    assert buckets("stemedb_group_commit_batch_bytes")[-2:] == ["1.6777216e+07", "+Inf"]  # 16 MiB


def test_process_metrics_come_from_our_registry() -> None:
    metrics = Metrics(CollectorRegistry())
    text = exposition(metrics)
    rss = re.search(r"^process_resident_memory_bytes (\S+)$", text, re.M)
    assert rss is not None and float(rss.group(1)) > 0
    assert re.search(r"^process_open_fds \d", text, re.M)
    assert re.search(r"^process_start_time_seconds \d", text, re.M)
    threads = re.search(r"^stemedb_process_threads (\S+)$", text, re.M)
    assert threads is not None and float(threads.group(1)) >= 1
    assert re.search(r'^stemedb_build_info\{version="[^"]+"\} 1\.0$', text, re.M)


def test_default_registry_is_fresh_and_private() -> None:
    a, b = Metrics(), Metrics()
    assert a.registry is not b.registry
    assert a.registry is not REGISTRY
    a.wal_segment_rotations_total.inc()
    assert "stemedb_wal_segment_rotations_total 1.0" in exposition(a)
    assert "stemedb_wal_segment_rotations_total 0.0" in exposition(b)
    assert not any(f.name.startswith("stemedb_") for f in REGISTRY.collect())


def test_registering_twice_on_one_registry_fails() -> None:
    registry = CollectorRegistry()
    Metrics(registry)
    with pytest.raises(ValueError, match="Duplicated"):
        Metrics(registry)


def test_fsync_window_settings_reach_the_summary() -> None:
    metrics = Metrics(CollectorRegistry(), fsync_window_seconds=5.0, fsync_window_samples_max=3)
    assert metrics.wal_fsync_duration.window_seconds == 5.0
    assert metrics.wal_fsync_duration.samples_max == 3
    for v in (9.0, 1.0, 2.0, 3.0):
        metrics.wal_fsync_duration.observe(v)
    assert metrics.wal_fsync_duration.quantile(1.0) == 3.0


@pytest.fixture
def no_directory_walks(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a scrape must not walk a directory or probe a filesystem")

    for name in ("scandir", "walk", "statvfs"):
        monkeypatch.setattr(os, name, refuse)
    monkeypatch.setattr(shutil, "disk_usage", refuse)
    yield


@pytest.mark.usefixtures("no_directory_walks")
def test_a_scrape_never_walks_a_directory() -> None:
    metrics = Metrics(CollectorRegistry())
    assert "stemedb_wal_size_bytes 0.0" in exposition(metrics)


# --- promtool ---------------------------------------------------------------------------


def populated_exposition() -> bytes:
    """Every metric with at least one sample, labelled ones included."""
    metrics = Metrics(CollectorRegistry())
    metrics.wal_fsync_errors_total.labels(segment="segment.001.wal").inc()
    for v in (0.0004, 0.0011, 0.2):
        metrics.wal_fsync_duration.observe(v)
        metrics.wal_fsync_latency.observe(v)
    metrics.group_commit_batch_records.observe(17)
    metrics.group_commit_batch_bytes.observe(9000)
    metrics.checkpoint_duration_seconds.observe(0.3)
    metrics.storage_errors_total.labels(operation="fsync").inc()
    metrics.hold_lsn.labels(hold="checkpoint").set(4096)
    metrics.hold_lag_bytes.labels(hold="checkpoint").set(1 << 20)
    metrics.hold_last_advance_timestamp_seconds.labels(hold="checkpoint").set(1.7e9)
    metrics.http_requests_total.labels(route="/v1/assertions", method="POST", status="201").inc()
    metrics.http_request_duration_seconds.labels(route="/v1/assertions", method="POST").observe(
        0.003
    )
    return generate_latest(metrics.registry)


def test_promtool_check_metrics_accepts_the_exposition() -> None:
    proc = subprocess.run(
        [promtool(), "check", "metrics"],
        input=populated_exposition(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    problems = (proc.stdout + proc.stderr).decode()
    assert proc.returncode == 0, problems


def test_promtool_check_metrics_is_not_a_rubber_stamp() -> None:
    # The lint must catch what it is meant to: a gauge named like a counter.
    bad = populated_exposition() + (
        b"# HELP stemedb_bad_total a gauge with a counter's suffix\n"
        b"# TYPE stemedb_bad_total gauge\n"
        b"stemedb_bad_total 1\n"
    )
    proc = subprocess.run(
        [promtool(), "check", "metrics"], input=bad, capture_output=True, timeout=60, check=False
    )
    assert proc.returncode != 0
    assert b"stemedb_bad_total" in proc.stdout + proc.stderr
