"""Base backups and restores over a ``file://`` archive: a backup taken while writes
flow restores to the live state table by table; each point-in-time target yields
exactly the records before it; a target the archive cannot reach is exit 1 with the
furthest point, and leaves nothing behind."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from stemedb.archive import open_target
from stemedb.backup import RestoreTarget, TargetNotReached, read_catalog, restore
from stemedb.engine import Engine, WriteRequest, rfc3339
from stemedb.wal import RecordType
from tests._archive import SEGMENT_BYTES, assertion, scratch
from tests._backup import backup_engine, dump_dir, restore_cli, run_cli, settle


def _vote(aid: int, voter: str, value: int) -> WriteRequest:
    return WriteRequest(RecordType.VOTE, [{"vote": {"assertion_id": aid, "voter": voter,
                                                    "value": value}}])


def _live(eng: Engine) -> dict[str, Any]:
    from stemedb import state as st

    return eng.read_now(st.dump)


def test_backups_taken_while_writes_flow_restore_to_the_live_state(tmp_path: Path) -> None:
    with scratch("bk", tmp_path) as d:
        url = f"file://{d}/archive"
        eng = backup_engine(d / "db", url)
        stop = threading.Event()
        acked: list[int] = []

        def writer() -> None:
            i = 0
            while not stop.is_set() and i < 5000:  # bounded
                res = eng.write(assertion(f"w{i}", 200))
                acked.append(res.body["id"])
                if i % 7 == 0:
                    eng.write(_vote(res.body["id"], "ann", 1 if i % 2 else -1))
                i += 1

        t = threading.Thread(target=writer)
        t.start()
        try:
            manifests = []
            for _ in range(3):  # backups while the writer writes
                time.sleep(0.05)
                before = len(acked)
                m = eng.backup_now().result(15)
                manifests.append(m)
                assert m.lsn > 0 and len(acked) >= before
            stop.set()
            t.join(10)
            eng.write(WriteRequest(RecordType.SEAL))
            eng.write(assertion("last"))
            settle(eng)
            live = _live(eng)
            status = eng.status()["backup"]
        finally:
            stop.set()
            t.join(10)
            eng.close()
        lsns = [m.lsn for m in manifests]
        assert lsns == sorted(lsns) and len(set(lsns)) == 3, lsns  # writes went on
        assert status["last_backup"]["id"] == manifests[-1].id
        res = restore_cli(url, d / "restored", "--json")
        assert res.exit_code == 0, res.output
        doc = json.loads(res.output)
        assert doc["backup"]["id"] == manifests[-1].id and doc["records"] > 0
        restored = dump_dir(d / "restored")
        for table in live:
            assert restored[table] == live[table], table
        assert len(restored["assertions"]) == len(acked) + 1
        # An older backup replays more WAL to the same state.
        res = restore_cli(url, d / "from-first", "--backup", manifests[0].id)
        assert res.exit_code == 0, res.output
        assert dump_dir(d / "from-first") == live
        # The restored node continues the LSNs, and restarts (recovery finds its WAL).
        end = doc["end_lsn"]
        assert end > 2 * SEGMENT_BYTES  # past the first segments of the old node
        for round_ in range(2):
            eng = backup_engine(d / "restored", url)
            try:
                res2 = eng.write(assertion("after-restore"))
                assert res2.lsn == end if round_ == 0 else res2.lsn >= end
                assert res2.body["id"] == len(acked) + 2 + round_
                end = res2.lsn + 1
                assert eng.status()["archive"]["timeline"] == doc["timeline"]
            finally:
                eng.close()
        assert [r[1] for r in dump_dir(d / "restored")["assertions"][-2:]] == [
            "after-restore", "after-restore"]


def test_point_in_time_targets_time_lsn_and_epoch(tmp_path: Path) -> None:
    with scratch("pitr", tmp_path) as d:
        url = f"file://{d}/archive"
        eng = backup_engine(d / "db", url)
        try:
            first = [eng.write(assertion(f"a{i}")) for i in range(5)]
            sealed1 = eng.write(WriteRequest(RecordType.SEAL)).body
            time.sleep(0.02)
            second = [eng.write(assertion(f"b{i}")) for i in range(5)]
            eng.write(_vote(second[0].body["id"], "bob", 1))
            sealed2 = eng.write(WriteRequest(RecordType.SEAL)).body
            eng.write(assertion("c0"))
            settle(eng)
        finally:
            eng.close()
        t_a = first[-1].body["created_at"]
        t_b = second[0].body["created_at"]
        from stemedb.engine import parse_rfc3339

        # A time after the seal of epoch 1 and before the first "b" write.
        mid = rfc3339((parse_rfc3339(sealed1["sealed_at"]) + parse_rfc3339(t_b)) / 2)
        assert parse_rfc3339(t_a) < parse_rfc3339(sealed1["sealed_at"]) < parse_rfc3339(mid)
        res = restore_cli(url, d / "t", "--to-time", mid)
        assert res.exit_code == 0, res.output
        got = dump_dir(d / "t")
        assert [r[1] for r in got["assertions"]] == [f"a{i}" for i in range(5)]
        assert [e[0] for e in got["epochs"]] == [1, 2]  # epoch 1 sealed, 2 open

        # --to-lsn N: every record below N; the LSN of the third "b" write.
        res = restore_cli(url, d / "l", "--to-lsn", str(second[2].lsn))
        assert res.exit_code == 0, res.output
        got = dump_dir(d / "l")
        assert [r[1] for r in got["assertions"]] == [*(f"a{i}" for i in range(5)), "b0", "b1"]

        # --to-epoch N: up to and including the seal of epoch N.
        for n, sealed in ((1, sealed1), (2, sealed2)):
            res = restore_cli(url, d / f"e{n}", "--to-epoch", str(n))
            assert res.exit_code == 0, res.output
            got = dump_dir(d / f"e{n}")
            epochs = {e[0]: e for e in got["epochs"]}
            assert epochs[n][3] == sealed["digest"] and max(epochs) == n + 1
            assert epochs[n + 1][2] is None  # the next epoch open, nothing sealed after
        assert "c0" not in [r[1] for r in dump_dir(d / "e2")["assertions"]]


def test_an_unreachable_target_exits_1_with_the_furthest_point_and_leaves_nothing(
        tmp_path: Path) -> None:
    with scratch("unreach", tmp_path) as d:
        url = f"file://{d}/archive"
        eng = backup_engine(d / "db", url)
        try:
            for i in range(10):
                eng.write(assertion(f"s{i}"))
            eng.write(WriteRequest(RecordType.SEAL))
            settle(eng)
            end = eng.status()["archive"]["archived_lsn"]
        finally:
            eng.close()
        for args in (("--to-lsn", str(end + 10_000)), ("--to-epoch", "5"),
                     ("--to-time", rfc3339(time.time() + 3600))):
            res = restore_cli(url, d / "r", *args)
            assert res.exit_code == 1, res.output
            assert f"the furthest reachable point is LSN {end}" in res.output, res.output
            assert not (d / "r").exists()
        # The furthest point itself is reachable, and exact: --to-lsn END keeps all.
        res = restore_cli(url, d / "r", "--to-lsn", str(end))
        assert res.exit_code == 0, res.output
        assert len(dump_dir(d / "r")["assertions"]) == 10


def test_bad_input_changes_nothing(tmp_path: Path) -> None:
    with scratch("bad", tmp_path) as d:
        url = f"file://{d}/archive"
        eng = backup_engine(d / "db", url)
        try:
            eng.write(assertion("x"))
            settle(eng)
        finally:
            eng.close()
        busy = d / "busy"
        busy.mkdir()
        (busy / "keep.txt").write_text("mine")
        res = restore_cli(url, busy)
        assert res.exit_code == 2 and "not empty" in res.output
        assert [p.name for p in busy.iterdir()] == ["keep.txt"]
        res = restore_cli(url, d / "two", "--to-lsn", "5", "--to-epoch", "1")
        assert res.exit_code == 2 and "at most one restore target" in res.output
        res = restore_cli(url, d / "two", "--to-time", "yesterday")
        assert res.exit_code == 2 and "RFC 3339" in res.output
        res = restore_cli(url, d / "two", "--backup", "20200101T000000000Z")
        assert res.exit_code == 2 and "no base backup 20200101T000000000Z" in res.output
        assert not (d / "two").exists()
        # A target before every backup: none precedes it.
        target = open_target(url)
        first = read_catalog(target).backups[0]
        try:
            restore(target, str(d / "three"), to=RestoreTarget(lsn=first.lsn - 1),
                    segment_size_bytes=SEGMENT_BYTES)
        except Exception as exc:
            assert "precedes the target" in str(exc)
            assert not isinstance(exc, TargetNotReached)
        else:
            raise AssertionError("a restore before every backup succeeded")
        assert not (d / "three").exists()
        res = run_cli("list", "--from", url)
        assert res.exit_code == 0 and f"{first.id}  timeline 1" in res.output
