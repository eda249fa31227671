"""Configuration: TOML file, then ``STEMEDB_*`` variables, then flags.

Layout (every key optional; defaults below)::

    data_dir = "./stemedb-data"            # STEMEDB_DATA_DIR

    [server]
    listen = "127.0.0.1:18180"             # STEMEDB_SERVER_LISTEN
    log_format = "plain"                   # or "json"
    log_level = "info"
    body_bytes_max = 8388608               # 8 MiB
    drain_grace_seconds = 30.0
    insecure_allow_unauthenticated = false # bind beyond loopback with no tokens
    reader_threads = 2                     # SQLite read connections, a thread each

    [wal]
    dir = ""                               # "" = <data_dir>/wal; else a directory on a
                                           # disk of its own, linked as <data_dir>/wal
    fsync = "always"                       # "always" | "interval" | "never"
    fsync_interval_ms = 100
    segment_size_bytes = 67108864          # 64 MiB
    log_fsync_errors = false
    disk_reserve_bytes = 268435456         # 256 MiB
    recovery_mode = "tolerate-torn-tail"   # | "absolute" | "point-in-time"
    batch_records_max = 1024
    batch_bytes_max = 8388608

    [checkpoint]
    wal_bytes = 268435456
    interval_seconds = 300.0
    replay_budget_seconds = 1.0
    backfill = true                        # copy SQLite's WAL between checkpoints

    [state]
    page_cache_bytes = 67108864            # 64 MiB: SQLite's page cache per connection
                                           # (the writer's and each reader's)
    max_apply_lag_bytes = 16777216         # 16 MiB: durable WAL the state may trail by
                                           # before the writer waits (backpressure)
    apply_delay_ms = 0                     # drills and tests only: delay each apply
                                           # transaction, as a slow state disk would

    [read]
    wait_timeout_ms = 5000                 # how long a read waits for the state to apply
                                           # the LSN it needs; then 503 lsn_not_reached

    [idempotency]
    ttl_seconds = 86400

    [archive]
    url = ""                               # "" = off; file:///path or s3://bucket/prefix
                                           # (S3 endpoint, region, credentials: AWS_*
                                           # variables and ~/.aws files)
    interval_seconds = 1.0                 # ship durable WAL at least this often
    max_backlog_bytes = 1073741824         # 1 GiB: WAL kept for an archive that does not
                                           # take it, before on_backlog_full acts
    on_backlog_full = "refuse_writes"      # 507 archive_backlog_full | "drop": release the
                                           # WAL, start a new timeline, say so loudly
    encryption_key_file = ""               # 32 bytes (raw or 64 hex): AES-256-GCM
    heartbeat_url = ""                     # GET after passes that archived everything
    heartbeat_interval_seconds = 60.0      # (a dead man's switch), at most this often

    [backup]                               # base backups and drills (need archive.url)
    interval_hours = 24.0                  # a base backup this often; 0 = on request only
    drill_interval_hours = 24.0            # a restore drill this often; 0 = never
    retain_count = 7                       # expire keeps the newest 7 backups, and
    retain_days = 7.0                      # every backup younger than 7 days

    [auth]
    # tokens = [{ name = "ops", token = "...", scopes = ["read", "write", "admin"] }]

A key ``[table] key`` is overridden by ``STEMEDB_TABLE_KEY`` (upper case); a
top-level key by ``STEMEDB_KEY``.  ``STEMEDB_AUTH_TOKENS`` takes JSON.
"""

from __future__ import annotations

import json
import os
import ssl
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import limits
from .errors import ConfigError

if TYPE_CHECKING:
    from .engine import EngineConfig

DEFAULT_CONFIG_PATH = "/etc/stemedb/api.toml"
DEFAULT_DATA_DIR = "./stemedb-data"
DEFAULT_LISTEN = "127.0.0.1:18180"

