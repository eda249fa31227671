"""The state is a function of the WAL's bytes, not of the JSON library that reads them.

Every record is decoded into :class:`stemedb.state.Record` (msgspec), and an
assertion's ``object`` column holds the object's JSON text exactly as the record holds
it: never decoded and encoded again.  So the state built from a WAL is the same
whichever version of orjson or msgspec is installed, and whatever encoder wrote the
record: the first versions' ``json.dumps`` (``\\u00e9``, ``1e+16``, ``1e-05``), today's
``encode_json``, or a writer that spells numbers otherwise (``1E16``, ``1.0e+16``).
Here payloads are spliced from an encoder's bytes for the object, so the expected text
is known without asking the code under test, and replays of hand-written WALs check
both apply paths (the one-assertion fast path and a batch with a vote).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as stg

from stemedb import state as st
from stemedb.engine import Engine, EngineConfig, WriteRequest
from stemedb.errors import CorruptionError
from stemedb.model import encode_json
from stemedb.storage import OsFileSystem
from stemedb.wal import RecordType, WalWriter
from tests._typed import typed

_text = stg.text(stg.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40)
_leaf = (stg.none() | stg.booleans() | stg.integers(-(2**63), 2**63 - 1)
         | stg.floats(allow_nan=False, allow_infinity=False)
         | stg.sampled_from([1e-05, 3e-07, 1e16, 2.5e22, 1.5e-10, 1e300, 0.00012]) | _text)
_json = stg.recursive(_leaf, lambda inner: stg.lists(inner, max_size=4)
                      | stg.dictionaries(_text, inner, max_size=4), max_leaves=12)


def _old_encoder(value: Any) -> bytes:
    """The first versions' encoder: escaped non-ASCII, Python's float exponents."""
    return json.dumps(value, ensure_ascii=True, separators=(",", ":"), sort_keys=True,
                      allow_nan=False).encode()


def _raw_utf8_encoder(value: Any) -> bytes:
    """json.dumps without escapes: raw UTF-8, still Python's float exponents."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True,
                      allow_nan=False).encode()


ENCODERS = {"encode_json": encode_json, "old": _old_encoder, "raw_utf8": _raw_utf8_encoder}
TS = "2026-11-26T06:09:36.427756Z"


def _assert_payload(obj_json: bytes, *, key: str | None = None) -> bytes:
    """An ASSERT record's payload with the object's bytes spliced in as given."""
    tail = b"" if key is None else b',"h":"' + b"ab" * 32 + b'","k":' + orjson.dumps(key)
    return (b'{"ops":[{"assert":{"author":"a","object":' + obj_json
            + b',"predicate":"p","subject":"s"}}],"t":"' + TS.encode() + b'"' + tail + b"}")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_json, stg.sampled_from(sorted(ENCODERS)))
def test_the_object_text_is_the_records_bytes(obj: Any, encoder: str) -> None:
    written = ENCODERS[encoder](obj)
    record = st.RECORD_DECODER.decode(_assert_payload(written))
    a = record.ops[0].a
    assert a is not None
    text = st.object_text(a.object)
    assert text.encode() == written
    assert typed(orjson.loads(text)) == typed(orjson.loads(written))  # the same value


@pytest.mark.parametrize("written", [
    b'"\\u00e9"', b'{"\\u00e9":1}', b"1e+16", b"1e16", b"1E16", b"1.0e+16", b"1e-05",
    b"1e-5", b"0.00001", b"[1e-07,\"x\"]", '"ü"'.encode(),
])
def test_every_spelling_is_kept_as_written(written: bytes) -> None:
    record = st.RECORD_DECODER.decode(_assert_payload(written))
    a = record.ops[0].a
    assert a is not None
    assert st.object_text(a.object).encode() == written


def _write_wal(data_dir: Path, payloads: list[tuple[RecordType, bytes]]) -> None:
    """A WAL of exactly these records (after the genesis), as another writer left it."""
    wal = data_dir / "wal"
    wal.mkdir(parents=True)
    w = WalWriter(OsFileSystem(), str(wal), segment_size_bytes=1 << 20,
                  background_preallocate=False)
    w.create_first()
    frames = []
    for rtype, data in [(RecordType.GENESIS, b'{"t":"' + TS.encode() + b'"}'), *payloads]:
        frames.append((int(rtype), w.plan(len(data)), data))
    w.write(frames)
    w.sync()
    w.close()


