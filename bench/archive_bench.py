"""What continuous WAL archiving costs, and the recovery point it keeps under load.

``stemedb serve`` (``fsync="always"``) takes ``POST /v1/assertions`` from ``wrk`` at
``--clients`` connections, three ways, taking turns over ``--rounds``:

- **archive off**: no ``[archive] url``;
- **archive to file://**: a directory on the bench disk;
- **archive to S3**: moto's S3 server (``moto.server``, a separate process on
  127.0.0.1) as the store, reached through boto3 exactly as a real bucket is
  (``AWS_ENDPOINT_URL``).

During each archived run ``GET /v1/admin/status`` is sampled every 50 ms for
``archive.lag_seconds`` (the age of the oldest durable record not yet archived: what a
lost disk would cost at that moment, the recovery point) and ``archive.backlog_bytes``.
After the load, the bench waits until the archive has caught up and reports how long
that took.

Targets (issue #16): the p99 of the archive lag at most 2 s to the local S3 server, and
archiving costing at most 10 % of the write rate (S3 against off, medians of the same
run).

Run: ``python -m bench.archive_bench [--seconds 10] [--clients 64] [--rounds 2]``.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
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
    rounds_summary,
    stop_process_group,
    wait_until_serving,
)
from ._peers import ensure_tool, free_port
from .http_bench import StemeServer, write_scripts, wrk

MODULE = "bench.archive_bench"
LAG_SAMPLE_SECONDS = 0.05
CATCH_UP_TIMEOUT_SECONDS = 120.0
S3_START_TIMEOUT_SECONDS = 60.0
S3_STOP_TIMEOUT_SECONDS = 30.0
BUCKET = "stemedb-bench"
RPO_P99_SECONDS_MAX = 2.0  # the target: p99 of the archive lag to the local S3 server
ARCHIVE_COST_MAX = 0.10  # the target: archiving costs at most 10 % of the write rate
MODES = ("archive off", "archive to file://", "archive to S3 (moto)")


class S3Server:
    """moto's S3 server in a process of its own on a free loopback port."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.env = {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "bench",
                    "AWS_SECRET_ACCESS_KEY": "bench-secret", "AWS_REGION": "us-east-1"}

    def start(self) -> None:
        self.log = open(os.path.join(self.root, "moto.log"), "wb")  # noqa: SIM115 - stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_until_serving(self.proc, self._serving, "moto S3 server", self.log.name,
                           S3_START_TIMEOUT_SECONDS)
        import boto3

        boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                     aws_access_key_id="bench", aws_secret_access_key="bench-secret"
                     ).create_bucket(Bucket=BUCKET)

    def _serving(self) -> bool:
        try:
            httpx.get(self.endpoint, timeout=2)
            return True
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            stop_process_group(self.proc, S3_STOP_TIMEOUT_SECONDS)
            self.proc = None
            self.log.close()


class ArchiveProbe:
    """``GET /v1/admin/status`` -> (archive.lag_seconds, archive.backlog_bytes)."""

    def __init__(self, url: str) -> None:
        self.client = httpx.Client(base_url=url, timeout=5)

    def archive(self) -> dict[str, Any]:
        try:
            r = self.client.get("/v1/admin/status")
            r.raise_for_status()
            a: dict[str, Any] = r.json()["archive"]
        except httpx.HTTPError as exc:
            raise OSError(str(exc)) from exc
        return a

    def __call__(self) -> tuple[float, ...]:
        a = self.archive()
        return float(a["lag_seconds"]), float(a["backlog_bytes"])

    def close(self) -> None:
        self.client.close()


