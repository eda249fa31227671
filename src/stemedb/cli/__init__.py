"""The ``stemedb`` command line.  Each command is a thin call into the library.

One module per command family: ``_serve`` (serve), ``_wal`` (wal verify / repair /
dump and the runbook's ``stemedb-wal-verify`` / ``stemedb-wal-repair``), and
``_doctor`` (doctor).
"""

from __future__ import annotations

import click

from ._doctor import doctor
from ._serve import serve
from ._wal import wal, wal_repair_command, wal_verify_command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="stemedb")
def cli() -> None:
    """StemeDB: a durable ledger of assertions, votes and epochs.

    Example: stemedb serve --data-dir ./stemedb-data
    """


cli.add_command(serve)
cli.add_command(wal)
cli.add_command(doctor)


def main() -> None:
    cli(prog_name="stemedb")


def serve_main() -> None:
    """``stemedb-api``: the server under the name systemd and pgrep know."""
    serve(prog_name="stemedb-api")


def wal_verify_main() -> None:
    wal_verify_command(prog_name="stemedb-wal-verify")


def wal_repair_main() -> None:
    wal_repair_command(prog_name="stemedb-wal-repair")
