"""`stemedb wal repair` / `stemedb-wal-repair`: cut damaged segments, quarantine the rest.

Table-driven over the same damage as test_wal_verify.py.  For each: the repaired
output verifies clean, keeps exactly the records before the damage, leaves its input
untouched, and the engine - with its state removed, so every record comes from the
WAL - opens it and serves every record before the cut.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stemedb.cli._wal import wal_repair_command
from stemedb.tools import ToolError, repair_dir, repair_segment, verify_dir, verify_file
from stemedb.tools.testing import (
    DAMAGES,
    SampleWal,
    all_records,
    assertion_subjects,
    build_sample_wal,
    open_engine_replaying,
    segment_records,
)
from stemedb.wal import SEGMENT_HEADER_SIZE
from tests._tmp import fast_dir

ASSERTIONS = 1100  # three 64 KiB segments
SINGLE = [c for c in DAMAGES if c not in ("clean", "missing_segment", "bad_header")]
DAMAGED = [c for c in DAMAGES if c != "clean"]


def _fast_tmp(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    return fast_dir(name, tmp_path_factory.mktemp(name))


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SampleWal]:
    base = _fast_tmp(tmp_path_factory, "repair-pristine")
    wal = build_sample_wal(str(base / "data"), assertions=ASSERTIONS)
    assert len(wal.segments) == 3
    yield wal
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def copy(pristine: SampleWal, tmp_path: Path) -> Path:
    dst = tmp_path / "data"
    shutil.copytree(pristine.data_dir, dst)
    return dst


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def expected_subjects(kept_records: int) -> list[str]:
    # Record 0 is the genesis; record i >= 1 is the assertion s{i-1}.
    return [f"s{i}" for i in range(kept_records - 1)]


@pytest.mark.parametrize("case", SINGLE)
def test_single_segment_repair(case: str, copy: Path) -> None:
    dmg = DAMAGES[case](str(copy / "wal"))
    seg = copy / "wal" / dmg.segment
    out = copy / f"{dmg.segment}.repaired"  # outside wal/: not yet part of the log
    before = sha256(seg)
    report = repair_segment(str(seg), str(out))
    assert sha256(seg) == before, "repair modified its input"
    assert report.records_kept == dmg.segment_records_kept
    assert report.truncate_at == dmg.offset == report.last_valid_offset
    assert report.first_lost_lsn == dmg.lsn
    assert report.bytes_cut > 0
    assert report.backup == str(seg)
    assert report.output_verified is True
    assert verify_file(str(out)).ok
    assert len(segment_records(str(out))) == dmg.segment_records_kept
    assert out.read_bytes()[:SEGMENT_HEADER_SIZE] == seg.read_bytes()[:SEGMENT_HEADER_SIZE]
    assert out.stat().st_size == seg.stat().st_size
    # The kept records are byte-for-byte the originals.
    orig = segment_records(str(seg))
    assert [r.payload for r in segment_records(str(out))] == [
        r.payload for r in orig[:report.records_kept]]


@pytest.mark.parametrize("case", DAMAGED)
def test_directory_repair_then_engine_serves_everything_before_the_cut(
        case: str, copy: Path) -> None:
    wal_dir = copy / "wal"
    names_before = sorted(os.listdir(wal_dir))
    dmg = DAMAGES[case](str(wal_dir))
    files_before = {n: sha256(wal_dir / n) for n in os.listdir(wal_dir)}
    plan = repair_dir(str(copy), dry_run=True)
    assert {n: sha256(wal_dir / n) for n in os.listdir(wal_dir)} == files_before
    report = repair_dir(str(copy))
    assert report.as_dict()["lost_records"] == plan.as_dict()["lost_records"]
    assert report.verified_after is True
    # Nothing deleted: every original file is still there, under its name or set aside.
    after = set(os.listdir(wal_dir))
    for name in files_before:
        assert name in after or f"{name}.corrupted" in after
    for q in report.quarantined:
        assert (wal_dir / q["to"]).exists() and not (wal_dir / q["from"]).exists()
    pristine_total = 1 + ASSERTIONS
    assert 0 <= report.lost.records <= pristine_total - dmg.records_kept
    if dmg.lsn is not None:
        assert report.first_lost_lsn == dmg.lsn
    else:  # a whole segment: lost from the LSN where the last kept segment ends
        assert report.first_lost_lsn == 65536
    kept = verify_dir(str(wal_dir)).records
    assert kept == dmg.records_kept
    eng = open_engine_replaying(str(copy))
    try:
        assert assertion_subjects(eng) == expected_subjects(dmg.records_kept)
    finally:
        eng.close()
    assert names_before  # the fixture had segments


def test_dry_run_and_clean_directory(copy: Path) -> None:
    report = repair_dir(str(copy))
    assert report.clean and not report.quarantined


@pytest.mark.parametrize("truncate_at, force, message", [
    (SEGMENT_HEADER_SIZE + 4, False, "is not a record boundary"),
    (10, False, "inside the 64-byte segment header"),
    ("past", False, "past the end of the last valid record"),
])
def test_refused_offsets(truncate_at: int | str, force: bool, message: str,
                         copy: Path) -> None:
    dmg = DAMAGES["bad_checksum"](str(copy / "wal"))
    seg = copy / "wal" / dmg.segment
    off = dmg.offset + 64 if truncate_at == "past" else int(truncate_at)
    with pytest.raises(ToolError) as exc:
        repair_segment(str(seg), str(copy / "out.wal"), off, force=force)
    assert message in exc.value.message
    assert exc.value.hint
    assert not (copy / "out.wal").exists()


def test_force_keeps_damage_past_the_last_valid_record(copy: Path) -> None:
    dmg = DAMAGES["bad_checksum"](str(copy / "wal"))
    seg = copy / "wal" / dmg.segment
    recs = segment_records(str(seg))
    cut = dmg.offset + 64
    report = repair_segment(str(seg), str(copy / "out.wal"), cut, force=True)
    assert report.warnings and "damaged bytes" in report.warnings[0]
    assert report.output_verified is False
    assert len(recs) == dmg.segment_records_kept


def test_earlier_boundary_keeps_exactly_the_records_before_it(copy: Path) -> None:
    seg = copy / "wal" / "segment.003.wal"
    recs = segment_records(str(seg))
    report = repair_segment(str(seg), str(copy / "out.wal"), recs[10].offset)
    assert report.records_kept == 10
    assert report.lost.records == len(recs) - 10
    assert report.first_lost_lsn == recs[10].lsn
    assert len(segment_records(str(copy / "out.wal"))) == 10


def test_refuses_to_overwrite_or_modify_input(copy: Path) -> None:
    seg = copy / "wal" / "segment.003.wal"
    other = copy / "exists.wal"
    other.write_bytes(b"keep me")
    with pytest.raises(ToolError, match="exists"):
        repair_segment(str(seg), str(other))
    assert other.read_bytes() == b"keep me"
    with pytest.raises(ToolError, match="same file"):
        repair_segment(str(seg), str(seg))
    report = repair_segment(str(seg), str(other), force=True)
    assert report.output_verified is True


def test_bad_header_cannot_be_cut_alone(copy: Path) -> None:
    dmg = DAMAGES["bad_header"](str(copy / "wal"))
    with pytest.raises(ToolError) as exc:
        repair_segment(str(copy / "wal" / dmg.segment), str(copy / "out.wal"))
    assert "header is unreadable" in exc.value.message
    assert exc.value.hint and "--data-dir" in exc.value.hint


def test_cli_report_and_optional_truncate_value(copy: Path) -> None:
    dmg = DAMAGES["torn_last_record"](str(copy / "wal"))
    seg = copy / "wal" / dmg.segment
    runner = CliRunner()
    dry = runner.invoke(wal_repair_command, ["--segment", str(seg), "--output",
                                             str(copy / "o.wal"), "--truncate-at", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "would write" in dry.output and not (copy / "o.wal").exists()
    res = runner.invoke(wal_repair_command, ["--segment", str(seg), "--output",
                                             str(copy / "o.wal"), "--truncate-at"])
    assert res.exit_code == 0, res.output
    assert f"records kept: {dmg.segment_records_kept}" in res.output
    assert f"first lost LSN: {dmg.lsn}" in res.output
    assert "bytes cut: " in res.output and "output verifies: yes" in res.output
    res2 = runner.invoke(wal_repair_command, ["--segment", str(seg), "--output",
                                              str(copy / "o2.wal"), "--truncate-at",
                                              str(dmg.offset)])
    assert res2.exit_code == 0, res2.output
    assert (copy / "o.wal").read_bytes() == (copy / "o2.wal").read_bytes()
    again = runner.invoke(wal_repair_command, ["--segment", str(seg), "--output",
                                               str(copy / "o.wal")])
    assert again.exit_code == 2
    assert "Try:" in again.output


def test_cli_directory_mode(copy: Path) -> None:
    DAMAGES["bit_flip_middle_segment"](str(copy / "wal"))
    runner = CliRunner()
    dry = runner.invoke(wal_repair_command, ["--data-dir", str(copy), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "dry run, nothing changed" in dry.output
    assert "quarantine segment.003.wal -> segment.003.wal.corrupted" in dry.output
    res = runner.invoke(wal_repair_command, ["--data-dir", str(copy)])
    assert res.exit_code == 0, res.output
    assert "verify after repair: clean" in res.output
    assert (copy / "wal" / "segment.002.wal.corrupted").exists()
    assert (copy / "wal" / "segment.003.wal.corrupted").exists()


# -- property: any single damaged byte ----------------------------------------------

@pytest.fixture(scope="module")
def one_segment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    base = _fast_tmp(tmp_path_factory, "repair-one")
    wal = build_sample_wal(str(base / "data"), assertions=60)
    yield Path(wal.wal_dir) / wal.segments[0]
    shutil.rmtree(base, ignore_errors=True)


@settings(max_examples=60, deadline=None, suppress_health_check=[
    HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_damaged_byte_repairs_to_a_valid_prefix(one_segment: Path, tmp_path: Path,
                                                    data: st.DataObject) -> None:
    recs = segment_records(str(one_segment))
    end = recs[-1].offset + recs[-1].size
    pos = data.draw(st.integers(SEGMENT_HEADER_SIZE, end - 1), label="offset")
    value = data.draw(st.integers(0, 255), label="value")
    work = tmp_path / "damaged.wal"
    out = tmp_path / "repaired.wal"
    for p in (work, out):
        if p.exists():
            p.unlink()
    shutil.copyfile(one_segment, work)
    with open(work, "r+b") as f:
        f.seek(pos)
        old = f.read(1)[0]
        f.seek(pos)
        f.write(bytes([value]))
    report = repair_segment(str(work), str(out))
    assert verify_file(str(out)).ok
    kept = segment_records(str(out))
    hit = next(i for i, r in enumerate(recs) if r.offset <= pos < r.offset + r.size)
    if value == old:
        assert len(kept) == len(recs)
    else:
        # Every record before the damaged one survives, byte for byte; none after it.
        # (Padding to 8 bytes is outside the CRC but must be zero, so it counts too.)
        assert len(kept) == hit == report.records_kept
    assert [r.payload for r in kept] == [r.payload for r in recs[:len(kept)]]


def test_all_records_helper_matches_verify(copy: Path) -> None:
    assert len(all_records(str(copy / "wal"))) == verify_dir(str(copy)).records


@pytest.mark.parametrize("case", ["torn_last_record", "bit_flip_middle_segment"])
def test_directory_repair_with_the_state_kept(case: str, copy: Path) -> None:
    """The state is ahead of the repaired WAL: the report says so, and the server
    starts with its state and serves every assertion it had applied."""
    from stemedb.engine import Engine
    from stemedb.tools.testing import sample_engine_config

    DAMAGES[case](str(copy / "wal"))
    report = repair_dir(str(copy))
    assert any("past the new WAL end" in w and "stay in state.sqlite3" in w
               for w in report.warnings), report.warnings
    eng = Engine(str(copy), sample_engine_config())
    eng.recover()
    try:
        assert assertion_subjects(eng) == [f"s{i}" for i in range(ASSERTIONS)]
    finally:
        eng.close()
