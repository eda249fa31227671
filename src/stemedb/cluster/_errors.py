"""The cluster package's errors, under :class:`stemedb.errors.StemeError`."""

from __future__ import annotations

from ..errors import StemeError

__all__ = ["ClusterError", "EtcdError", "EtcdUnavailable", "NotLeader", "SwitchoverFailed"]


class ClusterError(StemeError):
    """Base of the errors of cluster coordination."""

    code = "cluster_error"
    http_status = 503


class EtcdUnavailable(ClusterError):
    """No etcd endpoint answered: each was tried once, each error is in ``attempts``."""

    code = "etcd_unavailable"

    def __init__(self, message: str, *, attempts: list[tuple[str, str]],
                 hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.attempts = attempts


class EtcdError(ClusterError):
    """etcd answered, with an error: ``etcd_code`` is its gRPC status code (5 is "not
    found", 9 "failed precondition", 14 "unavailable"), ``etcd_message`` its text."""

    code = "etcd_error"

    # gRPC codes the gateway passes on.
    NOT_FOUND = 5
    UNAVAILABLE = 14

    def __init__(self, message: str, *, etcd_code: int, etcd_message: str,
                 endpoint: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.etcd_code = etcd_code
        self.etcd_message = etcd_message
        self.endpoint = endpoint


class NotLeader(ClusterError):
    """The operation needs this node to hold the leadership, and it does not."""

    code = "not_leader"


class SwitchoverFailed(ClusterError):
    """A switchover was aborted; the leader kept (or regained) its leadership."""

    code = "switchover_failed"
