"""``stemedb backup verify`` names every fault: a flipped byte in a WAL object or a
backup part (and a restore that needs it refuses, naming it), a gap after the newest
base backup (until a newer backup covers it), WAL dropped under ``on_backlog_full =
"drop"``, and a damaged manifest."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from stemedb.archive import ArchiveReader, open_target
from stemedb.backup import read_catalog
from tests._archive import archive_settings, assertion, engine, scratch, wait_for
from tests._backup import backup_engine, restore_cli, run_cli, settle


def _flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at % len(data)] ^= 0x40
    path.write_bytes(bytes(data))


def _archive_with_backup_and_wal(d: Path) -> str:
    url = f"file://{d}/archive"
    eng = backup_engine(d / "db", url)
    try:
        for i in range(3):
            for j in range(40):
                eng.write(assertion(f"s{i}-{j}", 300))
            eng.archive_now()  # an object or more per round
        settle(eng)
    finally:
        eng.close()
    return url


def test_a_flipped_byte_in_a_wal_object_is_named_and_a_restore_refuses(
        tmp_path: Path) -> None:
    with scratch("vflip", tmp_path) as d:
        url = _archive_with_backup_and_wal(d)
        assert run_cli("verify", "--from", url).exit_code == 0
        objs = ArchiveReader(open_target(url)).wal_objects(1)
        victim = objs[len(objs) // 2]
        _flip(d / "archive" / victim.name, 200)
        res = run_cli("verify", "--from", url, "--json")
        assert res.exit_code == 1, res.output
        (fault,) = json.loads(res.output)["faults"]
        assert fault["object"] == victim.name
        assert (fault["start_lsn"], fault["end_lsn"]) == (victim.start_lsn, victim.end_lsn)
        res = run_cli("verify", "--from", url)
        assert f"FAULT {victim.name}, timeline 1 LSN {victim.start_lsn}..{victim.end_lsn}" \
            in res.output
        res = restore_cli(url, d / "r")
        assert res.exit_code == 1 and victim.name in res.output, res.output
        assert not (d / "r").exists()
        # A target before the damaged object does not need it.
        res = restore_cli(url, d / "r", "--to-lsn", str(victim.start_lsn))
        assert res.exit_code == 0, res.output


def test_a_flipped_byte_in_a_backup_part_or_manifest_is_named(tmp_path: Path) -> None:
    with scratch("vpart", tmp_path) as d:
        url = _archive_with_backup_and_wal(d)
        (b,) = read_catalog(open_target(url)).backups
        part = b.files[0].parts[0].object
        _flip(d / "archive" / part, 500)
        res = run_cli("verify", "--from", url)
        assert res.exit_code == 1 and f"FAULT {part}" in res.output, res.output
        res = restore_cli(url, d / "r", "--backup", b.id)
        assert res.exit_code == 1 and part in res.output, res.output
        assert not (d / "r").exists()
        _flip(d / "archive" / part, 500)  # back as it was
        assert run_cli("verify", "--from", url).exit_code == 0
        _flip(d / "archive" / b.name, 40)
        res = run_cli("verify", "--from", url)
        assert res.exit_code == 1 and b.name in res.output, res.output


def test_a_gap_fails_verify_until_a_newer_backup_covers_it(tmp_path: Path) -> None:
    with scratch("vgap", tmp_path) as d:
        url = _archive_with_backup_and_wal(d)
        objs = ArchiveReader(open_target(url)).wal_objects(1)
        victim = objs[len(objs) // 2]
        os.remove(d / "archive" / victim.name)
        res = run_cli("verify", "--from", url, "--json")
        assert res.exit_code == 1, res.output
        (fault,) = json.loads(res.output)["faults"]
        assert (fault["start_lsn"], fault["end_lsn"]) == (victim.start_lsn, victim.end_lsn)
        assert res.exit_code == 1
        res = restore_cli(url, d / "r")
        assert res.exit_code == 1, res.output
        assert f"breaks at LSN {victim.start_lsn}..{victim.end_lsn}" in res.output
        eng = backup_engine(d / "db", url)
        try:
            eng.backup_now().result(15)  # past the gap
            eng.write(assertion("after"))
            settle(eng)
        finally:
            eng.close()
        res = run_cli("verify", "--from", url, "--json")
        assert res.exit_code == 0, res.output
        (note,) = json.loads(res.output)["notes"]
        assert f"reaches LSN {victim.start_lsn} only" in note
        assert restore_cli(url, d / "r").exit_code == 0


def test_dropped_wal_gets_a_backup_on_the_new_timeline_as_soon_as_the_archive_answers(
        tmp_path: Path) -> None:
    from stemedb.backup import BackupSettings

    with scratch("vdrop", tmp_path) as d:
        root = d / "archive"
        url = f"file://{root}"
        eng = engine(d / "db", archive_settings(url, max_backlog_bytes=64 * 1024,
                                                on_backlog_full="drop"),
                     backup=BackupSettings(interval_hours=0, drill_interval_hours=0,
                                           retry_seconds_initial=0.05,
                                           retry_seconds_max=0.1))
        try:
            for i in range(20):
                eng.write(assertion(f"ok{i}", 900))
            settle(eng)
            wait_for("the first backup", lambda: eng.status()["backup"]["last_backup"]
                     is not None)
            os.rename(root, f"{root}.aside")
            root.write_bytes(b"not a directory")
            for i in range(1000):  # bounded: the drop comes after 64 KiB
                eng.write(assertion(f"dropped{i}", 900))
                if eng.status()["archive"]["timeline"] >= 2:
                    break
            wait_for("the drop", lambda: eng.status()["archive"]["timeline"] >= 2)
            wait_for("a failed backup try", lambda: eng.status()["backup"]
                     ["consecutive_failures"] > 0)
            root.unlink()
            os.rename(f"{root}.aside", root)
            timeline = eng.status()["archive"]["timeline"]
            assert "warning" in eng.status()["archive"]  # the drop, not covered yet
            wait_for("a backup on the new timeline", lambda: (
                eng.status()["backup"]["last_backup"] or {}).get("timeline") == timeline)
            st = eng.status()["archive"]
            assert "warning" not in st and "covered since base backup" in st["note"], st
            eng.write(assertion("after"))
            settle(eng)
            drops = eng.status()["archive"]["drops"]
        finally:
            eng.close()
        res = run_cli("verify", "--from", url, "--json")
        assert res.exit_code == 0, res.output
        notes = json.loads(res.output)["notes"]
        # The first dropped range is named, and covered (a later one is crossed only by
        # a backup taken between the two drops, if any).
        first = drops[0]
        assert any(f"reaches LSN {first['parent_end_lsn']} only" in n for n in notes), notes
        (newest,) = [b for b in read_catalog(open_target(url)).backups
                     if b.timeline == timeline]
        os.remove(root / newest.name)  # as if the backup had not been taken yet
        res = run_cli("verify", "--from", url)
        assert res.exit_code == 1, res.output
        # The fault names a dropped range (the first one the older backup meets).
        assert any(f"LSN {x['parent_end_lsn']}..{x['start_lsn']}" in res.output
                   for x in drops), res.output


@pytest.mark.parametrize("args", [("--backup", "nope"), ()])
def test_verify_of_an_archive_without_backups_or_with_a_bad_id(
        tmp_path: Path, args: tuple[str, ...]) -> None:
    res = run_cli("verify", "--from", f"file://{tmp_path}/none", *args)
    assert res.exit_code == (2 if args else 1), res.output
    assert ("no base backup nope" if args else "holds no base backup") in res.output
