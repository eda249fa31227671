"""``stemedb wal verify | repair | dump`` and the runbook's ``stemedb-wal-verify`` and
``stemedb-wal-repair``.  Thin: parse flags, call :mod:`stemedb.tools`, print."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import click

from ..config import load_config
from ..errors import ConfigError
from ..tools import (
    DirRepairReport,
    Dump,
    DumpFilter,
    RepairReport,
    ToolError,
    VerifyReport,
    parse_time,
    repair_dir,
    repair_segment,
    verify_dir,
    verify_file,
)
from ..tools.dump import TYPE_NAMES, json_line

EXIT_CLEAN = 0
EXIT_FAULTS = 1
EXIT_USAGE = 2

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def fail(exc: ToolError | ConfigError | str) -> NoReturn:
    """Print an error with what to try next and exit 2."""
    if isinstance(exc, ToolError):
        click.echo(f"error: {exc.message}", err=True)
        if exc.hint:
            click.echo(f"Try: {exc.hint}", err=True)
    else:
        click.echo(f"error: {exc}", err=True)
    sys.exit(EXIT_USAGE)


def default_data_dir(config: str | None) -> str:
    try:
        return load_config(config).data_dir
    except ConfigError as exc:
        fail(exc)


def _dumps(doc: Any) -> str:
    return json.dumps(doc, indent=2, sort_keys=False)


@contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[int, int], None] | None]:
    """A byte progress bar on stderr when it is a terminal; nothing when piped."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

    with Progress("verifying", BarColumn(), DownloadColumn(), TimeRemainingColumn(),
                  console=Console(stderr=True), transient=True) as prog:
        task = prog.add_task("verify", total=None)

        def update(done: int, total: int) -> None:
            prog.update(task, completed=done, total=total)

        yield update


# -- verify --------------------------------------------------------------------------

def print_verify(report: VerifyReport) -> None:
    for seg in report.segments:
        rng = (f"LSN {seg.first_lsn}..{seg.end_lsn}" if seg.first_lsn is not None
               else "no records")
        state = "DAMAGED" if seg.damaged else "ok"
        click.echo(f"{seg.path}: {state}, {seg.records} records, {rng}")
    for f in report.faults:
        lsn = "-" if f.lsn is None else str(f.lsn)
        click.echo(f"FAULT {f.kind}: {f.path} offset {f.offset} LSN {lsn}: {f.reason}")
        if f.note:
            click.echo(f"  note: {f.note}")
        for i, cmd in enumerate(f.repair):
            click.echo(f"  {'repair:' if i == 0 else 'then:  '} {cmd}")
    for note in report.notes:
        click.echo(f"note: {note}")
    if report.applied_end_lsn is not None:
        click.echo(f"state: applied LSN {report.applied_end_lsn}, checkpoint LSN "
                   f"{report.checkpoint_lsn}, WAL end LSN {report.wal_end_lsn}")
    n = len(report.faults)
    if n:
        click.echo(f"verify: {n} fault(s) in {len(report.segments)} segment(s), "
                   f"{report.records} valid records; stop the server "
                   "(systemctl stop stemedb-api) before repairing")
    else:
        click.echo(f"verify: ok, {len(report.segments)} segment(s), {report.records} records")


@click.command("verify", context_settings=CONTEXT)
@click.option("--data-dir", "data_dir", type=click.Path(file_okay=False),
              help="Data directory (or its wal/ directory) to verify. Default: data_dir "
                   "from the config (./stemedb-data).")
@click.option("--file", "file", type=click.Path(dir_okay=False),
              help="Verify this one segment file instead.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report. Default: text.")
@click.option("--config", type=click.Path(dir_okay=False),
              help="Config file for the default data_dir. Default: /etc/stemedb/api.toml "
                   "when present.")
