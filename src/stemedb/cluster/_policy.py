"""Who may campaign when there is no leader: the default failover policy.

A member may lead only if it is within ``maximum_lag_on_failover_bytes`` of the last
leader's durable LSN (the ``status`` record), and no other member reports a higher
durable LSN.  Two members level at the top may both campaign: the txn lets one win.
"""

from __future__ import annotations

from collections.abc import Callable

from ._records import Positions
from ._store import ClusterView

__all__ = ["failover_eligibility"]


def failover_eligibility(node: str, positions: Callable[[], Positions],
                         maximum_lag_on_failover_bytes: int | None = None
                         ) -> Callable[[ClusterView], bool]:
    """An eligibility callback for :class:`Leadership`.  ``None`` for the lag bound:
    the cluster's ``config`` record says."""
    def eligible(view: ClusterView) -> bool:
        mine = positions().durable_lsn
        max_lag = (view.config.maximum_lag_on_failover_bytes
                   if maximum_lag_on_failover_bytes is None else maximum_lag_on_failover_bytes)
        if view.status is not None and view.status.durable_lsn - mine > max_lag:
            return False
        return all(m.durable_lsn <= mine for name, m in view.members.items() if name != node)
    return eligible
