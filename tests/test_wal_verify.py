"""`stemedb wal verify` and `stemedb-wal-verify` against real segments damaged in each way.

One table (Prometheus' habit): every row damages a copy of the same three-segment
WAL and asserts verify's exact fault list - kind, segment, offset, LSN - and its exit
code, for the whole directory and for the damaged segment alone.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from stemedb.cli import cli
from stemedb.cli._wal import wal_verify_command
from stemedb.tools import ToolError, verify_dir, verify_file
from stemedb.tools.testing import DAMAGES, SampleWal, build_sample_wal
from tests._tmp import fast_dir

ASSERTIONS = 1100  # enough for three 64 KiB segments


def fast_tmp(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    return fast_dir(name, tmp_path_factory.mktemp(name))


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SampleWal]:
    base = fast_tmp(tmp_path_factory, "verify-pristine")
    wal = build_sample_wal(str(base / "data"), assertions=ASSERTIONS)
    assert len(wal.segments) == 3, wal.segments
    yield wal
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def copy(pristine: SampleWal, tmp_path: Path) -> Path:
    dst = tmp_path / "data"
    shutil.copytree(pristine.data_dir, dst)
    return dst


@pytest.mark.parametrize("case", list(DAMAGES))
def test_verify_reports_each_damage_exactly(case: str, copy: Path) -> None:
    wal_dir = copy / "wal"
    dmg = DAMAGES[case](str(wal_dir))
    report = verify_dir(str(copy))
    got = [(f.kind, f.segment, f.offset, f.lsn) for f in report.faults]
    want = [] if dmg.kind is None else [(dmg.kind, dmg.segment, dmg.offset, dmg.lsn)]
    assert got == want
    assert report.exit_code == (0 if dmg.kind is None else 1)
    if dmg.segment_records_kept is not None:
        seg_summary = next(x for x in report.segments if x.name == dmg.segment)
        assert seg_summary.damaged
        assert seg_summary.records == dmg.segment_records_kept
    if dmg.kind is None:
        assert report.records == dmg.records_kept
    # The segment alone, as the runbook's weekly loop checks it.
    seg = wal_dir / dmg.segment
    single = verify_file(str(seg))
    assert single.exit_code == dmg.file_exit
    if dmg.file_exit:
        assert [(f.kind, f.offset, f.lsn) for f in single.faults] == [
            (dmg.kind, dmg.offset, dmg.lsn)]


@pytest.mark.parametrize("case", ["torn_last_record", "bad_checksum", "bit_flip_middle_segment",
                                  "missing_segment", "bad_header"])
def test_cli_prints_fault_and_repair_command(case: str, copy: Path) -> None:
    dmg = DAMAGES[case](str(copy / "wal"))
    res = CliRunner().invoke(cli, ["wal", "verify", "--data-dir", str(copy)])
    assert res.exit_code == 1, res.output
    path = copy / "wal" / dmg.segment
    lsn = "-" if dmg.lsn is None else str(dmg.lsn)
    assert f"FAULT {dmg.kind}: {path} offset {dmg.offset} LSN {lsn}:" in res.output
    assert "repair:" in res.output
    if case in ("torn_last_record", "bad_checksum"):
        assert (f"repair: stemedb-wal-repair --segment {path} --output {path}.repaired "
                f"--truncate-at {dmg.offset}") in res.output
        assert f"then:   mv {path} {path}.corrupted && mv {path}.repaired {path}" in res.output
    else:
        assert f"stemedb wal repair --data-dir {copy / 'wal'} --dry-run" in res.output
    if case == "torn_last_record":
        assert "cuts it by itself on start" in res.output


def test_json_report(copy: Path) -> None:
    dmg = DAMAGES["bad_checksum"](str(copy / "wal"))
    res = CliRunner().invoke(cli, ["wal", "verify", "--data-dir", str(copy), "--json"])
    assert res.exit_code == 1
    doc = json.loads(res.output)
    assert doc["ok"] is False
    assert [(f["kind"], f["segment"], f["offset"], f["lsn"]) for f in doc["faults"]] == [
        ("corrupt_record", dmg.segment, dmg.offset, dmg.lsn)]
    assert [s["name"] for s in doc["segments"]] == [
        "segment.001.wal", "segment.002.wal", "segment.003.wal"]


def test_clean_directory_and_state_coverage(copy: Path) -> None:
    report = verify_dir(str(copy))
    assert report.ok and report.exit_code == 0
    assert report.applied_end_lsn == report.wal_end_lsn == report.checkpoint_lsn
    res = CliRunner().invoke(wal_verify_command, ["--data-dir", str(copy)])
    assert res.exit_code == 0
    assert res.output.endswith(f"verify: ok, 3 segment(s), {report.records} records\n")
    # The WAL directory itself works too (an operator standing in /var/lib/stemedb/wal).
    assert verify_dir(str(copy / "wal")).ok


def test_state_ahead_of_wal_is_a_gap(copy: Path) -> None:
    import sqlite3
    conn = sqlite3.connect(copy / "state.sqlite3")
    end = verify_dir(str(copy)).wal_end_lsn
    assert end is not None
    conn.execute("UPDATE meta SET value=? WHERE key='applied_end_lsn'", (end + 4096,))
    conn.commit()
    conn.close()
    report = verify_dir(str(copy))
    assert [(f.kind, f.segment, f.lsn) for f in report.faults] == [
        ("gap", "segment.003.wal", end)]


def test_state_needs_deleted_segments(copy: Path) -> None:
    import sqlite3
    (copy / "wal" / "segment.001.wal").unlink()
    conn = sqlite3.connect(copy / "state.sqlite3")
    conn.execute("UPDATE meta SET value=100 WHERE key='applied_end_lsn'")
    conn.commit()
    conn.close()
    report = verify_dir(str(copy))
    assert [(f.kind, f.segment) for f in report.faults] == [
        ("missing_segment", "segment.002.wal")]
    assert "the state needs WAL from LSN 100" in report.faults[0].reason


def test_renamed_copy_is_placed_by_its_header(copy: Path) -> None:
    """`segment.003.wal.corrupted` is the last segment by its header: a torn tail."""
    dmg = DAMAGES["torn_last_record"](str(copy / "wal"))
    seg = copy / "wal" / dmg.segment
    aside = Path(f"{seg}.corrupted")
    seg.rename(aside)
    report = verify_file(str(aside))
    assert [(f.kind, f.offset) for f in report.faults] == [("torn_tail", dmg.offset)]


@pytest.mark.parametrize("args, message", [
    (["--file", "/nonexistent/segment.001.wal"], "does not exist"),
    (["--data-dir", "/nonexistent/dir"], "does not exist"),
    (["--data-dir", "/tmp", "--file", "x"], "not both"),
])
def test_usage_and_io_errors_exit_2(args: list[str], message: str) -> None:
    res = CliRunner().invoke(wal_verify_command, args)
    assert res.exit_code == 2
    assert message in res.output


def test_directory_without_wal_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ToolError) as exc:
        verify_dir(str(tmp_path))
    assert "no wal/ directory" in str(exc.value)
    assert exc.value.hint is not None


def test_no_progress_bar_when_piped(copy: Path) -> None:
    # CliRunner's stderr is not a terminal: nothing but the report is printed.
    res = CliRunner().invoke(cli, ["wal", "verify", "--data-dir", str(copy)])
    assert res.exit_code == 0
    assert "verifying" not in res.output
    assert all(line.startswith(("/", "state:", "verify:")) for line in res.output.splitlines())


def test_progress_bar_on_a_terminal(copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    import sys

    from stemedb.cli import _wal

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    fake = Tty()
    monkeypatch.setattr(sys, "stderr", fake)
    seen: list[tuple[int, int]] = []
    with _wal._progress(True) as update:
        assert update is not None
        report = verify_dir(str(copy), progress=lambda d, t: (seen.append((d, t)),
                                                              update(d, t)))
    assert report.ok
    assert seen and seen[-1][0] == seen[-1][1] == sum(s.file_size for s in report.segments)
