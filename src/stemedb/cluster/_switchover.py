"""A planned handover of the leadership to a named member, losing no acknowledged write.

1. The leader writes ``switchover`` (leader, candidate, term) under a lease of its own
   (TTL: the timeout plus one lease TTL), only while it leads and no other switchover is
   pending.  From then on no member but the candidate campaigns.
2. The leader fences itself: it stops acknowledging, keeping the key.  Only then does
   it read its durable LSN, the *target*: every write it acknowledged was durable
   before the fence, so at or below the target.  It writes the target into the record.
3. It waits, at most the timeout, until ``caught_up(candidate, target)``: by default,
   until the candidate's member record shows a durable LSN at or past the target.
4. It steps down: deletes the leader key, guarded on its term.  The candidate, allowed
   by the record, campaigns on its next loop, takes a higher term, and deletes the
   record.
5. The old leader waits for the new one (bounded) and returns it.

If the candidate does not catch up in time, or the leadership is lost meanwhile, the
record is removed, the fence lifted, and :class:`SwitchoverFailed` raised: the old
leader goes on leading.  If it steps down but the candidate never campaigns, the
record lapses with its lease and any eligible member may lead.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import _limits as limits
from ._errors import ClusterError, NotLeader, SwitchoverFailed
from ._records import SwitchoverRecord
from ._store import LeaderInfo

if TYPE_CHECKING:
    from ._leadership import Leadership

__all__ = ["CaughtUp", "switchover"]

CaughtUp = Callable[[str, int], bool]


def _member_caught_up(leadership: Leadership) -> CaughtUp:
    def check(candidate: str, target_lsn: int) -> bool:
        member = leadership.store.members().get(candidate)
        return member is not None and member.durable_lsn >= target_lsn
    return check


def switchover(leadership: Leadership, candidate: str, *,
               caught_up: CaughtUp | None = None,
               timeout_seconds: float = limits.switchover_timeout_seconds_default
               ) -> LeaderInfo:
    lead = leadership
    store, client = lead.store, lead.client
    term = lead.held_term
    if term is None or not lead.may_acknowledge():
        raise NotLeader(f"node {lead.node} is not the leader; only the leader hands over",
                        hint="run the switchover on the leader (see current_leader())")
    if candidate == lead.node:
        raise SwitchoverFailed(f"node {candidate} already leads")
    if candidate not in store.members():
        raise SwitchoverFailed(f"no member named {candidate} in cluster {store.keys.cluster}",
                               hint="pick one of the members/ keys")
    check = caught_up or _member_caught_up(lead)
    end = time.monotonic() + timeout_seconds
    grant = client.lease_grant(math.ceil(timeout_seconds + lead.session.ttl_seconds))
    record = SwitchoverRecord(leader=lead.node, candidate=candidate, term=term)
    if not store.put_switchover(term, record, grant.lease_id, create=True):
        client.lease_revoke(grant.lease_id)
        raise SwitchoverFailed("another switchover is pending (or its candidate has not yet "
                               "cleared it), or this node lost the lead",
                               hint="retry in a second")
    lead.fence(f"switchover to {candidate}")
    try:
        target = lead.positions().durable_lsn  # after the fence: every ack is below it
        if not store.put_switchover(term, SwitchoverRecord(
                leader=lead.node, candidate=candidate, term=term, target_lsn=target),
                grant.lease_id, create=False):
            raise SwitchoverFailed(f"node {lead.node} lost the leadership")
        while not check(candidate, target):  # bounded by the timeout
            if lead.held_term != term:
                raise SwitchoverFailed(f"node {lead.node} lost the leadership")
            if time.monotonic() >= end:
                raise SwitchoverFailed(
                    f"{candidate} did not reach durable LSN {target} in {timeout_seconds} s",
                    hint="look at the candidate's lag, or pick another candidate")
            time.sleep(limits.switchover_poll_seconds)
        lead.step_down()
    except BaseException:
        lead.unfence()
        with contextlib.suppress(ClusterError):  # else the record lapses with its lease
            client.lease_revoke(grant.lease_id)  # removes the record
        raise
    wait_end = end + lead.session.ttl_seconds
    while time.monotonic() < wait_end:  # bounded: the timeout plus one TTL
        leader = store.leader()
        if leader is not None and leader.term > term:
            if leader.node != candidate:
                raise SwitchoverFailed(f"{leader.node} took over, not {candidate}")
            return leader
        time.sleep(limits.switchover_poll_seconds)
    raise SwitchoverFailed(f"{lead.node} stepped down but {candidate} did not take over; "
                           "any eligible member may lead once the request lapses")
