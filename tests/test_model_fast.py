"""validate_assertion's fast path returns what the strict checks return, or defers.

The fast path accepts the common valid assertion with a few type checks; anything it
is not sure of goes to ``validate_assertion_strict``.  Generated assertions near every
limit and of every wrong type must get the same normalized result (value and type)
or the same error (code and message) from both, alone and inside a batch.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as stg

from stemedb import limits, model
from stemedb.errors import InvalidInput
from stemedb.model import validate_assertion, validate_assertion_strict, validate_batch
from tests._typed import typed


def _outcome(fn: Any, *args: Any) -> tuple[str, Any]:
    try:
        return "ok", typed(fn(*args))
    except InvalidInput as exc:
        return "refused", (exc.code, exc.message)


def _text_near(limit: int) -> Any:
    return stg.sampled_from(["", "a", "x" * limit, "x" * (limit + 1), "é" * (limit // 2),
                          "é" * (limit // 2 + 1), "\ud800", "a:b"]) | stg.one_of(
        stg.text(max_size=8),
        stg.integers(), stg.none(), stg.booleans(), stg.lists(stg.text(max_size=2),
                                                             max_size=2))


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return {"deep": value}


_objects = stg.recursive(
    stg.one_of(stg.none(), stg.booleans(), stg.integers(min_value=-(2**65),
                                                        max_value=2**65),
               stg.floats(), stg.text(max_size=6)),
    lambda inner: stg.one_of(stg.lists(inner, max_size=3),
                             stg.dictionaries(stg.one_of(stg.text(max_size=4),
                                                         stg.integers()),
                                              inner, max_size=3)),
    max_leaves=12,
) | stg.sampled_from([
    "x" * (limits.object_bytes_max - 2), "x" * (limits.object_bytes_max - 1),
    _nested(limits.json_depth_max + 2), _nested(limits.json_depth_max - 1),
])

_confidences = stg.one_of(stg.floats(), stg.integers(min_value=-2, max_value=2),
                          stg.booleans(), stg.text(max_size=2), stg.sampled_from(
                              [0, 1, 0.0, -0.0, 1.0, 1.0000000000000002, math.nan]))


@stg.composite
def _assertions(draw: Any) -> Any:
    if draw(stg.integers(0, 30)) == 0:
        return draw(stg.one_of(stg.none(), stg.text(max_size=3), stg.lists(stg.integers())))
    fields = {
        "subject": _text_near(limits.subject_bytes_max),
        "predicate": _text_near(limits.predicate_bytes_max),
        "author": _text_near(limits.author_bytes_max),
        "object": _objects,
        "confidence": _confidences,
        "source": _text_near(limits.source_bytes_max),
    }
    plausible = {
        "object": stg.dictionaries(stg.text(max_size=3), stg.integers(0, 9), max_size=2),
        "confidence": stg.floats(0, 1),
    }
    out: dict[Any, Any] = {}
    for name, strategy in fields.items():
        # Mostly present and plausible, so that a single field near or over its limit
        # is often the only thing wrong; sometimes missing, None or anything at all.
        choice = draw(stg.integers(0, 9))
        if choice == 0:
            continue
        if choice == 1:
            out[name] = None
        elif choice < 7:
            out[name] = draw(plausible[name] if name in plausible
                             else stg.text(alphabet="abc:/", min_size=1, max_size=10))
        else:
            out[name] = draw(strategy)
    if draw(stg.integers(0, 12)) == 0:
        out[draw(stg.sampled_from(["colour", "id", 7]))] = 1
    return out


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_assertions())
def test_the_fast_path_agrees_with_the_strict_checks(obj: Any) -> None:
    assert _outcome(validate_assertion, obj) == _outcome(validate_assertion_strict, obj)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stg.lists(_assertions(), min_size=1, max_size=5))
def test_a_batch_names_the_failing_op_as_the_strict_checks_do(objs: list[Any]) -> None:
    expected: tuple[str, Any]
    try:
        expected = "ok", typed([{"assert": validate_assertion_strict(o, f"ops[{i}].")}
                                 for i, o in enumerate(objs)])
    except InvalidInput as exc:
        expected = "refused", (exc.code, exc.message)
    assert _outcome(validate_batch, {"ops": [{"assert": o} for o in objs]}) == expected


def test_the_fast_path_is_taken_for_a_plain_assertion(monkeypatch: pytest.MonkeyPatch
                                                      ) -> None:
    calls: list[Any] = []

    def strict(obj: Any, where: str = "") -> Any:
        calls.append(obj)
        return validate_assertion_strict(obj, where)

    monkeypatch.setattr(model, "validate_assertion_strict", strict)
    plain = {"subject": "s", "predicate": "p", "object": {"n": 1}, "author": "a",
             "confidence": 1, "source": "x"}
    assert validate_assertion(plain) == {"subject": "s", "predicate": "p", "author": "a",
                                         "object": {"n": 1}, "confidence": 1.0,
                                         "source": "x"}
    validate_batch({"ops": [{"assert": plain}] * 3})
    assert calls == []
    with pytest.raises(InvalidInput):
        validate_assertion({**plain, "confidence": 2})
    assert len(calls) == 1


_BASE = {"subject": "s", "predicate": "p", "object": {"n": 1}, "author": "a",
         "confidence": 0.5, "source": "src"}
_LIMITS = {"subject": limits.subject_bytes_max, "predicate": limits.predicate_bytes_max,
           "author": limits.author_bytes_max, "source": limits.source_bytes_max}


@pytest.mark.parametrize("field", sorted(_LIMITS))
@pytest.mark.parametrize("value", ["", "x", "at-limit", "over-limit", "é-at-limit",
                                   "é-over-limit", "\ud800", 5, None])
def test_one_field_at_its_edge_in_an_otherwise_valid_assertion(field: str, value: Any
                                                               ) -> None:
    n = _LIMITS[field]
    value = {"at-limit": "x" * n, "over-limit": "x" * (n + 1), "é-at-limit": "é" * (n // 2),
             "é-over-limit": "é" * (n // 2) + "x"}.get(value, value)
    obj = {**_BASE, field: value}
    assert _outcome(validate_assertion, obj) == _outcome(validate_assertion_strict, obj)


@pytest.mark.parametrize("value", [0, 1, -0.0, 1.0, 0.25, -1e-300, 1.0000000000000002,
                                   math.nan, math.inf, True, False, "0.5", None])
def test_confidence_edges(value: Any) -> None:
    obj = {**_BASE, "confidence": value}
    assert _outcome(validate_assertion, obj) == _outcome(validate_assertion_strict, obj)


@pytest.mark.parametrize("size", [limits.object_bytes_max - 1, limits.object_bytes_max,
                                  limits.object_bytes_max + 1])
def test_object_size_edges(size: int) -> None:
    obj = {**_BASE, "object": "x" * (size - 2)}  # two bytes of quotes
    assert _outcome(validate_assertion, obj) == _outcome(validate_assertion_strict, obj)
