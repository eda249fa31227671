"""The OpenAPI 3.0 document served at ``/openapi.json``.

Built from the same limits the server enforces (:mod:`stemedb.limits`), so a limit
changes in one place.  String lengths are documented as ``maxLength`` with the byte
limit of SPEC.md; the server counts UTF-8 bytes (``x-max-bytes`` says so).

Security requirements appear only when the server has tokens configured, so the
document always describes the server that serves it.  A test compares the paths
and methods here with the route table, and schemathesis checks the live server
against this document.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

from .. import limits

JSON = "application/json"
ID_MAX = limits.http_id_max


def _text(max_bytes: int, min_bytes: int = 1, **extra: Any) -> dict[str, Any]:
    return {"type": "string", "minLength": min_bytes, "maxLength": max_bytes,
            "x-max-bytes": max_bytes, **extra}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _int(minimum: int = 0, maximum: int | None = None, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "integer", "minimum": minimum, **extra}
    if maximum is not None:
        out["maximum"] = maximum
    return out


def _obj(props: dict[str, Any], required: list[str] | None = None, *,
         closed: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        out["required"] = required
    if closed:
        out["additionalProperties"] = False
    return out


_TIME = {"type": "string", "format": "date-time"}
_NULLABLE_INT = {"type": "integer", "nullable": True}

# An integer in a stored JSON value must fit in 64 bits, signed or unsigned: orjson
# encodes no other (model.encode_json; 400 invalid_number otherwise).
JSON_INT_MIN = -(2**63)
JSON_INT_MAX = 2**64 - 1

# Any JSON value the server stores.  OpenAPI 3.0 schemas follow JSON Schema draft 4
# (so does schemathesis's validator), where an "integer" is a number written without a
# fraction or an exponent: exactly the numbers the body parser turns into Python ints
# (_http.parse_json), the only ones held to the 64-bit range.  So 1.5, 1e30 and 1.0
# are numbers that are not integers (the server keeps them as floats and accepts
# them), while 18446744073709551616 is an integer out of range (refused).  OpenAPI 3.0
# has no null type and ``nullable`` acts only beside a ``type``, so null rides on the
# boolean branch.
_JSON_VALUE = {
    "description": "any JSON value; an integer (a number with no fraction and no "
                   f"exponent) is between {JSON_INT_MIN} and {JSON_INT_MAX}",
    "anyOf": [
        {"type": "boolean", "nullable": True},
        {"type": "string"},
        {"type": "integer", "minimum": JSON_INT_MIN, "maximum": JSON_INT_MAX},
        {"type": "number", "not": {"type": "integer"}},
        {"type": "array", "items": _ref("JsonValue")},
        {"type": "object", "additionalProperties": _ref("JsonValue")},
    ],
}

SCHEMAS: dict[str, Any] = {
    "JsonValue": _JSON_VALUE,
    "Error": _obj({"error": _obj({"code": {"type": "string", "pattern": "^[a-z0-9_]+$"},
                                  "message": {"type": "string"},
                                  "hint": {"type": "string"}}, ["code", "message"])},
                  ["error"]),
    "AssertionInput": _obj({
        "subject": _text(limits.subject_bytes_max),
        "predicate": _text(limits.predicate_bytes_max),
        "object": {"allOf": [_ref("JsonValue")],
                   "description": "any JSON value; its integers fit in 64 bits (signed or "
                                  "unsigned range); its encoding is at most "
                                  f"{limits.object_bytes_max} bytes and it nests at most "
                                  f"{limits.json_depth_max} levels"},
        "author": _text(limits.author_bytes_max),
        "confidence": {"type": "number", "minimum": 0, "maximum": 1, "nullable": True},
        "source": _text(limits.source_bytes_max, 0, nullable=True),
    }, ["subject", "predicate", "object", "author"], closed=True),
    "VoteOpInput": _obj({
        "assertion_id": _int(1, ID_MAX),
        "voter": _text(limits.voter_bytes_max),
        "value": {"type": "integer", "enum": [1, -1]},
    }, ["assertion_id", "voter", "value"], closed=True),
    "BatchInput": _obj({
        "ops": {"type": "array", "minItems": 1, "maxItems": limits.batch_ops_max,
                "items": {"oneOf": [
                    _obj({"assert": _ref("AssertionInput")}, ["assert"], closed=True),
                    _obj({"vote": _ref("VoteOpInput")}, ["vote"], closed=True)]}},
    }, ["ops"], closed=True),
    "VoteInput": _obj({"value": {"type": "integer", "enum": [1, -1]}}, ["value"],
                      closed=True),
    "EmptyInput": {"type": "object", "additionalProperties": False, "maxProperties": 0},
    "RoleCheck": {"type": "object"},
    "Cluster": _obj({"name": {"type": "string", "nullable": True},
                     "leader": {"type": "string", "nullable": True}, "term": _int(),
                     "members": {"type": "array", "items": {"type": "object"}}},
                    ["name", "leader", "term", "members"]),
    "SwitchoverInput": {"type": "object", "additionalProperties": False,
                        "properties": {"candidate": {"type": "string"}}},
    "SwitchoverResult": _obj({"leader": {"type": "string"}, "term": _int(),
                              "url": {"type": "string"}, "seconds": {"type": "number"}},
                             ["leader", "term"]),
    "ReadIndex": _obj({"durable_lsn": _int(), "term": _int()}, ["durable_lsn", "term"]),
    "AssertionCreated": _obj({"id": _int(1), "lsn": _int(), "epoch": _int(1),
                              "created_at": _TIME}, ["id", "lsn", "epoch", "created_at"]),
    "AssertionRecord": _obj({
        "id": _int(1), "subject": {"type": "string"}, "predicate": {"type": "string"},
        "object": _ref("JsonValue"), "author": {"type": "string"},
        "confidence": {"type": "number"},
        "source": {"type": "string"}, "epoch": _int(1), "lsn": _int(),
        "created_at": _TIME,
    }, ["id", "subject", "predicate", "object", "author", "epoch", "lsn", "created_at"]),
    "Tally": _obj({"support": _int(), "dispute": _int(), "score": {"type": "integer"}},
                  ["support", "dispute", "score"]),
    "Assertion": {"allOf": [_ref("AssertionRecord"), _ref("Tally"), _obj({
        "tally": {"allOf": [_ref("Tally"), _obj({"epoch": _int(1)}, ["epoch"])]}},
        ["tally"])]},
    "AssertionPage": _obj({"items": {"type": "array", "items": _ref("AssertionRecord")},
                           "next": _NULLABLE_INT}, ["items", "next"]),
    "VoteResult": _obj({"assertion_id": _int(1), "voter": {"type": "string"},
                        "value": {"type": "integer", "enum": [1, -1]}, "lsn": _int(),
                        "epoch": _int(1), "created": {"type": "boolean"}},
                       ["assertion_id", "voter", "value", "lsn", "epoch", "created"]),
    "BatchResult": _obj({"results": {"type": "array", "items": {
        "anyOf": [_ref("AssertionCreated"), _ref("VoteResult")]}},
        "lsn": _int(), "epoch": _int(1)}, ["results", "lsn"]),
    "Votes": {"allOf": [_ref("Tally"), _obj({
        "assertion_id": _int(1), "epoch": _int(1), "sealed": {"type": "boolean"},
        "votes": {"type": "array", "items": _obj({
            "voter": {"type": "string"}, "value": {"type": "integer", "enum": [1, -1]},
            "lsn": _int(), "updated_at": _TIME}, ["voter", "value", "lsn", "updated_at"])}},
        ["assertion_id", "epoch", "sealed", "votes"])]},
    "CurrentEpoch": _obj({"epoch": _int(1), "opened_at": _TIME, "assertions": _int(),
                          "votes": _int()}, ["epoch", "opened_at", "assertions", "votes"]),
    "SealResult": _obj({"sealed": _int(1), "opened": _int(1),
                        "digest": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                        "results": _int(), "lsn": _int(), "sealed_at": _TIME},
                       ["sealed", "opened", "digest"]),
    "SealedEpoch": _obj({
        "epoch": _int(1), "opened_at": _TIME, "sealed_at": _TIME,
        "digest": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        "assertions": _int(), "votes": _int(), "voted_assertions": _int(),
        "seal_lsn": _int(),
        "summary": _obj({"accepted": _int(), "rejected": _int(), "contested": _int()},
                        ["accepted", "rejected", "contested"]),
        "results": {"type": "array", "items": _obj({
            "assertion_id": _int(1), "support": _int(), "dispute": _int(),
            "score": {"type": "integer"},
            "status": {"type": "string", "enum": ["accepted", "rejected", "contested"]}},
            ["assertion_id", "support", "dispute", "score", "status"])},
        "next": _NULLABLE_INT,
    }, ["epoch", "sealed_at", "digest", "summary", "results", "next"]),
    "Health": _obj({"status": {"type": "string", "enum": ["ok"]},
                    "phase": {"type": "string"}}, ["status"]),
    "Readiness": _obj({
        "ready": {"type": "boolean"}, "reason": {"type": "string", "nullable": True},
        "phase": {"type": "string", "enum": ["opening", "replaying", "indexing", "done", "failed"]},
        "node_phase": {"type": "string"},
        "bytes_done": _int(), "bytes_total": _int(), "records": _int(),
        "eta_seconds": {"type": "number", "nullable": True},
        "error": {"type": "string"},
    }, ["ready", "reason", "phase", "bytes_done", "bytes_total", "eta_seconds"]),
    "Status": _obj({
        "wal": {"type": "object"}, "fsync": {"type": "object"},
        "checkpoint": {"type": "object"}, "replay": {"type": "object"},
        "disk": {"type": "object", "nullable": True}, "holds": {"type": "object"},
        "archive": {"type": "object"}, "backup": {"type": "object"},
        "applied_records": _int(),
        "accepting_writes": {"type": "boolean"},
        "node": _obj({"phase": {"type": "string"}, "ready": {"type": "boolean"},
                      "draining": {"type": "boolean"}, "in_flight_writes": _int()},
                     ["phase", "ready", "draining"]),
    }, ["wal", "fsync", "checkpoint", "replay", "node"]),
    "DrainReport": _obj({"draining": {"type": "boolean"}, "ready": {"type": "boolean"},
                         "in_flight_writes_finished": {"type": "boolean"},
                         "checkpoint_lsn": _int(), "end_lsn": _NULLABLE_INT,
                         "checkpoint_error": {"type": "string", "nullable": True},
                         "seconds": {"type": "number"}},
                        ["draining", "ready", "checkpoint_lsn"]),
    "CheckpointReport": _obj({"checkpoint_lsn": _int(),
                              "removed_segments": {"type": "array",
                                                   "items": {"type": "string"}},
                              "seconds": {"type": "number"}, "lowest_hold": _int(),
                              "holds": {"type": "object",
                                        "additionalProperties": {"type": "integer"}}},
                             ["checkpoint_lsn", "removed_segments", "seconds"]),
    "BackupResult": _obj({"id": {"type": "string"}, "timeline": _int(1), "lsn": _int(),
                          "start_lsn": _int(), "end_lsn": _int(), "size_bytes": _int(),
                          "stored_bytes": _int(), "time_unix": {"type": "number"},
                          "manifest": {"type": "string"}},
                         ["id", "timeline", "lsn", "start_lsn", "end_lsn"]),
}

_ERROR_TEXT = {
    400: "bad input; nothing was written",
    401: "missing or unknown bearer token (auth is on)",
    403: "the token lacks the scope this route needs",
    404: "unknown id",
    410: "wal_removed: the WAL from that LSN is gone from this node (seed from a snapshot)",
    409: "Idempotency-Key reused with another request",
    413: "body over server.body_bytes_max",
    415: "the body is not application/json",
    502: "archive_error: the archive did not take it (the message has the target's error)",
    500: "wal_fsync_failed: the WAL could not be made durable; outcome unknown",
    503: "replaying, draining or stopping, or (in a cluster) no leader, or not "
         "acknowledged; retry after Retry-After seconds",
    507: "insufficient_storage: the disk guard refuses writes",
}


def _error(status: int) -> dict[str, Any]:
    out: dict[str, Any] = {"description": _ERROR_TEXT[status],
                           "content": {JSON: {"schema": _ref("Error")}}}
    if status == 503:
        out["headers"] = {"Retry-After": {"schema": {"type": "integer"},
                                          "description": "seconds"}}
    return out


def _ok(status: int, schema: str, description: str, *, write: bool = False
        ) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description,
                           "content": {JSON: {"schema": _ref(schema)}}}
    if write:
        out["headers"] = {"Idempotent-Replayed": {
            "schema": {"type": "string", "enum": ["true"]},
            "description": "present on a retry answered from the first response"}}
    return out


_IDEMPOTENCY_PARAM = {
    "name": "Idempotency-Key", "in": "header", "required": False,
    "description": "a retry with the same key and body returns the first response and "
                   "writes nothing; the same key with another body is 409",
    "schema": {"type": "string", "minLength": 1,
               "maxLength": limits.idempotency_key_bytes_max, "pattern": "^[!-~]+$"},
}
_ID_PARAM = {"name": "id", "in": "path", "required": True,
             "schema": _int(1, ID_MAX)}


_NODE = {"type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[A-Za-z0-9._-]+$"}
_BINARY = {"description": "WAL frames, or a state copy followed by WAL",
           "content": {"application/octet-stream": {"schema": {"type": "string",
                                                               "format": "binary"}}}}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}


# SPEC "Reads and consistency": what every read route takes and answers
# (server._routes.read_options parses exactly these).
_READ_PARAMS = [
    _query("consistency", {"type": "string", "enum": ["linearizable", "stale"],
                           "default": "linearizable"},
           "linearizable (default): see every write acknowledged before the read arrived, "
           "waiting up to [read] wait_timeout_ms for the state (then 503 lsn_not_reached); "
           "stale: what is applied now, no waiting (not with min_lsn)"),
    _query("min_lsn", _int(0, ID_MAX),
           "read-your-writes: see at least every write whose lsn is at most this (pass the "
           "lsn a write returned); waits like a linearizable read; not with "
           "consistency=stale; the same as the StemeDB-Min-LSN header"),
    _query("max_staleness_ms", _int(0, ID_MAX),
           "with consistency=stale only (400 otherwise): 503 too_stale when this node's "
           "state is further behind its WAL than this"),
    {"name": "StemeDB-Min-LSN", "in": "header", "required": False,
     "schema": _int(0, ID_MAX),
     "description": "the same as the min_lsn query parameter (both given and different: "
                    "400)"},
]


def _applied_lsn_header(required: bool) -> dict[str, Any]:
    return {"StemeDB-Applied-LSN": {
        "required": required, "schema": _int(0),
        "description": "the state's position (the end LSN of the last WAL record it "
                       "applied) when it answered" + ("" if required else
                                                     "; present when the read ran")}}


def _read_ok(schema: str, description: str) -> dict[str, Any]:
    return {**_ok(200, schema, description), "headers": _applied_lsn_header(True)}


def _read_error(status: int) -> dict[str, Any]:
    out = _error(status)
    out["headers"] = {**out.get("headers", {}), **_applied_lsn_header(False)}
    if status == 503:
        out["description"] = (
            "replaying, draining or stopping; lsn_not_reached: the state did not reach the "
            "LSN the read needs within [read] wait_timeout_ms; too_stale: a stale read's "
            "max_staleness_ms was exceeded.  Retry after Retry-After seconds")
    return out


def _op(op_id: str, summary: str, responses: dict[int, Any], *, scope: str | None,
        auth: bool, params: list[dict[str, Any]] | None = None,
        body: str | None = None, body_required: bool = True, tags: list[str] | None = None
        ) -> dict[str, Any]:
    errors = sorted(s for s in responses if isinstance(responses[s], int))
    resp: dict[str, Any] = {str(s): v for s, v in responses.items() if not isinstance(v, int)}
    if auth and scope is not None:
        errors += [401, 403]
    for s in sorted(set(errors)):
        resp[str(s)] = _error(s)
    out: dict[str, Any] = {"operationId": op_id, "summary": summary, "responses": resp,
                           "tags": tags or ["ledger"]}
    if params:
        out["parameters"] = params
    if body is not None:
        out["requestBody"] = {"required": body_required,
                              "content": {JSON: {"schema": _ref(body)}}}
    if scope is None:
        out["security"] = []
    else:
        out["x-scope"] = scope
    return out


def _package_version() -> str:
    try:
        return metadata.version("stemedb")
    except metadata.PackageNotFoundError:  # running from a source tree
        return "0+unknown"


def openapi_document(*, auth_enabled: bool, body_bytes_max: int = limits.http_body_bytes_max
                     ) -> dict[str, Any]:
    """The document for a server with (or without) bearer tokens configured."""
    a = auth_enabled
    write_errors = {400: 400, 409: 409, 413: 413, 415: 415, 500: 500, 503: 503, 507: 507}
    read_errors = {400: 400, 503: _read_error(503)}
    list_params = [
        _query("subject", _text(limits.subject_bytes_max), "exact subject"),
        _query("predicate", _text(limits.predicate_bytes_max), "exact predicate"),
        _query("author", _text(limits.author_bytes_max), "exact author"),
        _query("epoch", _int(1, ID_MAX), "the epoch the assertion was written in"),
        _query("after", _int(0, ID_MAX), "cursor: ids greater than this (the `next` of "
                                         "the previous page)"),
        _query("limit", _int(1, limits.list_limit_max,
                             default=limits.list_limit_default), "page size"),
    ]
    get_assertion_link = {"operationId": "getAssertion",
                          "parameters": {"id": "$response.body#/id"}}
    paths: dict[str, Any] = {
        "/v1/assertions": {
            "post": _op("createAssertion", "Write one assertion", {
                201: {**_ok(201, "AssertionCreated", "written and durable", write=True),
                      "links": {"GetAssertion": get_assertion_link,
                                "ListVotes": {"operationId": "listVotes",
                                              "parameters": {"id": "$response.body#/id"}}}},
                **write_errors}, scope="write", auth=a, params=[_IDEMPOTENCY_PARAM],
                body="AssertionInput"),
            "get": _op("listAssertions", "List assertions, filtered, by id, with a cursor",
                       {200: _read_ok("AssertionPage", "one page"), **read_errors},
                       scope="read", auth=a, params=[*list_params, *_READ_PARAMS]),
        },
        "/v1/assertions/{id}": {
            "get": _op("getAssertion", "One assertion with its tally in the open epoch",
                       {200: _read_ok("Assertion", "the assertion"), **read_errors,
                        404: _read_error(404)}, scope="read", auth=a,
                       params=[_ID_PARAM, *_READ_PARAMS]),
        },
        "/v1/assertions/{id}/votes/{voter}": {
            "put": _op("putVote", "Vote +1 or -1 in the open epoch (idempotent upsert)", {
                200: _ok(200, "VoteResult", "replaced this voter's earlier vote", write=True),
                201: _ok(201, "VoteResult", "a new vote", write=True),
                **write_errors, 404: 404}, scope="write", auth=a,
                params=[_ID_PARAM, {"name": "voter", "in": "path", "required": True,
                                    "schema": _text(limits.voter_bytes_max)},
                        _IDEMPOTENCY_PARAM], body="VoteInput"),
        },
        "/v1/assertions/{id}/votes": {
            "get": _op("listVotes", "Votes of the open epoch, or of a sealed one",
                       {200: _read_ok("Votes", "the votes and their tally"), **read_errors,
                        404: _read_error(404)}, scope="read", auth=a,
                       params=[_ID_PARAM, _query("epoch", _int(1, ID_MAX),
                                                 "a sealed epoch (default: the open one)"),
                               *_READ_PARAMS]),
        },
        "/v1/batch": {
            "post": _op("batch", f"Up to {limits.batch_ops_max} asserts and votes, atomic",
                        {201: _ok(201, "BatchResult", "all written and durable", write=True),
                         **write_errors, 404: 404}, scope="write", auth=a,
                        params=[_IDEMPOTENCY_PARAM], body="BatchInput"),
        },
        "/v1/epochs/current": {
            "get": _op("currentEpoch", "The open epoch",
                       {200: _read_ok("CurrentEpoch", "the open epoch"), **read_errors},
                       scope="read", auth=a, params=_READ_PARAMS),
        },
        "/v1/epochs": {
            "post": _op("sealEpoch", "Seal the open epoch and open the next", {
                201: {**_ok(201, "SealResult", "sealed", write=True),
                      "links": {"GetEpoch": {"operationId": "getEpoch",
                                             "parameters": {"n": "$response.body#/sealed"}}}},
                **write_errors}, scope="write", auth=a, params=[_IDEMPOTENCY_PARAM],
                body="EmptyInput", body_required=False),
        },
        "/v1/epochs/{n}": {
            "get": _op("getEpoch", "A sealed epoch: summary, digest and a page of results",
                       {200: _read_ok("SealedEpoch", "the sealed epoch"), **read_errors,
                        404: _read_error(404)}, scope="read", auth=a,
                       params=[{"name": "n", "in": "path", "required": True,
                                "schema": _int(1, ID_MAX)},
                               _query("after", _int(0, ID_MAX), "cursor: assertion ids "
                                                                "greater than this"),
                               _query("limit", _int(1, limits.list_limit_max,
                                                    default=limits.list_limit_default),
                                      "page size"), *_READ_PARAMS]),
        },
        "/healthz": {
            "get": _op("healthz", "200 while the process serves at all",
                       {200: _ok(200, "Health", "serving")}, scope=None, auth=a,
                       tags=["operations"]),
        },
        "/readyz": {
            "get": _op("readyz", "200 when replay is done, not draining, writes possible",
                       {200: _ok(200, "Readiness", "ready"),
                        503: {**_ok(503, "Readiness", "not ready: reason and replay "
                                                      "progress"),
                              "headers": {"Retry-After": {"schema": {"type": "integer"}}}},
                        400: 400}, scope=None, auth=a, tags=["operations"]),
        },
        "/metrics": {
            "get": {"operationId": "metrics", "summary": "Prometheus exposition (OpenMetrics "
                    "when Accept asks for application/openmetrics-text)", "security": [],
                    "tags": ["operations"],
                    "responses": {"200": {"description": "metrics", "content": {
                        "text/plain": {"schema": {"type": "string"}},
                        "application/openmetrics-text": {"schema": {"type": "string"}}}}}},
        },
        "/openapi.json": {
            "get": {"operationId": "openapi", "summary": "This document", "security": [],
                    "tags": ["operations"],
                    "responses": {"200": {"description": "OpenAPI 3.0",
                                          "content": {JSON: {"schema": {"type": "object"}}}}}},
        },
        "/v1/admin/status": {
            "get": _op("adminStatus", "WAL, checkpoint, replay, disk, fsync, archive state",
                       {200: _ok(200, "Status", "the node's state"), 400: 400},
                       scope="admin", auth=a, tags=["admin"]),
        },
        "/v1/admin/node/drain": {
            "post": _op("adminDrain", "Stop taking writes, finish those in flight, "
                        "checkpoint, turn not-ready (reads go on)",
                        {200: _ok(200, "DrainReport", "drained"), 400: 400, 413: 413,
                         415: 415, 503: 503}, scope="admin", auth=a,
                        body="EmptyInput", body_required=False, tags=["admin"]),
        },
        "/v1/admin/checkpoint": {
            "post": _op("adminCheckpoint", "Checkpoint now",
                        {200: _ok(200, "CheckpointReport", "checkpointed"), 400: 400,
                         413: 413, 415: 415, 500: 500, 503: 503}, scope="admin", auth=a,
                        body="EmptyInput", body_required=False, tags=["admin"]),
        },
        "/leader": {
            "get": _op("leaderCheck", "200 only on the leader (for load balancers)",
                       {200: _ok(200, "RoleCheck", "this node leads"), 503: 503, 400: 400},
                       scope=None, auth=a, tags=["cluster"]),
        },
        "/replica": {
            "get": _op("replicaCheck", "200 only on a replica that is streaming, within "
                       "?lag=BYTES of the leader when given",
                       {200: _ok(200, "RoleCheck", "a streaming replica"), 503: 503,
                        400: 400},
                       scope=None, auth=a, tags=["cluster"],
                       params=[_query("lag", _int(0, ID_MAX), "the most bytes behind the "
                                                               "leader")]),
        },
        "/v1/cluster": {
            "get": _op("clusterStatus", "The cluster: leader, term, members and their lag",
                       {200: _ok(200, "Cluster", "the cluster as this node sees it"),
                        400: 400}, scope="read", auth=a, tags=["cluster"]),
        },
        "/v1/admin/switchover": {
            "post": _op("adminSwitchover", "Hand the leadership to a caught-up replica "
                        "(planned, lossless); 200 once it leads",
                        {200: _ok(200, "SwitchoverResult", "the new leader"), 400: 400,
                         409: 409, 413: 413, 415: 415, 503: 503}, scope="admin", auth=a,
                        body="SwitchoverInput", body_required=False, tags=["cluster"]),
        },
        "/v1/replication/wal": {
            "get": {**_op("replicationWal", "WAL frames from an LSN, for a replica (long "
                          "poll)", {200: _BINARY, 409: 409, 410: 410, 400: 400, 503: 503},
                          scope="replication", auth=a, tags=["replication"],
                          params=[{**_query("node", _NODE, "the replica's name"),
                                   "required": True},
                                  {**_query("from", _int(0, ID_MAX), "the replica's durable "
                                                                     "end"), "required": True},
                                  {**_query("term", _int(0, ID_MAX), "the term of its last "
                                                                     "record"),
                                   "required": True},
                                  _query("url", {"type": "string"}, "its URL"),
                                  _query("database", {"type": "string"},
                                         "the identity of its database")]),
                    },
        },
        "/v1/replication/snapshot": {
            "get": _op("replicationSnapshot", "A copy of the state and the WAL before it, "
                       "to seed a replica", {200: _BINARY, 400: 400, 409: 409, 503: 503},
                       scope="replication", auth=a, tags=["replication"],
                       params=[{**_query("node", _NODE, "the replica's name"),
                                "required": True}]),
        },
        "/v1/replication/read-index": {
            "get": _op("replicationReadIndex", "The leader's durable LSN (a replica's "
                       "linearizable read waits for it)",
                       {200: _ok(200, "ReadIndex", "the durable LSN"), 400: 400, 409: 409,
                        503: 503}, scope="replication", auth=a, tags=["replication"]),
        },
        "/v1/admin/backup": {
            "post": _op("adminBackup", "Take a base backup now (needs [archive] url); "
                        "answers when it is stored, with its id and LSN",
                        {201: _ok(201, "BackupResult", "stored and read back"), 400: 400,
                         # 409: archive_not_configured, or archive_object_conflict
                         409: 409, 413: 413, 415: 415, 502: 502, 503: 503}, scope="admin",
                        auth=a, body="EmptyInput", body_required=False, tags=["admin"]),
        },
    }
    doc: dict[str, Any] = {
        "openapi": "3.0.3",
        "info": {"title": "StemeDB", "version": _package_version(),
                 "description": "A durable ledger of assertions, votes and epochs. Errors "
                                "are {\"error\": {\"code\", \"message\"}}. Bodies are at "
                                f"most {body_bytes_max} bytes."},
        "paths": paths,
        "components": {"schemas": SCHEMAS},
    }
    if auth_enabled:
        doc["components"]["securitySchemes"] = {
            "bearerAuth": {"type": "http", "scheme": "bearer",
                           "description": "tokens from [auth] tokens; scopes read, write, "
                                          "admin (see x-scope on each operation)"}}
        doc["security"] = [{"bearerAuth": []}]
    return doc