# (table, key) -> (type, default).  Table "" is the top level.
SCHEMA: dict[tuple[str, str], tuple[type, Any]] = {
    ("", "data_dir"): (str, DEFAULT_DATA_DIR),
    ("server", "listen"): (str, DEFAULT_LISTEN),
    ("server", "log_format"): (str, "plain"),
    ("server", "log_level"): (str, "info"),
    ("server", "body_bytes_max"): (int, limits.http_body_bytes_max),
    ("server", "drain_grace_seconds"): (float, limits.http_drain_grace_seconds),
    ("server", "insecure_allow_unauthenticated"): (bool, False),
    ("server", "reader_threads"): (int, limits.reader_threads),
    # TLS: a PEM certificate chain and its key serve HTTPS; with a client CA, every
    # client (and replica) must present a certificate it signed.  Empty: plain HTTP.
    ("server", "tls_cert_file"): (str, ""),
    ("server", "tls_key_file"): (str, ""),
    ("server", "tls_client_ca_file"): (str, ""),
    ("wal", "dir"): (str, ""),
    ("wal", "fsync"): (str, "always"),
    ("wal", "fsync_interval_ms"): (int, limits.fsync_interval_ms_default),
    ("wal", "segment_size_bytes"): (int, limits.segment_size_bytes_default),
    ("wal", "log_fsync_errors"): (bool, False),
    ("wal", "disk_reserve_bytes"): (int, limits.disk_reserve_bytes_default),
    ("wal", "recovery_mode"): (str, "tolerate-torn-tail"),
    ("wal", "batch_records_max"): (int, limits.batch_records_max),
    ("wal", "batch_bytes_max"): (int, limits.batch_bytes_max),
    ("checkpoint", "wal_bytes"): (int, limits.checkpoint_wal_bytes_default),
    ("checkpoint", "interval_seconds"): (float, limits.checkpoint_interval_seconds_default),
    ("checkpoint", "replay_budget_seconds"): (float, limits.replay_budget_seconds_default),
    ("checkpoint", "backfill"): (bool, True),
    ("state", "page_cache_bytes"): (int, limits.state_page_cache_bytes_default),
    ("state", "max_apply_lag_bytes"): (int, limits.max_apply_lag_bytes_default),
    ("state", "apply_delay_ms"): (int, 0),
    ("read", "wait_timeout_ms"): (int, round(limits.read_wait_timeout_seconds_default * 1000)),
    ("idempotency", "ttl_seconds"): (float, limits.idempotency_ttl_seconds_default),
    ("archive", "url"): (str, ""),
    ("archive", "interval_seconds"): (float, limits.archive_interval_seconds_default),
    ("archive", "max_backlog_bytes"): (int, limits.archive_max_backlog_bytes_default),
    ("archive", "on_backlog_full"): (str, "refuse_writes"),
    ("archive", "encryption_key_file"): (str, ""),
    ("archive", "heartbeat_url"): (str, ""),
    ("archive", "heartbeat_interval_seconds"): (
        float, limits.archive_heartbeat_interval_seconds_default),
    ("backup", "interval_hours"): (float, limits.backup_interval_hours_default),
    ("backup", "drill_interval_hours"): (float, limits.backup_drill_interval_hours_default),
    ("backup", "retain_count"): (int, limits.backup_retain_count_default),
    ("backup", "retain_days"): (float, limits.backup_retain_days_default),
    ("auth", "tokens"): (list, []),
    # [cluster]: empty name = a node of its own (its own leader, no etcd).
    ("cluster", "name"): (str, ""),
    ("cluster", "node_name"): (str, ""),
    ("cluster", "advertise_url"): (str, ""),
    ("cluster", "etcd_endpoints"): (str, ""),
    ("cluster", "lease_ttl_seconds"): (int, 10),
    ("cluster", "synchronous_replicas"): (int, 0),
    ("cluster", "maximum_lag_on_failover_bytes"): (int, 1024 * 1024),
    ("cluster", "max_replica_lag_bytes"): (int, 1024 * 1024 * 1024),
    ("cluster", "replication_token"): (str, ""),
    ("cluster", "tls_ca_file"): (str, ""),
}
SECRET_KEYS = {("auth", "tokens"), ("cluster", "replication_token")}
SCOPES = ("read", "write", "admin", "replication")


@dataclass(frozen=True)
class Token:
    name: str
    token: str
    scopes: frozenset[str]


