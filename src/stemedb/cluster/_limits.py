"""Every bound the cluster package enforces, each with its unit.

The lease rule is written in these names (docs/cluster.md, "The lease rule"): a leader
renews every ``lease_ttl_seconds * renew_fraction`` and stops acknowledging at
``last keepalive sent + lease_ttl_seconds - retry margin``, where the retry margin is
``lease_ttl_seconds * retry_margin_fraction`` but never under ``retry_margin_seconds_min``.
"""

from __future__ import annotations

# --- the lease --------------------------------------------------------------------
lease_ttl_seconds_default = 10  # [cluster] lease_ttl_seconds
# etcd refuses a TTL under its own minimum (1.5 election timeouts, 2 s at its defaults);
# a TTL that leaves no room for one renewal inside the margin makes no sense either.
lease_ttl_seconds_min = 2
lease_ttl_seconds_max = 3600
# A keepalive is sent every TTL * renew_fraction: at TTL/3, two keepalives in a row may
# be lost and the third still lands before the local deadline.
renew_fraction = 1 / 3
# A failed keepalive is tried again after TTL * renew_retry_fraction, not a full period.
renew_retry_fraction = 1 / 10
# The retry margin: how long before the earliest moment etcd could expire the lease
# the leader stops acknowledging.  It covers a write acknowledged just after the check,
# a scheduling stall of the process, and the rate difference between this host's
# monotonic clock and etcd's.
retry_margin_fraction = 1 / 4
retry_margin_seconds_min = 0.25

# --- requests to etcd -------------------------------------------------------------
etcd_request_timeout_seconds_default = 2.0  # one HTTP request to one endpoint
etcd_connect_timeout_seconds = 1.0  # one TCP connect to one endpoint
etcd_endpoints_max = 16  # endpoints one client takes (one try each per call)
etcd_response_bytes_max = 64 * 1024 * 1024  # one gateway response, read whole
etcd_range_keys_max = 10_000  # keys one range of the cluster prefix returns

# --- the loop ---------------------------------------------------------------------
# The loop wakes at least this often (and at TTL * renew_fraction when that is shorter)
# to look at the leader key, publish the member record and campaign when there is none.
loop_interval_seconds_max = 1.0
loop_interval_seconds_min = 0.05
# After step_down() the node leaves the race to others for this long (TTL fractions).
step_down_hold_off_fraction = 1.0
loop_stop_timeout_seconds = 10.0  # how long stop() waits for the loop thread
events_kept_max = 1024  # leadership events kept in memory for status and tests

# --- switchover -------------------------------------------------------------------
switchover_timeout_seconds_default = 30.0  # wait for the candidate to catch up, then abort
switchover_poll_seconds = 0.05  # how often the leader looks at the candidate's position

# --- failover policy ----------------------------------------------------------------
# [cluster] maximum_lag_on_failover_bytes: a replica further behind the last leader's
# durable LSN than this does not campaign.
maximum_lag_on_failover_bytes_default = 1024 * 1024
