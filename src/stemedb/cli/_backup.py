"""``stemedb backup list``: what an archive holds.  Thin: open the archive, ask
:class:`stemedb.archive.ArchiveReader`, print."""

from __future__ import annotations

import json
import sys

import click

from ..archive import ArchiveReader, open_target
from ..errors import ArchiveError, InvalidInput

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
EXIT_OK = 0
EXIT_GAPS = 1
EXIT_USAGE = 2


@click.group("backup", context_settings=CONTEXT)
def backup() -> None:
    """Archives: the WAL the server ships to file:// or s3:// ([archive] url).

    Example: stemedb backup list --from s3://backups/stemedb
    """


@backup.command("list", context_settings=CONTEXT)
@click.option("--from", "url", required=True, metavar="ARCHIVE_URL",
              help="The archive: file:///path or s3://bucket/prefix (endpoint, region and "
                   "credentials from the AWS_* variables and ~/.aws files). Required.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON document. Default: text.")
def backup_list(url: str, as_json: bool) -> None:
    """List the base backups and the WAL ranges an archive holds, per timeline, and
    every gap: LSNs that no object holds (inside a timeline, or between two when WAL
    was dropped under on_backlog_full = "drop").

    Objects are listed, not downloaded: `stemedb backup verify` (not built yet) is
    what checks their contents.

    Exit codes: 0 the WAL chain has no gap, 1 a gap or overlap was found, 2 usage
    or archive error.

    \b
    Examples:
      stemedb backup list --from file:///var/backups/stemedb
      AWS_ENDPOINT_URL=http://127.0.0.1:9000 stemedb backup list --from s3://b/p --json
    """
    try:
        chains = ArchiveReader(open_target(url)).summary()
    except (ArchiveError, InvalidInput) as exc:
        click.echo(f"error: {exc.message}", err=True)
        click.echo(f"Try: {exc.hint or 'check the URL and the AWS_* variables'}", err=True)
        sys.exit(EXIT_USAGE)
    faults = sum(len(c.gaps) + len(c.overlaps) for c in chains)
    if as_json:
        click.echo(json.dumps({"url": url, "backups": [],
                               "timelines": [c.as_dict() for c in chains],
                               "gaps": [g.as_dict() for c in chains for g in c.gaps]},
                              indent=2))
        sys.exit(EXIT_GAPS if faults else EXIT_OK)
    click.echo(f"archive {url}")
    click.echo("base backups: none")
    if not chains:
        click.echo("WAL: none")
    for c in chains:
        click.echo(f"timeline {c.timeline}: {len(c.objects)} object(s)")
        for g in c.gaps:
            click.echo(f"  GAP LSN {g.start_lsn}..{g.end_lsn} ({g.end_lsn - g.start_lsn} "
                       f"bytes): {g.why}")
        for s, e in c.ranges:
            click.echo(f"  WAL LSN {s}..{e}")
        for name in c.overlaps:
            click.echo(f"  OVERLAP {name} covers LSNs another object covers")
    click.echo(f"list: {faults} gap(s) or overlap(s)" if faults else "list: no gap")
    sys.exit(EXIT_GAPS if faults else EXIT_OK)