def wal_verify_command(data_dir: str | None, file: str | None, as_json: bool,
                       config: str | None) -> None:
    """Check WAL segments: headers, every record's CRC, LSN continuity within and across
    segments, the segment chain, and (for a directory) that the state's applied LSN
    lies inside the WAL.

    Prints each fault as segment, offset, LSN and kind (torn_tail, corrupt_record,
    gap, bad_header, missing_segment) with the repair command to run. A torn tail
    is still a fault (exit 1), but benign: the server cuts it by itself on start.

    Exit codes: 0 clean, 1 faults found, 2 usage or I/O error.

    \b
    Examples:
      stemedb wal verify --data-dir /var/lib/stemedb
      stemedb-wal-verify --file /var/lib/stemedb/wal/segment.001.wal
      cd /var/lib/stemedb/wal
      for segment in segment.*.wal; do
        stemedb-wal-verify --file $segment || echo "ERROR: $segment corrupted"
      done
    """
    if data_dir and file:
        fail(ToolError("pass --data-dir or --file, not both",
                       hint="stemedb wal verify --file <segment>"))
    try:
        if file:
            report = verify_file(file)
        else:
            target = data_dir or default_data_dir(config)
            with _progress(not as_json) as progress:
                report = verify_dir(target, progress=progress)
    except ToolError as exc:
        fail(exc)
    if as_json:
        click.echo(_dumps(report.as_dict()))
    else:
        print_verify(report)
    sys.exit(report.exit_code)


# -- repair --------------------------------------------------------------------------

def print_repair(r: RepairReport) -> None:
    verb = "would write" if r.dry_run else "wrote"
    click.echo(f"repair: {verb} {r.output} from {r.input}")
    click.echo(f"  cut at offset {r.truncate_at} (LSN {r.base_lsn + r.truncate_at}); "
               f"last valid record ends at offset {r.last_valid_offset}")
    if r.damage:
        click.echo(f"  damage at offset {r.damage['offset']} (LSN {r.damage['lsn']}): "
                   f"{r.damage['reason']}")
    click.echo(f"  records kept: {r.records_kept} (last LSN {r.last_kept_lsn})")
    click.echo(f"  bytes cut: {r.bytes_cut}")
    click.echo(f"  first lost LSN: {r.first_lost_lsn if r.first_lost_lsn is not None else '-'}")
    if r.lost.records:
        click.echo(f"  readable records lost: {r.lost.records} (LSN {r.lost.first_lsn}.."
                   f"{r.lost.last_lsn}); they stay in {r.backup}")
    click.echo(f"  original kept unchanged at: {r.backup}")
    if r.output_verified is not None:
        click.echo(f"  output verifies: {'yes' if r.output_verified else 'NO'}")
    for w in r.warnings:
        click.echo(f"  warning: {w}")


def print_dir_repair(r: DirRepairReport) -> None:
    if r.clean:
        click.echo(f"repair: {r.wal_dir} verifies clean; nothing to do")
        return
    head = "repair plan (dry run, nothing changed)" if r.dry_run else "repair done"
    click.echo(f"{head}: {r.wal_dir}")
    if r.segment_repair is not None:
        s = r.segment_repair
        click.echo(f"  cut {r.cut_segment} at offset {s.truncate_at}: {s.records_kept} records "
                   f"kept, {s.bytes_cut} bytes cut; original "
                   f"{'to be moved' if r.dry_run else 'moved'} to {s.backup}")
    for q in r.quarantined:
        lost = q["lost_records"]
        click.echo(f"  quarantine {q['from']} -> {q['to']} ({lost['records']} readable records)")
    first = r.first_lost_lsn if r.first_lost_lsn is not None else "-"
    click.echo(f"  lost: {r.lost.records} readable record(s), first lost LSN {first}, "
               f"last {r.lost.last_lsn if r.lost.last_lsn is not None else '-'}")
    click.echo(f"  WAL ends at LSN {r.wal_end_lsn} after the repair")
    for u in r.unrepairable:
        click.echo(f"  not repairable by cutting: {u}")
    for w in r.warnings:
        click.echo(f"  warning: {w}")
    if r.verified_after is not None:
        click.echo(f"  verify after repair: {'clean' if r.verified_after else 'NOT clean'}")
    if r.dry_run:
        click.echo(f"  to apply: stemedb wal repair --data-dir {r.wal_dir}")


