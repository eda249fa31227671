"""The routes of SPEC.md, one handler each, and the table that declares them.

Each :class:`Route` names its scope (``None`` for the open operations routes), so
auth is checked in one middleware and the OpenAPI document can be compared with
the table in a test.  Handlers validate, then call the engine through its own
threads (``submit`` for writes, ``read`` for reads) and await the result: the event
loop never touches the disk.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.openmetrics.exposition import (
    CONTENT_TYPE_LATEST as OPENMETRICS_CONTENT_TYPE,
)
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from .. import limits
from .. import state as st
from ..engine import WriteRequest
from ..errors import InvalidInput, StemeError, Unavailable
from ..model import validate_assertion, validate_batch, validate_vote
from ..read_index import LsnNotReached, TooStale
from ..replication import TERM_HEADER
from ..wal import RecordType
from ._cluster_routes import (
    admin_switchover,
    before_ack,
    check_write,
    cluster_status,
    leader_check,
    replica_check,
    replica_read_target,
    replication_read_index,
    replication_snapshot,
    replication_wal,
)
from ._http import (
    Request,
    Response,
    idempotency_key,
    json_response,
    parse_int,
    parse_json,
    parse_text,
    query_params,
    read_body,
)
from ._node import ApiError, Node, map_unavailable

Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    scope: str | None  # None: open to everyone (health, readiness, metrics, the schema)
    operation_id: str


# -- operations routes ----------------------------------------------------------------

async def healthz(request: Request) -> Response:
    node = request.node
    return json_response({"status": "ok", "phase": node.phase})


async def readyz(request: Request) -> Response:
    query_params(request, ())
    ready, body = request.node.readiness()
    if ready:
        return json_response(body)
    return json_response(body, 503,
                         headers={"Retry-After": str(limits.http_retry_after_seconds)})


async def metrics(request: Request) -> Response:
    node = request.node
    # stemedb_ready must follow fencing and the disk guard even if nobody polls /readyz.
    node.refresh_ready()
    if node.engine is not None:
        node.engine.refresh_gauges()
    registry = node.m.registry
    loop = asyncio.get_running_loop()
    if "application/openmetrics-text" in (request.header(b"accept") or ""):
        data = await loop.run_in_executor(None, generate_openmetrics, registry)
        ctype = OPENMETRICS_CONTENT_TYPE
    else:
        data = await loop.run_in_executor(None, generate_latest, registry)
        ctype = CONTENT_TYPE_LATEST
    return Response(data, content_type=ctype)


async def openapi(request: Request) -> Response:
    return Response(request.context.openapi_json)


async def _no_body(request: Request) -> bytes:
    """Routes that take no body accept none, or an empty JSON object."""
    raw = await read_body(request, request.node.body_bytes_max, required=False)
    if raw and parse_json(raw) != {}:
        raise InvalidInput(f"{request.method} {request.path} takes no body (or an empty "
                           "JSON object)", code="unknown_field")
    return raw


# -- writes -----------------------------------------------------------------------

def _write_settled(node: Node, fut: asyncio.Future[Any]) -> None:
    node.end_write()
    if not fut.cancelled():
        fut.exception()  # retrieved: a write whose client left is not an unhandled error


async def _write(request: Request, rtype: RecordType, ops: list[dict[str, Any]],
                 raw: bytes) -> Response:
    node = request.node
    node.check_writable()
    check_write(node, request)
    key = idempotency_key(request)
    # The digest covers the route as well as the body: one key reused on another
    # route (another assertion's vote, say) is a conflict, not a replay.
    digest = None if key is None else hashlib.sha256(
        f"{request.method} {request.path}\n".encode("utf-8", "replace") + raw).hexdigest()
    try:
        fut = node.engine.submit_async(WriteRequest(rtype, ops, idempotency_key=key,
                                                    body_sha256=digest, prevalidated=True))
    except Unavailable as exc:
        raise map_unavailable(node, exc) from exc
    # In flight until the engine settles it, even if the client goes away meanwhile:
    # drain waits for that.  The callback also retrieves an outcome nobody awaits.
    node.begin_write()
    fut.add_done_callback(lambda f: _write_settled(node, f))
    try:
        # shield: a client that disconnects does not cancel a write in flight.
        result = await asyncio.shield(fut)
    except Unavailable as exc:
        raise map_unavailable(node, exc) from exc
    await before_ack(node, result.lsn)
    headers = {"Idempotent-Replayed": "true"} if result.idempotent_replay else {}
    if node.member is not None:
        # The term the write was acknowledged in: its record lies in that term's span
        # of the log (a history checker compares the two).
        headers[TERM_HEADER] = str(node.member.log_term)
    return json_response(result.body, result.status, headers)


async def _write_body(request: Request) -> bytes:
    """The body of a write without path parameters, refused before it is read when the
    node takes no writes (``_write`` checks again: a drain may start meanwhile)."""
    node = request.node
    node.check_writable()
    check_write(node, request)
    query_params(request, ())
    return await read_body(request, node.body_bytes_max)


async def create_assertion(request: Request) -> Response:
    raw = await _write_body(request)
    assertion = validate_assertion(parse_json(raw))
    return await _write(request, RecordType.ASSERT, [{"assert": assertion}], raw)


async def batch(request: Request) -> Response:
    raw = await _write_body(request)
    ops = validate_batch(parse_json(raw))
    return await _write(request, RecordType.BATCH, ops, raw)


async def put_vote(request: Request) -> Response:
    node = request.node
    node.check_writable()
    query_params(request, ())
    aid = parse_int("assertion id", request.match_info["id"], minimum=1)
    voter = parse_text("voter", request.match_info["voter"], limits.voter_bytes_max)
    raw = await read_body(request, node.body_bytes_max)
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise InvalidInput('the body must be a JSON object {"value": 1 | -1}',
                           code="invalid_type")
    unknown = set(body) - {"value"}
    if unknown:
        raise InvalidInput(f"unknown field(s): {', '.join(sorted(unknown))}",
                           code="unknown_field")
    if "value" not in body:
        raise InvalidInput("value is required", code="missing_field")
    vote = validate_vote({"assertion_id": aid, "voter": voter, "value": body["value"]})
    return await _write(request, RecordType.VOTE, [{"vote": vote}], raw)


async def seal_epoch(request: Request) -> Response:
    node = request.node
    node.check_writable()
    query_params(request, ())
    raw = await _no_body(request)
    return await _write(request, RecordType.SEAL, [], raw)


# -- reads ------------------------------------------------------------------------
# SPEC "Reads and consistency": every read route takes these query parameters (and the
# StemeDB-Min-LSN header), waits for the state as they ask, and answers with the state's
# applied LSN in StemeDB-Applied-LSN, on its errors too.

READ_PARAMS = ("consistency", "min_lsn", "max_staleness_ms")
CONSISTENCY_VALUES = ("linearizable", "stale")
MIN_LSN_HEADER = "StemeDB-Min-LSN"
APPLIED_LSN_HEADER = "StemeDB-Applied-LSN"
_MIN_LSN_KEY = MIN_LSN_HEADER.lower().encode("ascii")  # as ASGI spells header names


@dataclass(frozen=True)
class ReadOptions:
    min_lsn: int | None = None  # read-your-writes: wait until the record at it is applied
    stale: bool = False  # no waiting
    max_staleness_seconds: float | None = None  # stale only: refuse beyond this lag


def read_options(request: Request, q: dict[str, str]) -> ReadOptions:
    """The consistency a read asks for; 400 for a bad value or a contradiction."""
    consistency = q.get("consistency")
    if consistency is not None and consistency not in CONSISTENCY_VALUES:
        raise ApiError(400, "invalid_parameter",
                       f"consistency must be {' or '.join(CONSISTENCY_VALUES)}, got "
                       f"{consistency[:64]!r}")
    stale = consistency == "stale"
    min_lsn = parse_int("min_lsn", q["min_lsn"], minimum=0) if "min_lsn" in q else None
    headers = request.headers_all(_MIN_LSN_KEY)
    if len(headers) > 1:
        raise ApiError(400, "invalid_parameter", f"{MIN_LSN_HEADER} is repeated")
    if headers:
        from_header = parse_int(MIN_LSN_HEADER, headers[0], minimum=0)
        if min_lsn is not None and min_lsn != from_header:
            raise ApiError(400, "conflicting_parameters",
                           f"min_lsn={min_lsn} and {MIN_LSN_HEADER}: {from_header} differ; "
                           "send one of them")
        min_lsn = from_header
    if stale and min_lsn is not None:
        raise ApiError(400, "conflicting_parameters",
                       "consistency=stale does not wait, so it cannot honour min_lsn (or "
                       f"{MIN_LSN_HEADER}); send one or the other")
    max_staleness_seconds = None
    if "max_staleness_ms" in q:
        ms = parse_int("max_staleness_ms", q["max_staleness_ms"], minimum=0)
        if not stale:
            raise ApiError(400, "conflicting_parameters",
                           "max_staleness_ms applies to consistency=stale reads only")
        max_staleness_seconds = ms / 1000
    return ReadOptions(min_lsn, stale, max_staleness_seconds)


def _applied(lsn: int) -> dict[str, str]:
    return {APPLIED_LSN_HEADER: str(lsn)}


async def _read(request: Request, fn: Callable[[Any], dict[str, Any]],
                opts: ReadOptions) -> Response:
    node = request.node
    node.check_readable()
    min_lsn = opts.min_lsn
    if not opts.stale and min_lsn is None and node.member is not None:
        target = await replica_read_target(node)
        if target:
            min_lsn = target - 1  # waits until the record ending at target is applied
    try:
        result = await node.engine.read_consistent_async(
            fn, min_lsn=min_lsn, stale=opts.stale,
            max_staleness_seconds=opts.max_staleness_seconds,
            wait_timeout_seconds=node.read_wait_timeout_seconds)
    except (LsnNotReached, TooStale) as exc:
        # Their own codes, whatever the node's phase: the read was taken and waited.
        raise ApiError(503, exc.code, exc.message, hint=exc.hint, headers={
            "Retry-After": str(limits.http_retry_after_seconds),
            **_applied(node.engine.read_index.applied_lsn)}) from exc
    except Unavailable as exc:
        raise map_unavailable(node, exc) from exc
    except StemeError as exc:
        if exc.applied_lsn is None:
            raise
        # An error of the read itself (404, ...): it saw the state at that LSN.
        raise ApiError(exc.http_status, exc.code, exc.message, hint=exc.hint,
                       headers={**getattr(exc, "headers", {}), **_applied(exc.applied_lsn)}
                       ) from exc
    return json_response(result.value, headers=_applied(result.applied_lsn))


async def get_assertion(request: Request) -> Response:
    request.node.check_readable()
    q = query_params(request, READ_PARAMS)
    opts = read_options(request, q)
    aid = parse_int("assertion id", request.match_info["id"], minimum=1)
    return await _read(request, lambda conn: st.get_assertion(conn, aid), opts)


async def list_assertions(request: Request) -> Response:
    request.node.check_readable()
    q = query_params(request, ("subject", "predicate", "author", "epoch", "after", "limit",
                               *READ_PARAMS))
    opts = read_options(request, q)
    subject = parse_text("subject", q["subject"], limits.subject_bytes_max) \
        if "subject" in q else None
    predicate = parse_text("predicate", q["predicate"], limits.predicate_bytes_max) \
        if "predicate" in q else None
    author = parse_text("author", q["author"], limits.author_bytes_max) \
        if "author" in q else None
    epoch = parse_int("epoch", q["epoch"], minimum=1) if "epoch" in q else None
    after = parse_int("after", q["after"], minimum=0) if "after" in q else 0
    limit = parse_int("limit", q["limit"], minimum=1, maximum=limits.list_limit_max) \
        if "limit" in q else limits.list_limit_default
    return await _read(request, lambda conn: st.list_assertions(
        conn, subject=subject, predicate=predicate, author=author, epoch=epoch, after=after,
        limit=limit), opts)


async def list_votes(request: Request) -> Response:
    request.node.check_readable()
    q = query_params(request, ("epoch", *READ_PARAMS))
    opts = read_options(request, q)
    aid = parse_int("assertion id", request.match_info["id"], minimum=1)
    epoch = parse_int("epoch", q["epoch"], minimum=1) if "epoch" in q else None
    return await _read(request, lambda conn: st.list_votes(conn, aid, epoch), opts)


async def current_epoch(request: Request) -> Response:
    request.node.check_readable()
    q = query_params(request, READ_PARAMS)
    return await _read(request, st.current_epoch, read_options(request, q))


async def get_epoch(request: Request) -> Response:
    request.node.check_readable()
    q = query_params(request, ("after", "limit", *READ_PARAMS))
    opts = read_options(request, q)
    n = parse_int("epoch", request.match_info["n"], minimum=1)
    after = parse_int("after", q["after"], minimum=0) if "after" in q else 0
    limit = parse_int("limit", q["limit"], minimum=1, maximum=limits.list_limit_max) \
        if "limit" in q else limits.list_limit_default
    return await _read(request, lambda conn: st.sealed_epoch(conn, n, after=after,
                                                             limit=limit), opts)


# -- admin ------------------------------------------------------------------------

async def admin_status(request: Request) -> Response:
    query_params(request, ())
    return json_response(request.node.status())


async def admin_drain(request: Request) -> Response:
    query_params(request, ())
    await _no_body(request)
    return json_response(await request.node.drain())


async def admin_checkpoint(request: Request) -> Response:
    node = request.node
    node.check_readable()
    query_params(request, ())
    await _no_body(request)
    report = await asyncio.wrap_future(node.engine.checkpoint())
    return json_response(asdict(report))


async def admin_backup(request: Request) -> Response:
    """A base backup now, on the engine's backup thread; its id and LSN."""
    node = request.node
    node.check_readable()
    query_params(request, ())
    await _no_body(request)
    m = await asyncio.wrap_future(node.engine.backup_now())
    return json_response({"id": m.id, "timeline": m.timeline, "lsn": m.lsn,
                          "start_lsn": m.start_lsn, "end_lsn": m.end_lsn,
                          "size_bytes": m.size_bytes, "stored_bytes": m.stored_bytes,
                          "time_unix": m.finished_unix, "manifest": m.name}, status=201)


