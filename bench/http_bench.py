"""Durable writes over the network: StemeDB's HTTP API beside PostgreSQL and Redis.

All three servers are started by this bench on 127.0.0.1 (free ports, temp dirs) and
stopped at the end; all are measured in the same run at the same client counts, each
client with one request in flight:

- **StemeDB**: ``stemedb serve --data-dir D --listen 127.0.0.1:PORT`` with
  ``STEMEDB_WAL_FSYNC=always`` (acknowledged after fdatasync), load from ``wrk`` (C,
  epoll; ``apt-get install -y wrk`` when missing) with a Lua script that POSTs a fresh
  assertion to ``/v1/assertions`` per request.  ``-t`` is min(clients, 2).
- **PostgreSQL**: one INSERT per transaction, ``synchronous_commit=on``, ``fsync=on``,
  from ``pgbench -f insert.sql -c N -j min(N, 2) -T seconds``, into two tables of the
  same columns: ``assertions_pk`` (its primary key only, as a new user would try) and
  ``assertions`` (three secondary indexes, shaped like StemeDB's table).  Both are
  printed; the targets name each.
- **Redis**: ``appendonly yes``, ``appendfsync always``, ``redis-benchmark -t set -c N
  -d 150``.

StemeDB acknowledges a write once its WAL record is durable and applies the state
afterwards; during the POST runs with more than one client and the batch run the bench
asks ``GET /v1/admin/status`` every 50 ms for ``state.apply_lag_bytes`` and
``state.apply_lag_seconds`` (the ``lag_*`` columns: how far the state trailed).

Also measured: ``POST /v1/batch`` with 1,000 assertions per request, beside the design
ceiling (``bench/_floor.py``: one thread encoding, framing, writing and fdatasyncing
one 1,000-assertion BATCH record after another, with no HTTP, no queue and no engine
around it: no server of this design can acknowledge faster) and the apply ceiling (one
thread applying one such record per SQLite transaction with the product's
``apply_record``: what bounds the state that follows); and the p99 of
``GET /v1/assertions/{id}`` (linearizable, the default: each read waits until the state
has applied what was durable when it arrived) with no writes and while 16 clients
write, beside PostgreSQL's SELECT by primary key under its own 16 INSERT clients
(pgbench, two processes at once), and a ``?consistency=stale`` row (no wait) for
reference; then, with every fdatasync made 200 ms slower, three ways (reads must not
wait on fsync):

- ``strace -e inject=fdatasync:delay_exit=200000 stemedb serve ...``: the issue's
  command.  Without ``-f`` strace traces the process's main thread, which is where
  ``stemedb serve`` runs the WAL writer (so that ``strace -p $(pgrep stemedb-api)`` in
  the runbooks sees every WAL fdatasync): every WAL fdatasync is delayed, and the
  threads that serve reads are not traced.  A target row.
- ``strace -f --seccomp-bpf -e trace=fdatasync ...``: every thread, SQLite's syncs in
  the backfill thread too.  Any ptrace of the threads that serve reads costs them:
  with ``-e trace=mknod`` (a syscall never made) reads already drop from ~3.8k/s to
  ~1.3k/s and their p99 from ~1.7 to ~10 ms on this machine.  Shown for reference.
- an LD_PRELOAD shim of 20 lines (compiled here with ``cc``) that sleeps after every
  ``fdatasync(2)`` of every thread, without ptrace.  A target row too.

Run: ``python -m bench.http_bench [--seconds 5] [--clients 1,16,64] [--json F]``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from typing import Any

import httpx

from ._common import (
    Report,
    Sampler,
    Target,
    base_parser,
    bench_dir,
    command_line,
    machine_info,
    percentile,
    print_machine,
    run,
    sample_assertion,
    stop_process_group,
    wait_until_serving,
)
from ._floor import apply_floor, design_floor
from ._peers import Postgres, Redis, ensure_tool, free_port

MODULE = "bench.http_bench"
POST_LABEL = "StemeDB POST /v1/assertions (fsync=always)"
SPLIT_LABEL = "StemeDB POST, state on --state-dir ([wal] dir)"
PG_PK_LABEL = "PostgreSQL INSERT, primary key only (synchronous_commit=on)"
PG_IDX_LABEL = "PostgreSQL INSERT, +3 indexes (synchronous_commit=on)"
READ_SYSTEM = "StemeDB GET /v1/assertions/{id} (linearizable)"
STALE_READ_SYSTEM = "StemeDB GET /v1/assertions/{id}?consistency=stale"
PG_READ_SYSTEM = "PostgreSQL SELECT by primary key"
READS_TITLE = "Reads by id while writing"
LAG_SAMPLE_SECONDS = 0.05  # how often the server's apply lag is sampled
START_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 30.0
WRK_TIMEOUT = "10s"  # per request; a slower response counts as a wrk timeout error
BATCH_OPS = 1000  # assertions in each /v1/batch request of the batch rows
BATCH_LABEL = f"StemeDB POST /v1/batch ({BATCH_OPS} assertions)"
CEILING_LABEL = "design ceiling: encode + frame + pwrite + fdatasync of one batch, 1 thread"
APPLY_CEILING_LABEL = "apply ceiling: apply_record of one batch, 1 SQLite txn, 1 thread"

_DONE_LUA = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"status_errors":%d,' ..
    '"socket_errors":%d}\n', summary.requests, summary.duration, latency:percentile(50),
    latency:percentile(99), e.status, e.connect + e.read + e.write + e.timeout))
end
"""

