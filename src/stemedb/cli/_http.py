"""Asking a running server from the command line: one request, a clear error."""

from __future__ import annotations

import sys
from typing import Any

import click

EXIT_FAULT = 1
EXIT_USAGE = 2
DEFAULT_SERVER = "http://127.0.0.1:18180"


def call_server(server: str, method: str, path: str, *, token: str | None,
                timeout_seconds: float, body: Any = None, ok: int = 200) -> dict[str, Any]:
    """The JSON answer of ``method path``; on a refusal prints the error (and its hint)
    and exits 1, on a connection failure exits 2."""
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        r = httpx.request(method, server.rstrip("/") + path, headers=headers,
                          json=body, timeout=timeout_seconds)
    except httpx.HTTPError as exc:
        click.echo(f"error: {server}: {exc}", err=True)
        click.echo("Try: is the server running? --server URL (or STEMEDB_SERVER)", err=True)
        sys.exit(EXIT_USAGE)
    try:
        doc = r.json()
    except ValueError:
        doc = {"error": {"message": r.text[:500]}}
    if r.status_code != ok:
        err = doc.get("error") or {}
        click.echo(f"error: HTTP {r.status_code} {err.get('code', '')}: "
                   f"{err.get('message', doc)}", err=True)
        if err.get("hint"):
            click.echo(f"Try: {err['hint']}", err=True)
        sys.exit(EXIT_FAULT)
    result: dict[str, Any] = doc
    return result
