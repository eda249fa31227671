"""Where the cluster's state lives in etcd: every key under ``/stemedb/<cluster>/``.

========================  ==========================================  ==================
key                       value (JSON, :mod:`._records`)              lifetime
========================  ==========================================  ==================
``leader``                :class:`LeaderRecord`                       the leader's lease
``members/<node>``        :class:`MemberRecord`                       the member's lease
``config``                :class:`ClusterConfig`                      until changed
``history/<term>``        :class:`HistoryRecord`, one per leadership  kept
``status``                :class:`StatusRecord`, the last leader's    kept
                          durable LSN, for the failover lag check
``switchover``            :class:`SwitchoverRecord`                   its own lease
========================  ==========================================  ==================

``<term>`` is written with 20 digits so that etcd's byte order of the keys is the order
of the terms; one format string names history keys and one parser reads them back.
"""

from __future__ import annotations

import re

__all__ = ["ClusterKeys"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_HISTORY_FORMAT = "history/{term:020d}"
_HISTORY_PARSE = re.compile(r"^history/(\d{20})$")


def _check_name(kind: str, name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"{kind} name {name!r}: use 1-128 of A-Z a-z 0-9 . _ - "
                         "(starting with a letter or digit)")
    return name


class ClusterKeys:
    """The keys of one cluster, as bytes ready for etcd."""

    def __init__(self, cluster: str) -> None:
        self.cluster = _check_name("cluster", cluster)
        self.prefix = f"/stemedb/{cluster}/".encode()
        self.leader = self.prefix + b"leader"
        self.config = self.prefix + b"config"
        self.status = self.prefix + b"status"
        self.switchover = self.prefix + b"switchover"
        self.members_prefix = self.prefix + b"members/"
        self.history_prefix = self.prefix + b"history/"

    def member(self, node: str) -> bytes:
        return self.members_prefix + _check_name("node", node).encode()

    def member_name(self, key: bytes) -> str:
        if not key.startswith(self.members_prefix):
            raise ValueError(f"{key!r} is not a member key of cluster {self.cluster}")
        return key[len(self.members_prefix):].decode()

    def history(self, term: int) -> bytes:
        if term <= 0:
            raise ValueError(f"term {term}: terms start at 1")
        return self.prefix + _HISTORY_FORMAT.format(term=term).encode()

    def history_term(self, key: bytes) -> int:
        m = _HISTORY_PARSE.match(key[len(self.prefix):].decode()) \
            if key.startswith(self.prefix) else None
        if m is None:
            raise ValueError(f"{key!r} is not a history key of cluster {self.cluster}")
        return int(m.group(1))