@dataclass(frozen=True)
class ClusterSettings:
    """``[cluster]``: membership of a cluster coordinated through etcd."""

    name: str
    node_name: str
    advertise_url: str
    etcd_endpoints: str
    lease_ttl_seconds: int
    synchronous_replicas: int
    maximum_lag_on_failover_bytes: int
    max_replica_lag_bytes: int
    replication_token: str
    tls_ca_file: str


SYNCHRONOUS_REPLICAS_MAX = 16  # [cluster] synchronous_replicas, replicas


@dataclass
class Config:
    values: dict[tuple[str, str], Any]
    source: str | None = None
    tokens: list[Token] = field(default_factory=list)

    def get(self, table: str, key: str) -> Any:
        return self.values[(table, key)]

    @property
    def data_dir(self) -> str:
        return str(self.values[("", "data_dir")])

    def cluster_settings(self) -> ClusterSettings | None:
        """``[cluster]`` checked, or None when the node runs alone (no ``name``)."""
        v = self.values
        name = str(v[("cluster", "name")])
        if not name:
            return None
        s = ClusterSettings(
            name=name, node_name=str(v[("cluster", "node_name")]),
            advertise_url=str(v[("cluster", "advertise_url")]).rstrip("/"),
            etcd_endpoints=str(v[("cluster", "etcd_endpoints")]),
            lease_ttl_seconds=int(v[("cluster", "lease_ttl_seconds")]),
            synchronous_replicas=int(v[("cluster", "synchronous_replicas")]),
            maximum_lag_on_failover_bytes=int(v[("cluster", "maximum_lag_on_failover_bytes")]),
            max_replica_lag_bytes=int(v[("cluster", "max_replica_lag_bytes")]),
            replication_token=str(v[("cluster", "replication_token")]),
            tls_ca_file=str(v[("cluster", "tls_ca_file")]))
        for key in ("name", "node_name"):
            value = getattr(s, key)
            if not value or not all(c.isalnum() or c in "-_." for c in value) \
                    or len(value) > 128:
                raise ConfigError(f"cluster.{key} must be 1 to 128 letters, digits, '-', '_' "
                                  f"or '.', got {value!r}")
        if not s.advertise_url.startswith(("http://", "https://")):
            raise ConfigError("cluster.advertise_url must be this node's URL as the other "
                              f"members reach it (http:// or https://), got "
                              f"{s.advertise_url!r}")
        if not s.etcd_endpoints:
            raise ConfigError("cluster.etcd_endpoints is required with cluster.name (a "
                              "comma-separated list of etcd URLs)")
        if not 2 <= s.lease_ttl_seconds <= 3600:
            raise ConfigError("cluster.lease_ttl_seconds must be 2 to 3600 seconds")
        if not 0 <= s.synchronous_replicas <= SYNCHRONOUS_REPLICAS_MAX:
            raise ConfigError(f"cluster.synchronous_replicas must be 0 to "
                              f"{SYNCHRONOUS_REPLICAS_MAX}")
        if s.maximum_lag_on_failover_bytes < 0:
            raise ConfigError("cluster.maximum_lag_on_failover_bytes must be >= 0")
        if s.max_replica_lag_bytes < 1024 * 1024:
            raise ConfigError("cluster.max_replica_lag_bytes must be at least 1 MiB")
        if self.tokens and not s.replication_token:
            raise ConfigError("cluster.replication_token is required when auth is on: "
                              "replicas present it (a token with the replication scope) "
                              "to the leader")
        return s

    def tls_context(self) -> ssl.SSLContext | None:
        """The server's TLS context from ``[server] tls_*``, or None for plain HTTP.

        Loaded (and so checked) when the configuration is: a missing or unreadable
        file, a key that does not match its certificate, or one of the pair without the
        other is a ConfigError at start, never a failure on the first connection.
        """
        cert = self.values[("server", "tls_cert_file")]
        key = self.values[("server", "tls_key_file")]
        client_ca = self.values[("server", "tls_client_ca_file")]
        if not cert and not key:
            if client_ca:
                raise ConfigError("server.tls_client_ca_file needs server.tls_cert_file "
                                  "and server.tls_key_file (client certificates are "
                                  "asked for over TLS only)")
            return None
        if not cert or not key:
            raise ConfigError("server.tls_cert_file and server.tls_key_file go together: "
                              "set both (or neither, for plain HTTP)")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load server.tls_cert_file {cert} with "
                              f"server.tls_key_file {key}: {exc}") from exc
        if client_ca:
            try:
                ctx.load_verify_locations(cafile=client_ca)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"cannot load server.tls_client_ca_file {client_ca}: "
                                  f"{exc}") from exc
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    @property
    def listen(self) -> tuple[str, int]:
        return parse_listen(self.values[("server", "listen")])

    def engine_config(self) -> EngineConfig:
        from .archive import ArchiveSettings
        from .backup import BackupSettings
        from .engine import EngineConfig  # the engine loads only when it is needed

        v = self.values
        cfg = EngineConfig(
            fsync=v[("wal", "fsync")],
            fsync_interval_ms=v[("wal", "fsync_interval_ms")],
            segment_size_bytes=v[("wal", "segment_size_bytes")],
            disk_reserve_bytes=v[("wal", "disk_reserve_bytes")],
            recovery_mode=v[("wal", "recovery_mode")],
            log_fsync_errors=v[("wal", "log_fsync_errors")],
            batch_records_max=v[("wal", "batch_records_max")],
            batch_bytes_max=v[("wal", "batch_bytes_max")],
            checkpoint_wal_bytes=v[("checkpoint", "wal_bytes")],
            checkpoint_interval_seconds=v[("checkpoint", "interval_seconds")],
            replay_budget_seconds=v[("checkpoint", "replay_budget_seconds")],
            sqlite_backfill=v[("checkpoint", "backfill")],
            idempotency_ttl_seconds=v[("idempotency", "ttl_seconds")],
            reader_threads=v[("server", "reader_threads")],
            wal_dir=v[("wal", "dir")],
            page_cache_bytes=v[("state", "page_cache_bytes")],
            max_apply_lag_bytes=v[("state", "max_apply_lag_bytes")],
            apply_delay_ms=v[("state", "apply_delay_ms")],
            archive=ArchiveSettings(
                url=v[("archive", "url")],
                interval_seconds=v[("archive", "interval_seconds")],
                max_backlog_bytes=v[("archive", "max_backlog_bytes")],
                on_backlog_full=v[("archive", "on_backlog_full")],
                encryption_key_file=v[("archive", "encryption_key_file")],
                heartbeat_url=v[("archive", "heartbeat_url")],
                heartbeat_interval_seconds=v[("archive", "heartbeat_interval_seconds")],
            ),
            backup=BackupSettings(
                interval_hours=v[("backup", "interval_hours")],
                drill_interval_hours=v[("backup", "drill_interval_hours")],
                retain_count=v[("backup", "retain_count")],
                retain_days=v[("backup", "retain_days")],
            ),
        )
        try:
            cfg.validate()
        except Exception as exc:
            raise ConfigError(f"invalid configuration: {exc}") from exc
        return cfg

    def effective(self) -> dict[str, Any]:
        """The effective configuration with secrets masked, for the start-up log."""
        out: dict[str, Any] = {}
        for (table, key), value in sorted(self.values.items()):
            shown = value
            if (table, key) == ("auth", "tokens"):
                shown = [{"name": t.name, "token": "***", "scopes": sorted(t.scopes)}
                         for t in self.tokens]
            elif (table, key) in SECRET_KEYS:
                shown = "***" if value else ""
            out[f"{table}.{key}" if table else key] = shown
        return out


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = str(text).rpartition(":")
    if not sep or not host:
        raise ConfigError(f"server.listen must be HOST:PORT, got {text!r}")
    try:
        p = int(port)
    except ValueError as exc:
        raise ConfigError(f"server.listen port must be a number, got {port!r}") from exc
    if not 0 <= p <= 65535:
        raise ConfigError(f"server.listen port out of range: {p}")
    return host.strip("[]"), p


