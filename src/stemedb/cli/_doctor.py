"""``stemedb doctor``: thin wrapper over :func:`stemedb.tools.run_doctor`."""

from __future__ import annotations

import json
import os
import sys

import click

from ..config import load_config
from ..errors import ConfigError
from ..tools import run_doctor

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
LABELS = {"ok": "OK", "info": "INFO", "warning": "WARNING", "critical": "CRITICAL"}
COLORS = {"ok": "green", "info": "blue", "warning": "yellow", "critical": "red"}


@click.command("doctor", context_settings=CONTEXT)
@click.option("--data-dir", "data_dir", type=click.Path(file_okay=False),
              help="The server's data directory. Default: data_dir from the config "
                   "(./stemedb-data).")
@click.option("--url", default=None,
              help="Also ask the live server (e.g. http://localhost:18180): fsync errors, "
                   "fenced writes, readiness, status. Default: not asked.")
@click.option("--token", default=None, envvar="STEMEDB_TOKEN",
              help="Bearer token for /v1/admin/status when auth is on (or STEMEDB_TOKEN).")
@click.option("--disk-reserve-bytes", type=int, default=None,
              help="Free space under which the server refuses writes. Default: [wal] "
                   "disk_reserve_bytes from the config (256 MiB).")
@click.option("--config", type=click.Path(dir_okay=False),
              help="Config file. Default: /etc/stemedb/api.toml when present.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON document. Default: text.")
def doctor(data_dir: str | None, url: str | None, token: str | None,
           disk_reserve_bytes: int | None, config: str | None, as_json: bool) -> None:
    """Run the runbook's investigation steps and say what was found.

    Checks free space and inodes of the WAL filesystem, a write test (read-only
    filesystem), mount options, an fsync latency probe (64 x 4 KiB writes, each
    fdatasynced: p50/p99), storage errors in the kernel log, WAL verify, replay
    debt and the estimated restart time, checkpoint age, holds that stopped moving -
    and with --url the live server's fsync errors, fenced state and readiness.
    Works with the server running or stopped.

    Each finding has a severity (ok, info, warning, critical) and the runbook to
    follow. Exit codes: 0 when the worst finding is ok or info, 1 warning,
    2 critical (or a usage error).

    \b
    Examples:
      stemedb doctor --data-dir /var/lib/stemedb
      stemedb doctor --data-dir /var/lib/stemedb --url http://localhost:18180 --json
    """
    try:
        cfg = load_config(config)
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        click.echo("Try: --config with a valid file, or fix /etc/stemedb/api.toml", err=True)
        sys.exit(2)
    reserve = (disk_reserve_bytes if disk_reserve_bytes is not None
               else int(cfg.get("wal", "disk_reserve_bytes")))
    report = run_doctor(data_dir or cfg.data_dir, url, reserve_bytes=reserve, token=token)
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
        sys.exit(report.exit_code)
    color = sys.stdout.isatty() and "NO_COLOR" not in os.environ
    click.echo(f"stemedb doctor: data dir {report.data_dir}"
               + (f" (WAL {report.wal_dir})" if report.wal_dir else "")
               + (f", server {url}" if url else ""))
    for f in report.findings:
        label = f"{LABELS[f.severity]:<8}"
        if color:
            label = click.style(label, fg=COLORS[f.severity], bold=f.severity == "critical")
        click.echo(f"{label}  {f.check:<20} {f.summary}")
        if f.detail and f.severity != "ok":
            for line in f.detail.splitlines():
                click.echo(f"{'':<30} {line}")
        if f.runbook and f.severity in ("warning", "critical"):
            click.echo(f"{'':<30} runbook: {f.runbook}")
    click.echo(f"worst: {report.worst} (exit {report.exit_code})")
    sys.exit(report.exit_code)
