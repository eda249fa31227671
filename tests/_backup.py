"""Helpers of the backup tests: an archiving engine with fast backup settings, the
state's canonical image, and the CLI."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from stemedb import state as st
from stemedb.backup import BackupSettings
from stemedb.cli import cli
from stemedb.engine import Engine
from tests._archive import SEGMENT_BYTES, archive_settings, caught_up, engine, wait_for


def backup_engine(data_dir: Path, url: str, **kw: Any) -> Engine:
    """An engine archiving to ``url``, its timeline's first base backup taken (it is
    due at start); no scheduled drill (tests ask for one)."""
    backup = BackupSettings(interval_hours=0, drill_interval_hours=0,
                            retry_seconds_initial=0.05, retry_seconds_max=0.2)
    eng = engine(data_dir, archive_settings(url), backup=backup, **kw)
    wait_for("the timeline's first base backup",
             lambda: eng.status()["backup"]["last_backup"] is not None)
    return eng


def settle(eng: Engine) -> None:
    """Wait until the archive holds every durable record."""
    wait_for("the archive to catch up", lambda: caught_up(eng))


def dump_dir(data_dir: Path) -> dict[str, Any]:
    """The ledger of a (closed) data directory, as :func:`stemedb.state.dump` sees it."""
    conn = sqlite3.connect(data_dir / "state.sqlite3")
    try:
        return st.dump(conn)
    finally:
        conn.close()


def run_cli(*args: str) -> Result:
    return CliRunner().invoke(cli, ["backup", *args])


def restore_cli(url: str, data_dir: Path, *args: str) -> Result:
    return run_cli("restore", "--from", url, "--data-dir", str(data_dir),
                   "--segment-size-bytes", str(SEGMENT_BYTES), *args)
