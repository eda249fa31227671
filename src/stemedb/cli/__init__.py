"""The ``stemedb`` command line.  Each command is a thin call into the library.

One module per command family: ``_serve`` (serve), ``_wal`` (wal verify / repair /
dump and the runbook's ``stemedb-wal-verify`` / ``stemedb-wal-repair``),
``_doctor`` (doctor) and ``_backup`` (backup list).  Modules load only when their
command runs, so the runbook's weekly ``stemedb-wal-verify`` loop does not pay for
importing the HTTP server.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

_COMMANDS = {
    "serve": ("._serve", "serve"),
    "wal": ("._wal", "wal"),
    "doctor": ("._doctor", "doctor"),
    "backup": ("._backup", "backup"),
    "cluster": ("._cluster", "cluster"),
}


def _load(module: str, attr: str) -> Any:
    return getattr(importlib.import_module(module, __name__), attr)


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in _COMMANDS:
            return None
        command: click.Command = _load(*_COMMANDS[cmd_name])
        return command


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="stemedb")
def cli() -> None:
    """StemeDB: a durable ledger of assertions, votes and epochs.

    Example: stemedb serve --data-dir ./stemedb-data
    """


def main() -> None:
    cli(prog_name="stemedb")


def serve_main() -> None:
    """``stemedb-api``: the server under the name systemd and pgrep know."""
    _load("._serve", "serve")(prog_name="stemedb-api")


def wal_verify_main() -> None:
    _load("._wal", "wal_verify_command")(prog_name="stemedb-wal-verify")


def wal_repair_main() -> None:
    _load("._wal", "wal_repair_command")(prog_name="stemedb-wal-repair")
