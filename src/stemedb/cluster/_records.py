"""The values stored under the cluster's keys (:mod:`._keys`): JSON objects.

Readers ignore fields they do not know, so a newer node may add some.  LSNs are the
WAL's byte positions; a term is the etcd revision at which a leader key was created.
"""

from __future__ import annotations

from typing import Literal, NamedTuple, TypeVar

import msgspec

from . import _limits as limits

__all__ = [
    "ClusterConfig",
    "HistoryRecord",
    "LeaderRecord",
    "MemberRecord",
    "Positions",
    "Role",
    "StatusRecord",
    "SwitchoverRecord",
    "decode",
    "encode",
]

Role = Literal["leader", "replica"]


class Positions(NamedTuple):
    """A node's WAL positions, as the node reports them to the cluster."""

    applied_lsn: int  # the state holds every record below it
    durable_lsn: int  # the WAL is synced up to it
    log_term: int = 0  # the term of the last TERM record in the WAL (0: none)


class LeaderRecord(msgspec.Struct, frozen=True, kw_only=True):
    node: str
    url: str
    # A copy of the term for people reading etcd by hand; the term is the key's
    # create_revision, which no writer can get wrong.  0 until the leader wrote it.
    term: int = 0


class MemberRecord(msgspec.Struct, frozen=True, kw_only=True):
    node: str
    url: str
    role: Role
    applied_lsn: int
    durable_lsn: int
    term: int  # the last leader term this member has seen (0: none yet)
    # The term the member's log was last written in: (log_term, durable_lsn) orders
    # logs by how up to date they are, as Raft's election rule does.
    log_term: int = 0


class HistoryRecord(msgspec.Struct, frozen=True, kw_only=True):
    term: int
    leader: str
    start_lsn: int  # the leader's durable LSN when it took the leadership
    started_at: str  # RFC 3339, UTC, the leader's clock


class StatusRecord(msgspec.Struct, frozen=True, kw_only=True):
    term: int
    durable_lsn: int  # the leader's, as of its last loop


class SwitchoverRecord(msgspec.Struct, frozen=True, kw_only=True):
    leader: str
    candidate: str
    term: int  # the leader's term when it asked
    target_lsn: int | None = None  # set once the leader stopped acknowledging


class ClusterConfig(msgspec.Struct, frozen=True, kw_only=True):
    synchronous_replicas: int = 0
    maximum_lag_on_failover_bytes: int = limits.maximum_lag_on_failover_bytes_default


T = TypeVar("T")


def encode(record: msgspec.Struct) -> bytes:
    return msgspec.json.encode(record)


def decode(data: bytes, kind: type[T]) -> T:
    return msgspec.json.decode(data, type=kind)
