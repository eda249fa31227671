"""Cluster coordination through etcd: membership, leadership, terms and switchover.

A StemeDB cluster keeps its shared state in etcd under ``/stemedb/<cluster>/`` (the keys
are listed in :mod:`._keys`; docs/cluster.md has them with their values).  Each node
holds one etcd lease, its *session*, renewed by keepalives; its member record lives
under it, and so does the leader key while the node leads.  The leader's **term** is
the etcd revision at which its leader key was created, so terms only grow.

The safety rule: a leader acknowledges a write only before its *deadline*, the send
time of its last confirmed keepalive plus the lease TTL minus a retry margin, judged by
its own monotonic clock (:mod:`._lease_clock`).  Whatever happens to etcd or to the
network, the lease cannot lapse in etcd before that moment, so no other node can be
leading while this one acknowledges.

Modules, one idea each:

- :mod:`._etcd` — the etcd v3 client over the JSON gateway (httpx), with failover.
- :mod:`._keys` / :mod:`._records` — where the state lives and what it holds.
- :mod:`._store` — reads (one snapshot per loop) and term-guarded writes of the records.
- :mod:`._lease_clock` — the local deadline of a lease.
- :mod:`._session` — a node's lease: grant, keepalive, revoke.
- :mod:`._leadership` — campaign, renew, step down, the loop thread, ``may_acknowledge``.
- :mod:`._switchover` — the planned handover to a caught-up candidate.
- :mod:`._policy` — who may campaign: lag bound and highest durable LSN.
- :mod:`._limits` — every bound of the above, with its unit.
- :mod:`._errors` — ``EtcdUnavailable``, ``EtcdError`` and the rest.
"""

from ._errors import ClusterError, EtcdError, EtcdUnavailable, NotLeader, SwitchoverFailed
from ._etcd import (
    Compare,
    DeleteRange,
    EtcdClient,
    FaultHook,
    KeyValue,
    LeaseGrant,
    LeaseTimeToLive,
    Put,
    Range,
    RangeResult,
    TxnResult,
    gateway_prefix,
    parse_endpoints,
    prefix_range_end,
)
from ._keys import ClusterKeys
from ._leadership import Eligibility, Leadership, LeadershipEvent
from ._lease_clock import LeaseClock, retry_margin_seconds
from ._policy import failover_eligibility
from ._records import (
    ClusterConfig,
    HistoryRecord,
    LeaderRecord,
    MemberRecord,
    Positions,
    Role,
    StatusRecord,
    SwitchoverRecord,
)
from ._session import Session
from ._store import ClusterStore, ClusterView, LeaderInfo
from ._switchover import CaughtUp, switchover

__all__ = [
    "CaughtUp",
    "ClusterConfig",
    "ClusterError",
    "ClusterKeys",
    "ClusterStore",
    "ClusterView",
    "Compare",
    "DeleteRange",
    "Eligibility",
    "EtcdClient",
    "EtcdError",
    "EtcdUnavailable",
    "FaultHook",
    "HistoryRecord",
    "KeyValue",
    "LeaderInfo",
    "LeaderRecord",
    "Leadership",
    "LeadershipEvent",
    "LeaseClock",
    "LeaseGrant",
    "LeaseTimeToLive",
    "MemberRecord",
    "NotLeader",
    "Positions",
    "Put",
    "Range",
    "RangeResult",
    "Role",
    "Session",
    "StatusRecord",
    "SwitchoverFailed",
    "SwitchoverRecord",
    "TxnResult",
    "failover_eligibility",
    "gateway_prefix",
    "parse_endpoints",
    "prefix_range_end",
    "retry_margin_seconds",
    "switchover",
]
