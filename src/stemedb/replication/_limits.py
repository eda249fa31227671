"""Every bound of replication, each with its unit."""

from __future__ import annotations

MiB = 1024 * 1024

# --- the stream (leader side) -------------------------------------------------------
poll_wait_seconds = 1.0  # a stream request with nothing new waits this long for WAL
# ... and this long while a switchover fences the leader: the candidate, caught up,
# stops its stream to take over without waiting out a long poll.
fenced_poll_wait_seconds = 0.05
batch_bytes_max = 4 * MiB  # WAL bytes one stream response carries (at least one record)
hold_update_seconds = 1.0  # a replica's WAL hold moves at most this often
disconnect_seconds = 10.0  # a replica that has not asked for WAL this long: disconnected
max_replica_lag_bytes_default = 1024 * MiB  # [cluster] max_replica_lag_bytes
durable_samples_max = 4096  # (LSN, time) samples kept for the lag in seconds
sync_wait_seconds = 10.0  # synchronous_replicas: a write waits this long, then 503

# --- the receiver (replica side) ----------------------------------------------------
request_timeout_seconds = poll_wait_seconds + 5.0  # one stream request, read whole
connect_timeout_seconds = 1.0
retry_seconds = 0.2  # after a failed request, before the next
snapshot_timeout_seconds = 600.0  # one snapshot download
read_index_timeout_seconds = 2.0  # a replica asking the leader for its durable LSN

# --- the member (both) --------------------------------------------------------------
role_poll_seconds = 0.02  # how often the node looks at its leadership
promote_timeout_seconds = 60.0  # a new leader waits this long for its state to catch up
bootstrap_wait_seconds = 1.0  # a fresh node with no leader to copy from looks again after