def _parse_offset(text: str | None) -> int | None:
    if text is None or text.strip().lower() in ("", "last", "end"):
        return None
    try:
        value = int(text, 0)
    except ValueError:
        fail(ToolError(f"--truncate-at wants a byte offset, got {text!r}",
                       hint="--truncate-at 4096, or --truncate-at with no value for the end "
                            "of the last valid record"))
    if value < 0:
        fail(ToolError("--truncate-at must not be negative"))
    return value


@click.command("repair", context_settings=CONTEXT)
@click.option("--segment", "segment", type=click.Path(dir_okay=False),
              help="The damaged segment to read (never modified).")
@click.option("--output", "output", type=click.Path(dir_okay=False),
              help="Where to write the repaired segment (must not exist, unless --force).")
@click.option("--truncate-at", "truncate_at", type=str, is_flag=False, flag_value="",
              default=None, metavar="[OFFSET]",
              help="Byte offset to cut at, on a record boundary. With no value (or left "
                   "out): the end of the last valid record.")
@click.option("--data-dir", "data_dir", type=click.Path(file_okay=False),
              help="Whole-directory mode: cut the WAL at its first fault and quarantine "
                   "the segments after it as *.corrupted.")
@click.option("--dry-run", is_flag=True, help="Report what would happen; change nothing.")
@click.option("--force", is_flag=True,
              help="Overwrite an existing --output; accept a --truncate-at past the last "
                   "valid record (keeps damaged bytes).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report. Default: text.")
def wal_repair_command(segment: str | None, output: str | None, truncate_at: str | None,
                       data_dir: str | None, dry_run: bool, force: bool,
                       as_json: bool) -> None:
    """Copy a damaged segment up to its last valid record (or OFFSET) into a new,
    valid segment. The input is never modified; the output is written to a
    temporary name, fdatasynced and renamed. Prints records kept, bytes cut and the
    first lost LSN. Stop the server first.

    With --data-dir: cut the whole WAL at its first fault - the damaged segment is
    moved to <segment>.corrupted and its repaired copy takes its name - and move
    every later segment to <segment>.corrupted (nothing is deleted), then say what
    was lost.

    Exit codes: 0 repaired (or planned, with --dry-run), 2 refused, usage or I/O error.

    \b
    Examples (the runbook's flow):
      systemctl stop stemedb-api
      mv /var/lib/stemedb/wal/segment.001.wal \\
         /var/lib/stemedb/wal/segment.001.wal.corrupted
      stemedb-wal-repair \\
        --segment /var/lib/stemedb/wal/segment.001.wal.corrupted \\
        --output /var/lib/stemedb/wal/segment.001.wal \\
        --truncate-at
      systemctl start stemedb-api
    \b
      stemedb wal repair --data-dir /var/lib/stemedb --dry-run
    """
    try:
        if data_dir:
            if segment or output or truncate_at is not None:
                fail(ToolError("--data-dir repairs the whole WAL; it takes no --segment, "
                               "--output or --truncate-at",
                               hint=f"stemedb wal repair --data-dir {data_dir} --dry-run"))
            dr = repair_dir(data_dir, dry_run=dry_run)
            if as_json:
                click.echo(_dumps(dr.as_dict()))
            else:
                print_dir_repair(dr)
            sys.exit(EXIT_CLEAN)
        if not segment or not output:
            fail(ToolError("--segment and --output are required (or --data-dir)",
                           hint="stemedb-wal-repair --segment <damaged> --output <new> "
                                "--truncate-at"))
        r = repair_segment(segment, output, _parse_offset(truncate_at), force=force,
                           dry_run=dry_run)
    except ToolError as exc:
        fail(exc)
    except OSError as exc:
        fail(ToolError(f"{exc}", hint="check permissions and free space (df -h)"))
    if as_json:
        click.echo(_dumps(r.as_dict()))
    else:
        print_repair(r)
    sys.exit(EXIT_CLEAN)


