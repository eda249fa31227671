"""Replay's typed decoding of an ASSERT record gives apply_record's row, for any assertion.

Replay decodes a one-assertion ASSERT record with ``state.ASSERT_RECORD_DECODER``
(msgspec, into typed structs) and keeps the object's JSON text as the writer encoded
it, where :func:`stemedb.state.apply_record` parses the payload with orjson and encodes
the object again with sorted keys.  The two must agree on every field for every
payload the writer can produce: generated assertions go through the writer's own
validation and encoding (``validate_assertion``, ``encode_json``) and both readings
are compared, value and type.  Payloads the writer never makes (a field of the wrong
type, an op that is not an assertion) must be refused by the typed decoder, which
sends them to apply_record's path.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as stg

from stemedb import state as st
from stemedb.model import encode_json, validate_assertion
from tests._typed import typed

_text = stg.text(stg.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40)
_leaf = (stg.none() | stg.booleans() | stg.integers(-(2**63), 2**63 - 1)
         | stg.floats(allow_nan=False, allow_infinity=False)
         | stg.sampled_from([1e-05, 3e-07, 1e16, 2.5e22, 1.5e-10, 1e300, 0.00012]) | _text)
_json = stg.recursive(_leaf, lambda inner: stg.lists(inner, max_size=4)
                      | stg.dictionaries(_text, inner, max_size=4), max_leaves=12)


def _old_encoder(value: Any) -> bytes:
    """encode_json before orjson: what WALs written by the first versions hold."""
    return json.dumps(value, ensure_ascii=True, separators=(",", ":"), sort_keys=True,
                      allow_nan=False).encode()


@stg.composite
def _payloads(draw: stg.DrawFn, encoder: Any = encode_json) -> bytes:
    a: dict[str, Any] = {"subject": draw(_text), "predicate": draw(_text),
                         "object": draw(_json), "author": draw(_text)}
    if draw(stg.booleans()):
        a["confidence"] = draw(stg.floats(0, 1) | stg.sampled_from([0, 1]))
    if draw(stg.booleans()):
        a["source"] = draw(_text)
    payload: dict[str, Any] = {"t": "2026-11-26T06:09:36.427756Z",
                               "ops": [{"assert": validate_assertion(a)}]}
    if draw(stg.booleans()):
        payload["k"], payload["h"] = draw(_text), "ab" * 32
    return bytes(encoder(payload))


def _apply_record_reading(data: bytes) -> tuple[Any, ...]:
    """The fields as apply_record reads them from the orjson-decoded payload."""
    p = orjson.loads(data)
    a = p["ops"][0]["assert"]
    return (a["subject"], a["predicate"],
            orjson.dumps(a["object"], option=orjson.OPT_SORT_KEYS).decode(), a["author"],
            a.get("confidence"), a.get("source"), p["t"], p.get("k"), p.get("h"))


def _typed_reading(data: bytes) -> tuple[Any, ...]:
    r = st.ASSERT_RECORD_DECODER.decode(data)
    assert len(r.ops) == 1
    a = r.ops[0].a
    assert a is not None
    return (a.subject, a.predicate, st.object_text(a.object), a.author, a.confidence,
            a.source, r.t, r.k, r.h)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_payloads())
def test_typed_decoding_reads_what_apply_record_reads(data: bytes) -> None:
    assert typed(list(_typed_reading(data))) == typed(list(_apply_record_reading(data)))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_payloads(encoder=_old_encoder))
def test_records_of_the_encoder_before_orjson_read_the_same(data: bytes) -> None:
    """Escaped non-ASCII and Python's float exponents (1e+16, 1e-05) in an object are
    encoded again, as apply_record does, rather than kept as written."""
    assert typed(list(_typed_reading(data))) == typed(list(_apply_record_reading(data)))


@pytest.mark.parametrize("obj", [{"é": 1}, 1e16, 1e-05, [1e-7, "x"], "ü"])
def test_the_old_encoders_forms_are_encoded_again(obj: Any) -> None:
    old = _old_encoder(obj)
    assert old != encode_json(obj)  # the case this is about
    assert st.object_text(msgspec.Raw(old)) == encode_json(obj).decode()


def test_an_object_as_written_now_is_kept_as_it_is() -> None:
    for obj in ({"a": [1, 2.5, None, True]}, "plain", 0.00001, 1e300, {"s": "one+two"}):
        assert st.object_text(msgspec.Raw(encode_json(obj))) == encode_json(obj).decode()


@pytest.mark.parametrize("payload", [
    {"t": "x", "ops": [{"assert": {"subject": 5, "predicate": "p", "object": 1,
                                   "author": "a"}}]},
    {"t": "x", "ops": [{"assert": {"subject": "s", "predicate": "p", "object": 1,
                                   "author": "a", "confidence": True}}]},
    {"t": "x", "ops": [{"assert": {"subject": "s", "predicate": "p", "author": "a"}}]},
    {"t": "x", "ops": {"assert": {}}},
    {"ops": []},
])
def test_other_shapes_are_refused_for_apply_records_path(payload: dict[str, Any]) -> None:
    with pytest.raises(msgspec.DecodeError):
        st.ASSERT_RECORD_DECODER.decode(orjson.dumps(payload))


def test_an_op_that_is_not_an_assertion_has_none() -> None:
    data = orjson.dumps({"t": "x", "ops": [{"vote": {"assertion_id": 1}}]})
    assert st.ASSERT_RECORD_DECODER.decode(data).ops[0].a is None
