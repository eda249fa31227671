"""Every bound StemeDB enforces, in one place, each with its unit.

A limit that is not named here is a bug: every queue, loop, batch and retry in the
code refers to one of these names.  Configurable limits have their defaults here and
are overridden through :mod:`stemedb.config`.
"""

from __future__ import annotations

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

# --- data model (SPEC.md) -------------------------------------------------------
subject_bytes_max = 512
predicate_bytes_max = 256
author_bytes_max = 256
voter_bytes_max = 256
source_bytes_max = 2048
object_bytes_max = 64 * KiB  # the JSON encoding of `object`
json_depth_max = 32  # nesting of arrays/objects inside `object`
batch_ops_max = 1000  # ops in one POST /v1/batch
list_limit_max = 1000  # items in one page of GET /v1/assertions
list_limit_default = 100
idempotency_key_bytes_max = 256

# --- HTTP -----------------------------------------------------------------------
http_body_bytes_max = 8 * MiB  # checked from Content-Length before the body is read
http_drain_grace_seconds = 30.0  # SIGTERM / drain: how long in-flight writes may take
http_retry_after_seconds = 1  # Retry-After on 503

# --- WAL ------------------------------------------------------------------------
segment_size_bytes_default = 64 * MiB
segment_size_bytes_min = 64 * KiB
segment_size_bytes_max = 1 * GiB
record_payload_bytes_max = 16 * MiB  # and never more than a segment minus its header
batch_records_max = 1024  # requests taken by one group commit
batch_bytes_max = 8 * MiB  # bytes appended by one group commit (at least one record)
submit_queue_requests_max = 16384  # requests waiting for the writer; more get 503
fsync_interval_ms_default = 100
slow_fsync_warn_seconds = 0.1  # a slower fdatasync is logged as a warning
fsync_window_samples_max = 4096  # samples kept for the sliding-window quantiles
fsync_window_seconds = 60.0  # age of the oldest sample kept for the quantiles

# --- disk guard -----------------------------------------------------------------
disk_reserve_bytes_default = 256 * MiB  # writes are refused below this much free space
disk_probe_interval_seconds = 0.5  # how stale the free-space reading may be

# --- checkpoints ----------------------------------------------------------------
checkpoint_wal_bytes_default = 256 * MiB  # checkpoint when this much WAL is unapplied-to-disk
checkpoint_interval_seconds_default = 300.0
replay_budget_seconds_default = 1.0  # checkpoint when estimated replay exceeds this
# Replay speed assumed until a replay of at least replay_measure_bytes_min measures it
# (kept in the state).  Below the 9.9 MiB/s (1000-assertion records) and 19.8 MiB/s
# (one-assertion records) that replay measured on the benchmark machine
# (bench/results/history.md, section 7): an underestimate only checkpoints more often.
replay_throughput_bytes_per_second_initial = 4 * MiB
replay_measure_bytes_min = 1 * MiB
idempotency_ttl_seconds_default = 24 * 3600

# --- recovery -------------------------------------------------------------------
replay_read_bytes_max = 4 * MiB  # one read from a segment during replay
# The applier: records per SQLite transaction (replay and live), and how far the state
# may lag the durable WAL before the committer waits ([state] max_apply_lag_bytes).
apply_records_max = 4096
# ... and payload bytes per live transaction: a linearizable read waits for the
# transaction that holds its LSN, so one is kept short (a 1,000-assertion batch record is
# ~150 KiB); a lagging applier still makes transactions of this size, not of one group.
apply_bytes_max = 512 * KiB
# 16 MiB of 1,000-assertion batch records is about a second of the applier's work: a
# read waiting at the bound still answers well inside read_wait_timeout_seconds_default.
max_apply_lag_bytes_default = 16 * MiB
max_apply_lag_bytes_min = 64 * KiB
# The longest a group waits for the applier under backpressure before it is refused
# with 503 apply_lag.
apply_backpressure_wait_seconds_max = 30.0
apply_delay_ms_max = 10_000  # [state] apply_delay_ms, a drill setting
replay_apply_records_max = 2048  # records applied per SQLite transaction during replay
replay_apply_bytes_max = 8 * MiB  # record bytes applied per SQLite transaction during replay
apply_rows_buffered_max = 4096  # assertion rows buffered before one executemany
# A replay of at least this many WAL bytes, into a state holding at most one assertion
# per replay_index_rebuild_wal_bytes_per_row of them, drops the assertion indexes and
# builds them again at its end (Recovery._drop_indexes_for_replay).
replay_index_rebuild_bytes_min = 4 * MiB
replay_index_rebuild_wal_bytes_per_row = 256  # WAL bytes per assertion already in the state
# WAL position gauges (end LSN, replay debt, hold lag) are refreshed at most this often
# by the writer, and always on a scrape, a rotation, a checkpoint or a hold change.
wal_gauges_refresh_seconds = 0.25
replay_progress_interval_seconds = 2.0  # log line cadence during replay

# --- process ------------------------------------------------------------------
gil_switch_interval_seconds = 0.001  # sys.setswitchinterval in `stemedb serve`

