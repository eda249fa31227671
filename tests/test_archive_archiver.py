"""The engine's archiver against a ``file://`` archive: what is acknowledged reaches the
archive in order, verified, before its WAL may go; the position survives restarts; a
name that holds other bytes is never overwritten; a damaged object is named."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from stemedb.archive import (
    ArchiveKey,
    ArchiveReader,
    WalObjectName,
    WalSource,
    open_target,
    pack_object,
    parse_wal_object_name,
)
from stemedb.cli import cli
from stemedb.errors import ArchiveCorruption, ArchiveObjectConflict
from stemedb.storage import OsFileSystem
from stemedb.wal import encode_frame
from tests._archive import (
    archive_settings,
    archived_records,
    assertion,
    caught_up,
    engine,
    metric,
    scratch,
    segment_names,
    wait_for,
)


def _objects(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.swal"))


def test_acknowledged_writes_reach_the_archive_in_order_and_segments_go_after(
        tmp_path: Path) -> None:
    with scratch("arch", tmp_path) as d:
        url = f"file://{d}/archive"
        eng = engine(d / "db", archive_settings(url))
        try:
            acked = [(eng.write(assertion(f"s{i}", 300)).lsn, f"s{i}") for i in range(400)]
            wait_for("the archive to catch up", lambda: caught_up(eng))
            before = segment_names(eng)
            report = eng.checkpoint().result(10)
            assert report.removed_segments and len(segment_names(eng)) < len(before)
            st = eng.status()["archive"]
            assert st["backlog_bytes"] == 0 and st["lag_seconds"] == 0
            assert st["failures"] == {} and st["objects_archived"] >= 1
            assert metric(eng, "stemedb_archive_last_success_timestamp_seconds") > 0
            assert metric(eng, "stemedb_archive_backlog_bytes") == 0
            assert metric(eng, "stemedb_archive_lag_seconds") == 0
            durable = st["durable_lsn"]
        finally:
            eng.close()
        recs = archived_records(url)[1]
        lsns = [lsn for lsn, _t, _p in recs]
        assert lsns == sorted(set(lsns)) and lsns[0] == 64
        by_lsn = {lsn: p for lsn, _t, p in recs}
        for lsn, subject in acked:
            assert json.loads(by_lsn[lsn])["ops"][0]["assert"]["subject"] == subject
        (chain,) = ArchiveReader(open_target(url)).summary()
        assert chain.ranges == [(0, durable)] and not chain.gaps and not chain.overlaps


def test_the_position_survives_restarts_without_overlap(tmp_path: Path) -> None:
    with scratch("arch", tmp_path) as d:
        url = f"file://{d}/archive"
        acked = []
        for run in range(3):
            eng = engine(d / "db", archive_settings(url))
            try:
                acked += [eng.write(assertion(f"r{run}-{i}", 200)).lsn for i in range(60)]
            finally:
                eng.close()  # its last pass ships the rest
        (chain,) = ArchiveReader(open_target(url)).summary()
        assert len(chain.ranges) == 1 and not chain.gaps and not chain.overlaps
        lsns = [lsn for lsn, _t, _p in archived_records(url)[1]]
        assert set(acked) <= set(lsns) and lsns == sorted(set(lsns))


def test_objects_uploaded_before_the_hold_moved_are_checked_and_continued(
        tmp_path: Path) -> None:
    with scratch("arch", tmp_path) as d:
        url = f"file://{d}/archive"
        eng = engine(d / "db", archive_settings(url, interval_seconds=3600))
        try:
            wait_for("the first pass", lambda: caught_up(eng))
            for i in range(100):
                eng.write(assertion(f"s{i}", 200))
                if i % 50 == 49:
                    eng.archive_now()  # an object per 50 records
            assert caught_up(eng)
            end = eng.status()["archive"]["archived_lsn"]
        finally:
            eng.close()
        objects = _objects(d / "archive")
        assert len(objects) == 3
        # A crash between the upload and the hold: node.json still says the first
        # object's end.
        first = parse_wal_object_name("/".join(objects[0].parts[-3:]))
        assert first is not None
        facts_path = d / "db" / "node.json"
        facts = json.loads(facts_path.read_text())
        facts["holds"]["archive"]["lsn"] = first.end_lsn
        facts_path.write_text(json.dumps(facts))
        eng = engine(d / "db", archive_settings(url))
        try:
            wait_for("the archiver to find its objects", lambda: caught_up(eng))
            st = eng.status()["archive"]
            assert st["archived_lsn"] == end and st["failures"] == {}
            assert st["objects_archived"] == 0  # nothing uploaded twice
        finally:
            eng.close()
        assert _objects(d / "archive") == objects


def _idle_engine_with_pending_wal(d: Path, url: str):  # type: ignore[no-untyped-def]
    """An engine whose archiver has shipped the first record and now sleeps, with 20
    records durable and not archived: the next object is known in advance."""
    eng = engine(d / "db", archive_settings(url, interval_seconds=3600))
    wait_for("the first pass", lambda: caught_up(eng))
    for i in range(20):
        eng.write(assertion(f"s{i}", 100))
    st = eng.status()["archive"]
    chunk = WalSource(OsFileSystem(), eng.wal_dir).read(st["archived_lsn"],
                                                        st["durable_lsn"], 1 << 25)
    return eng, chunk


def test_an_object_already_there_with_the_same_records_is_kept(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with scratch("arch", tmp_path) as d:
        url = f"file://{d}/archive"
        eng, chunk = _idle_engine_with_pending_wal(d, url)
        try:
            name = WalObjectName(1, chunk.start_lsn, chunk.end_lsn).name
            _, data = pack_object(1, chunk.start_lsn, chunk.end_lsn, chunk.records,
                                  chunk.data, None)
            assert open_target(url).put_if_absent(name, data)
            with caplog.at_level(logging.INFO, logger="stemedb.archive"):
                assert eng.archive_now() == 1
            assert "already holds" in caplog.text
            assert caught_up(eng) and eng.status()["archive"]["failures"] == {}
        finally:
            eng.close()


@pytest.mark.parametrize("other", ["not an object", "other records"])
def test_an_object_name_holding_other_bytes_is_refused_loudly(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, other: str) -> None:
    with scratch("arch", tmp_path) as d:
        url = f"file://{d}/archive"
        eng, chunk = _idle_engine_with_pending_wal(d, url)
        try:
            name = WalObjectName(1, chunk.start_lsn, chunk.end_lsn).name
            if other == "not an object":
                theirs = b"someone else's bytes"
            else:  # a valid object of another history at the same LSNs
                frame = encode_frame(1, chunk.start_lsn, b"x" * (
                    chunk.end_lsn - chunk.start_lsn - 24))
                theirs = pack_object(1, chunk.start_lsn, chunk.end_lsn, 1, frame, None)[1]
            assert open_target(url).put_if_absent(name, theirs)
            hold = eng.holds()["archive"]["lsn"]
            with caplog.at_level(logging.ERROR, logger="stemedb.archive"), \
                    pytest.raises(ArchiveObjectConflict) as info:
                eng.archive_now()
            assert info.value.name == name and "never overwritten" in str(info.value)
            assert name in caplog.text and "[conflict]" in caplog.text
            assert metric(eng, "stemedb_archive_failures_total", {"reason": "conflict"}) == 1
            assert eng.holds()["archive"]["lsn"] == hold  # nothing released
            assert open_target(url).get(name) == theirs  # nothing overwritten
            st = eng.status()["archive"]
            assert st["last_error_reason"] == "conflict" and name in st["last_error"]
        finally:
            eng.close()


def test_an_encrypted_archive_holds_no_plaintext(tmp_path: Path) -> None:
    with scratch("arch", tmp_path) as d:
        key = os.urandom(32)
        (d / "key").write_text(key.hex())
        url = f"file://{d}/archive"
        eng = engine(d / "db", archive_settings(url, encryption_key_file=str(d / "key")))
        try:
            acked = [eng.write(assertion(f"secret-subject-{i}", 50)).lsn for i in range(50)]
            wait_for("the archive to catch up", lambda: caught_up(eng))
            assert eng.status()["archive"]["encrypted"] is True
        finally:
            eng.close()
        for obj in _objects(d / "archive"):
            assert b"secret-subject" not in obj.read_bytes()
        lsns = [lsn for lsn, _t, _p in archived_records(url, ArchiveKey(key))[1]]
        assert set(acked) <= set(lsns)
        with pytest.raises(ArchiveCorruption, match="no key was given"):
            archived_records(url)


def test_a_flipped_byte_in_an_archived_object_is_found_with_its_name(
        tmp_path: Path) -> None:
    with scratch("arch", tmp_path) as d:
        url = f"file://{d}/archive"
        eng = engine(d / "db", archive_settings(url))
        try:
            for i in range(200):
                eng.write(assertion(f"s{i}", 300))
            wait_for("the archive to catch up", lambda: caught_up(eng))
        finally:
            eng.close()
        victim = _objects(d / "archive")[-1]
        data = bytearray(victim.read_bytes())
        data[len(data) // 2] ^= 0x01
        victim.write_bytes(bytes(data))
        name = "/".join(victim.parts[-3:])
        with pytest.raises(ArchiveCorruption) as info:
            archived_records(url)
        assert info.value.name == name and name in str(info.value)


def test_backup_list_shows_the_ranges_and_names_a_gap(tmp_path: Path) -> None:
    with scratch("arch", tmp_path) as d:
        url = f"file://{d}/archive"
        eng = engine(d / "db", archive_settings(url))
        try:
            for i in range(3):
                for j in range(30):
                    eng.write(assertion(f"s{i}-{j}", 300))
                eng.archive_now()  # one object or more per round
        finally:
            eng.close()
        res = CliRunner().invoke(cli, ["backup", "list", "--from", url, "--json"])
        assert res.exit_code == 0, res.output
        doc = json.loads(res.output)
        (tl,) = doc["timelines"]
        assert tl["timeline"] == 1 and tl["start_lsn"] == 0 and doc["gaps"] == []
        objects = _objects(d / "archive")
        assert len(objects) >= 3
        middle = parse_wal_object_name("/".join(objects[1].parts[-3:]))
        assert middle is not None
        objects[1].unlink()
        res = CliRunner().invoke(cli, ["backup", "list", "--from", url])
        assert res.exit_code == 1
        assert f"GAP LSN {middle.start_lsn}..{middle.end_lsn}" in res.output


def test_turning_archiving_off_releases_its_hold_loudly(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with scratch("arch", tmp_path) as d:
        eng = engine(d / "db", archive_settings(f"file://{d}/archive"))
        eng.close()
        with caplog.at_level(logging.WARNING, logger="stemedb.engine"):
            eng = engine(d / "db", archive_settings(""))
        try:
            assert "archive" not in eng.holds()
            assert "releasing the archive's WAL hold" in caplog.text
            assert eng.status()["archive"]["configured"] is False
        finally:
            eng.close()