# -- dump ----------------------------------------------------------------------------

def _split(values: tuple[str, ...]) -> frozenset[str]:
    return frozenset(v.strip() for item in values for v in item.split(",") if v.strip())


@click.command("dump", context_settings=CONTEXT)
@click.option("--data-dir", "data_dir", type=click.Path(file_okay=False),
              help="Data directory (or its wal/). Default: data_dir from the config.")
@click.option("--file", "file", type=click.Path(dir_okay=False),
              help="Dump this one segment file instead.")
@click.option("--from-lsn", type=int, default=None, help="First LSN (inclusive). Default: "
              "the start.")
@click.option("--to-lsn", type=int, default=None, help="Last LSN (inclusive). Default: the "
              "end.")
@click.option("--type", "types", multiple=True, metavar="TYPE",
              help=f"Only these record types ({', '.join(TYPE_NAMES)}); repeat or "
                   "comma-separate. Default: all.")
@click.option("--author", "authors", multiple=True, metavar="NAME",
              help="Only records by this author or voter; repeat or comma-separate.")
@click.option("--since", default=None, metavar="TIME",
              help="Only records written at or after TIME (RFC 3339, a date, or unix "
                   "seconds; UTC when no zone).")
@click.option("--until", default=None, metavar="TIME",
              help="Only records written before TIME.")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object per line (every field). Default: text.")
@click.option("--config", type=click.Path(dir_okay=False),
              help="Config file for the default data_dir.")
def wal_dump_command(data_dir: str | None, file: str | None, from_lsn: int | None,
                     to_lsn: int | None, types: tuple[str, ...], authors: tuple[str, ...],
                     since: str | None, until: str | None, as_json: bool,
                     config: str | None) -> None:
    """Print WAL records, one line each: LSN, time, type, author or voter, content -
    who wrote what, and when.

    Exit codes: 0 done, 1 some of the WAL was unreadable (reported on stderr after
    every readable record), 2 usage or I/O error.

    \b
    Examples:
      stemedb wal dump --data-dir /var/lib/stemedb --author alice --since 2025-11-25
      stemedb wal dump --file segment.003.wal --type vote --json | jq .authors
      stemedb wal dump --from-lsn 4096 --to-lsn 8192
    """
    if data_dir and file:
        fail(ToolError("pass --data-dir or --file, not both"))
    wanted = _split(types)
    unknown = sorted(wanted - set(TYPE_NAMES))
    if unknown:
        fail(ToolError(f"unknown record type(s): {', '.join(unknown)}",
                       hint=f"one of {', '.join(TYPE_NAMES)}"))
    try:
        flt = DumpFilter(from_lsn=from_lsn, to_lsn=to_lsn, types=wanted,
                         authors=_split(authors),
                         since_unix=None if since is None else parse_time(since),
                         until_unix=None if until is None else parse_time(until))
        d = (Dump.of_file(file, flt) if file
             else Dump.of_dir(data_dir or default_data_dir(config), flt))
        out = sys.stdout
        try:
            for rec in d.records():
                out.write((json_line(rec) if as_json else rec.text_line()) + "\n")
            out.flush()
        except BrokenPipeError:  # `stemedb wal dump | head`
            sys.stderr.close()
            sys.exit(EXIT_CLEAN)
    except ToolError as exc:
        fail(exc)
    if d.damage:
        for line in d.damage:
            click.echo(f"warning: unreadable WAL: {line}", err=True)
        click.echo("Try: stemedb wal verify for the fault report and the repair command",
                   err=True)
        sys.exit(EXIT_FAULTS)
    sys.exit(EXIT_CLEAN)


@click.group(context_settings=CONTEXT)
def wal() -> None:
    """WAL tools: verify, repair and dump segments.

    \b
    Example:
      stemedb wal verify --data-dir /var/lib/stemedb
    """


wal.add_command(wal_verify_command, "verify")
wal.add_command(wal_repair_command, "repair")
wal.add_command(wal_dump_command, "dump")
