"""`stemedb wal dump`: who wrote what, and when.  Output is checked against golden files
(tests/golden/wal_dump*.txt, *.jsonl), written from a WAL with fixed content and a
fixed clock.  Regenerate them with STEMEDB_UPDATE_GOLDEN=1 after a deliberate change.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from stemedb.cli import cli
from stemedb.engine import WriteRequest
from stemedb.tools import Dump, DumpFilter, ToolError, parse_time
from stemedb.tools.testing import DAMAGES, build_sample_wal
from stemedb.wal import RecordType

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("STEMEDB_UPDATE_GOLDEN") == "1"


def _a(author: str, subject: str, predicate: str, obj: object, **extra: object
       ) -> dict[str, object]:
    return {"assert": {"subject": subject, "predicate": predicate, "object": obj,
                       "author": author, **extra}}


def _v(voter: str, aid: int, value: int) -> dict[str, object]:
    return {"vote": {"assertion_id": aid, "voter": voter, "value": value}}


REQUESTS = [
    WriteRequest(RecordType.ASSERT, [_a("alice", "doc:1", "title", "Hello, world",
                                        confidence=0.9, source="https://example.org/1")],
                 idempotency_key="req-0001", body_sha256="0" * 64),
    WriteRequest(RecordType.ASSERT, [_a("bob", "doc:1", "tags", ["a", "b"])]),
    WriteRequest(RecordType.VOTE, [_v("carol", 1, 1)]),
    WriteRequest(RecordType.VOTE, [_v("dave", 1, -1)]),
    WriteRequest(RecordType.BATCH, [_a("alice", "doc:2", "meta", {"n": 1, "ok": True}),
                                    _a("erin", "doc:3", "empty", None),
                                    _v("bob", 2, 1), _v("bob", 1, -1)],
                 idempotency_key="batch-7", body_sha256="f" * 64),
    WriteRequest(RecordType.SEAL),
    WriteRequest(RecordType.ASSERT, [_a("bob", "doc:4", "score", 3.5)]),
    WriteRequest(RecordType.VOTE, [_v("alice", 5, 1)]),
    WriteRequest(RecordType.ASSERT, [_a("zoë", "doc:5", "name", "Zoë ✓")]),
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    base = tmp_path_factory.mktemp("dump")
    wal = build_sample_wal(str(base / "data"), requests=REQUESTS, clock_step_seconds=60.0)
    assert wal.records == len(REQUESTS) + 1
    yield Path(wal.data_dir)
    shutil.rmtree(base, ignore_errors=True)


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"missing golden file {path}; run with STEMEDB_UPDATE_GOLDEN=1"
    assert text == path.read_text(encoding="utf-8"), f"differs from {path}"


def dump(*args: str) -> tuple[int, str, str]:
    res = CliRunner().invoke(cli, ["wal", "dump", *args])
    return res.exit_code, res.stdout, res.stderr


# name, extra arguments, golden file
CASES = [
    ("all", [], "wal_dump.txt"),
    ("all_json", ["--json"], "wal_dump.jsonl"),
    ("author_bob", ["--author", "bob"], "wal_dump_author_bob.txt"),
    ("type_vote", ["--type", "vote"], "wal_dump_type_vote.txt"),
    ("types_batch_seal", ["--type", "batch,seal"], "wal_dump_type_batch_seal.txt"),
    ("lsn_range", ["--from-lsn", "300", "--to-lsn", "1000"], "wal_dump_lsn_range.txt"),
    ("since_until", ["--since", "2025-11-25T19:02:00Z", "--until", "2025-11-25T19:05:00Z"],
     "wal_dump_since_until.txt"),
    ("alice_asserts_json", ["--author", "alice", "--type", "assert", "--json"],
     "wal_dump_alice_asserts.jsonl"),
]


@pytest.mark.parametrize("name, args, golden", CASES, ids=[c[0] for c in CASES])
def test_dump_matches_golden(name: str, args: list[str], golden: str, data_dir: Path) -> None:
    code, out, err = dump("--data-dir", str(data_dir), *args)
    assert code == 0, err
    assert err == ""
    check_golden(golden, out)


def test_filters_mean_what_they_say(data_dir: Path) -> None:
    recs = list(Dump.of_dir(str(data_dir)).records())
    by = {name: list(Dump.of_dir(str(data_dir), flt).records()) for name, flt in [
        ("bob", DumpFilter(authors=frozenset({"bob"}))),
        ("vote", DumpFilter(types=frozenset({"vote"}))),
        ("range", DumpFilter(from_lsn=300, to_lsn=1000)),
        ("time", DumpFilter(since_unix=parse_time("2025-11-25T19:02:00Z"),
                            until_unix=parse_time("2025-11-25T19:05:00Z"))),
    ]}
    assert [r.lsn for r in by["bob"]] == [r.lsn for r in recs if "bob" in r.authors]
    assert {r.type for r in by["vote"]} == {"vote"} and len(by["vote"]) == 3
    assert all(300 <= r.lsn <= 1000 for r in by["range"])
    assert [r.lsn for r in by["range"]] == [r.lsn for r in recs if 300 <= r.lsn <= 1000]
    assert [r.time for r in by["time"]] == ["2025-11-25T19:02:00.000000Z",
                                            "2025-11-25T19:03:00.000000Z",
                                            "2025-11-25T19:04:00.000000Z"]
    # The batch names every author and voter in it, once each, in order.
    batch = next(r for r in recs if r.type == "batch")
    assert batch.authors == ["alice", "erin", "bob"]
    assert [r.epoch for r in recs] == [1, 1, 1, 1, 1, 1, 1, 2, 2, 2]


def test_file_mode_equals_directory_mode(data_dir: Path) -> None:
    seg = data_dir / "wal" / "segment.001.wal"
    assert dump("--file", str(seg))[1] == dump("--data-dir", str(data_dir))[1]


def test_json_lines_parse(data_dir: Path) -> None:
    _, out, _ = dump("--data-dir", str(data_dir), "--json")
    docs = [json.loads(line) for line in out.splitlines()]
    assert [d["type"] for d in docs] == ["genesis", "assert", "assert", "vote", "vote",
                                         "batch", "seal", "assert", "vote", "assert"]
    assert docs[1]["idempotency_key"] == "req-0001"
    assert docs[1]["ops"][0]["assert"]["source"] == "https://example.org/1"


def test_damaged_wal_dumps_what_is_readable_and_exits_1(tmp_path: Path) -> None:
    wal = build_sample_wal(str(tmp_path / "d"), assertions=40)
    dmg = DAMAGES["bad_checksum"](wal.wal_dir)
    code, out, err = dump("--data-dir", wal.data_dir)
    assert code == 1
    assert len(out.splitlines()) == dmg.records_kept
    assert f"damaged at offset {dmg.offset} (LSN {dmg.lsn})" in err
    assert "Try: stemedb wal verify" in err


@pytest.mark.parametrize("args, message", [
    (["--type", "delete"], "unknown record type"),
    (["--since", "yesterday-ish"], "cannot read the time"),
    (["--file", "/nonexistent/segment.001.wal"], "does not exist"),
])
def test_bad_arguments_exit_2(args: list[str], message: str, data_dir: Path) -> None:
    extra = [] if "--file" in args else ["--data-dir", str(data_dir)]
    code, _, err = dump(*extra, *args)
    assert code == 2
    assert message in err


@pytest.mark.parametrize("text, unix", [
    ("2025-11-25T19:00:00Z", 1764097200.0),
    ("2025-11-25T20:00:00+01:00", 1764097200.0),
    ("2025-11-25T19:00:00", 1764097200.0),
    ("2025-11-25", 1764028800.0),
    ("1764097200", 1764097200.0),
])
def test_parse_time(text: str, unix: float) -> None:
    assert parse_time(text) == unix


def test_parse_time_error_has_a_hint() -> None:
    with pytest.raises(ToolError) as exc:
        parse_time("noon")
    assert exc.value.hint and "RFC 3339" in exc.value.hint


def test_assertion_ids_match_the_state(data_dir: Path) -> None:
    import sqlite3
    conn = sqlite3.connect(f"file:{data_dir / 'state.sqlite3'}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT lsn, id FROM assertions ORDER BY id").fetchall()
    finally:
        conn.close()
    from_dump = [(r.lsn, i) for r in Dump.of_dir(str(data_dir)).records()
                 for i in (r.assertion_ids or [])]
    assert from_dump == [(int(lsn), int(i)) for lsn, i in rows]
