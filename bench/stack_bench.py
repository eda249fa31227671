"""Where a durable POST's time goes: the same write through six HTTP stacks.

``POST /v1/assertions`` at ``--clients`` connections (default 64, one request in
flight each, ``wrk -t2`` with http_bench's Lua script), every write acknowledged after
fdatasync (``fsync="always"``), measured in one run on the same machine for:

- **stemedb serve**: the product, as http_bench runs it (auth, metrics, idempotency
  keys, readiness, body limits, the writer on the main thread).
- **aiohttp**, **uvicorn**, **granian**, **granian-rsgi**, **protocol**: one-route
  servers (``bench/_stacks.py``) that do only the write's own work - parse, validate,
  ``Engine.submit_async``, a JSON answer - on a bare aiohttp application, a plain ASGI
  callable on uvicorn (httptools, uvloop) and on granian (embedded), granian's own RSGI
  interface, and an ``asyncio.Protocol`` on httptools' parser with no framework at all
  (not a shippable server: the floor of Python HTTP on this machine).
- **PostgreSQL**: pgbench's one-row INSERT (``synchronous_commit=on``), http_bench's
  peer and the target line (``--no-peers`` leaves it out).

Each stack runs ``--rounds`` times (default 3), the stacks taking turns so that drift
on a shared machine spreads over all of them; the table gives each one's median and
range.  The gaps between rows say what the product, the framework and the HTTP layer
each cost per request.

Run: ``python -m bench.stack_bench [--seconds 5] [--clients 64] [--rounds 3]``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import httpx

from ._common import (
    Report,
    Target,
    base_parser,
    bench_dir,
    command_line,
    machine_info,
    print_machine,
    rounds_summary,
    stop_process_group,
    wait_until_serving,
)
from ._peers import Postgres, ensure_tool, free_port
from .http_bench import StemeServer, write_scripts, wrk

MODULE = "bench.stack_bench"
START_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 30.0
STACKS = {"stemedb serve (the product)": None, "aiohttp, one route": "aiohttp",
          "uvicorn + plain ASGI, one route": "uvicorn",
          "granian + plain ASGI, one route": "granian",
          "granian RSGI, one route": "granian-rsgi",
          "asyncio.Protocol + httptools (the floor)": "protocol"}


class StackServer:
    """A ``python -m bench._stacks`` child on a free port, with its own data dir."""

    def __init__(self, root: str, stack: str) -> None:
        self.root, self.stack = root, stack
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        data = os.path.join(self.root, f"{self.stack}-{self.port}")
        log = open(data + ".log", "wb")  # noqa: SIM115 - closed once the child exits
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench._stacks", self.stack, "--data-dir", data,
             "--port", str(self.port)], stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, cwd=os.path.dirname(os.path.dirname(__file__)))
        log.close()
        wait_until_serving(self.proc, self._listening, f"bench._stacks {self.stack}",
                           data + ".log", START_TIMEOUT_SECONDS)

    def _listening(self) -> bool:
        try:
            # Any HTTP answer means it listens (GET is not a route: 404/405).
            httpx.get(self.url + "/v1/assertions", timeout=2)
        except httpx.HTTPError:
            return False
        return True

    def stop(self) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        stop_process_group(proc, STOP_TIMEOUT_SECONDS)


def measure(server: Any, script: str, clients: int, seconds: float) -> dict[str, Any]:
    try:
        server.start()  # a start that times out still leaves a process to stop
        return wrk(server.url, script, clients, seconds)
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0], MODULE)
    p.add_argument("--seconds", type=float, default=5.0,
                   help="seconds of load per stack and round (default: 5)")
    p.add_argument("--clients", type=int, default=64,
                   help="concurrent connections (default: 64)")
    p.add_argument("--rounds", type=int, default=3,
                   help="measurements of each stack, taking turns (default: 3)")
    p.add_argument("--no-peers", action="store_true",
                   help="leave PostgreSQL out (default: measure it too)")
    args = p.parse_args(argv)
    ensure_tool("wrk", "wrk")
    report = Report("stack", command_line(MODULE, argv))
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in STACKS}
    with bench_dir(args.dir, args.keep, "stemedb-bench-stack-") as root:
        info = machine_info(root)
        print_machine(info)
        post = write_scripts(root)["post"]
        for k in range(max(1, args.rounds)):
            for name, stack in STACKS.items():
                server: Any = (StemeServer(root, f"stemedb-{k}") if stack is None
                               else StackServer(root, stack))
                r = measure(server, post, args.clients, args.seconds)
                runs[name].append(r)
                print(f"  round {k + 1}: {name}: {r['per_s']:.0f}/s", flush=True)
        pg_rate = None
        if not args.no_peers:
            pg = Postgres(root)
            try:
                pg.start()
                r = pg.bench(args.clients, args.seconds)
                runs["PostgreSQL INSERT, pgbench"] = [{**r, "errors": 0}]
                pg_rate = r["per_s"]
                report.notes.append(f"PostgreSQL {pg.version()}: pgbench -c "
                                    f"{args.clients} -j 2, one run")
            finally:
                pg.stop()
    rows = []
    for name, rs in runs.items():
        summary = rounds_summary(rs)
        median = summary["per_s"]
        rows.append({"stack": name, "clients": args.clients, **summary,
                     "us_per_request": 1e6 / median if median else float("nan"),
                     "x_postgres": median / pg_rate if pg_rate else float("nan")})
    report.table(f"POST /v1/assertions at {args.clients} clients, fsync=always "
                 f"(median of the rounds)", rows)
    if pg_rate:
        product = rows[0]
        report.targets.append(Target(
            f"stemedb serve POST at {args.clients} clients vs PostgreSQL INSERT",
            ">= PostgreSQL", f"{product['per_s']:,.0f} vs {pg_rate:,.0f} requests/s "
            f"({product['x_postgres']:.2f}x)", product["per_s"] >= pg_rate))
    report.emit(args.json, info)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
