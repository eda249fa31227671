"""Restore drills: a drill restores the newest backup, replays to the newest record and
checks it against the live state; only a drill that passed moves
``stemedb_backup_last_verified_timestamp_seconds``.  A drill over a damaged backup
fails: the metric stays where it was and ``stemedb_restore_drill_failures_total``
rises.  Expire keeps every backup's WAL that a kept backup needs."""

from __future__ import annotations

import json
import os
from pathlib import Path

from stemedb.archive import ArchiveReader, open_target
from stemedb.backup import BackupSettings, StateFacts, expire, read_catalog
from stemedb.engine import WriteRequest
from stemedb.wal import RecordType
from tests._archive import assertion, metric, scratch
from tests._backup import backup_engine, dump_dir, restore_cli, run_cli, settle

VERIFIED = "stemedb_backup_last_verified_timestamp_seconds"
FAILURES = "stemedb_restore_drill_failures_total"


def _vote(aid: int, voter: str, value: int) -> WriteRequest:
    return WriteRequest(RecordType.VOTE, [{"vote": {"assertion_id": aid, "voter": voter,
                                                    "value": value}}])


def test_a_drill_passes_publishes_and_a_damaged_backup_fails_it(tmp_path: Path) -> None:
    with scratch("drill", tmp_path) as d:
        url = f"file://{d}/archive"
        eng = backup_engine(d / "db", url)
        try:
            for e in range(3):
                ids = [eng.write(assertion(f"e{e}-{i}")).body["id"] for i in range(10)]
                for i, aid in enumerate(ids):
                    eng.write(_vote(aid, "ann", 1 if i % 3 else -1))
                eng.write(WriteRequest(RecordType.SEAL))
            settle(eng)
            assert metric(eng, VERIFIED) == 0  # a backup never restored is not verified
            report = eng.drill_now().result(30)
            assert report.passed, report.problems
            assert report.epochs_checked == 3 and report.lsn == eng.status()["archive"][
                "archived_lsn"]
            verified = metric(eng, VERIFIED)
            assert verified > 0 and metric(eng, FAILURES) == 0
            assert eng.status()["backup"]["last_drill"]["passed"] is True
            assert not [p for p in (d / "db" / "backup.tmp").iterdir()]  # cleaned up
            # Damage the newest backup's part: the next drill fails.
            (b,) = read_catalog(open_target(url)).backups
            part = d / "archive" / b.files[0].parts[0].object
            data = bytearray(part.read_bytes())
            data[-20] ^= 1
            part.write_bytes(bytes(data))
            report = eng.drill_now().result(30)
            assert not report.passed and b.files[0].parts[0].object in report.problems[0]
            assert metric(eng, VERIFIED) == verified and metric(eng, FAILURES) == 1
            assert eng.status()["backup"]["last_verified_unix"] == verified
        finally:
            eng.close()
        res = run_cli("drill", "--from", url, "--scratch-dir", str(d))
        assert res.exit_code == 1 and "FAILED" in res.output
        data[-20] ^= 1
        part.write_bytes(bytes(data))
        res = run_cli("drill", "--from", url, "--scratch-dir", str(d), "--json")
        assert res.exit_code == 0, res.output
        assert json.loads(res.output)["epochs_checked"] == 3
        assert sorted(p.name for p in d.iterdir()) == ["archive", "db"]
        # The restart reads the last passed drill back from node.json.
        eng = backup_engine(d / "db", url)
        try:
            assert metric(eng, VERIFIED) == verified
        finally:
            eng.close()