def measure(root: str, name: str, post: str, clients: int, seconds: float,
            env: dict[str, str] | None) -> dict[str, Any]:
    server = StemeServer(root, name, env=env)
    server.start()
    try:
        if env is None:
            return wrk(server.url, post, clients, seconds)
        probe = ArchiveProbe(server.url)
        sampler = Sampler(probe, LAG_SAMPLE_SECONDS, 0.0, max(1, round(seconds))).start()
        try:
            r = wrk(server.url, post, clients, seconds)
        finally:
            sampler.stop()
        t0 = time.monotonic()
        while True:  # bounded by CATCH_UP_TIMEOUT_SECONDS
            a = probe.archive()
            if a["archived_lsn"] >= a["durable_lsn"]:
                break
            if time.monotonic() - t0 > CATCH_UP_TIMEOUT_SECONDS:
                raise RuntimeError(f"{name}: the archive did not catch up: {a}")
            time.sleep(LAG_SAMPLE_SECONDS)
        catch_up = time.monotonic() - t0
        failures = sum(a["failures"].values())
        probe.close()
        lag, backlog = sorted(sampler.column(0)), sorted(sampler.column(1))
        return {**r, "lag_p50_s": percentile(lag, 50), "lag_p99_s": percentile(lag, 99),
                "lag_max_s": lag[-1] if lag else float("nan"),
                "backlog_p99_bytes": percentile(backlog, 99), "lag_samples": len(lag),
                "catch_up_s": catch_up, "archive_failures": failures,
                "objects": a["objects_archived"], "archived_bytes": a["bytes_archived"]}
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0], MODULE)
    p.add_argument("--seconds", type=float, default=10.0,
                   help="seconds of load per mode and round (default: 10)")
    p.add_argument("--clients", type=int, default=64,
                   help="concurrent connections (default: 64)")
    p.add_argument("--rounds", type=int, default=2,
                   help="measurements of each mode, taking turns (default: 2)")
    args = p.parse_args(argv)
    ensure_tool("wrk", "wrk")
    report = Report("archive", command_line(MODULE, argv))
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
    with bench_dir(args.dir, args.keep, "stemedb-bench-archive-") as root:
        info = machine_info(root)
        print_machine(info)
        post = write_scripts(root)["post"]
        s3 = S3Server(root)
        s3.start()
        try:
            for k in range(max(1, args.rounds)):
                envs: dict[str, dict[str, str] | None] = {
                    MODES[0]: None,
                    MODES[1]: {"STEMEDB_ARCHIVE_URL":
                               f"file://{os.path.join(root, f'archive-{k}')}"},
                    MODES[2]: {"STEMEDB_ARCHIVE_URL": f"s3://{BUCKET}/round-{k}", **s3.env},
                }
                for mode, env in envs.items():
                    r = measure(root, f"{mode.split()[-1].strip('(:/)')}-{k}", post,
                                args.clients, args.seconds, env)
                    runs[mode].append(r)
                    lag = f", lag p99 {r['lag_p99_s']:.3f} s" if "lag_p99_s" in r else ""
                    print(f"  round {k + 1}: {mode}: {r['per_s']:.0f}/s{lag}", flush=True)
        finally:
            s3.stop()
    rows = []
    for mode, rs in runs.items():
        row: dict[str, Any] = {"mode": mode, "clients": args.clients,
                               **rounds_summary(rs)}
        if "lag_p99_s" in rs[0]:
            row.update({
                "lag_p50_s": statistics.median(r["lag_p50_s"] for r in rs),
                "lag_p99_s": max(r["lag_p99_s"] for r in rs),
                "lag_max_s": max(r["lag_max_s"] for r in rs),
                "backlog_p99_bytes": max(r["backlog_p99_bytes"] for r in rs),
                "catch_up_s": max(r["catch_up_s"] for r in rs),
                "archive_failures": sum(r["archive_failures"] for r in rs)})
        rows.append(row)
    report.table(f"POST /v1/assertions at {args.clients} clients, fsync=always "
                 "(median rate of the rounds; lag columns: the worst round)", rows)
    off, s3_row = rows[0]["per_s"], rows[2]
    cost = 1 - s3_row["per_s"] / off if off else float("nan")
    report.targets.append(Target(
        "RPO: p99 of stemedb_archive_lag_seconds under load, to a local S3 server",
        f"<= {RPO_P99_SECONDS_MAX:g} s",
        f"{s3_row['lag_p99_s']:.3f} s (max {s3_row['lag_max_s']:.3f} s, "
        f"{s3_row['per_s']:,.0f} writes/s)", s3_row["lag_p99_s"] <= RPO_P99_SECONDS_MAX))
    report.targets.append(Target(
        f"archiving's cost at {args.clients} clients (S3 against off, same run)",
        f"<= {ARCHIVE_COST_MAX:.0%} of writes/s",
        f"{cost:.1%} ({s3_row['per_s']:,.0f} vs {off:,.0f} writes/s; file:// "
        f"{1 - rows[1]['per_s'] / off:.1%})" if off else "n/a", cost <= ARCHIVE_COST_MAX))
    report.notes.append("lag: GET /v1/admin/status -> archive.lag_seconds every 50 ms; "
                        "catch_up_s: from the end of the load until archived_lsn reached "
                        "durable_lsn")
    report.emit(args.json, info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
