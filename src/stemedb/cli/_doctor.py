from __future__ import annotations

import click


@click.command()
def doctor() -> None:
    """Run the runbook's investigation steps (being built)."""
    raise click.ClickException("not built yet")
