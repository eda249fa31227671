"""The cluster's routes: membership, switchover, load-balancer checks, and the
replication stream a leader serves to its replicas (SPEC.md "Cluster").

A node without ``[cluster]`` is its own leader: ``/leader`` answers 200, ``/replica``
503, ``/v1/cluster`` lists the node alone, and the replication routes answer 409
``not_clustered``.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from .. import limits
from ..archive._wal_source import WalGone
from ..cluster import ClusterError, NotLeader, SwitchoverFailed
from ..replication import (
    DURABLE_HEADER,
    NEXT_HEADER,
    SEGMENT_SIZE_HEADER,
    SNAPSHOT_LSN_HEADER,
    SNAPSHOT_SEGMENT_HEADER,
    SNAPSHOT_SHA256_HEADER,
    SNAPSHOT_STATE_BYTES_HEADER,
    TERM_HEADER,
    take,
    term_at,
)
from ..replication import _limits as rlimits
from ._http import (
    Request,
    Response,
    json_response,
    parse_int,
    parse_json,
    parse_text,
    query_params,
    read_body,
)
from ._member import Member
from ._node import ApiError, Node

OCTETS = "application/octet-stream"
NODE_NAME_BYTES_MAX = 128
SWITCHOVER_TIMEOUT_SECONDS = 30.0  # POST /v1/admin/switchover waits this long


def _member(node: Node) -> Member:
    if node.member is None:
        raise ApiError(409, "not_clustered", "this node is not a member of a cluster "
                       "([cluster] name is not set)")
    return node.member


def _not_leader(member: Member) -> ApiError:
    return ApiError(503, "not_leader", f"{member.s.node_name} is not the leader "
                    f"(role {member.role})",
                    headers={"Retry-After": str(limits.http_retry_after_seconds)})


# -- for clients and load balancers ------------------------------------------------------

def check_write(node: Node, request: Request) -> None:
    """A write sent to a member that does not lead: 307 to the leader, or 503."""
    member = node.member
    if member is None or member.is_leader:
        return
    url = member.leader_url()
    if url is not None and member.role in ("replica", "reseeding", "bootstrapping",
                                           "starting"):
        qs = request.scope.get("query_string", b"")
        path = request.scope.get("raw_path") or request.path.encode()
        location = url + path.decode("latin-1") + (f"?{qs.decode('latin-1')}" if qs else "")
        raise ApiError(307, "not_leader", f"{member.s.node_name} is a replica; the leader "
                       f"is {url}", headers={"Location": location})
    if member.leadership.fenced:
        raise ApiError(503, "switchover_in_progress", "the leader is handing over; retry",
                       headers={"Retry-After": str(limits.http_retry_after_seconds)})
    raise ApiError(503, "no_leader", f"no leader to take the write ({member.s.node_name} "
                   f"is {member.role})",
                   headers={"Retry-After": str(limits.http_retry_after_seconds)})


async def before_ack(node: Node, lsn: int) -> None:
    member = node.member
    if member is None:
        return
    why = await member.before_ack(lsn)
    if why is not None:
        raise ApiError(503, "not_acknowledged", why,
                       hint="retry with the same Idempotency-Key: a write that survived is "
                            "answered from its record, one that did not is written again",
                       headers={"Retry-After": str(limits.http_retry_after_seconds)})


async def replica_read_target(node: Node) -> int | None:
    """A replica's linearizable read waits for the leader's durable LSN (ReadIndex).

    On the leader, a linearizable read is served only within its lease: then no other
    node can have acknowledged a write (none leads before this lease can lapse), so its
    own durable LSN covers every write acknowledged anywhere.  A leader paused past its
    lease refuses, rather than answer from a past it cannot vouch for."""
    member = node.member
    if member is None:
        return None
    if member.role == "leader":
        if not member.is_leader:
            raise ApiError(503, "not_leader", f"{member.s.node_name} is past its lease: it "
                           "cannot vouch that its state is current",
                           hint="read with ?consistency=stale, or from the new leader",
                           headers={"Retry-After": str(limits.http_retry_after_seconds)})
        return None
    try:
        return await member.leader_durable_lsn()
    except Exception as exc:
        raise ApiError(503, "no_leader", f"the leader's read index could not be had: {exc}",
                       hint="read with ?consistency=stale to read this replica as it is",
                       headers={"Retry-After": str(limits.http_retry_after_seconds)}
                       ) from exc


async def leader_check(request: Request) -> Response:
    query_params(request, ())
    member = request.node.member
    if member is None or member.is_leader:
        return json_response({"role": "leader"})
    raise ApiError(503, "not_leader", f"{member.s.node_name} does not lead (role "
                   f"{member.role})")


async def replica_check(request: Request) -> Response:
    q = query_params(request, ("lag",))
    member = request.node.member
    lag_max = parse_int("lag", q["lag"], minimum=0) if "lag" in q else None
    lag = member.replica_lag_bytes() if member is not None else None
    if lag is None:
        raise ApiError(503, "not_streaming", "this node is not a replica streaming from a "
                       f"leader (role {member.role if member else 'leader'})")
    if lag_max is not None and lag > lag_max:
        raise ApiError(503, "replica_lagging", f"this replica is {lag} bytes behind the "
                       f"leader (lag={lag_max})")
    return json_response({"role": "replica", "streaming": True, "lag_bytes": lag})


async def cluster_status(request: Request) -> Response:
    query_params(request, ())
    node = request.node
    if node.member is None:
        ri = node.engine.read_index
        name = socket.gethostname()
        return json_response({"name": None, "leader": name, "term": 0, "members": [{
            "node": name, "url": None, "role": "leader", "state": node.phase,
            "applied_lsn": ri.applied_lsn, "durable_lsn": ri.durable_lsn,
            "lag_bytes": None, "lag_seconds": None}]})
    member = node.member
    view = await asyncio.get_running_loop().run_in_executor(None, member.fresh_view)
    return json_response(member.status(view))


async def admin_switchover(request: Request) -> Response:
    node = request.node
    member = _member(node)
    query_params(request, ())
    raw = await read_body(request, node.body_bytes_max, required=False)
    body: Any = parse_json(raw) if raw else {}
    if not isinstance(body, dict) or set(body) - {"candidate"}:
        raise ApiError(400, "invalid_input", 'the body is {"candidate": NODE} or empty')
    candidate = body.get("candidate")
    if candidate is not None:
        if not isinstance(candidate, str):
            raise ApiError(400, "invalid_type", "candidate must be a node name")
        candidate = parse_text("candidate", candidate, NODE_NAME_BYTES_MAX)
    if not member.is_leader:
        raise _not_leader(member)
    loop = asyncio.get_running_loop()
    try:  # it waits seconds for the candidate: on a thread
        result = await loop.run_in_executor(None, member.switchover, candidate,
                                            SWITCHOVER_TIMEOUT_SECONDS)
    except (SwitchoverFailed, NotLeader) as exc:
        raise ApiError(409, "switchover_failed", str(exc), hint=exc.hint) from exc
    except ClusterError as exc:
        raise ApiError(503, "etcd_unavailable", str(exc)) from exc
    return json_response(result)


# -- the replication stream (leader side) -------------------------------------------------

def _leading(node: Node) -> Member:
    """The leader, for its replicas: while it holds the key, fenced by a switchover
    or not (a candidate catches up through the stream)."""
    member = _member(node)
    if member.role != "leader" or member.leadership.held_term is None:
        raise _not_leader(member)
    return member


async def replication_wal(request: Request) -> Response:
    node = request.node
    q = query_params(request, ("node", "from", "term", "url", "database"))
    for key in ("node", "from", "term"):
        if key not in q:
            raise ApiError(400, "missing_parameter", f"{key} is required")
    name = parse_text("node", q["node"], NODE_NAME_BYTES_MAX)
    start = parse_int("from", q["from"], minimum=0)
    term = parse_int("term", q["term"], minimum=0)
    member = _leading(node)
    eng = node.engine
    if term > member.log_term:
        raise ApiError(503, "not_leader", f"{name} has seen term {term}, newer than this "
                       f"leader's {member.log_term}")
    theirs, ours = q.get("database", ""), member.database_id
    if theirs and ours and theirs != ours:
        raise ApiError(409, "other_database", f"{name} holds another database ({theirs}) "
                       f"than this cluster's ({ours}); it is never overwritten",
                       hint="move that data directory away to make the node a replica")
    durable = eng.read_index.durable_lsn
    if start > durable or term_at(member.history, start - 1) != term:
        return json_response({"error": {
            "code": "log_diverged",
            "message": f"the log of {name} (to LSN {start}, last term {term}) is not a "
                       f"prefix of this leader's (durable to {durable})"},
            "durable_lsn": durable,
            "history": [t._asdict() for t in member.history]}, 409)
    member.replicas.report(name, start, q.get("url", ""))
    loop = asyncio.get_running_loop()
    src = member.wal_source()
    if durable <= start:
        wait = (rlimits.fenced_poll_wait_seconds if member.leadership.fenced
                else rlimits.poll_wait_seconds)
        durable = await eng.read_index.wait_durable_async(start + 1, wait)
    headers = {TERM_HEADER: str(member.log_term), DURABLE_HEADER: str(durable),
               SEGMENT_SIZE_HEADER: str(eng.config.segment_size_bytes)}
    if durable <= start or member.leadership.held_term is None:
        return Response(b"", content_type=OCTETS, headers={**headers, NEXT_HEADER: str(start)})
    try:
        chunk = await loop.run_in_executor(None, src.read, start, durable,
                                           rlimits.batch_bytes_max)
    except WalGone as exc:  # the oldest segment here starts after ``start``
        raise ApiError(410, "wal_removed", str(exc)) from exc
    member.replicas.sample(durable)
    return Response(chunk.data, content_type=OCTETS,
                    headers={**headers, NEXT_HEADER: str(chunk.end_lsn)})


async def replication_snapshot(request: Request) -> Response:
    node = request.node
    q = query_params(request, ("node",))
    if "node" not in q:
        raise ApiError(400, "missing_parameter", "node is required")
    name = parse_text("node", q["node"], NODE_NAME_BYTES_MAX)
    member = _leading(node)
    eng = node.engine
    loop = asyncio.get_running_loop()
    snap = await loop.run_in_executor(None, take, eng.db_path, eng.wal_dir, eng.data_dir)
    member.replicas.report(name, snap.lsn)
    return Response(snap.state + snap.segment_prefix, content_type=OCTETS, headers={
        SNAPSHOT_LSN_HEADER: str(snap.lsn), SNAPSHOT_SEGMENT_HEADER: snap.segment,
        SNAPSHOT_STATE_BYTES_HEADER: str(len(snap.state)),
        SNAPSHOT_SHA256_HEADER: snap.sha256(), TERM_HEADER: str(member.log_term)})


async def replication_read_index(request: Request) -> Response:
    query_params(request, ())
    node = request.node
    member = _member(node)
    if not member.is_leader:  # only within its lease (see replica_read_target)
        raise _not_leader(member)
    return json_response({"durable_lsn": node.engine.read_index.durable_lsn,
                          "term": member.log_term})


__all__ = [
    "admin_switchover", "before_ack", "check_write", "cluster_status", "leader_check",
    "replica_check", "replica_read_target", "replication_read_index", "replication_snapshot",
    "replication_wal",
]
