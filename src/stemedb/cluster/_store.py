"""Reading and writing the cluster's records in etcd.

:meth:`ClusterStore.view` reads the leader, the members, the config, the status and a
pending switchover in one txn, so they are one snapshot of one revision.  Writes that
only the leader may make are txns guarded on the leader key's create_revision (the
term): a node that lost the leadership cannot overwrite its successor's records.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import NamedTuple, TypeVar

import msgspec

from ._etcd import Compare, DeleteRange, EtcdClient, KeyValue, Put, Range, prefix_range_end
from ._keys import ClusterKeys
from ._records import (
    ClusterConfig,
    HistoryRecord,
    LeaderRecord,
    MemberRecord,
    StatusRecord,
    SwitchoverRecord,
    decode,
    encode,
)

__all__ = ["ClusterStore", "ClusterView", "LeaderInfo"]

log = logging.getLogger("stemedb.cluster")

T = TypeVar("T")


class LeaderInfo(NamedTuple):
    node: str
    url: str
    term: int  # the leader key's create_revision
    lease_id: int


class ClusterView(NamedTuple):
    revision: int  # etcd's revision of this snapshot
    leader: LeaderInfo | None
    members: dict[str, MemberRecord]
    config: ClusterConfig
    status: StatusRecord | None
    switchover: SwitchoverRecord | None


def _leader_info(kv: KeyValue) -> LeaderInfo:
    record = decode(kv.value, LeaderRecord)
    return LeaderInfo(record.node, record.url, kv.create_revision, kv.lease)


def _decode_or_none(kv: KeyValue | None, kind: type[T]) -> T | None:
    if kv is None:
        return None
    try:
        return decode(kv.value, kind)
    except msgspec.DecodeError as e:
        log.warning("cluster key %s holds no valid %s: %s", kv.key.decode(errors="replace"),
                    kind.__name__, e)
        return None


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class ClusterStore:
    """The records of one cluster in one etcd."""

    def __init__(self, client: EtcdClient, cluster: str) -> None:
        self.client = client
        self.keys = ClusterKeys(cluster)

    # --- reads ----------------------------------------------------------------------

    def view(self) -> ClusterView:
        k = self.keys
        result = self.client.txn([], [
            Range(k.leader), Range(k.members_prefix, prefix_range_end(k.members_prefix)),
            Range(k.config), Range(k.status), Range(k.switchover)])
        leader_r, members_r, config_r, status_r, switchover_r = result.ranges

        def one(r: list[KeyValue]) -> KeyValue | None:
            return r[0] if r else None

        leader = None
        if leader_r.kvs:
            try:
                leader = _leader_info(leader_r.kvs[0])
            except msgspec.DecodeError:
                # A leader key we cannot read is still held: nobody may campaign.
                kv = leader_r.kvs[0]
                leader = LeaderInfo("?", "", kv.create_revision, kv.lease)
        members = {}
        for kv in members_r.kvs:
            record = _decode_or_none(kv, MemberRecord)
            if record is not None:
                members[k.member_name(kv.key)] = record
        config = _decode_or_none(one(config_r.kvs), ClusterConfig) or ClusterConfig()
        return ClusterView(result.revision, leader, members, config,
                           _decode_or_none(one(status_r.kvs), StatusRecord),
                           _decode_or_none(one(switchover_r.kvs), SwitchoverRecord))

    def leader(self) -> LeaderInfo | None:
        kv = self.client.get(self.keys.leader)
        return _leader_info(kv) if kv is not None else None

    def members(self) -> dict[str, MemberRecord]:
        return self.view().members

    def history(self) -> list[HistoryRecord]:
        """Every leadership so far, in term order."""
        kvs = self.client.get_prefix(self.keys.history_prefix).kvs
        return [r for r in (_decode_or_none(kv, HistoryRecord) for kv in kvs) if r is not None]

    # --- writes anyone makes ----------------------------------------------------------

    def write_config(self, config: ClusterConfig) -> None:
        self.client.put(self.keys.config, encode(config))

    def publish_member(self, record: MemberRecord, lease_id: int) -> None:
        self.client.put(self.keys.member(record.node), encode(record), lease=lease_id)

    # --- the leader's writes, guarded on its term --------------------------------------

    def create_leader(self, record: LeaderRecord, lease_id: int) -> tuple[bool, LeaderInfo | None]:
        """Create the leader key if there is none; (created, the leader key after).

        On success the leader is us and its term is the txn's revision.
        """
        k = self.keys
        result = self.client.txn([Compare.create_revision(k.leader, 0)],
                                 [Put(k.leader, encode(record), lease_id)],
                                 [Range(k.leader)])
        if result.succeeded:
            return True, LeaderInfo(record.node, record.url, result.revision, lease_id)
        kvs = result.ranges[0].kvs if result.ranges else []
        return False, (_leader_info(kvs[0]) if kvs else None)

    def publish_term(self, term: int, record: LeaderRecord, lease_id: int,
                     history: HistoryRecord, status: StatusRecord) -> bool:
        """Write the term into the leader key, its history entry and the status, if
        the leader key is still the one created at ``term``."""
        k = self.keys
        return self.client.txn([Compare.create_revision(k.leader, term)], [
            Put(k.leader, encode(record), lease_id),
            Put(k.history(term), encode(history)),
            Put(k.status, encode(status))]).succeeded

    def publish_status(self, term: int, status: StatusRecord) -> bool:
        k = self.keys
        return self.client.txn([Compare.create_revision(k.leader, term)],
                               [Put(k.status, encode(status))]).succeeded

    def delete_leader(self, term: int) -> bool:
        """Delete the leader key if it is still the one created at ``term``."""
        k = self.keys
        return self.client.txn([Compare.create_revision(k.leader, term)],
                               [DeleteRange(k.leader)]).succeeded

    def put_switchover(self, term: int, record: SwitchoverRecord, lease_id: int, *,
                       create: bool) -> bool:
        """Write the switchover request while ``term`` leads; ``create``: only if there
        is none pending."""
        k = self.keys
        compare = [Compare.create_revision(k.leader, term)]
        if create:
            compare.append(Compare.create_revision(k.switchover, 0))
        return self.client.txn(compare, [Put(k.switchover, encode(record), lease_id)]).succeeded

    def delete_switchover(self, term: int) -> bool:
        """Clear the switchover request while ``term`` leads (the candidate, once it
        leads, or the leader aborting)."""
        k = self.keys
        return self.client.txn([Compare.create_revision(k.leader, term)],
                               [DeleteRange(k.switchover)]).succeeded