def _objects(eng: Engine) -> list[str]:
    return [r[0] for r in eng.read_now(
        lambda c: c.execute("SELECT object FROM assertions ORDER BY id").fetchall())]


SPELLINGS = [b'"\\u00e9t\\u00e9"', b"1e+16", b"1e-05", b"1E16", b'{"b":[1e-07],"a":"\\u00fc"}']


def test_replay_keeps_each_objects_bytes_on_both_apply_paths(tmp_path: Path) -> None:
    """One-assertion ASSERT records take replay's fast path; a BATCH with a vote takes
    apply_record.  Both store the bytes; reads give the values."""
    payloads: list[tuple[RecordType, bytes]] = [
        (RecordType.ASSERT, _assert_payload(s, key=f"k{i}")) for i, s in enumerate(SPELLINGS)]
    ops = b",".join(b'{"assert":{"author":"a","object":' + s + b',"predicate":"p",'
                    b'"subject":"b"}}' for s in SPELLINGS)
    payloads.append((RecordType.BATCH, b'{"ops":[' + ops + b',{"vote":{"assertion_id":1,'
                     b'"value":1,"voter":"v"}}],"t":"' + TS.encode() + b'"}'))
    _write_wal(tmp_path / "db", payloads)
    eng = Engine(tmp_path / "db", EngineConfig(disk_reserve_bytes=0))
    report = eng.recover()
    try:
        assert report.records == len(payloads) + 1
        texts = _objects(eng)
        assert [t.encode() for t in texts] == SPELLINGS * 2
        got = eng.read_now(lambda c: st.get_assertion(c, 1))
        assert got["object"] == "été" and got["support"] == 1
        assert eng.read_now(lambda c: st.get_assertion(c, 2))["object"] == 1e16
    finally:
        eng.close()


def test_the_write_path_stores_what_it_appends(tmp_path: Path) -> None:
    """The writer applies the bytes it appends, so its state is the replay's."""
    eng = Engine(tmp_path / "db", EngineConfig(disk_reserve_bytes=0))
    eng.recover()
    eng.start()
    objs: list[Any] = [1e16, 1e-05, "été", {"b": [1e-07], "a": "ü"}, 2**64 - 1]
    for o in objs:
        eng.write(WriteRequest(RecordType.ASSERT, [{"assert": {
            "subject": "s", "predicate": "p", "object": o, "author": "a"}}]))
    texts = _objects(eng)
    eng.close()
    assert texts == [encode_json(o).decode() for o in objs]


@pytest.mark.parametrize("payload", [
    {"t": "x", "ops": [{"assert": {"subject": 5, "predicate": "p", "object": 1,
                                   "author": "a"}}]},
    {"t": "x", "ops": [{"assert": {"subject": "s", "predicate": "p", "object": 1,
                                   "author": "a", "confidence": True}}]},
    {"t": "x", "ops": [{"assert": {"subject": "s", "predicate": "p", "author": "a"}}]},
    {"t": "x", "ops": [{"vote": {"assertion_id": "1", "voter": "v", "value": 1}}]},
    {"t": "x", "ops": {"assert": {}}},
    {"ops": []},
])
def test_other_shapes_are_refused(payload: dict[str, Any]) -> None:
    with pytest.raises(msgspec.DecodeError):
        st.RECORD_DECODER.decode(orjson.dumps(payload))


def test_a_record_that_cannot_be_read_stops_replay_as_corruption(tmp_path: Path) -> None:
    _write_wal(tmp_path / "db", [(RecordType.ASSERT, _assert_payload(b"1")),
                                 (RecordType.VOTE, b'{"ops":[{"vote":{}}],"t":"x"}')])
    eng = Engine(tmp_path / "db", EngineConfig(disk_reserve_bytes=0))
    with pytest.raises(CorruptionError) as info:
        eng.recover()
    eng.close()
    assert "payload the state cannot read" in str(info.value)
    assert info.value.lsn is not None and info.value.kind == "corrupt_record"
