from __future__ import annotations

import click


@click.command()
def serve() -> None:
    """Run the server (being built)."""
    raise click.ClickException("not built yet")
