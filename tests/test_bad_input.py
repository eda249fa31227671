"""Bad input: a 4xx with a precise code, never a 500, and nothing written.

One table; each row is a request and the status and ``error.code`` it must get.
After each row the WAL's end LSN and the open epoch's counters are compared with
their values before it: a refused request must not have reached the log.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from stemedb import limits
from tests._server import ServerProcess

BODY_BYTES_MAX = 256 * 1024  # this server's server.body_bytes_max (the default is 8 MiB)
HUGE_DECLARED_BYTES = 1024**3  # a Content-Length far over the limit, never sent


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("bad"),
                       env={"STEMEDB_SERVER_BODY_BYTES_MAX": str(BODY_BYTES_MAX)}) as s:
        s.start()
        yield s


@pytest.fixture(scope="module")
def assertion_id(server: ServerProcess) -> int:
    with server.client() as c:
        r = c.post("/v1/assertions", json=_ok())
        assert r.status_code == 201
        aid: int = r.json()["id"]
        return aid


def _ok(**over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"subject": "s", "predicate": "p", "object": 1, "author": "a"}
    body.update(over)
    return body


def _raw(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def _nested(depth: int) -> Any:
    v: Any = 0
    for _ in range(depth):
        v = [v]
    return v


@dataclass
class Case:
    name: str
    method: str
    path: str
    body: bytes | None
    status: int
    code: str
    headers: dict[str, str] = field(default_factory=lambda: {
        "Content-Type": "application/json"})


J = "application/json"
A = "/v1/assertions"
V = "/v1/assertions/{aid}/votes/bob"

CASES = [
    # --- JSON itself ----------------------------------------------------------------
    Case("malformed_json", "POST", A, b'{"subject": ', 400, "malformed_json"),
    Case("trailing_garbage", "POST", A, _raw(_ok()) + b"x", 400, "malformed_json"),
    Case("empty_body", "POST", A, b"", 400, "empty_body"),
    Case("not_an_object", "POST", A, b"[]", 400, "invalid_type"),
    Case("nan", "POST", A, b'{"subject":"s","predicate":"p","object":NaN,"author":"a"}',
         400, "invalid_number"),
    Case("infinity", "POST", A, b'{"subject":"s","predicate":"p","object":1,"author":"a",'
         b'"confidence":Infinity}', 400, "invalid_number"),
    Case("overflowing_float", "POST", A, _raw(_ok())[:-1] + b',"confidence":1e999}', 400,
         "invalid_number"),
    Case("integer_too_long", "POST", A,
         b'{"subject":"s","predicate":"p","author":"a","object":' + b"9" * 5000 + b"}",
         400, "invalid_number"),
    Case("integer_beyond_64_bits", "POST", A,
         b'{"subject":"s","predicate":"p","author":"a","object":{"n":' + str(2**64).encode()
         + b"}}", 400, "invalid_number"),
    Case("batch_integer_beyond_64_bits", "POST", "/v1/batch",
         b'{"ops":[{"assert":{"subject":"s","predicate":"p","author":"a","object":'
         + str(-2**63 - 1).encode() + b"}}]}", 400, "invalid_number"),
    Case("invalid_utf8", "POST", A, b'{"subject":"\xff\xfe","predicate":"p","object":1,'
         b'"author":"a"}', 400, "invalid_utf8"),
    Case("lone_surrogate_in_object", "POST", A, _raw(_ok(object={"k": "\ud800"})), 400,
         "invalid_utf8"),
    Case("lone_surrogate_in_key", "POST", A,
         b'{"subject":"s","predicate":"p","author":"a","object":{"\\udc00":1}}', 400,
         "invalid_utf8"),
    Case("duplicate_key", "POST", A,
         b'{"subject":"s","subject":"t","predicate":"p","object":1,"author":"a"}', 400,
         "duplicate_key"),
    Case("nesting_too_deep", "POST", A, _raw(_ok(object=_nested(limits.json_depth_max + 5))),
         400, "too_deep"),
    Case("nesting_beyond_the_parser", "POST", A,
         b'{"subject":"s","predicate":"p","author":"a","object":' + b"[" * 100_000
         + b"]" * 100_000 + b"}", 400, "too_deep"),
    # --- fields -----------------------------------------------------------------------
    Case("unknown_field", "POST", A, _raw(_ok(colour="blue")), 400, "unknown_field"),
    Case("missing_subject", "POST", A, _raw({"predicate": "p", "object": 1, "author": "a"}),
         400, "missing_field"),
    Case("missing_object", "POST", A, _raw({"subject": "s", "predicate": "p",
                                            "author": "a"}), 400, "missing_field"),
    Case("subject_wrong_type", "POST", A, _raw(_ok(subject=5)), 400, "invalid_type"),
    Case("author_null", "POST", A, _raw(_ok(author=None)), 400, "missing_field"),
    Case("subject_empty", "POST", A, _raw(_ok(subject="")), 400, "too_short"),
    Case("subject_over_512_bytes", "POST", A, _raw(_ok(subject="x" * 513)), 400, "too_long"),
    # 257 characters but 514 bytes: the limit is in bytes.
    Case("subject_over_512_bytes_multibyte", "POST", A, _raw(_ok(subject="é" * 257)), 400,
         "too_long"),
    Case("predicate_over_256_bytes", "POST", A, _raw(_ok(predicate="p" * 257)), 400,
         "too_long"),
    Case("author_over_256_bytes", "POST", A, _raw(_ok(author="a" * 257)), 400, "too_long"),
    Case("source_over_2048_bytes", "POST", A, _raw(_ok(source="s" * 2049)), 400, "too_long"),
    Case("object_over_64KiB", "POST", A, _raw(_ok(object="o" * (64 * 1024))), 400,
         "too_long"),
    Case("confidence_out_of_range", "POST", A, _raw(_ok(confidence=1.5)), 400,
         "out_of_range"),
    Case("confidence_string", "POST", A, _raw(_ok(confidence="high")), 400, "invalid_type"),
    Case("confidence_bool", "POST", A, _raw(_ok(confidence=True)), 400, "invalid_type"),
    # --- media type, size ------------------------------------------------------------
    Case("text_plain", "POST", A, _raw(_ok()), 415, "unsupported_media_type",
         {"Content-Type": "text/plain"}),
    Case("no_content_type", "POST", A, _raw(_ok()), 415, "unsupported_media_type", {}),
    Case("latin1_charset", "POST", A, _raw(_ok()), 415, "unsupported_media_type",
         {"Content-Type": "application/json; charset=latin-1"}),
    Case("body_over_limit", "POST", A, _raw(_ok(object="o" * BODY_BYTES_MAX)), 413,
         "body_too_large"),
    # --- batches ----------------------------------------------------------------------
    Case("batch_over_1000_ops", "POST", "/v1/batch",
         _raw({"ops": [{"assert": _ok()}] * (limits.batch_ops_max + 1)}), 400,
         "batch_too_large"),
    Case("batch_empty", "POST", "/v1/batch", _raw({"ops": []}), 400, "too_short"),
    Case("batch_ops_not_a_list", "POST", "/v1/batch", _raw({"ops": {}}), 400,
         "invalid_type"),
    Case("batch_unknown_op", "POST", "/v1/batch", _raw({"ops": [{"delete": {}}]}), 400,
         "invalid_op"),
    Case("batch_two_kinds_in_one_op", "POST", "/v1/batch",
         _raw({"ops": [{"assert": _ok(), "vote": {}}]}), 400, "invalid_op"),
    Case("batch_bad_op_after_good_ones", "POST", "/v1/batch",
         _raw({"ops": [{"assert": _ok()}, {"assert": _ok(subject="")}]}), 400, "too_short"),
    Case("batch_vote_on_unknown_assertion", "POST", "/v1/batch",
         _raw({"ops": [{"assert": _ok()},
                       {"vote": {"assertion_id": 10**15, "voter": "v", "value": 1}}]}),
         404, "not_found"),
    Case("batch_vote_value_2", "POST", "/v1/batch",
         _raw({"ops": [{"vote": {"assertion_id": 1, "voter": "v", "value": 2}}]}), 400,
         "invalid_vote_value"),
    Case("batch_unknown_top_level_field", "POST", "/v1/batch",
         _raw({"ops": [{"assert": _ok()}], "atomic": False}), 400, "unknown_field"),
    # --- votes ------------------------------------------------------------------------
    Case("vote_value_2", "PUT", V, _raw({"value": 2}), 400, "invalid_vote_value"),
    Case("vote_value_0", "PUT", V, _raw({"value": 0}), 400, "invalid_vote_value"),
    Case("vote_value_string", "PUT", V, _raw({"value": "1"}), 400, "invalid_vote_value"),
    Case("vote_value_true", "PUT", V, _raw({"value": True}), 400, "invalid_vote_value"),
    Case("vote_value_float", "PUT", V, b'{"value": 1.0}', 400, "invalid_vote_value"),
    Case("vote_missing_value", "PUT", V, _raw({}), 400, "missing_field"),
    Case("vote_unknown_field", "PUT", V, _raw({"value": 1, "weight": 3}), 400,
         "unknown_field"),
    Case("vote_unknown_assertion", "PUT", "/v1/assertions/999999999/votes/bob",
         _raw({"value": 1}), 404, "not_found"),
    Case("vote_id_not_a_number", "PUT", "/v1/assertions/abc/votes/bob", _raw({"value": 1}),
         400, "invalid_parameter"),
    Case("vote_id_zero", "PUT", "/v1/assertions/0/votes/bob", _raw({"value": 1}), 400,
         "out_of_range"),
    Case("vote_id_over_int64", "PUT", "/v1/assertions/9223372036854775808/votes/bob",
         _raw({"value": 1}), 400, "out_of_range"),
    Case("voter_over_256_bytes", "PUT", "/v1/assertions/{aid}/votes/" + "v" * 257,
         _raw({"value": 1}), 400, "too_long"),
    # --- epochs, headers, query -----------------------------------------------------
    Case("seal_with_a_body", "POST", "/v1/epochs", _raw({"epoch": 3}), 400, "unknown_field"),
    Case("idempotency_key_too_long", "POST", A, _raw(_ok()), 400, "invalid_idempotency_key",
         {"Content-Type": J, "Idempotency-Key": "k" * 257}),
    Case("idempotency_key_with_space", "POST", A, _raw(_ok()), 400,
         "invalid_idempotency_key", {"Content-Type": J, "Idempotency-Key": "a b"}),
    Case("unknown_query_parameter_on_write", "POST", A + "?dry_run=1", _raw(_ok()), 400,
         "unknown_parameter"),
    Case("list_unknown_parameter", "GET", A + "?colour=blue", None, 400,
         "unknown_parameter"),
    Case("list_limit_zero", "GET", A + "?limit=0", None, 400, "out_of_range"),
    Case("list_limit_1001", "GET", A + "?limit=1001", None, 400, "out_of_range"),
    Case("list_limit_not_a_number", "GET", A + "?limit=ten", None, 400, "invalid_parameter"),
    Case("list_after_negative", "GET", A + "?after=-1", None, 400, "invalid_parameter"),
    Case("list_epoch_huge", "GET", A + "?epoch=99999999999999999999", None, 400,
         "invalid_parameter"),
    Case("list_repeated_parameter", "GET", A + "?limit=1&limit=2", None, 400,
         "repeated_parameter"),
    Case("list_subject_too_long", "GET", A + "?subject=" + "s" * 513, None, 400, "too_long"),
    Case("list_subject_empty", "GET", A + "?subject=", None, 400, "too_short"),
    Case("get_id_with_sign", "GET", "/v1/assertions/+1", None, 400, "invalid_parameter"),
    Case("get_id_with_underscore", "GET", "/v1/assertions/1_0", None, 400,
         "invalid_parameter"),
    Case("epoch_not_a_number", "GET", "/v1/epochs/one", None, 400, "invalid_parameter"),
    Case("votes_epoch_zero", "GET", "/v1/assertions/{aid}/votes?epoch=0", None, 400,
         "out_of_range"),
    Case("unknown_route", "GET", "/v1/assertion", None, 404, "not_found"),
    Case("query_not_utf8", "GET", A + "?subject=%FF", None, 400, "invalid_utf8"),
    Case("voter_not_utf8", "PUT", "/v1/assertions/{aid}/votes/%C3", _raw({"value": 1}), 400,
         "invalid_utf8"),
    Case("wrong_method", "PATCH", A, _raw(_ok()), 405, "method_not_allowed"),
]


def _written(c: httpx.Client) -> tuple[int, dict[str, Any]]:
    return (c.get("/v1/admin/status").json()["wal"]["end_lsn"],
            c.get("/v1/epochs/current").json())


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(server: ServerProcess, assertion_id: int, case: Case) -> None:
    with server.client() as c:
        before = _written(c)
        r = c.request(case.method, case.path.format(aid=assertion_id), content=case.body,
                      headers=case.headers)
        assert r.status_code == case.status, r.text
        assert r.headers["Content-Type"] == "application/json"
        err = r.json()["error"]
        assert err["code"] == case.code, err
        assert isinstance(err["message"], str) and err["message"]
        assert _written(c) == before


def test_table_covers_the_good_request(server: ServerProcess) -> None:
    """The base body of the table is accepted: each row fails for its one reason."""
    with server.client() as c:
        assert c.post(A, json=_ok()).status_code == 201
        assert c.post(A, json=_ok(subject="é" * 256)).status_code == 201  # 512 bytes


def _raw_request(server: ServerProcess, head: bytes, body: bytes) -> tuple[bytes, float]:
    """Send a request by hand; return the response and how long it took."""
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(head + body)
        chunks = []
        while True:  # bounded by the socket timeout and the server closing
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks) and b"}}" in chunks[-1]:
                break
    return b"".join(chunks), time.monotonic() - t0


def test_declared_length_over_the_limit_is_refused_before_reading(
        server: ServerProcess) -> None:
    with server.client() as c:
        before = _written(c)
    head = (f"POST /v1/assertions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {HUGE_DECLARED_BYTES}\r\n\r\n").encode()
    # Only a few bytes of the declared gigabyte are ever sent; the answer comes anyway.
    resp, seconds = _raw_request(server, head, b'{"subject":')
    assert resp.startswith(b"HTTP/1.1 413"), resp[:200]
    assert b'"body_too_large"' in resp
    assert seconds < 5
    with server.client() as c:
        assert _written(c) == before


def test_chunked_body_over_the_limit(server: ServerProcess) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"subject":"s","predicate":"p","author":"a","object":"'
        for _ in range(BODY_BYTES_MAX // 4096 + 2):
            yield b"o" * 4096
        yield b'"}'

    with server.client() as c:
        before = _written(c)
        try:
            r = c.post(A, content=chunks(), headers={"Content-Type": J})
        except httpx.TransportError:
            pytest.fail("the server must answer 413, not drop the connection mid-request")
        assert r.status_code == 413
        assert r.json()["error"]["code"] == "body_too_large"
        assert _written(c) == before


def test_garbage_bodies_never_500(server: ServerProcess) -> None:
    """Random bytes and random JSON never produce a 5xx or a write."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
        | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(["subject", "predicate", "object", "author",
                                           "confidence", "source", "ops", "value", "x"]),
                          inner, max_size=5),
        max_leaves=12)
    bodies = st.binary(max_size=200) | json_values.map(
        lambda v: json.dumps(v).encode())

    with server.client() as c:
        @settings(max_examples=60, deadline=None,
                  suppress_health_check=[HealthCheck.function_scoped_fixture])
        @given(path=st.sampled_from([A, "/v1/batch", "/v1/epochs",
                                     "/v1/assertions/1/votes/zed"]), body=bodies)
        def check(path: str, body: bytes) -> None:
            method = "PUT" if "/votes/" in path else "POST"
            before = _written(c)
            r = c.request(method, path, content=body, headers={"Content-Type": J})
            assert r.status_code < 500, r.text
            if r.status_code >= 400:
                assert "error" in r.json()
                assert _written(c) == before

        check()