POST_LUA = r"""
local counter = 0
local threads = {}
setup = function(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end
request = function()
  counter = counter + 1
  local n = (tid or 0) * 1000000000 + counter
  local body = string.format(
    '{"subject":"urn:example:sensor/%d","predicate":"reading",' ..
    '"object":{"celsius":%d,"seq":%d},"author":"writer-%d","confidence":0.9}',
    n % 1000, 20 + n % 17, n, n % 16)
  return wrk.format("POST", "/v1/assertions", {["Content-Type"] = "application/json"}, body)
end
""" + _DONE_LUA

BATCH_LUA = r"""
init = function(args)
  local f = assert(io.open(args[1], "rb"))
  wrk.method = "POST"
  wrk.path = "/v1/batch"
  wrk.body = f:read("*a")
  wrk.headers["Content-Type"] = "application/json"
  f:close()
end
""" + _DONE_LUA

GET_LUA = r"""
local max_id = 1000
local query = ""
init = function(args)
  max_id = tonumber(args[1])
  query = args[2] or ""
  math.randomseed(os.time() + math.floor(os.clock() * 1000000))
end
request = function()
  return wrk.format("GET", "/v1/assertions/" .. math.random(1, max_id) .. query)
end
""" + _DONE_LUA


SLOW_FDATASYNC_C = r"""
/* LD_PRELOAD shim: every fdatasync(2) of the process returns
   BENCH_FDATASYNC_DELAY_US microseconds late (after the real one). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <time.h>

static int (*real_fdatasync)(int);

int fdatasync(int fd) {
    if (!real_fdatasync) real_fdatasync = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    int rc = real_fdatasync(fd);
    const char *us = getenv("BENCH_FDATASYNC_DELAY_US");
    long d = us ? atol(us) : 0;
    if (d > 0) {
        struct timespec ts = {d / 1000000, (d % 1000000) * 1000};
        nanosleep(&ts, 0);
    }
    return rc;
}
"""