def env_name(table: str, key: str) -> str:
    return f"STEMEDB_{table.upper()}_{key.upper()}" if table else f"STEMEDB_{key.upper()}"


def _coerce(table: str, key: str, typ: type, raw: Any, origin: str) -> Any:
    name = f"{table}.{key}" if table else key
    try:
        if typ is bool:
            if isinstance(raw, bool):
                return raw
            if isinstance(raw, str) and raw.lower() in ("1", "true", "yes", "on"):
                return True
            if isinstance(raw, str) and raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"expected true or false, got {raw!r}")
        if typ is list:
            if isinstance(raw, str):
                raw = json.loads(raw)
            if not isinstance(raw, list):
                raise ValueError("expected a list")
            return raw
        if typ is int and (isinstance(raw, (bool, float))):
            raise ValueError(f"expected an integer, got {raw!r}")
        if typ is str and not isinstance(raw, str):
            raise ValueError(f"expected a string, got {raw!r}")
        return typ(raw)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"invalid value for {name} (from {origin}): {exc}") from exc


def load_config(path: str | None = None, *, env: Mapping[str, str] | None = None,
                overrides: Mapping[tuple[str, str], Any] | None = None) -> Config:
    """Defaults, then the TOML file, then environment, then ``overrides`` (flags)."""
    env = os.environ if env is None else env
    values = {k: d for k, (_, d) in SCHEMA.items()}
    source = None
    if path is None and os.path.exists(DEFAULT_CONFIG_PATH):
        path = DEFAULT_CONFIG_PATH
    if path is not None:
        try:
            with open(path, "rb") as f:
                doc = tomllib.load(f)
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {path} not found") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
        source = path
        for k, v in doc.items():
            if isinstance(v, dict):
                for kk, vv in v.items():
                    if (k, kk) not in SCHEMA:
                        raise ConfigError(f"unknown config key {k}.{kk} in {path}")
                    values[(k, kk)] = _coerce(k, kk, SCHEMA[(k, kk)][0], vv, path)
            else:
                if ("", k) not in SCHEMA:
                    raise ConfigError(f"unknown config key {k} in {path}")
                values[("", k)] = _coerce("", k, SCHEMA[("", k)][0], v, path)
    for (table, key), (typ, _) in SCHEMA.items():
        name = env_name(table, key)
        if name in env:
            values[(table, key)] = _coerce(table, key, typ, env[name], name)
    for (table, key), v in (overrides or {}).items():
        if v is None:
            continue
        if (table, key) not in SCHEMA:
            raise ConfigError(f"unknown config key {table}.{key}")
        values[(table, key)] = _coerce(table, key, SCHEMA[(table, key)][0], v, "flag")
    cfg = Config(values=values, source=source, tokens=_tokens(values[("auth", "tokens")]))
    cfg.listen  # noqa: B018 - validates
    if values[("server", "log_format")] not in ("plain", "json"):
        raise ConfigError("server.log_format must be plain or json")
    if values[("read", "wait_timeout_ms")] < 1:
        raise ConfigError("read.wait_timeout_ms must be at least 1")
    cfg.tls_context()  # ConfigError naming the file or the mismatch
    cfg.cluster_settings()  # ConfigError naming the [cluster] key
    engine = cfg.engine_config()
    if engine.archive.encryption_key_file:
        from .archive import load_key

        load_key(engine.archive.encryption_key_file)  # ConfigError naming what is wrong
    return cfg


def _tokens(raw: list[Any]) -> list[Token]:
    out = []
    for i, t in enumerate(raw):
        if not isinstance(t, dict) or not isinstance(t.get("token"), str) or not t["token"]:
            raise ConfigError(f"auth.tokens[{i}] needs a non-empty token string")
        scopes = t.get("scopes", list(SCOPES))
        if not isinstance(scopes, list) or any(s not in SCOPES for s in scopes):
            raise ConfigError(f"auth.tokens[{i}].scopes must be a list of {', '.join(SCOPES)}")
        out.append(Token(str(t.get("name", f"token{i}")), t["token"], frozenset(scopes)))
    return out
