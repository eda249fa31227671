"""The schema of an assertion's ``object`` in /openapi.json says what the server does.

The server keeps any JSON value, but an integer in it must fit in 64 bits, signed or
unsigned (-2**63 ... 2**64-1: orjson encodes no other), or the write is refused with
400 ``invalid_number``.  A number written with a fraction or an exponent (1.5, 1e30,
1.0) is parsed as a float and kept whatever its size.  OpenAPI 3.0 schemas are JSON
Schema draft 4, where an "integer" is exactly such a number without fraction or
exponent, and schemathesis validates them with a draft-4 validator; these tests use
one too, on the document the server serves, and check that the schema refuses
exactly the values the server refuses: in its request parser and model, and over
HTTP against a real server (whose answers must also match the response schema).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as stg

from stemedb import limits
from stemedb.errors import InvalidInput
from stemedb.model import validate_assertion, validate_batch
from stemedb.server._http import dumps, parse_json
from stemedb.server._openapi import openapi_document
from tests._server import ServerProcess
from tests._typed import typed

U64_MAX = 2**64 - 1
I64_MIN = -(2**63)

# JSON texts of an `object`, as a client sends them, and whether the server keeps it.
ACCEPTED = [
    "0", str(U64_MAX), str(I64_MIN), "-1", "1.5", "1e30", "-1e30", "1E+19", "1.0",
    "18446744073709551616.0", "-9223372036854775809.5", "1e-400", "1.7976931348623157e308",
    "null", "true", "false", '"text"', "[]", "{}",
    f'[[1, [{U64_MAX}]], {{"a": {{"b": [{I64_MIN}, 1e30, null, 1.5]}}}}]',
]
REJECTED = [
    str(U64_MAX + 1), str(I64_MIN - 1), "1" + "0" * 30, "-" + "9" * 40,
    f"[1, [{U64_MAX + 1}]]", f'{{"a": {{"b": {I64_MIN - 1}}}}}',
    f'{{"ok": 1.5, "bad": [null, {{"x": {2**70}}}]}}',
]


def _served_document() -> dict[str, Any]:
    """The document as /openapi.json serves it: built and encoded as build_app does."""
    doc: dict[str, Any] = json.loads(dumps(openapi_document(auth_enabled=False)))
    return doc


def _json_schema(node: Any) -> Any:
    """OpenAPI 3.0's ``nullable`` in JSON Schema terms (as schemathesis converts it)."""
    if isinstance(node, list):
        return [_json_schema(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: _json_schema(v) for k, v in node.items() if k != "nullable"}
    if node.get("nullable") is True:
        return {"anyOf": [out, {"type": "null"}]}
    return out


def _draft4_validator(doc: dict[str, Any], pointer: str) -> Callable[[Any], bool]:
    """is_valid for the schema at ``pointer`` of ``doc``, with a draft-4 validator
    (schemathesis's for OpenAPI 3.0: jsonschema_rs; jsonschema where it is older)."""
    schema = {"$ref": f"#{pointer}", "components": _json_schema(doc["components"])}
    try:
        import jsonschema_rs
    except ImportError:  # schemathesis 3 validates with jsonschema
        import jsonschema

        is_valid: Callable[[Any], bool] = jsonschema.Draft4Validator(schema).is_valid
        return is_valid
    return jsonschema_rs.Draft4Validator(schema).is_valid


OBJECT_POINTER = "/components/schemas/AssertionInput/properties/object"
RESPONSE_POINTER = "/components/schemas/AssertionRecord/properties/object"


@pytest.fixture(scope="module")
def object_schema_accepts() -> Callable[[Any], bool]:
    return _draft4_validator(_served_document(), OBJECT_POINTER)


def _assertion(value: Any) -> dict[str, Any]:
    return {"subject": "s", "predicate": "p", "object": value, "author": "a"}


def _body(object_text: str) -> bytes:
    return b'{"subject":"s","predicate":"p","author":"a","object":' + object_text.encode() + b"}"


def _server_code(object_text: str) -> str:
    """What the route handlers do with the body: parse it, validate it as an assertion
    (POST /v1/assertions) and as a batch op (POST /v1/batch); "ok" or the error code."""
    codes = set()
    for check in (lambda raw: validate_assertion(parse_json(raw)),
                  lambda raw: validate_batch(parse_json(b'{"ops":[{"assert":' + raw + b"}]}"))):
        try:
            check(_body(object_text))
            codes.add("ok")
        except InvalidInput as exc:
            codes.add(exc.code)
    assert len(codes) == 1, (object_text, codes)
    return codes.pop()


def test_object_schema_is_the_json_value_component() -> None:
    schemas = _served_document()["components"]["schemas"]
    obj = schemas["AssertionInput"]["properties"]["object"]
    assert obj["allOf"] == [{"$ref": "#/components/schemas/JsonValue"}]
    assert f"at most {limits.object_bytes_max} bytes" in obj["description"]
    assert f"at most {limits.json_depth_max} levels" in obj["description"]
    assert "64 bits" in obj["description"]
    assert schemas["AssertionRecord"]["properties"]["object"] == {
        "$ref": "#/components/schemas/JsonValue"}
    integers = [b for b in schemas["JsonValue"]["anyOf"] if b.get("type") == "integer"]
    assert integers == [{"type": "integer", "minimum": I64_MIN, "maximum": U64_MAX}]


@pytest.mark.parametrize("text", ACCEPTED)
def test_schema_and_server_accept(text: str,
                                  object_schema_accepts: Callable[[Any], bool]) -> None:
    assert object_schema_accepts(json.loads(text))
    assert _server_code(text) == "ok"


@pytest.mark.parametrize("text", REJECTED)
def test_schema_and_server_refuse_integers_beyond_64_bits(
        text: str, object_schema_accepts: Callable[[Any], bool]) -> None:
    assert not object_schema_accepts(json.loads(text))
    assert _server_code(text) == "invalid_number"


_JSON_VALUES = stg.recursive(
    stg.none() | stg.booleans() | stg.text(max_size=5)
    | stg.integers(min_value=-(2**66), max_value=2**66)
    | stg.sampled_from([U64_MAX, U64_MAX + 1, I64_MIN, I64_MIN - 1])
    | stg.floats(allow_nan=False, allow_infinity=False),
    lambda inner: stg.lists(inner, max_size=4)
    | stg.dictionaries(stg.text(max_size=3), inner, max_size=4),
    max_leaves=12)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=_JSON_VALUES)
