from __future__ import annotations

import click


@click.group()
def wal() -> None:
    """WAL tools (being built)."""


@click.command()
def wal_verify_command() -> None:
    raise click.ClickException("not built yet")


@click.command()
def wal_repair_command() -> None:
    raise click.ClickException("not built yet")