ROUTES: tuple[Route, ...] = (
    Route("GET", "/healthz", healthz, None, "healthz"),
    Route("GET", "/readyz", readyz, None, "readyz"),
    Route("GET", "/metrics", metrics, None, "metrics"),
    Route("GET", "/openapi.json", openapi, None, "openapi"),
    Route("POST", "/v1/assertions", create_assertion, "write", "createAssertion"),
    Route("GET", "/v1/assertions", list_assertions, "read", "listAssertions"),
    Route("GET", "/v1/assertions/{id}", get_assertion, "read", "getAssertion"),
    Route("PUT", "/v1/assertions/{id}/votes/{voter}", put_vote, "write", "putVote"),
    Route("GET", "/v1/assertions/{id}/votes", list_votes, "read", "listVotes"),
    Route("POST", "/v1/batch", batch, "write", "batch"),
    Route("GET", "/v1/epochs/current", current_epoch, "read", "currentEpoch"),
    Route("POST", "/v1/epochs", seal_epoch, "write", "sealEpoch"),
    Route("GET", "/v1/epochs/{n}", get_epoch, "read", "getEpoch"),
    Route("GET", "/v1/admin/status", admin_status, "admin", "adminStatus"),
    Route("POST", "/v1/admin/node/drain", admin_drain, "admin", "adminDrain"),
    Route("POST", "/v1/admin/checkpoint", admin_checkpoint, "admin", "adminCheckpoint"),
    Route("POST", "/v1/admin/backup", admin_backup, "admin", "adminBackup"),
    Route("GET", "/leader", leader_check, None, "leaderCheck"),
    Route("GET", "/replica", replica_check, None, "replicaCheck"),
    Route("GET", "/v1/cluster", cluster_status, "read", "clusterStatus"),
    Route("POST", "/v1/admin/switchover", admin_switchover, "admin", "adminSwitchover"),
    Route("GET", "/v1/replication/wal", replication_wal, "replication", "replicationWal"),
    Route("GET", "/v1/replication/snapshot", replication_snapshot, "replication",
          "replicationSnapshot"),
    Route("GET", "/v1/replication/read-index", replication_read_index, "replication",
          "replicationReadIndex"),
)
