"""``stemedb cluster``: the cluster as a member sees it, and planned switchover.  Thin:
each command asks a running server (``GET /v1/cluster``, ``POST
/v1/admin/switchover``) and prints."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import click

from ._http import DEFAULT_SERVER, call_server

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
SWITCHOVER_TIMEOUT_SECONDS = 60.0  # the server waits 30 s for the candidate, then aborts


@click.group("cluster", context_settings=CONTEXT)
def cluster() -> None:
    """The cluster: its members and who leads (status), and a planned handover of the
    leadership (switchover)."""


F = TypeVar("F", bound=Callable[..., Any])


def _common(fn: F) -> F:
    fn = click.option("--json", "as_json", is_flag=True,
                      help="Print the server's JSON answer.")(fn)
    fn = click.option("--token", default=None, envvar="STEMEDB_TOKEN",
                      help="Bearer token when auth is on (or STEMEDB_TOKEN).")(fn)
    return click.option("--server", default=DEFAULT_SERVER, envvar="STEMEDB_SERVER",
                        show_default=True,
                        help="Any member of the cluster (or STEMEDB_SERVER).")(fn)


@cluster.command("status", context_settings=CONTEXT)
@_common
def cluster_status(server: str, token: str | None, as_json: bool) -> None:
    """Who leads, in which term, and each member's role, state and lag.

    Exit codes: 0 a leader is known, 1 no leader (or the server refused), 2 usage or
    connection.

    \b
    Example:
      stemedb cluster status --server http://127.0.0.1:18180
    """
    doc = call_server(server, "GET", "/v1/cluster", token=token, timeout_seconds=10.0)
    leader = next((m for m in doc["members"] if m["node"] == doc["leader"]), None)
    if leader is not None and leader["url"] and leader["url"].rstrip("/") != \
            server.rstrip("/"):
        # Only the leader knows its replicas' lag and whether they stream: ask it too.
        try:
            doc = call_server(leader["url"], "GET", "/v1/cluster", token=token,
                              timeout_seconds=10.0)
        except SystemExit:
            click.echo(f"(the leader {doc['leader']} did not answer: this is "
                       f"{server}'s view)", err=True)
    if as_json:
        click.echo(json.dumps(doc, indent=2, sort_keys=True))
    else:
        click.echo(f"cluster {doc['name'] or '(none: a node of its own)'}: leader "
                   f"{doc['leader'] or 'NONE'}, term {doc['term']}")
        rows = [("NODE", "ROLE", "STATE", "APPLIED LSN", "LAG BYTES", "LAG SECONDS", "URL")]
        for m in doc["members"]:
            rows.append((m["node"], m["role"], m["state"], str(m["applied_lsn"]),
                         "-" if m["lag_bytes"] is None else str(m["lag_bytes"]),
                         "-" if m["lag_seconds"] is None else f"{m['lag_seconds']:.3f}",
                         m["url"] or "-"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    raise SystemExit(0 if doc["leader"] else 1)


@cluster.command("switchover", context_settings=CONTEXT)
@click.option("--candidate", default=None,
              help="The replica to hand the leadership to. Default: the connected replica "
                   "with the highest durable LSN.")
@_common
def cluster_switchover(candidate: str | None, server: str, token: str | None,
                       as_json: bool) -> None:
    """Hand the leadership to a caught-up replica, losing nothing: the leader stops
    acknowledging, waits until the candidate holds every record it has, and steps
    down; the candidate takes over and the old leader follows it.  Ask any member:
    a replica answers with the leader's address.

    Exit codes: 0 the candidate leads, 1 refused or failed (the old leader goes on
    leading), 2 usage or connection.

    \b
    Example:
      stemedb cluster switchover --candidate node-b --server http://127.0.0.1:18180
    """
    doc = call_server(server, "GET", "/v1/cluster", token=token, timeout_seconds=10.0)
    leader = next((m for m in doc["members"] if m["node"] == doc["leader"]), None)
    if leader is None:
        click.echo("error: no leader to hand over from", err=True)
        raise SystemExit(1)
    body = {"candidate": candidate} if candidate else {}
    result = call_server(leader["url"], "POST", "/v1/admin/switchover", token=token,
                         timeout_seconds=SWITCHOVER_TIMEOUT_SECONDS, body=body)
    if as_json:
        click.echo(json.dumps(result, indent=2, sort_keys=True))
    else:
        click.echo(f"switchover: {result['leader']} leads in term {result['term']} "
                   f"(from {doc['leader']}, {result['seconds']:.3f}s)")
