"""A tiny run of every benchmark, so the bench code cannot rot.

Sizes are minimal and nothing here asserts a timing (the machine is shared and
noisy): each run must finish and produce its tables with the expected rows, on
stdout and in the ``--json`` document.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from bench import (
    archive_bench,
    cluster_bench,
    engine_bench,
    http_bench,
    memory_bench,
    replay_bench,
    restart_bench,
    restore_bench,
    stack_bench,
)


def _run(main: Any, args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
         ) -> tuple[str, dict[str, Any]]:
    out_json = tmp_path / "result.json"
    assert main([*args, "--dir", str(tmp_path / "data"), "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    doc = json.loads(out_json.read_text())
    assert doc["machine"]["nproc"] >= 1
    assert doc["machine"]["bench_dir_fs"] != ""
    return out, doc


@pytest.mark.timeout(60)
def test_engine_bench(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state_dir = tmp_path / "other-disk"
    state_dir.mkdir()
    out, doc = _run(engine_bench.main, ["--seconds", "0.3", "--warmup", "0.05",
                                        "--submitters", "1,4", "--state-dir", str(state_dir)],
                    tmp_path, capsys)
    assert "Durable writes" in out and "Targets" in out
    (rows,) = doc["tables"].values()
    systems = [(" ".join(r["system"].split()[:3]), r["submitters"]) for r in rows]
    assert systems == [
        ("raw fdatasync (200", 1), ("raw fdatasync (200", 1),
        ("StemeDB engine, threads", 1), ("StemeDB engine, asyncio", 1),
        ("StemeDB engine, asyncio,", 1), ("design floor: encode", 1),
        ("apply floor: apply_record,", 1), ("SQLite WAL synchronous=FULL", 1),
        ("StemeDB engine, threads", 4), ("StemeDB engine, asyncio", 4),
        ("StemeDB engine, asyncio,", 4), ("design floor: encode", 4),
        ("apply floor: apply_record,", 4), ("SQLite WAL synchronous=FULL", 4)]
    assert [r["system"] for r in rows].count(engine_bench.SPLIT_LABEL) == 2
    for label in (engine_bench.FLOOR_LABEL, engine_bench.APPLY_LABEL):
        floors = [r for r in rows if r["system"] == label]
        assert [r["batch_mean"] for r in floors] == [1.0, 4.0]  # a group of N per commit
    assert all(r["writes"] > 0 and r["p99_ms"] >= r["p50_ms"] > 0 for r in rows)
    assert all(r["p999_ms"] >= r["p99_ms"] for r in rows if "p999_ms" in r)
    # The apply lag is sampled in the engine cells with more than one submitter only.
    engine_rows = [r for r in rows if r["system"].startswith("StemeDB engine")]
    assert all(("lag_p99_bytes" in r) == (r["submitters"] > 1) for r in engine_rows)
    assert all(r["lag_samples"] > 0 and r["lag_max_bytes"] >= r["lag_p99_bytes"] >= 0
               for r in engine_rows if r["submitters"] > 1)
    assert list(state_dir.iterdir()) == []  # the split cells' state directories removed
    assert {t["target"] for t in doc["targets"]} == {
        "Engine, 1 submitter (threads): p50 vs one raw fdatasync (preallocated)",
        "Engine, 1 submitter (asyncio): p50 vs one raw fdatasync (preallocated)"}
    assert all("design floor" in t["measured"] for t in doc["targets"])


@pytest.mark.timeout(90)
def test_restart_bench(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, doc = _run(restart_bench.main, ["--sizes", "2000", "--kill-at", "target",
                                         "--steady-seconds", "0.2"], tmp_path, capsys)
    assert "Restart after kill -9" in out
    (rows,) = doc["tables"].values()
    assert [r["mode"] for r in rows] == ["process crash", "power loss"]
    for r in rows:
        assert r["assertions"] >= 2000
        assert r["process_to_ready_s"] > r["engine_to_ready_s"] > 0
        assert r["peak_rss_at_ready_mib"] > 0 and r["steady_rss_mib"] > 0
    assert len(doc["targets"]) == 4


@pytest.mark.timeout(90)
def test_replay_bench(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, doc = _run(replay_bench.main, ["--assert-records", "300", "--batch-records", "2",
                                        "--runs", "2"], tmp_path, capsys)
    assert "WAL replay" in out
    (rows,) = doc["tables"].values()
    assert [r["record kind"].split()[0] for r in rows] == ["ASSERT", "BATCH"]
    assert rows[0]["records"] > 300 and rows[0]["assertions"] >= 300
    assert rows[1]["assertions"] >= 2000
    assert all(r["records_per_s"] > 0 and r["mib_per_s"] > 0 for r in rows)
    assert all(r["runs"] == 2 for r in rows)
    for r in rows:
        assert r["slowest_records_per_s"] <= r["records_per_s"] <= r["fastest_records_per_s"]


@pytest.mark.timeout(300)
def test_replay_bench_counts_instructions(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    # scripts/test.sh installs valgrind; a missing one is a broken setup, not a skip.
    assert shutil.which("valgrind"), "valgrind is not installed (scripts/test.sh installs it)"
    _, doc = _run(replay_bench.main, ["--assert-records", "300", "--batch-records", "0",
                                      "--runs", "1", "--callgrind"], tmp_path, capsys)
    (rows,) = doc["tables"].values()
    (row,) = rows
    # recover() of ~300 records: more than a few thousand instructions each (decoding,
    # SQLite), and far fewer than the imports the baseline subtracts (~0.8 G).
    assert 3_000 < row["instructions_per_record"] < 2_000_000, row
    assert row["recover_instructions"] == pytest.approx(
        row["instructions_per_record"] * row["records"])


@pytest.mark.timeout(120)
def test_http_bench(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # scripts/test.sh installs these; a missing one is a broken setup, not a skip.
    for tool in ("wrk", "strace", "stemedb", "redis-benchmark", "pgbench", "cc"):
        assert shutil.which(tool), f"{tool} is not installed (scripts/test.sh installs it)"
    state_dir = tmp_path / "other-disk"
    state_dir.mkdir()
    args = ["--seconds", "1", "--clients", "1", "--batch-clients", "1",
            "--read-clients", "1", "--write-clients", "2", "--fdatasync-delay-ms", "20",
            "--state-dir", str(state_dir)]
    out, doc = _run(http_bench.main, args, tmp_path, capsys)
    assert "Durable writes over the network" in out
    tables = doc["tables"]
    writes = next(v for k, v in tables.items() if k.startswith("Durable writes"))
    systems = {r["system"].split()[0] for r in writes}
    assert systems == {"StemeDB", "PostgreSQL", "Redis"}
    assert [r["system"] for r in writes].count(http_bench.SPLIT_LABEL) == 1
    assert {http_bench.PG_PK_LABEL, http_bench.PG_IDX_LABEL} <= {r["system"] for r in writes}
    assert list(state_dir.iterdir()) == []  # the split server's state directory removed
    assert all(r["clients"] == 1 and r["requests"] > 0 for r in writes)
    batch, ceiling, apply_ceiling = tables["Batch writes"]
    assert batch["assertions_per_s"] > 0 and batch["lag_samples"] > 0
    assert batch["lag_max_bytes"] >= batch["lag_p99_bytes"] >= 0 and batch["lag_p99_ms"] >= 0
    assert ceiling["system"] == http_bench.CEILING_LABEL and ceiling["assertions_per_s"] > 0
    assert apply_ceiling["system"] == http_bench.APPLY_CEILING_LABEL
    assert apply_ceiling["assertions_per_s"] > 0
    targets = {t["target"]: t for t in doc["targets"]}
    assert "design ceiling" in targets["/v1/batch of 1,000"]["measured"]
    assert {"POST /v1/assertions at 1 client p50 vs PostgreSQL INSERT (primary key only)",
            "POST /v1/assertions at 1 client p50 vs PostgreSQL INSERT (+3 indexes)"
            } <= targets.keys()
    reads = tables[http_bench.READS_TITLE]
    assert len(reads) == 11 and all(r["reads_per_s"] > 0 for r in reads)
    assert [r["system"] for r in reads].count(http_bench.PG_READ_SYSTEM) == 2
    assert [r["system"] for r in reads].count(http_bench.STALE_READ_SYSTEM) == 1
    # Without -f strace traces the main thread only; the WAL writer must be that thread,
    # or the injected delay would not reach the WAL's fdatasync.
    traced = next(r for r in reads if r["load"].startswith("2 writers, strace,"))
    assert traced["write_p50_ms"] >= 20
    # vs PostgreSQL under write load, and the two slowed-fdatasync rows (not -f).
    assert [t.startswith("read p99") for t in targets].count(True) == 3


@pytest.mark.timeout(90)
def test_stack_bench(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--seconds", "1", "--clients", "4", "--rounds", "1", "--no-peers"]
    out, doc = _run(stack_bench.main, args, tmp_path, capsys)
    assert "POST /v1/assertions at 4 clients" in out
    (rows,) = doc["tables"].values()
    assert [r["stack"] for r in rows] == list(stack_bench.STACKS)
    # Every stack really wrote: requests answered, none of them an error status.
    assert all(r["per_s"] > 0 and r["errors"] == 0 for r in rows), rows


@pytest.mark.timeout(90)
def test_memory_bench(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--seconds", "3", "--sample-seconds", "1", "--clients", "2",
            "--page-cache-bytes", "1048576"]
    out, _ = _run(memory_bench.main, args, tmp_path, capsys)
    assert "stemedb serve RSS under unique writes" in out and "RSS over time" in out
    assert "Targets" in out


@pytest.mark.timeout(120)
def test_archive_bench(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--seconds", "1", "--clients", "4", "--rounds", "1"]
    out, doc = _run(archive_bench.main, args, tmp_path, capsys)
    assert "POST /v1/assertions at 4 clients" in out
    (rows,) = doc["tables"].values()
    assert [r["mode"] for r in rows] == list(archive_bench.MODES)
    assert all(r["per_s"] > 0 and r["errors"] == 0 for r in rows), rows
    # The archived modes really archived, and caught up, with no failure.
    for r in rows[1:]:
        assert r["lag_p99_s"] >= 0 and r["catch_up_s"] >= 0, r
        assert r["archive_failures"] == 0, r
    assert len(doc["targets"]) == 2


@pytest.mark.timeout(180)
def test_restore_bench(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--backup-assertions", "3000", "--wal-records", "300", "--writers", "2"]
    out, doc = _run(restore_bench.main, args, tmp_path, capsys)
    assert "Restore: base backup + archived WAL" in out
    restores, writes = doc["tables"].values()
    assert [r["from"] for r in restores] == ["file://", "S3 (moto)"]
    # Each restore was checked against the live count; both restored the same state.
    assert restores[0]["assertions"] == restores[1]["assertions"] > 3300
    assert all(r["restore_s"] > 0 for r in restores)
    assert writes[1]["window"] == "during the backup" and writes[1]["writes"] >= 0
    assert len(doc["targets"]) == 2


@pytest.mark.timeout(60)
def test_cluster_bench(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # scripts/test.sh installs these; a missing one is a broken setup, not a skip.
    for tool in ("wrk", "etcd"):
        assert shutil.which(tool), f"{tool} is not installed (scripts/test.sh installs it)"
    args = ["--ttl", "2", "--rounds", "1", "--seconds", "1", "--clients", "4",
            "--writers", "2"]
    out, doc = _run(cluster_bench.main, args, tmp_path, capsys)
    assert "Unplanned failover" in out and "Planned switchover" in out
    loads, failovers, switchovers = doc["tables"].values()
    assert sorted(r["synchronous_replicas"] for r in loads) == [0, 1]
    # Every load run wrote to the leader, and the replicas' lag was sampled meanwhile.
    assert all(r["per_s"] > 0 and r["errors"] == 0 and r["lag_samples"] > 0 for r in loads)
    assert all(r["lag_max_ms"] >= r["lag_p99_ms"] >= 0 for r in loads)
    # A fresh cluster fails over once: another node acknowledged, in a newer term.
    (f,) = failovers
    assert f["to"] not in (None, f["killed"]) and f["new_term"] > f["old_term"], f
    assert f["first_ack_s"] > 0 and f["rejoin_s"] > 0
    (s,) = switchovers
    assert s["http_status"] == 200 and s["to"] != s["from"] and s["window_s"] > 0, s
    assert len(doc["targets"]) == 5
