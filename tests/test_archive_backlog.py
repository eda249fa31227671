"""The stuck archiver (the seed of a WAL disk filled by an archive job that failed
silently for two weeks), against a ``file://`` archive broken for real: its directory
replaced by a file, so every upload fails with the file system's own error.

While it is broken the WAL is held (no segment it needs is removed), the backlog and
lag gauges grow, every failure is counted by reason and logged, and at
``max_backlog_bytes`` the configured policy acts: 507 ``archive_backlog_full`` for
writes while reads go on, or a new timeline with the dropped range named everywhere.
Once fixed, the backlog drains, the hold moves, the segments go, and every
acknowledged record is in the archive in LSN order (or, under ``drop``, inside the
one range the archive reports as dropped).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from stemedb.archive import ArchiveReader, open_target
from stemedb.cli import cli
from stemedb.engine import Engine
from stemedb.errors import ArchiveBacklogFull
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

CAP_BYTES = 64 * 1024
WRITES_MAX = 1000  # bounds every write loop below


def _break(root: Path) -> None:
    os.rename(root, f"{root}.aside")
    root.write_bytes(b"not a directory")


def _fix(root: Path) -> None:
    root.unlink()
    os.rename(f"{root}.aside", root)


def _oldest_segment_base(eng: Engine) -> int:
    seq = int(segment_names(eng)[0].split(".")[1])
    return (seq - 1) * 64 * 1024  # fixed-size segments with no skipped LSNs


def _count(eng: Engine) -> int:
    return int(eng.read_now(lambda c: c.execute("SELECT count(*) FROM assertions")
                            .fetchone()[0]))


def test_refuse_writes_holds_the_wal_refuses_with_507_and_drains_when_fixed(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with scratch("backlog", tmp_path) as d, \
            caplog.at_level(logging.INFO, logger="stemedb.archive"):
        root = d / "archive"
        url = f"file://{root}"
        eng = engine(d / "db", archive_settings(url, max_backlog_bytes=CAP_BYTES))
        try:
            acked = [eng.write(assertion(f"ok{i}", 900)).lsn for i in range(20)]
            wait_for("the archive to catch up", lambda: caught_up(eng))
            hold_at_break = eng.holds()["archive"]["lsn"]
            _break(root)
            refused: ArchiveBacklogFull | None = None
            for i in range(WRITES_MAX):
                try:
                    acked.append(eng.write(assertion(f"held{i}", 900)).lsn)
                except ArchiveBacklogFull as exc:
                    refused = exc
                    break
            assert refused is not None, "the cap never acted"
            assert (refused.http_status, refused.code) == (507, "archive_backlog_full")
            assert "max_backlog_bytes=65536" in refused.message
            wait_for("a failure to be counted",
                     lambda: metric(eng, "stemedb_archive_failures_total",
                                    {"reason": "io"}) >= 2)
            time.sleep(0.05)
            st = eng.status()["archive"]
            assert st["refusing_writes"] and st["backlog_bytes"] >= CAP_BYTES
            assert "File exists" in st["last_error"]  # the file system's own error
            assert metric(eng, "stemedb_archive_backlog_bytes") >= CAP_BYTES
            assert metric(eng, "stemedb_archive_backlog_full") == 1
            assert metric(eng, "stemedb_archive_lag_seconds") > 0
            assert metric(eng, "stemedb_archive_refused_writes_total") >= 1
            assert "failed [io]" in caplog.text and "File exists" in caplog.text
            # The WAL is held: a checkpoint keeps every segment from the hold on.
            assert eng.holds()["archive"]["lsn"] == hold_at_break
            eng.checkpoint().result(10)
            assert _oldest_segment_base(eng) <= hold_at_break
            assert _count(eng) == len(acked)  # reads go on
            with pytest.raises(ArchiveBacklogFull):
                eng.write(assertion("still refused"))

            _fix(root)
            wait_for("the backlog to drain", lambda: caught_up(eng))
            acked.append(eng.write(assertion("after the fix", 900)).lsn)
            wait_for("the archive to catch up", lambda: caught_up(eng))
            st = eng.status()["archive"]
            assert st["hold_lsn"] == st["durable_lsn"] > hold_at_break
            assert not st["refusing_writes"] and st["consecutive_failures"] == 0
            eng.checkpoint().result(10)
            assert _oldest_segment_base(eng) > hold_at_break  # released, once archived
            assert "works again" in caplog.text
        finally:
            eng.close()
        lsns = [lsn for lsn, _t, _p in archived_records(url)[1]]
        assert lsns == sorted(set(lsns))
        assert set(acked) <= set(lsns), "an acknowledged write is missing from the archive"
        (chain,) = ArchiveReader(open_target(url)).summary()
        assert len(chain.ranges) == 1 and not chain.gaps


def test_drop_releases_the_wal_starts_a_timeline_and_says_so(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with scratch("backlog", tmp_path) as d, \
            caplog.at_level(logging.INFO, logger="stemedb.archive"):
        root = d / "archive"
        url = f"file://{root}"
        eng = engine(d / "db", archive_settings(url, max_backlog_bytes=CAP_BYTES,
                                                on_backlog_full="drop"))
        try:
            acked = [eng.write(assertion(f"ok{i}", 900)).lsn for i in range(20)]
            wait_for("the archive to catch up", lambda: caught_up(eng))
            t1_end = eng.status()["archive"]["archived_lsn"]
            _break(root)
            for i in range(WRITES_MAX):  # never refused under "drop"
                acked.append(eng.write(assertion(f"dropped{i}", 900)).lsn)
                if eng.status()["archive"]["backlog_full"]:
                    break
            wait_for("the drop", lambda: eng.status()["archive"]["timeline"] == 2)
            st = eng.status()["archive"]
            (drop,) = st["drops"]
            start = drop["start_lsn"]
            assert drop["parent_end_lsn"] == t1_end and drop["timeline"] == 2
            assert f"{t1_end}..{start}" in st["warning"]
            assert metric(eng, "stemedb_archive_drops_total") == 1
            assert metric(eng, "stemedb_archive_dropped_bytes_total") == start - t1_end
            assert metric(eng, "stemedb_archive_timeline") == 2
            assert "ARCHIVE DROPPED WAL" in caplog.text
            # The hold moved past the dropped WAL although the target is still broken.
            assert eng.holds()["archive"]["lsn"] == start
            eng.checkpoint().result(10)
            assert _oldest_segment_base(eng) > t1_end
            acked += [eng.write(assertion(f"t2-{i}", 900)).lsn for i in range(10)]

            _fix(root)
            wait_for("timeline 2 to catch up", lambda: caught_up(eng))
        finally:
            eng.close()
        recs = archived_records(url)
        t1 = [lsn for lsn, _t, _p in recs[1]]
        t2 = [lsn for lsn, _t, _p in recs[2]]
        assert t1 == sorted(t1) and t2 == sorted(t2) and t1[-1] < t1_end <= start <= t2[0]
        for lsn in acked:  # each acknowledged record is archived, or in the dropped range
            assert lsn in t1 if lsn < t1_end else (lsn in t2 if lsn >= start else True)
        reader = ArchiveReader(open_target(url))
        _, tl2 = reader.summary()
        assert tl2.history is not None and tl2.history["parent_end_lsn"] == t1_end
        assert [(g.start_lsn, g.end_lsn) for g in tl2.gaps] == [(t1_end, start)]
        res = CliRunner().invoke(cli, ["backup", "list", "--from", url])
        assert res.exit_code == 1 and f"GAP LSN {t1_end}..{start}" in res.output