def test_a_drill_compares_with_the_live_state(tmp_path: Path) -> None:
    with scratch("drill-live", tmp_path) as d:
        url = f"file://{d}/archive"
        eng = backup_engine(d / "db", url)
        try:
            aid = eng.write(assertion("x")).body["id"]
            eng.write(_vote(aid, "ann", 1))
            eng.write(WriteRequest(RecordType.SEAL))
            settle(eng)
            # The live side answers other digests (as another database's would): the
            # drill's comparison hook is swapped for one that says so.
            live = eng._live_facts
            assert eng.backups is not None

            def lying(lsn: int) -> StateFacts:
                facts = live(lsn)
                facts.digests = {n: "0" * 64 for n in facts.digests}
                return facts

            eng.backups._live = lying
            report = eng.drill_now().result(30)
            assert not report.passed
            assert "epoch 1: restored digest" in report.problems[0]
            assert metric(eng, FAILURES) == 1 and metric(eng, VERIFIED) == 0
        finally:
            eng.close()


def test_expire_keeps_the_wal_kept_backups_need(tmp_path: Path) -> None:
    with scratch("expire", tmp_path) as d:
        url = f"file://{d}/archive"
        eng = backup_engine(d / "db", url)
        try:
            for round_ in range(4):
                for i in range(30):
                    eng.write(assertion(f"r{round_}-{i}", 300))
                eng.archive_now()
                eng.backup_now().result(15)
            eng.write(assertion("last"))
            settle(eng)
            live = eng.read_now(lambda c: __import__("stemedb").state.dump(c))
        finally:
            eng.close()
        target = open_target(url)
        backups = read_catalog(target).backups
        assert len(backups) == 5  # the first (at start) and four asked for
        before = [o.name for o in ArchiveReader(target).wal_objects(1)]
        settings = BackupSettings(retain_count=2, retain_days=0)
        dry = expire(target, settings, dry_run=True)
        assert dry.expired == [b.id for b in backups[:3]]
        assert [o.name for o in ArchiveReader(target).wal_objects(1)] == before
        res = run_cli("expire", "--from", url, "--retain-count", "2", "--retain-days", "0",
                      "--json")
        assert res.exit_code == 0, res.output
        doc = json.loads(res.output)
        assert doc["expired"] == dry.expired and doc["kept"] == [b.id for b in backups[3:]]
        oldest_kept = backups[3]
        left = ArchiveReader(target).wal_objects(1)
        assert left and all(o.end_lsn > oldest_kept.lsn for o in left)
        assert left[0].start_lsn <= oldest_kept.lsn  # the object holding its start stays
        assert {o.name for o in left} | set(doc["wal_objects_removed"]) == set(before)
        assert not list((d / "archive" / "backups" / "00000001").glob(f"{backups[0].id}*"))
        assert run_cli("verify", "--from", url).exit_code == 0
        res = restore_cli(url, d / "r", "--backup", oldest_kept.id)
        assert res.exit_code == 0, res.output
        assert dump_dir(d / "r") == live
        # Younger than retain_days: kept whatever the count.
        again = expire(target, BackupSettings(retain_count=1, retain_days=1), dry_run=True)
        assert again.expired == [] and os.path.isdir(d / "archive")


def test_the_schedule_takes_backups_and_drills_on_its_own(tmp_path: Path) -> None:
    from tests._archive import archive_settings, engine, wait_for

    with scratch("sched", tmp_path) as d:
        url = f"file://{d}/archive"
        every = 0.5 / 3600  # half a second, in hours
        (d / "db" / "backup.tmp" / "drill-left-by-a-crash").mkdir(parents=True)
        eng = engine(d / "db", archive_settings(url),
                     backup=BackupSettings(interval_hours=every, drill_interval_hours=every))
        try:
            for i in range(10):
                eng.write(assertion(f"s{i}"))
            wait_for("three scheduled backups",
                     lambda: len(read_catalog(open_target(url)).backups) >= 3)
            wait_for("a scheduled drill that passed", lambda: metric(eng, VERIFIED) > 0)
            st = eng.status()["backup"]
            assert st["last_drill"]["passed"] and metric(eng, FAILURES) == 0
            assert metric(eng, "stemedb_restore_drills_total") >= 1
            assert not (d / "db" / "backup.tmp" / "drill-left-by-a-crash").exists()
        finally:
            eng.close()