def test_schema_verdict_is_the_servers(
        value: Any, object_schema_accepts: Callable[[Any], bool]) -> None:
    # What schemathesis does: a Python value, sent as json.dumps writes it.
    expected = "ok" if object_schema_accepts(value) else "invalid_number"
    assert _server_code(json.dumps(value)) == expected


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("object-schema")) as s:
        s.start()
        yield s


def test_live_server_agrees_with_the_served_schema(server: ServerProcess) -> None:
    with server.client() as c:
        doc = c.get("/openapi.json").json()
        accepts = _draft4_validator(doc, OBJECT_POINTER)
        record_object = _draft4_validator(doc, RESPONSE_POINTER)
        for text in ACCEPTED + REJECTED:
            expected = json.loads(text)
            r = c.post("/v1/assertions", content=_body(text),
                       headers={"Content-Type": "application/json"})
            if accepts(expected):
                assert r.status_code == 201, (text, r.text)
                got = c.get(f"/v1/assertions/{r.json()['id']}")
                assert got.status_code == 200, got.text
                stored = got.json()["object"]
                assert typed(stored) == typed(expected), text
                assert record_object(stored), text
            else:
                assert r.status_code == 400, (text, r.text)
                assert r.json()["error"]["code"] == "invalid_number", (text, r.text)
