"""``stemedb backup``: base backups, restore, verify, drill, expire and list.  Thin:
each command opens the archive and calls :mod:`stemedb.backup` (``create`` asks the
running server), then prints."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Callable
from typing import Any, TypeVar

import click

from .. import limits
from ..archive import ArchiveKey, ArchiveReader, Target, load_key, open_target
from ..config import load_config
from ..errors import ArchiveError, ConfigError, InvalidInput, StemeError
from ._http import DEFAULT_SERVER, call_server

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
EXIT_OK = 0
EXIT_FAULT = 1  # a gap, a damaged object, an unreachable target, a failed drill
EXIT_GAPS = EXIT_FAULT
EXIT_USAGE = 2
F = TypeVar("F", bound=Callable[..., Any])


@click.group("backup", context_settings=CONTEXT)
def backup() -> None:
    """Archives: the WAL and the base backups the server ships to file:// or s3://
    ([archive] url), and restoring from them.

    Example: stemedb backup list --from s3://backups/stemedb
    """


def _from(fn: F) -> F:
    fn = click.option("--from", "url", required=True, metavar="ARCHIVE_URL",
                      help="The archive: file:///path or s3://bucket/prefix (endpoint, "
                           "region and credentials from the AWS_* variables and ~/.aws "
                           "files). Required.")(fn)
    return fn


def _key_option(fn: F) -> F:
    fn = click.option("--encryption-key-file", "key_file", default=None,
                      envvar="STEMEDB_ARCHIVE_ENCRYPTION_KEY_FILE",
                      help="The archive's key ([archive] encryption_key_file) when its "
                           "objects are encrypted. Default: none (or "
                           "STEMEDB_ARCHIVE_ENCRYPTION_KEY_FILE).")(fn)
    return fn


def _json_option(fn: F) -> F:
    fn = click.option("--json", "as_json", is_flag=True,
                      help="Print a JSON document. Default: text.")(fn)
    return fn


def _fail(exc: StemeError, default_hint: str = "check the URL and the AWS_* variables"
          ) -> None:
    click.echo(f"error: {exc.message}", err=True)
    click.echo(f"Try: {exc.hint or default_hint}", err=True)
    sys.exit(EXIT_USAGE)


def _open(url: str, key_file: str | None) -> tuple[Target, ArchiveKey | None]:
    try:
        key = load_key(key_file) if key_file else None
        return open_target(url), key
    except (ArchiveError, InvalidInput, ConfigError) as exc:
        _fail(exc)
        raise  # not reached


def _echo_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2, default=str))


# -- list -------------------------------------------------------------------------

@backup.command("list", context_settings=CONTEXT)
@_from
@_json_option
def backup_list(url: str, as_json: bool) -> None:
    """List the base backups (id, time, LSN range, size) and the WAL ranges an
    archive holds, per timeline, and every gap: LSNs that no object holds (inside a
    timeline, or between two when WAL was dropped under on_backlog_full = "drop").

    Objects are listed, not downloaded: `stemedb backup verify` is what checks their
    contents.

    Exit codes: 0 the WAL chain has no gap, 1 a gap, an overlap or a damaged manifest
    was found, 2 usage or archive error.

    \b
    Examples:
      stemedb backup list --from file:///var/backups/stemedb
      AWS_ENDPOINT_URL=http://127.0.0.1:9000 stemedb backup list --from s3://b/p --json
    """
    from ..backup import read_catalog

    target, _ = _open(url, None)
    try:
        chains = ArchiveReader(target).summary()
        catalog = read_catalog(target)
    except (ArchiveError, InvalidInput) as exc:
        _fail(exc)
        return
    faults = sum(len(c.gaps) + len(c.overlaps) for c in chains) + len(catalog.faults)
    if as_json:
        _echo_json({"url": url, "backups": [b.summary() for b in catalog.backups],
                    "damaged_manifests": [str(f.message) for f in catalog.faults],
                    "timelines": [c.as_dict() for c in chains],
                    "gaps": [g.as_dict() for c in chains for g in c.gaps]})
        sys.exit(EXIT_GAPS if faults else EXIT_OK)
    click.echo(f"archive {url}")
    if not catalog.backups:
        click.echo("base backups: none")
    else:
        click.echo(f"base backups: {len(catalog.backups)}")
    for b in catalog.backups:
        s = b.summary()
        click.echo(f"  {b.id}  timeline {b.timeline}  LSN {b.start_lsn}..{b.end_lsn}  "
                   f"{s['size_bytes']} bytes ({s['stored_bytes']} stored)"
                   f"{'  encrypted' if b.encrypted else ''}")
    for f in catalog.faults:
        click.echo(f"  DAMAGED {f.message}")
    if not chains:
        click.echo("WAL: none")
    for c in chains:
        click.echo(f"timeline {c.timeline}: {len(c.objects)} object(s)")
        for g in c.gaps:
            click.echo(f"  GAP LSN {g.start_lsn}..{g.end_lsn} ({g.end_lsn - g.start_lsn} "
                       f"bytes): {g.why}")
        for s0, e0 in c.ranges:
            click.echo(f"  WAL LSN {s0}..{e0}")
        for name in c.overlaps:
            click.echo(f"  OVERLAP {name} covers LSNs another object covers")
    click.echo(f"list: {faults} gap(s), overlap(s) or damaged manifest(s)" if faults
               else "list: no gap")
    sys.exit(EXIT_GAPS if faults else EXIT_OK)


# -- create -------------------------------------------------------------------------

@backup.command("create", context_settings=CONTEXT)
@click.option("--server", default=DEFAULT_SERVER, envvar="STEMEDB_SERVER", show_default=True,
              help="The running server to ask (or STEMEDB_SERVER).")
@click.option("--token", default=None, envvar="STEMEDB_TOKEN",
              help="Bearer token with the admin scope when auth is on (or STEMEDB_TOKEN).")
@click.option("--timeout-seconds", default=3600.0, show_default=True, type=float,
              help="How long to wait for the backup to be stored.")
@_json_option
def backup_create(server: str, token: str | None, timeout_seconds: float,
                  as_json: bool) -> None:
    """Ask the running server for a base backup now (POST /v1/admin/backup) and
    print its id and LSN once it is stored and read back.

    Exit codes: 0 stored, 1 the server or the archive refused, 2 usage or connection.

    \b
    Example:
      stemedb backup create --server http://127.0.0.1:18180
    """
    body = call_server(server, "POST", "/v1/admin/backup", token=token,
                       timeout_seconds=timeout_seconds, ok=201)
    if as_json:
        _echo_json(body)
    else:
        click.echo(f"base backup {body['id']}: timeline {body['timeline']}, consistent at "
                   f"LSN {body['lsn']}, {body.get('size_bytes')} bytes")


# -- restore --------------------------------------------------------------------------

@backup.command("restore", context_settings=CONTEXT)
@_from
@click.option("--data-dir", "data_dir", required=True, type=click.Path(file_okay=False),
              help="Where to restore: a directory that is absent or empty (or that holds "
                   "a restore that did not finish). Required.")
@click.option("--backup", "backup_id", default=None,
              help="The base backup to start from. Default: the newest one that precedes "
                   "the target.")
@click.option("--to-time", default=None, metavar="RFC3339",
              help="Every record committed at or before this time (e.g. "
                   "2026-12-04T05:00:00Z).")
@click.option("--to-lsn", type=int, default=None, metavar="N",
              help="Every record whose LSN is below N (a write's lsn: the state just "
                   "before it).")
@click.option("--to-epoch", type=int, default=None, metavar="N",
              help="Every record up to and including the seal of epoch N.")
@click.option("--segment-size-bytes", type=int, default=limits.segment_size_bytes_default,
              envvar="STEMEDB_WAL_SEGMENT_SIZE_BYTES", show_default=True,
              help="Size of the restored node's first WAL segment ([wal] "
                   "segment_size_bytes).")
@_key_option
@_json_option
def backup_restore(url: str, data_dir: str, backup_id: str | None, to_time: str | None,
                   to_lsn: int | None, to_epoch: int | None, segment_size_bytes: int,
                   key_file: str | None, as_json: bool) -> None:
    """Restore a base backup and replay the archived WAL up to a target (default: the
    newest archived record), into a data directory that `stemedb serve` starts on.

    The restored node continues on a new timeline, claimed in the archive now (its
    history object), so its own archiving never writes where the old history is.
    Targets follow the newest timeline and its ancestors.

    Exit codes: 0 restored, 1 the target cannot be reached (the furthest reachable
    point is printed) or an object is damaged (named), 2 usage or archive error.
    Nothing is left in DIR unless the restore succeeded.

    \b
    Examples:
      stemedb backup restore --from s3://b/p --data-dir /var/lib/stemedb-new
      stemedb backup restore --from file:///backups/db --data-dir ./r --to-time 2026-12-04T05:00:00Z
      stemedb backup restore --from file:///backups/db --data-dir ./r --to-epoch 12
    """
    from ..backup import RestoreTarget, TargetNotReached, restore
    from ..engine import parse_rfc3339
    from ..errors import ArchiveCorruption

    target, key = _open(url, key_file)
    try:
        to_unix = None
        if to_time is not None:
            try:
                to_unix = parse_rfc3339(to_time.replace("+00:00", "Z"))
            except ValueError as exc:
                raise InvalidInput(f"--to-time must be RFC 3339 in UTC, like "
                                   f"2026-12-04T05:00:00Z: {exc}") from exc
        to = RestoreTarget(lsn=to_lsn, time_unix=to_unix, time_text=to_time, epoch=to_epoch)
        if not 1 << 16 <= segment_size_bytes <= 1 << 40:
            raise InvalidInput("--segment-size-bytes is out of range")
        report = restore(target, data_dir, key=key, to=to, backup_id=backup_id,
                         segment_size_bytes=segment_size_bytes)
    except TargetNotReached as exc:
        click.echo(f"error: {exc.message}", err=True)
        click.echo(f"Try: {exc.hint}", err=True)
        if as_json:
            _echo_json({"restored": False, "error": exc.message, **exc.report.__dict__})
        sys.exit(EXIT_FAULT)
    except ArchiveCorruption as exc:
        click.echo(f"error: {exc.message}; nothing was restored", err=True)
        click.echo(f"Try: {exc.hint}; or an older --backup / an earlier target", err=True)
        sys.exit(EXIT_FAULT)
    except (ArchiveError, InvalidInput, ConfigError) as exc:
        _fail(exc)
        return
    if as_json:
        _echo_json({"restored": True, **report.__dict__})
        return
    click.echo(f"restored backup {report.backup['id']} (timeline {report.backup['timeline']},"
               f" LSN {report.backup['end_lsn']}) and {report.records} WAL record(s) from "
               f"{report.objects} object(s) into {data_dir}")
    click.echo(f"target: {report.target}; the state ends at {report.furthest()}")
    click.echo(f"the restored node continues on timeline {report.timeline}; start it with: "
               f"stemedb serve --data-dir {data_dir}")


# -- verify ---------------------------------------------------------------------------

@backup.command("verify", context_settings=CONTEXT)
@_from
@click.option("--backup", "backup_id", default=None,
              help="Check this base backup and its chain only. Default: every backup.")
@_key_option
@_json_option
def backup_verify(url: str, backup_id: str | None, key_file: str | None,
                  as_json: bool) -> None:
    """Download and check every object (manifests, backup parts, WAL objects: sizes,
    SHA-256, decryption, every WAL record's CRC-32C), and the WAL chain from the base
    backups to the newest record.

    A gap after the newest base backup is a fault (WAL dropped under on_backlog_full =
    "drop", or lost) until a newer base backup covers it.

    Exit codes: 0 no fault, 1 faults (each named: object, LSN range), 2 usage or
    archive error.

    \b
    Example:
      stemedb backup verify --from s3://backups/stemedb \
          --encryption-key-file /etc/stemedb/archive.key
    """
    from ..backup import verify_archive

    target, key = _open(url, key_file)
    try:
        report = verify_archive(target, key, backup_id)
    except (ArchiveError, InvalidInput) as exc:
        _fail(exc)
        return
    if as_json:
        _echo_json(report.as_dict())
        sys.exit(EXIT_OK if report.ok else EXIT_FAULT)
    click.echo(f"archive {url}: {len(report.backups)} base backup(s), {report.parts} "
               f"part(s), {report.wal_objects} WAL object(s); newest record: timeline "
               f"{report.newest_timeline}, LSN {report.newest_lsn}")
    for b in report.backups:
        click.echo(f"  backup {b['id']} (timeline {b['timeline']}, LSN {b['end_lsn']}): "
                   f"{'ok' if b['ok'] else 'DAMAGED'}, reaches LSN {b.get('reaches_lsn')}")
    for n in report.notes:
        click.echo(f"  note: {n}")
    for f in report.faults:
        click.echo(f"  FAULT {f}")
    click.echo("verify: ok" if report.ok else f"verify: {len(report.faults)} fault(s)")
    sys.exit(EXIT_OK if report.ok else EXIT_FAULT)


# -- drill ----------------------------------------------------------------------------

@backup.command("drill", context_settings=CONTEXT)
@_from
@click.option("--scratch-dir", default=None, type=click.Path(file_okay=False),
              help="Where the scratch restore goes (removed after). Default: the system's "
                   "temporary directory.")
@_key_option
@_json_option
def backup_drill(url: str, scratch_dir: str | None, key_file: str | None,
                 as_json: bool) -> None:
    """Restore the newest base backup into a scratch directory, replay the archive to
    its newest record, check the result (every sealed epoch's digest recomputed from
    its results, dense assertion ids, result counts), report, clean up.

    Exit codes: 0 the drill passed, 1 it failed (why is printed), 2 usage error.

    \b
    Example:
      stemedb backup drill --from s3://backups/stemedb
    """
    from ..backup import run_drill

    target, key = _open(url, key_file)
    report = run_drill(target, key, scratch_dir or tempfile.gettempdir())
    if as_json:
        _echo_json(report.as_dict())
    else:
        if report.passed:
            click.echo(f"drill passed: backup {report.backup} restored and replayed to LSN "
                       f"{report.lsn} ({report.records_replayed} records), "
                       f"{report.epochs_checked} sealed epoch(s) checked in "
                       f"{report.seconds}s")
        else:
            click.echo("drill FAILED:", err=True)
            for p in report.problems:
                click.echo(f"  {p}", err=True)
    sys.exit(EXIT_OK if report.passed else EXIT_FAULT)


# -- expire ---------------------------------------------------------------------------

@backup.command("expire", context_settings=CONTEXT)
@_from
@click.option("--dry-run", is_flag=True, help="Say what would be removed; remove nothing.")
@click.option("--retain-count", type=int, default=None,
              help="Keep at least the newest N backups. Default: [backup] retain_count "
                   f"({limits.backup_retain_count_default}).")
@click.option("--retain-days", type=float, default=None,
              help="Keep every backup younger than this. Default: [backup] retain_days "
                   f"({limits.backup_retain_days_default}).")
@click.option("--config", type=click.Path(dir_okay=False),
              help="Config file for the [backup] keys. Default: /etc/stemedb/api.toml "
                   "when present.")
@_json_option
def backup_expire(url: str, dry_run: bool, retain_count: int | None,
                  retain_days: float | None, config: str | None, as_json: bool) -> None:
    """Apply retention: remove base backups past both retain_count and retain_days
    (never the newest), then the WAL objects no kept backup needs.

    Needs delete permission on the archive (s3:DeleteObject), which the server's
    archiver does not. Exit codes: 0 done, 2 usage or archive error.

    \b
    Example:
      stemedb backup expire --from s3://backups/stemedb --dry-run
    """
    from ..backup import BackupSettings, expire

    target, _ = _open(url, None)
    try:
        overrides: dict[tuple[str, str], Any] = {("backup", "retain_count"): retain_count,
                                                 ("backup", "retain_days"): retain_days}
        cfg = load_config(config, env=os.environ, overrides=overrides)
        settings = BackupSettings(retain_count=cfg.get("backup", "retain_count"),
                                  retain_days=cfg.get("backup", "retain_days"))
        settings.validate()
        report = expire(target, settings, dry_run=dry_run)
    except (ArchiveError, InvalidInput, ConfigError) as exc:
        _fail(exc)
        return
    if as_json:
        _echo_json(report.as_dict())
        return
    verb = "would remove" if dry_run else "removed"
    click.echo(f"kept {len(report.kept)} backup(s): {', '.join(report.kept) or '-'}")
    click.echo(f"{verb} {len(report.expired)} backup(s): {', '.join(report.expired) or '-'}")
    click.echo(f"{verb} {len(report.wal_objects_removed)} WAL object(s) no kept backup "
               f"needs")