# --- reads ----------------------------------------------------------------------
# SQLite read connections, one thread each, owned by the engine.  More threads than
# cores only add GIL hand-offs: on the 2-core benchmark machine, 2 instead of 4 cut the
# GET p99 under 16 writers from ~13.5 to ~9.8 ms and at 16 readers alone from ~34 to
# 11-26 ms, at the same rates (bench/results/history.md section 8).  1 was lower still, but
# one slow query would then hold up every other read.
reader_threads = 2
# SQLite's page cache, per connection (the writer's and each reader's): what a node's
# memory grows to under writes and reads beyond its start-up size (docs/operations).
state_page_cache_bytes_default = 64 * MiB
state_page_cache_bytes_min = 256 * KiB
reader_threads_max = 64
# How long a read waits for the state to apply the LSN it needs (SPEC "Reads and
# consistency"): then 503 lsn_not_reached.  [read] wait_timeout_ms.
read_wait_timeout_seconds_default = 5.0
read_batch_max = 64  # reads one reader thread takes per wake-up
# A background pass copying SQLite's WAL into the database file (stemedb.backfill), so
# the writer-blocking part of a checkpoint stays short: at most one pass per interval,
# and only if at least this much of our WAL was written in it.
sqlite_backfill_interval_seconds = 0.1
sqlite_backfill_wal_bytes = 16 * KiB
sqlite_wal_size_limit_bytes = 64 * MiB  # PRAGMA journal_size_limit of the state database

# --- HTTP server and client (stemedb.server, stemedb.client) --------------------
http_id_max = 2**63 - 1  # assertion ids and epoch numbers fit SQLite's signed 64-bit integer
http_startup_listen_backlog = 1024  # pending connections the listening socket queues
# A request's line and headers together; past it: 431 and the connection closed.
http_head_bytes_max = 16 * KiB
http_keepalive_idle_seconds = 75  # an idle keep-alive connection is closed after this
http_listener_poll_seconds = 0.01  # how often start() looks whether the server listens
client_retries_max = 5  # a client write is sent at most 1 + 5 times, always with one key
client_backoff_seconds_initial = 0.1  # first wait before a retry; doubles each time
client_backoff_seconds_max = 2.0  # cap on one wait (and on a server's Retry-After)
client_timeout_seconds_default = 10.0  # per HTTP request
client_page_iterations_max = 1_000_000  # pages one iterator may fetch (a runaway guard)

# --- archive (stemedb.archive) ----------------------------------------------------
archive_interval_seconds_default = 1.0  # [archive] interval_seconds: ship at least this often
archive_heartbeat_interval_seconds_default = 60.0  # [archive] heartbeat_interval_seconds
archive_heartbeat_interval_seconds_min = 1.0
archive_heartbeat_timeout_seconds = 5.0  # one heartbeat GET, connect and answer
archive_interval_seconds_min = 0.01
archive_interval_seconds_max = 3600.0
archive_max_backlog_bytes_default = 1 * GiB  # [archive] max_backlog_bytes
archive_max_backlog_bytes_min = 64 * KiB
# Plaintext WAL bytes in one archived object (one upload).  An object holds whole
# records, so the largest record's frame must fit (checked below).
archive_object_bytes_max = 32 * MiB
# Tries of one object in one pass (put, then read back); then the pass ends and the
# next waits out the backoff.  The archiver itself never gives up.
archive_upload_attempts_max = 3
archive_backoff_seconds_initial = 0.1  # the first wait after a failed try; doubles
archive_backoff_seconds_max = 30.0  # the longest wait between two tries
archive_objects_per_pass_max = 256  # objects one pass uploads before it looks again
archive_hold_wait_seconds = 10.0  # how long the archiver waits for the writer to move its hold
archive_connect_timeout_seconds = 5.0  # an S3 connection
archive_read_timeout_seconds = 30.0  # an S3 request, once connected
archive_list_keys_max = 1_000_000  # object names one listing may return (a runaway guard)
archive_drops_kept_max = 32  # "drop" events node.json keeps for the status
archive_stop_seconds = 10.0  # how long close() waits for the archiver's last pass

# --- base backups, restore, drills (stemedb.backup) --------------------------------
backup_interval_hours_default = 24.0  # [backup] interval_hours: a base backup this often
backup_drill_interval_hours_default = 24.0  # [backup] drill_interval_hours
backup_interval_hours_max = 24.0 * 366  # a year: the longest either interval may be
# [backup] retain_count / retain_days: a backup is expired only when it is past both
# (beyond the newest retain_count AND older than retain_days), so a schedule that
# stalls never expires the last good backups.
backup_retain_count_default = 7
backup_retain_days_default = 7.0
backup_part_bytes_max = 32 * MiB  # state file bytes in one uploaded part (one object)
backup_parts_max = 100_000  # parts of one backup: 3.2 TiB of state at 32 MiB each
backup_manifest_bytes_max = 16 * MiB  # a manifest larger than this is refused as damaged
# How long the backup thread waits before it tries again after a failed backup (it
# doubles up to the max); the first backup of a timeline is retried this way until the
# archive answers.
backup_retry_seconds_initial = 1.0
backup_retry_seconds_max = 300.0
backup_wait_applied_seconds = 30.0  # a backup waits this long for the applier to reach
                                    # the archive timeline's start
backup_poll_seconds = 1.0  # how often the backup thread looks whether something is due
backup_stop_seconds = 10.0  # how long close() waits for a backup or drill in progress
backup_timelines_max = 10_000  # history links a restore follows (a runaway guard)
restore_timeline_claims_max = 100  # timeline numbers a restore tries to claim in a row

assert archive_object_bytes_max >= record_payload_bytes_max + 64, \
    "an archived object must hold the largest record"