def build_slow_fdatasync_shim(root: str) -> str | None:
    """Compile the LD_PRELOAD shim; None when no C compiler is installed."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    src, lib = os.path.join(root, "slow_fdatasync.c"), os.path.join(root, "slow_fdatasync.so")
    with open(src, "w") as f:
        f.write(SLOW_FDATASYNC_C)
    run([cc, "-shared", "-fPIC", "-O2", "-o", lib, src, "-ldl"], timeout=60)
    return lib


class StemeServer:
    """``stemedb serve`` in its own process group, optionally under strace."""

    def __init__(self, root: str, name: str, *, slow_fdatasync_us: int = 0,
                 preload_shim: str | None = None, strace_all_threads: bool = False,
                 state_root: str | None = None, env: dict[str, str] | None = None,
                 log_level: str = "warning") -> None:
        self.root = os.path.join(root, name)
        os.makedirs(self.root, exist_ok=True)
        # With state_root: the data directory (the state database) there, on another
        # device, and the WAL under root, on the disk measured ([wal] dir).
        self.state_root = state_root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.slow_fdatasync_us = slow_fdatasync_us
        self.preload_shim = preload_shim  # delay fdatasync with the shim, not strace
        self.strace_all_threads = strace_all_threads  # -f --seccomp-bpf
        self.extra_env = dict(env or {})  # e.g. STEMEDB_ARCHIVE_URL and AWS_* (archive_bench)
        self.log_level = log_level  # "info" keeps the cluster's role changes (cluster_bench)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        config = os.path.join(self.root, "api.toml")
        with open(config, "w") as f:
            f.write("# empty: defaults, then the STEMEDB_* variables below\n")
        stemedb = shutil.which("stemedb")
        # stemedb.cli is a package without __main__: without the script on PATH (a venv
        # not activated), call its entry point as the script would.
        serve = ([stemedb] if stemedb else
                 [sys.executable, "-c", "from stemedb.cli import main; main()"])
        place = ["--data-dir", os.path.join(self.root, "data")]
        if self.state_root is not None:
            place = ["--data-dir", os.path.join(self.state_root, "data"),
                     "--wal-dir", os.path.join(self.root, "wal")]
        cmd = [*serve, "serve", "--config", config, *place,
               "--listen", f"127.0.0.1:{self.port}", "--log-level", self.log_level]
        if self.slow_fdatasync_us and not self.preload_shim:
            every = ["-f", "--seccomp-bpf"] if self.strace_all_threads else []
            cmd = ["strace", *every, "-e", "trace=fdatasync", "-e",
                   f"inject=fdatasync:delay_exit={self.slow_fdatasync_us}", "-o",
                   "/dev/null", *cmd]
        env = {k: v for k, v in os.environ.items() if not k.startswith("STEMEDB_")}
        env.update({"STEMEDB_WAL_FSYNC": "always", "STEMEDB_WAL_DISK_RESERVE_BYTES": "0"})
        env.update(self.extra_env)
        if self.slow_fdatasync_us and self.preload_shim:
            env.update({"LD_PRELOAD": self.preload_shim,
                        "BENCH_FDATASYNC_DELAY_US": str(self.slow_fdatasync_us)})
        # Appended to: a server started again (cluster_bench, after a kill -9) keeps the
        # lines of its previous life.
        self.log = open(os.path.join(self.root, "server.log"), "ab")  # noqa: SIM115 - stop()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True, cwd=self.root)
        wait_until_serving(self.proc, self._ready, "stemedb serve", self.log.name,
                           START_TIMEOUT_SECONDS)

    def _ready(self) -> bool:
        try:
            return httpx.get(self.url + "/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        # The server and strace (if any) share the process group this bench created.
        stop_process_group(proc, STOP_TIMEOUT_SECONDS)
        self.log.close()

    def seed(self, assertions: int) -> int:
        """Write ``assertions`` (in batches of 1000); return the highest id."""
        top = 0
        with httpx.Client(base_url=self.url, timeout=60) as c:
            for start in range(0, assertions, 1000):  # bounded by ``assertions``
                ops = [{"assert": sample_assertion(start + k)}
                       for k in range(min(1000, assertions - start))]
                r = c.post("/v1/batch", json={"ops": ops})
                r.raise_for_status()
                top = max(top, *(x["id"] for x in r.json()["results"]))
        return top


def write_scripts(root: str) -> dict[str, str]:
    paths = {}
    for name, text in (("post", POST_LUA), ("batch", BATCH_LUA), ("get", GET_LUA)):
        paths[name] = os.path.join(root, f"{name}.lua")
        with open(paths[name], "w") as f:
            f.write(text)
    body = {"ops": [{"assert": sample_assertion(k)} for k in range(BATCH_OPS)]}
    paths["batch_body"] = os.path.join(root, "batch-1000.json")
    with open(paths["batch_body"], "w") as f:
        json.dump(body, f, separators=(",", ":"))
    return paths


def wrk(url: str, script: str, connections: int, seconds: float,
        script_args: list[str] | None = None) -> dict[str, Any]:
    cmd = ["wrk", "-t", str(min(connections, 2)), "-c", str(connections), "-d",
           f"{max(1, round(seconds))}s", "--timeout", WRK_TIMEOUT, "-s", script, url]
    if script_args:
        cmd += ["--", *script_args]
    out = run(cmd, timeout=seconds + 120).stdout
    m = re.search(r"^WRKJSON (.*)$", out, re.M)
    if m is None:
        raise RuntimeError(f"unexpected wrk output: {out[-1000:]}")
    r = json.loads(m.group(1))
    secs = r["duration_us"] / 1e6
    return {"requests": r["requests"], "per_s": r["requests"] / secs,
            "p50_ms": r["p50_us"] / 1e3, "p99_ms": r["p99_us"] / 1e3,
            "errors": r["status_errors"] + r["socket_errors"]}


class LagProbe:
    """``GET /v1/admin/status`` -> (state.apply_lag_bytes, state.apply_lag_seconds): the
    durable WAL bytes the state has not applied yet, and how long the oldest of them
    has waited.  A :class:`Sampler` probe; one HTTP connection, kept."""

    def __init__(self, url: str) -> None:
        self.client = httpx.Client(base_url=url, timeout=5)

    def __call__(self) -> tuple[float, ...]:
        try:
            r = self.client.get("/v1/admin/status")
            r.raise_for_status()
            state = r.json()["state"]
        except httpx.HTTPError as exc:
            raise OSError(str(exc)) from exc
        return float(state["apply_lag_bytes"]), float(state["apply_lag_seconds"])

    def close(self) -> None:
        self.client.close()


def wrk_sampling_lag(url: str, script: str, connections: int, seconds: float,
                     script_args: list[str] | None = None) -> dict[str, Any]:
    """:func:`wrk`, and the server's apply lag sampled every LAG_SAMPLE_SECONDS meanwhile:
    its p99 and max in bytes, its p99 in ms."""
    probe = LagProbe(url)
    sampler = Sampler(probe, LAG_SAMPLE_SECONDS, 0.0, max(1, round(seconds))).start()
    try:
        r = wrk(url, script, connections, seconds, script_args)
    finally:
        sampler.stop()
        probe.close()
    lag_b, lag_s = sampler.column(0), sampler.column(1)
    return {**r, "lag_p99_bytes": percentile(lag_b, 99),
            "lag_max_bytes": lag_b[-1] if lag_b else float("nan"),
            "lag_p99_ms": percentile(lag_s, 99) * 1e3, "lag_samples": len(lag_b)}


def reads_under_writes(server: StemeServer, scripts: dict[str, str], max_id: int,
                       seconds: float, read_clients: int, write_clients: int,
                       query: str = "") -> dict[str, Any]:
    """Run a write wrk and a read wrk (GET /v1/assertions/{id}``query``) at the same
    time; return both results."""
    out: dict[str, dict[str, Any]] = {}

    def writes() -> None:
        out["w"] = wrk(server.url, scripts["post"], write_clients, seconds + 1)

    t = threading.Thread(target=writes)
    if write_clients > 0:
        t.start()
        time.sleep(0.5)  # the write load is running before the reads start
    try:
        out["r"] = wrk(server.url, scripts["get"], read_clients, seconds,
                       [str(max_id), *([query] if query else [])])
    finally:
        if write_clients > 0:
            t.join(seconds + 180)
    w, r = out.get("w", {}), out["r"]
    return {"reads_per_s": r["per_s"], "read_p50_ms": r["p50_ms"],
            "read_p99_ms": r["p99_ms"], "read_errors": r["errors"],
            "writes_per_s": w.get("per_s", float("nan")),
            "write_p50_ms": w.get("p50_ms", float("nan")),
            "write_p99_ms": w.get("p99_ms", float("nan"))}


def fresh_server_reads(server: StemeServer, label: str, scripts: dict[str, str],
                       args: Any) -> list[dict[str, Any]]:
    """Start ``server``, seed it, measure reads with no writers and with
    ``--write-clients`` writers, stop it."""
    server.start()
    try:
        max_id = server.seed(1000)
        return [{"system": READ_SYSTEM, "load": f"{writers} writers, {label}",
                 "read_clients": args.read_clients,
                 **reads_under_writes(server, scripts, max_id, args.seconds,
                                      args.read_clients, writers)}
                for writers in (0, args.write_clients)]
    finally:
        server.stop()


def split_layout_posts(root: str, state_dir: str, scripts: dict[str, str],
                       clients: list[int], seconds: float, servers: list[Any]
                       ) -> list[dict[str, Any]]:
    """The POST rows again, from a fresh server with its state in ``state_dir``."""
    rows = []
    with bench_dir(state_dir, False, "stemedb-bench-state-") as state_root:
        split = StemeServer(root, "stemedb-split", state_root=state_root)
        servers.append(split)
        try:
            split.start()
            for c in clients:
                r = wrk(split.url, scripts["post"], c, seconds)
                rows.append({"system": SPLIT_LABEL, "clients": c, **r})
                print(f"  stemedb, state on --state-dir, {c} clients: {r['per_s']:.0f}/s",
                      flush=True)
        finally:
            split.stop()
    return rows


def batch_rows(root: str, url: str, scripts: dict[str, str], clients: int,
               seconds: float) -> list[dict[str, Any]]:
    """/v1/batch of BATCH_OPS under wrk with the apply lag sampled, then the design
    ceiling (what acknowledging one such record per group commit requires) and the
    apply ceiling (what applying one costs the applier), in this process."""
    r = wrk_sampling_lag(url, scripts["batch"], clients, seconds, [scripts["batch_body"]])
    rows = [{"system": BATCH_LABEL, "clients": clients, **r,
             "assertions_per_s": r["per_s"] * BATCH_OPS}]
    for label, fn in ((CEILING_LABEL, design_floor), (APPLY_CEILING_LABEL, apply_floor)):
        f = fn(root, 1, BATCH_OPS, seconds, 0.5)
        rows.append({"system": label, "clients": 1, "requests": f["writes"],
                     "per_s": f["writes_per_s"], "p50_ms": f["p50_ms"],
                     "p99_ms": f["p99_ms"], "errors": 0,
                     "assertions_per_s": f["writes_per_s"] * BATCH_OPS})
    return rows


def postgres_rows(pg: Postgres, clients: list[int], args: Any
                  ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """PostgreSQL's INSERT rows (both tables, each client count) and its SELECT-by-key
    rows with no writers and with ``--write-clients`` writers."""
    writes: list[dict[str, Any]] = []
    for c in clients:
        for table, label in ((pg.PK_TABLE, PG_PK_LABEL), (pg.INDEXED_TABLE, PG_IDX_LABEL)):
            r = pg.bench(c, args.seconds, table)
            writes.append({"system": label, "clients": c, **r, "errors": 0})
            print(f"  postgres {table} {c} clients: {r['per_s']:.0f}/s", flush=True)
    max_id = pg.seed(pg.INDEXED_TABLE, 1000)
    reads = [{"system": PG_READ_SYSTEM, "load": f"{writers} writers, normal disk",
              "read_clients": args.read_clients,
              **pg.reads_under_writes(pg.INDEXED_TABLE, max_id, args.seconds,
                                      args.read_clients, writers)}
             for writers in (0, args.write_clients)]
    return writes, reads


def _find(rows: list[dict[str, Any]], system: str, clients: int) -> dict[str, Any] | None:
    return next((r for r in rows if r["system"] == system and r["clients"] == clients), None)


def add_targets(report: Report, writes: list[dict[str, Any]], batch: list[dict[str, Any]],
                reads: list[dict[str, Any]], write_clients: int) -> None:
    """The HTTP targets, each beside its peer measured in the same run."""
    for table, label in (("primary key only", PG_PK_LABEL), ("+3 indexes", PG_IDX_LABEL)):
        s, pg = _find(writes, POST_LABEL, 64), _find(writes, label, 64)
        if s is not None and pg is not None:
            ratio = s["per_s"] / max(pg["per_s"], 1e-9)
            lag = (f"; apply lag p99 {s['lag_p99_bytes']:,.0f} B / {s['lag_p99_ms']:.1f} ms"
                   if "lag_p99_bytes" in s else "")
            report.targets.append(Target(
                f"POST /v1/assertions at 64 clients vs PostgreSQL INSERT ({table})",
                ">= 1.0x requests/s",
                f"{ratio:.2f}x ({s['per_s']:,.0f} vs {pg['per_s']:,.0f}/s{lag})",
                ratio >= 1.0))
    for table, label in (("primary key only", PG_PK_LABEL), ("+3 indexes", PG_IDX_LABEL)):
        s, pg = _find(writes, POST_LABEL, 1), _find(writes, label, 1)
        if s is not None and pg is not None:
            report.targets.append(Target(
                f"POST /v1/assertions at 1 client p50 vs PostgreSQL INSERT ({table})",
                "<= PostgreSQL's p50",
                f"{s['p50_ms']:.3f} ms vs {pg['p50_ms']:.3f} ms "
                f"({s['p50_ms'] / max(pg['p50_ms'], 1e-9):.2f}x)",
                s["p50_ms"] <= pg["p50_ms"]))
    if batch:
        b, ceiling, apply_ceiling = batch
        report.targets.append(Target(
            f"/v1/batch of {BATCH_OPS:,}", ">= 100,000 assertions/s acknowledged",
            f"{b['assertions_per_s']:,.0f} assertions/s (apply lag p99 "
            f"{b['lag_p99_bytes']:,.0f} B / {b['lag_p99_ms']:.0f} ms, max "
            f"{b['lag_max_bytes']:,.0f} B; design ceiling "
            f"{ceiling['assertions_per_s']:,.0f}; apply ceiling "
            f"{apply_ceiling['assertions_per_s']:,.0f})",
            b["assertions_per_s"] >= 100_000))
    loaded = f"{write_clients} writers, normal disk"
    s_row = next((r for r in reads if r["system"] == READ_SYSTEM and r["load"] == loaded), None)
    pg_row = next((r for r in reads if r["system"] == PG_READ_SYSTEM and r["load"] == loaded),
                  None)
    stale = next((r for r in reads if r["system"] == STALE_READ_SYSTEM), None)
    if s_row is not None and pg_row is not None:
        stale_text = (f"; consistency=stale {stale['read_p99_ms']:.2f} ms"
                      if stale is not None else "")
        report.targets.append(Target(
            f"read p99 under {write_clients} writers (linearizable) vs PostgreSQL "
            "SELECT by key under its own writers", "<= PostgreSQL's p99",
            f"{s_row['read_p99_ms']:.2f} ms vs {pg_row['read_p99_ms']:.2f} ms (writes "
            f"{s_row['writes_per_s']:,.0f}/s vs {pg_row['writes_per_s']:,.0f}/s"
            f"{stale_text})", s_row["read_p99_ms"] <= pg_row["read_p99_ms"]))
    for r in reads:
        if (r["system"] != READ_SYSTEM or not r["load"].startswith(f"{write_clients} writers")
                or "fdatasync +" not in r["load"] or "-f" in r["load"]):
            continue  # -f: for reference, ptrace of the reading threads (module docstring)
        report.targets.append(Target(f"read p99 ({r['load']})", "< 10 ms",
                                     f"{r['read_p99_ms']:.2f} ms (writes "
                                     f"{r['writes_per_s']:,.0f}/s, p50 "
                                     f"{r['write_p50_ms']:.0f} ms)", r["read_p99_ms"] < 10))


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0], MODULE)
    p.add_argument("--seconds", type=float, default=5.0,
                   help="seconds per measurement (default: 5)")
    p.add_argument("--clients", default="1,16,64",
                   help="comma-separated client counts (default: 1,16,64)")
    p.add_argument("--batch-clients", type=int, default=4,
                   help="concurrent /v1/batch clients (default: 4)")
    p.add_argument("--read-clients", type=int, default=4,
                   help="concurrent GET clients in the read-under-write test (default: 4)")
    p.add_argument("--write-clients", type=int, default=16,
                   help="concurrent POST clients in the read-under-write test (default: 16)")
    p.add_argument("--no-peers", action="store_true",
                   help="skip PostgreSQL and Redis (default: run them)")
    p.add_argument("--fdatasync-delay-ms", type=int, default=200,
                   help="fdatasync delay injected by strace in the slow-disk run (default: 200)")
    p.add_argument("--state-dir", default=None,
                   help="also run the POSTs against a server whose state database is in "
                        "this directory, on another device, and whose WAL is on the bench "
                        "disk ([wal] dir; e.g. /dev/shm where the machine has one disk)")
    args = p.parse_args(argv)
    clients = [int(x) for x in args.clients.split(",") if x]
    ensure_tool("wrk", "wrk")
    ensure_tool("strace", "strace")
    report = Report("http", command_line(MODULE, argv))
    writes: list[dict[str, Any]] = []
    reads: list[dict[str, Any]] = []
    batch: list[dict[str, Any]] = []
    with bench_dir(args.dir, args.keep, "stemedb-bench-http-") as root:
        info = machine_info(root)
        print_machine(info)
        scripts = write_scripts(root)
        wrk_version = run(["wrk", "-v"], timeout=10, check=False).stdout.split("[")[0].strip()
        report.notes.append(f"StemeDB load generator: {wrk_version} with Lua scripts "
                            f"(-t min(clients, 2)); one request in flight per connection")
        report.notes.append(
            "apply lag (lag_* columns): GET /v1/admin/status -> state.apply_lag_bytes and "
            f"state.apply_lag_seconds every {LAG_SAMPLE_SECONDS * 1e3:.0f} ms during the "
            "POST runs with more than one client and the /v1/batch run")
        steme = StemeServer(root, "stemedb")
        servers: list[Any] = [steme]
        try:
            steme.start()
            for c in clients:
                if c > 1:
                    r = wrk_sampling_lag(steme.url, scripts["post"], c, args.seconds)
                else:  # the p50 target: nothing else asks the server anything
                    r = wrk(steme.url, scripts["post"], c, args.seconds)
                writes.append({"system": POST_LABEL, "clients": c, **r})
                print(f"  stemedb {c} clients: {r['per_s']:.0f}/s", flush=True)
            if args.state_dir is not None:
                writes += split_layout_posts(root, args.state_dir, scripts, clients,
                                             args.seconds, servers)
            batch = batch_rows(root, steme.url, scripts, args.batch_clients, args.seconds)
            max_id = steme.seed(1000)
            for writers, query, system in ((0, "", READ_SYSTEM),
                                           (args.write_clients, "", READ_SYSTEM),
                                           (args.write_clients, "?consistency=stale",
                                            STALE_READ_SYSTEM)):
                reads.append({"system": system, "load": f"{writers} writers, normal disk",
                              "read_clients": args.read_clients,
                              **reads_under_writes(steme, scripts, max_id, args.seconds,
                                                   args.read_clients, writers, query)})
            steme.stop()
            delay_us = args.fdatasync_delay_ms * 1000
            slowed = f"fdatasync +{args.fdatasync_delay_ms} ms"
            for every, how in ((False, "strace"), (True, "strace -f --seccomp-bpf")):
                slow = StemeServer(root, "stemedb-slow-all" if every else "stemedb-slow",
                                   slow_fdatasync_us=delay_us, strace_all_threads=every)
                servers.append(slow)
                reads += fresh_server_reads(slow, f"{how}, {slowed}", scripts, args)
            shim = build_slow_fdatasync_shim(root)
            if shim is None:
                report.notes.append("no C compiler: the LD_PRELOAD slow-fdatasync rows "
                                    "were skipped")
            else:
                pre = StemeServer(root, "stemedb-preload", slow_fdatasync_us=delay_us,
                                  preload_shim=shim)
                servers.append(pre)
                reads += fresh_server_reads(pre, f"LD_PRELOAD shim, {slowed}", scripts, args)
            if not args.no_peers:
                pg = Postgres(root)
                servers.append(pg)
                pg.start()
                report.notes.append(
                    f"PostgreSQL {pg.version()} ({pg.SETTINGS}): pgbench -n -f SCRIPT -c N "
                    "-j min(N, 2) -T seconds; INSERT rows: one INSERT per transaction "
                    f"(autocommit) into {pg.PK_TABLE} ({pg.COLUMNS}: its primary key only) "
                    f"and into {pg.INDEXED_TABLE} (the same columns; {pg.INDEXES})")
                report.notes.append(
                    f"PostgreSQL reads: pgbench -c {args.read_clients} of '\\set id "
                    f"random(1, max_id); SELECT ... FROM {pg.INDEXED_TABLE} WHERE id = :id' "
                    f"(one SELECT per transaction, {pg.INDEXED_TABLE} seeded with 1,000 rows "
                    f"more), beside a pgbench of {args.write_clients} INSERT clients into "
                    "the same table started 0.5 s before")
                pg_writes, pg_reads = postgres_rows(pg, clients, args)
                writes += pg_writes
                reads += pg_reads
                pg.stop()
                rd = Redis(root)
                servers.append(rd)
                rd.start()
                report.notes.append(f"Redis {rd.version()}: redis-benchmark -t set -d 150")
                for c in clients:
                    writes.append({"system": "Redis SET (appendfsync always)", "clients": c,
                                   **rd.bench(c, args.seconds), "errors": 0})
                rd.stop()
        finally:
            for s in servers:
                with contextlib.suppress(Exception):
                    s.stop()
    writes.sort(key=lambda r: (r["clients"], r["system"]))
    report.table("Durable writes over the network (one request in flight per client)",
                 writes)
    if batch:
        report.table("Batch writes", batch)
    report.table(READS_TITLE, reads)
    add_targets(report, writes, batch, reads, args.write_clients)
    report.emit(args.json, info)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
