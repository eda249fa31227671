"""Memory of ``stemedb serve`` under steady unique writes, per ``[state] page_cache_bytes``.

For each value P of ``--page-cache-bytes`` (default 64 MiB, the product default, and
8 MiB) the bench starts a fresh ``stemedb serve --data-dir D --listen 127.0.0.1:PORT``
(a free port, a temp dir, its own process group, the ``STEMEDB_*`` variables of the
caller removed and ``STEMEDB_STATE_PAGE_CACHE_BYTES=P`` set: SQLite's page cache per
connection, the writer's and each reader thread's), waits for ``/readyz``, then runs
``--clients`` threads (default 4) for ``--seconds`` (default 180).  Each thread, with
one request in flight, POSTs ``/v1/assertions`` with a subject never used before and
an ``object`` of about 200 bytes, and after every 5th write also GETs
``/v1/assertions?subject=...`` of the subject it just wrote.  The clients use
``urllib``, a connection per request: about half the client CPU per request of an
``httpx.Client`` here (0.22 vs 0.41 ms), which matters with the server on the same CPUs.
The server's VmRSS (``/proc/PID/status``) is sampled at ready and every
``--sample-seconds`` (default 10).

Measured per run: writes, writes/s, RSS at ready, after 60 s, at the end, and the peak
(VmHWM, the kernel's high-water mark, which also catches a spike between samples); and
the samples over time.  Every write has a unique subject, so the state database, its
indexes and the pages SQLite may cache keep growing: RSS should plateau once each
connection's page cache is full, at about start + (1 + reader_threads) x P.

Run: ``python -m bench.memory_bench [--seconds 180] [--page-cache-bytes 67108864,8388608]``.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from stemedb import limits

from ._common import (
    MiB,
    Report,
    Target,
    base_parser,
    bench_dir,
    command_line,
    machine_info,
    print_machine,
    proc_status_kib,
    stop_process_group,
    wait_until_serving,
)
from ._peers import free_port

MODULE = "bench.memory_bench"
START_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 30.0
REQUEST_TIMEOUT_SECONDS = 30.0
JOIN_TIMEOUT_SECONDS = REQUEST_TIMEOUT_SECONDS + 10.0  # a client ends after its request
READ_EVERY = 5  # a GET by subject after every 5th write of a client
MARK_SECONDS = 60.0  # the "after 60 s" column
PLATEAU_SLACK_MIB = 16  # interpreter arenas, aiohttp buffers: not page cache
PAYLOAD = "m" * 160  # the object encodes to about 200 bytes
ERROR_PAUSE_SECONDS = 0.05  # after a failed request, so a dead server is no busy loop


def _mib(n: int) -> str:
    return f"{n / MiB:g} MiB"


def _stemedb_command() -> list[str]:
    """The ``stemedb`` entry point installed beside this interpreter, else the same
    ``main()`` through the interpreter (``stemedb.cli`` is a package without
    ``__main__``)."""
    entry = os.path.join(os.path.dirname(sys.executable), "stemedb")
    if os.access(entry, os.X_OK):
        return [entry]
    return [sys.executable, "-c", "from stemedb.cli import main; main()"]


class Server:
    """``stemedb serve`` with ``page_cache_bytes``, in its own process group."""

    def __init__(self, root: str, page_cache_bytes: int) -> None:
        self.root = os.path.join(root, f"stemedb-cache-{page_cache_bytes}")
        os.makedirs(self.root, exist_ok=True)
        self.page_cache_bytes = page_cache_bytes
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = os.path.join(self.root, "server.log")

    def start(self) -> None:
        config = os.path.join(self.root, "api.toml")
        with open(config, "w") as f:
            f.write("# empty: defaults, then the STEMEDB_* variables of the bench\n")
        cmd = [*_stemedb_command(), "serve", "--config", config,
               "--data-dir", os.path.join(self.root, "data"),
               "--listen", f"127.0.0.1:{self.port}", "--log-level", "warning"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("STEMEDB_")}
        env["STEMEDB_STATE_PAGE_CACHE_BYTES"] = str(self.page_cache_bytes)
        with open(self.log_path, "wb") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True, cwd=self.root)
        wait_until_serving(self.proc, self._ready, "stemedb serve", self.log_path,
                           START_TIMEOUT_SECONDS)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/readyz", timeout=2) as r:
                return bool(r.status == 200)
        except (OSError, http.client.HTTPException):  # refused, 503 while starting, ...
            return False

    def status_mib(self, field_name: str) -> float:
        """VmRSS / VmHWM of the server process, in MiB (nan once it is gone)."""
        if self.proc is None:
            return math.nan
        kib = proc_status_kib(field_name, self.proc.pid)
        return kib / 1024 if kib else math.nan

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"stemedb serve exited with {self.proc.returncode} during "
                               f"the run; see {self.log_path}")

    def stop(self) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        stop_process_group(proc, STOP_TIMEOUT_SECONDS)


@dataclass
class Load:
    """The client threads' counters; each thread adds to its own slot."""

    clients: int
    writes: list[int] = field(init=False)
    reads: list[int] = field(init=False)
    errors: list[int] = field(init=False)
    first_error: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.writes = [0] * self.clients
        self.reads = [0] * self.clients
        self.errors = [0] * self.clients

    def client(self, url: str, tag: str, c: int, hard_deadline: float) -> None:
        """POST unique assertions (and a GET by subject every READ_EVERY writes) until
        ``stop`` is set or ``hard_deadline`` passes."""
        seq = 0
        while not self.stop.is_set() and time.monotonic() < hard_deadline:
            seq += 1
            subject = f"urn:bench:memory/{tag}/{c}/{seq}"
            body = {"subject": subject, "predicate": "reading", "author": f"client-{c}",
                    "object": {"client": c, "seq": seq, "payload": PAYLOAD},
                    "confidence": 0.9}
            post = urllib.request.Request(url + "/v1/assertions", method="POST",
                                          data=json.dumps(body).encode(),
                                          headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(post, timeout=REQUEST_TIMEOUT_SECONDS) as r:
                    r.read()
                self.writes[c] += 1
                if seq % READ_EVERY == 0:
                    query = urllib.parse.urlencode({"subject": subject})
                    with urllib.request.urlopen(f"{url}/v1/assertions?{query}",
                                                timeout=REQUEST_TIMEOUT_SECONDS) as r:
                        r.read()
                    self.reads[c] += 1
            except urllib.error.HTTPError as exc:  # a status >= 400
                with exc:
                    self._error(c, f"HTTP {exc.code}: {exc.read()[:200]!r}")
            except (OSError, http.client.HTTPException) as exc:
                self._error(c, f"{type(exc).__name__}: {exc}")

    def _error(self, c: int, what: str) -> None:
        self.errors[c] += 1
        if not self.first_error:
            self.first_error.append(what)
        time.sleep(ERROR_PAUSE_SECONDS)


def measure(root: str, page_cache_bytes: int, args: Any
            ) -> tuple[dict[str, Any], list[tuple[float, float, float]]]:
    """One run; returns its row and its samples (seconds since ready, RSS MiB, writes/s
    since the previous sample)."""
    server = Server(root, page_cache_bytes)
    load = Load(args.clients)
    threads: list[threading.Thread] = []
    samples: list[tuple[float, float, float]] = []
    try:
        server.start()
        rss_start = server.status_mib("VmRSS")
        samples.append((0.0, rss_start, math.nan))
        t0 = time.monotonic()
        deadline = t0 + args.seconds
        for c in range(args.clients):
            t = threading.Thread(target=load.client, daemon=True, name=f"memory-client-{c}",
                                 args=(server.url, str(page_cache_bytes), c,
                                       deadline + REQUEST_TIMEOUT_SECONDS))
            t.start()
            threads.append(t)
        marks = [k * args.sample_seconds
                 for k in range(1, math.ceil(args.seconds / args.sample_seconds))]
        marks.append(args.seconds)
        last_writes, last_t = 0, 0.0
        for mark in marks:  # bounded: one sample per mark, the last at --seconds
            time.sleep(max(0.0, t0 + mark - time.monotonic()))
            server.check_alive()
            writes = sum(load.writes)
            samples.append((mark, server.status_mib("VmRSS"),
                            (writes - last_writes) / (mark - last_t)))
            last_writes, last_t = writes, mark
        load.stop.set()
        elapsed = time.monotonic() - t0
        for t in threads:
            t.join(JOIN_TIMEOUT_SECONDS)
        rss_peak = server.status_mib("VmHWM")
    finally:
        load.stop.set()
        server.stop()
        for t in threads:
            t.join(JOIN_TIMEOUT_SECONDS)
    if any(t.is_alive() for t in threads):
        raise RuntimeError(f"a client thread did not end within {JOIN_TIMEOUT_SECONDS}s")
    writes = sum(load.writes)
    at_mark = next((rss for t, rss, _ in samples if t >= MARK_SECONDS), math.nan)
    row = {"page_cache_bytes": page_cache_bytes, "clients": args.clients, "writes": writes,
           "writes_per_s": writes / elapsed, "reads": sum(load.reads),
           "errors": sum(load.errors), "rss_start_mib": rss_start,
           "rss_60s_mib": at_mark, "rss_end_mib": samples[-1][1], "rss_peak_mib": rss_peak}
    if load.first_error:
        row["first_error"] = load.first_error[0]
    return row, samples


def samples_table(runs: list[tuple[int, list[tuple[float, float, float]]]]
                  ) -> list[dict[str, Any]]:
    """One row per sample time, an RSS and a writes/s column per run."""
    times = sorted({t for _, samples in runs for t, _, _ in samples})
    rows = []
    for t in times:
        row: dict[str, Any] = {"t_s": int(t) if t == int(t) else t}
        for cache, samples in runs:
            rss, per_s = next(((r, w) for s, r, w in samples if s == t), (math.nan, math.nan))
            row[f"rss_mib (cache {_mib(cache)})"] = rss
            row[f"writes_per_s (cache {_mib(cache)})"] = per_s
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0], MODULE)
    p.add_argument("--seconds", type=float, default=180.0,
                   help="seconds of writes per run (default: 180)")
    p.add_argument("--sample-seconds", type=float, default=10.0,
                   help="seconds between RSS samples (default: 10)")
    p.add_argument("--clients", type=int, default=4,
                   help="client threads, one request in flight each (default: 4)")
    p.add_argument("--page-cache-bytes", default="67108864,8388608",
                   help="comma-separated [state] page_cache_bytes values, one run (a fresh "
                        "server) each (default: 67108864,8388608)")
    args = p.parse_args(argv)
    caches = [int(x) for x in args.page_cache_bytes.split(",") if x]
    if not caches or min(caches) < limits.state_page_cache_bytes_min:
        p.error(f"--page-cache-bytes: each value must be at least "
                f"{limits.state_page_cache_bytes_min}")
    if args.seconds <= 0 or args.sample_seconds <= 0 or args.clients < 1:
        p.error("--seconds and --sample-seconds must be > 0, --clients >= 1")
    report = Report("memory", command_line(MODULE, argv))
    rows: list[dict[str, Any]] = []
    runs: list[tuple[int, list[tuple[float, float, float]]]] = []
    with bench_dir(args.dir, args.keep, "stemedb-bench-memory-") as root:
        info = machine_info(root)
        print_machine(info)
        for cache in caches:
            row, samples = measure(root, cache, args)
            rows.append(row)
            runs.append((cache, samples))
            print(f"  page_cache_bytes {cache:,}: {row['writes']:,} writes "
                  f"({row['writes_per_s']:,.0f}/s), RSS {row['rss_start_mib']:.0f} -> "
                  f"{row['rss_end_mib']:.0f} MiB, peak {row['rss_peak_mib']:.0f} MiB",
                  flush=True)
    report.table(f"stemedb serve RSS under unique writes ({args.clients} clients, "
                 f"{args.seconds:g} s per run)", rows)
    report.table(f"RSS over time (MiB, every {args.sample_seconds:g} s from ready)",
                 samples_table(runs))
    readers = limits.reader_threads
    for r in rows:
        cache = r["page_cache_bytes"]
        bound = r["rss_start_mib"] + (1 + readers) * cache / MiB + PLATEAU_SLACK_MIB
        report.targets.append(Target(
            f"RSS plateau with page_cache_bytes={_mib(cache)}",
            f"<= start + (1 + {readers} reader_threads) x P + {PLATEAU_SLACK_MIB} MiB "
            f"= {bound:.0f} MiB",
            f"{r['rss_end_mib']:.0f} MiB at the end (peak {r['rss_peak_mib']:.0f})",
            r["rss_end_mib"] <= bound))
    report.notes.append(
        "the bound: one page cache for the writer's connection and one per reader thread "
        f"(server.reader_threads = {readers}, the default), over the RSS at ready. A full "
        "64 MiB cache took ~120 s of ~1,700 writes/s to reach here: shorter runs show "
        "the climb, not the plateau")
    report.notes.append("peak = VmHWM of the server process (start-up included)")
    report.emit(args.json, info)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
