"""The request parser's fast path (orjson) gives the strict parser's verdict, always.

``parse_json`` accepts orjson's result only when it can prove it equal to what
``parse_json_strict`` (Python's decoder with the duplicate-key, NaN, float-range and
surrogate hooks) would return; otherwise it defers to the strict parser.  These tests
generate JSON texts, valid and not, with the cases that tell the two apart (duplicate
keys, integers beyond 64 bits, out-of-range floats, escapes, raw non-ASCII, colons in
strings, NaN, nesting) and check that both functions return the same value with the
same types, or both refuse it with the same code.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as stg

from stemedb.errors import InvalidInput
from stemedb.server import _http
from stemedb.server._http import parse_json, parse_json_strict
from tests._typed import typed


def _verdict(fn: Any, raw: bytes) -> tuple[str, Any]:
    try:
        return "ok", typed(fn(raw))
    except InvalidInput as exc:
        return "refused", exc.code


def _same(raw: bytes) -> tuple[str, Any]:
    fast, strict = _verdict(parse_json, raw), _verdict(parse_json_strict, raw)
    assert fast == strict, raw
    return fast


# -- generated JSON texts --------------------------------------------------------------

_texts = stg.text(alphabet=stg.sampled_from(
    [*'ab:,{}[]" \\/\t', "é", "ü", "€", "😀", "\u2028"]), max_size=12)


def _string_literal(s: str, escape: bool) -> str:
    return json.dumps(s, ensure_ascii=escape)


_numbers = stg.one_of(
    stg.integers(min_value=-(2**70), max_value=2**70).map(str),
    stg.sampled_from([str(2**63 - 1), str(2**63), str(-(2**63)), str(-(2**63) - 1),
                      str(2**64 - 1), str(2**64), "1e400", "-1e400", "1.5e-400", "-0",
                      "0.1", "1E5", "1e-7", "123456789012345678.5", "NaN", "Infinity",
                      "-Infinity", "01", "1.", ".5", "+1"]),
    stg.floats(allow_nan=False, allow_infinity=False).map(repr),
)


@stg.composite
def _json_text(draw: Any, depth: int = 0) -> str:
    kinds = ["str", "num", "lit"] + (["obj", "arr"] if depth < 4 else [])
    kind = draw(stg.sampled_from(kinds))
    if kind == "str":
        return _string_literal(draw(_texts), draw(stg.booleans()))
    if kind == "num":
        return str(draw(_numbers))
    if kind == "lit":
        return draw(stg.sampled_from(["true", "false", "null"]))
    if kind == "arr":
        items = draw(stg.lists(_json_text(depth + 1), max_size=4))
        return "[" + ",".join(items) + "]"
    keys = draw(stg.lists(_texts, max_size=4))
    if keys and draw(stg.booleans()):
        keys.append(draw(stg.sampled_from(keys)))  # a duplicate key
    members = [f"{_string_literal(k, draw(stg.booleans()))}:{draw(_json_text(depth + 1))}"
               for k in keys]
    return "{" + ",".join(members) + "}"


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_json_text())
def test_generated_texts_get_the_strict_verdict(text: str) -> None:
    _same(text.encode("utf-8"))


@settings(max_examples=300, deadline=None)
@given(stg.binary(max_size=40))
def test_arbitrary_bytes_get_the_strict_verdict(raw: bytes) -> None:
    _same(raw)


# -- the cases that tell the parsers apart, by name ------------------------------------

@pytest.mark.parametrize(("raw", "expected"), [
    (b'{"a":1,"a":2}', ("refused", "duplicate_key")),
    (b'{"a:b":1,"a:b":1}', ("refused", "duplicate_key")),
    (b'{"x":{"k":1,"k":1}}', ("refused", "duplicate_key")),
    (b'[1, 18446744073709551616]', ("ok", ("list", [("int", 1), ("int", 2**64)]))),
    (b'-9223372036854775809', ("ok", ("int", -(2**63) - 1))),
    (b'1e400', ("refused", "invalid_number")),
    (b'[NaN]', ("refused", "invalid_number")),
    (b'"\\ud800"', ("refused", "invalid_utf8")),
    (b'"\xff"', ("refused", "invalid_utf8")),
    (b'{"a":"x:y:z"}', ("ok", ("dict", [("a", ("str", "x:y:z"))]))),
    (b'{"a":1,', ("refused", "malformed_json")),
])
def test_named_cases(raw: bytes, expected: tuple[str, Any]) -> None:
    assert _same(raw) == expected


def test_a_duplicate_hidden_by_an_escaped_colon_is_still_found() -> None:
    # One member dropped, one colon added by an escape: the counts would match, so
    # bodies with \u escapes never take the fast path.
    raw = b'{"a":1,"a":"\\u003a"}'
    assert _same(raw) == ("refused", "duplicate_key")


def test_the_fast_path_is_taken_for_plain_bodies(monkeypatch: pytest.MonkeyPatch) -> None:
    """A refactor that sent every body to the strict parser would still pass the
    equivalence tests above; this one notices."""
    calls: list[bytes] = []

    def strict(raw: bytes) -> Any:
        calls.append(raw)
        return parse_json_strict(raw)

    monkeypatch.setattr(_http, "parse_json_strict", strict)
    body = json.dumps({"ops": [{"assert": {"subject": f"s{i}", "predicate": "p",
                                            "object": {"n": i, "t": "a:b"}, "author": "a"}}
                                for i in range(1000)]}).encode()
    assert parse_json(body)["ops"][999]["assert"]["object"]["n"] == 999
    assert calls == []
    with pytest.raises(InvalidInput):
        parse_json(b'{"a":1,"a":2}')
    assert calls == [b'{"a":1,"a":2}']
