"""A cluster of three under load: failover, switchover, replica lag, synchronous acks.

One etcd (``etcd`` on PATH, Debian's etcd-server) and two clusters of three
``stemedb serve`` on 127.0.0.1 (``bench/_cluster.py``), one with
``synchronous_replicas = 0`` and one with ``1``, both with ``lease_ttl_seconds =
--ttl`` and the other ``[cluster]`` settings at their defaults; ``fsync="always"``.
In this order:

1. **Write rate and replica lag**: ``wrk`` at ``--clients`` connections (one request
   in flight each, as the HTTP bench loads a server) posts assertions to the leader for
   ``--seconds``, on the K=0 cluster and on the K=1 cluster, taking turns over
   ``--rounds`` (the order swapped every round: the machine is shared).  Meanwhile
   ``GET /v1/admin/status`` on the leader is sampled every 20 ms for
   ``cluster.replicas[*].lag_seconds`` (how long the oldest record a replica lacks has
   been durable on the leader) and ``lag_bytes``; both replicas' samples are pooled.
   After each run the bench waits until the replicas hold everything, so that one run's
   backlog is not the next one's load.  The cluster not named by
   ``--failover-sync-replicas`` (default: the K=1 one) is stopped after these runs.
2. **Unplanned failover**: ``--writers`` threads (``_cluster.Writers``: one request in
   flight each, at whichever node leads, following 307s, trying the next node 10 ms
   after a refusal) write to the remaining cluster; ``kill -9`` of the leader; the time
   from the kill to the first 201 in a newer term.  The killed node is started again
   on its data directory and must stream before the next round.  A round with no new
   leader within twice the target is a miss: its notes quote each member's role, term
   and log term and the cluster lines of the logs, and every member is restarted so
   that the rounds after can run.  ``--rounds`` times.
3. **Planned switchover**: the same writers; ``POST /v1/admin/switchover`` (no
   candidate) to the leader.  The window is the time between the last 201 in the old
   term and the first 201 in the new term, as the writers saw them.  ``--rounds``
   times, each from the leader the previous one made.

Targets: failover within TTL + 3 s, every round; a switchover
window within 2 s, every round; replica lag p99 within 100 ms under the load; the
write rate with one synchronous replica at least half the asynchronous one (the median
of the rounds' ratios).

Run: ``python -m bench.cluster_bench [--ttl 10] [--rounds 3] [--seconds 10]``.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import sys
import time
from typing import Any

import httpx

from ._cluster import POLL_SECONDS, Ack, BenchCluster, Etcd, Writers
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
)
from ._peers import ensure_tool
from .http_bench import write_scripts, wrk

MODULE = "bench.cluster_bench"
NODES = 3
LAG_SAMPLE_SECONDS = 0.02  # how often the leader's view of its replicas is sampled
CATCH_UP_TIMEOUT_SECONDS = 120.0  # after a load run, for the replicas to hold it all
SWITCHOVER_REQUEST_TIMEOUT_SECONDS = 60.0  # the server gives up after 30 s
SWITCHOVER_WINDOW_SECONDS_MAX = 2.0  # the target
# A switchover answered 409 (e.g. the previous one's request not yet cleared) is sent
# again after this pause, at most this many times in all.
SWITCHOVER_RETRY_SECONDS = 0.5
SWITCHOVER_ATTEMPTS_MAX = 10
FAILOVER_MARGIN_SECONDS = 3.0  # the target: lease TTL + 3 s
FAILOVER_WAIT_FACTOR = 2  # a failover round waits twice the target, then is a miss
RECOVERY_MARGIN_SECONDS = 10.0  # + 3 TTLs: a cluster restarted after a miss elects
LAG_P99_SECONDS_MAX = 0.1  # the target
SYNC_RATE_RATIO_MIN = 0.5  # the target: K=1 at least half of K=0's write rate
LOG_LINES_QUOTED_MAX = 8  # per node
ACKS_BEFORE_FAULT = 50  # writes acknowledged by the current leader before each fault
ACKS_TIMEOUT_SECONDS = 30.0
# The log lines a missed target quotes: the cluster's and the replication's own.
LOG_WORDS = ("stemedb.cluster", "stemedb.replication", " ERROR ")


class ReplicaLagProbe:
    """``GET /v1/admin/status`` on the leader -> for each of ``replicas``, in order,
    (``lag_seconds``, ``lag_bytes``).  A :class:`Sampler` probe: a replica missing from
    the leader's view makes the sample an error (skipped), not a zero."""

    def __init__(self, url: str, replicas: list[str]) -> None:
        self.replicas = replicas
        self.client = httpx.Client(base_url=url, timeout=5)

    def __call__(self) -> tuple[float, ...]:
        try:
            r = self.client.get("/v1/admin/status")
            r.raise_for_status()
            seen = r.json()["cluster"]["replicas"]
        except httpx.HTTPError as exc:
            raise OSError(str(exc)) from exc
        try:
            return tuple(float(seen[n][key]) for n in self.replicas
                         for key in ("lag_seconds", "lag_bytes"))
        except KeyError as exc:
            raise OSError(f"replica {exc} not in the leader's view") from exc

    def close(self) -> None:
        self.client.close()


def load_run(cluster: BenchCluster, post: str, clients: int, seconds: float
             ) -> dict[str, Any]:
    """``wrk`` against the leader with the replicas' lag sampled meanwhile; then the
    wait until the replicas hold everything (``catch_up_s``)."""
    lead = cluster.wait_leader(ACKS_TIMEOUT_SECONDS)
    replicas = [n for n in cluster.alive() if n != lead]
    probe = ReplicaLagProbe(cluster.urls[lead], replicas)
    sampler = Sampler(probe, LAG_SAMPLE_SECONDS, 0.0, max(1, round(seconds))).start()
    try:
        r = wrk(cluster.urls[lead], post, clients, seconds)
    finally:
        sampler.stop()
        probe.close()
    t0 = time.monotonic()
    cluster.wait_caught_up(CATCH_UP_TIMEOUT_SECONDS)
    catch_up = time.monotonic() - t0
    lag_s = sorted(v for i in range(0, 2 * len(replicas), 2) for v in sampler.column(i))
    lag_b = sorted(v for i in range(1, 2 * len(replicas), 2) for v in sampler.column(i))
    return {**r, "lag_p50_ms": percentile(lag_s, 50) * 1e3,
            "lag_p99_ms": percentile(lag_s, 99) * 1e3,
            "lag_max_ms": lag_s[-1] * 1e3 if lag_s else math.nan,
            "lag_p99_bytes": percentile(lag_b, 99),
            "lag_max_bytes": lag_b[-1] if lag_b else math.nan,
            "lag_samples": len(sampler.samples), "lag_sample_errors": sampler.errors,
            "catch_up_s": catch_up}


def rate_rounds(clusters: dict[int, BenchCluster], post: str, args: Any
                ) -> list[dict[str, Any]]:
    rows = []
    order = sorted(clusters)
    for k in range(args.rounds):
        for sync in order if k % 2 == 0 else order[::-1]:
            r = load_run(clusters[sync], post, args.clients, args.seconds)
            rows.append({"synchronous_replicas": sync, "round": k + 1,
                         "clients": args.clients, **r})
            print(f"  round {k + 1}: synchronous_replicas={sync}: {r['per_s']:.0f}/s, "
                  f"replica lag p99 {r['lag_p99_ms']:.1f} ms", flush=True)
    return rows


def _quote_logs(report: Report, cluster: BenchCluster, why: str) -> None:
    report.notes.append(why)
    for n in cluster.nodes:
        for line in cluster.log_lines(n, LOG_WORDS, lines_max=LOG_LINES_QUOTED_MAX):
            report.notes.append(f"  {cluster.name}/{n}: {line}")


def switchover_rounds(cluster: BenchCluster, writers: Writers, rounds: int,
                      report: Report) -> list[dict[str, Any]]:
    rows = []
    with httpx.Client(timeout=SWITCHOVER_REQUEST_TIMEOUT_SECONDS) as http:
        for k in range(rounds):
            old = cluster.wait_leader(ACKS_TIMEOUT_SECONDS)
            writers.wait_acks(ACKS_BEFORE_FAULT, ACKS_TIMEOUT_SECONDS)
            term = cluster.term(old)
            for attempt in range(1, SWITCHOVER_ATTEMPTS_MAX + 1):  # bounded
                t0 = time.monotonic()
                r = http.post(cluster.urls[old] + "/v1/admin/switchover", json={})
                request_s = time.monotonic() - t0
                if r.status_code != 409 or attempt == SWITCHOVER_ATTEMPTS_MAX:
                    break
                report.notes.append(f"switchover round {k + 1} from {old}, attempt "
                                    f"{attempt}: HTTP 409 {r.text[:300]}; tried again after "
                                    f"{SWITCHOVER_RETRY_SECONDS:g} s")
                time.sleep(SWITCHOVER_RETRY_SECONDS)
            row: dict[str, Any] = {"round": k + 1, "from": old, "old_term": term,
                                   "attempts": attempt, "http_status": r.status_code,
                                   "request_s": request_s}
            if r.status_code != 200:
                row.update({"to": None, "window_s": math.nan})
                rows.append(row)
                _quote_logs(report, cluster, f"switchover round {k + 1} from {old}: HTTP "
                            f"{r.status_code} {r.text[:300]}")
                continue
            first_new = writers.wait_ack(ACKS_TIMEOUT_SECONDS, after_mono=t0,
                                         term_above=term)
            last_old = max(a.done_mono for a in writers.acked_since(t0 - 60)
                           if a.term <= term)
            window = first_new.done_mono - last_old
            row.update({"to": r.json()["leader"], "new_term": first_new.term,
                        "server_s": r.json().get("seconds"), "window_s": window})
            rows.append(row)
            print(f"  switchover {k + 1}: {old} -> {row['to']}: writes refused for "
                  f"{window:.3f} s", flush=True)
            if window > SWITCHOVER_WINDOW_SECONDS_MAX:
                _quote_logs(report, cluster, f"switchover round {k + 1} ({old} -> "
                            f"{row['to']}): a window of {window:.3f} s")
            cluster.wait_streaming(old, ACKS_TIMEOUT_SECONDS)
    return rows


def _first_ack_in_new_term(cluster: BenchCluster, writers: Writers, old: str, term: int,
                           t_kill: float, wait_seconds: float) -> tuple[Ack | None, float]:
    """The first 201 of a term above ``term`` after ``t_kill`` (None after
    ``wait_seconds``), and how long after the kill ``/leader`` first answered 200 on
    another node (nan if never)."""
    end = t_kill + wait_seconds
    leader_s = math.nan
    while time.monotonic() < end:  # bounded by ``end``
        if math.isnan(leader_s):
            lead = cluster.leader()
            if lead is not None and lead != old:
                leader_s = time.monotonic() - t_kill
        with contextlib.suppress(TimeoutError):
            return writers.wait_ack(POLL_SECONDS, after_mono=t_kill, term_above=term), leader_s
    return None, leader_s


def _recover(cluster: BenchCluster, killed: str, report: Report) -> None:
    """No member took over while ``killed`` was down: start it again, and if no leader
    follows, restart every member (a clean stop, then a start on its data directory),
    as an operator would, so that the rounds after can run."""
    t0 = time.monotonic()
    bound = cluster.ttl_seconds * 3 + RECOVERY_MARGIN_SECONDS
    cluster.restart(killed, streaming=False)
    try:
        lead = cluster.wait_leader(bound)
        how = f"{killed} started again"
    except TimeoutError:
        for n in cluster.alive():
            cluster.restart(n, streaming=False)
        lead = cluster.wait_leader(bound)
        how = "every member restarted"
    for n in cluster.alive():
        if n != lead:
            cluster.wait_streaming(n, bound)
    report.notes.append(f"  recovered: {how}; {lead} leads "
                        f"{time.monotonic() - t0:.1f} s later")


def failover_rounds(cluster: BenchCluster, writers: Writers, rounds: int,
                    report: Report) -> list[dict[str, Any]]:
    rows = []
    bound = cluster.ttl_seconds + FAILOVER_MARGIN_SECONDS
    wait = bound * FAILOVER_WAIT_FACTOR
    for k in range(rounds):
        old = cluster.wait_leader(ACKS_TIMEOUT_SECONDS)
        writers.wait_acks(ACKS_BEFORE_FAULT, ACKS_TIMEOUT_SECONDS)
        term = cluster.term(old)
        refused_before = writers.refused
        t_kill = cluster.kill(old)
        first_new, leader_s = _first_ack_in_new_term(cluster, writers, old, term, t_kill,
                                                     wait)
        row: dict[str, Any] = {"round": k + 1, "killed": old, "old_term": term,
                               "to": first_new.node if first_new else None,
                               "new_term": first_new.term if first_new else None,
                               "leader_seen_s": leader_s,
                               "first_ack_s": (first_new.done_mono - t_kill if first_new
                                               else math.nan),
                               "refused": writers.refused - refused_before}
        if first_new is None:
            print(f"  failover {k + 1}: kill -9 {old}; no write acknowledged in a newer "
                  f"term within {wait:.0f} s", flush=True)
            _quote_logs(report, cluster, f"failover round {k + 1}: no write acknowledged in "
                        f"a term above {term} within {wait:.0f} s of the kill -9 of {old}; "
                        f"the members then: {cluster.roles()}")
        else:
            print(f"  failover {k + 1}: kill -9 {old}; {first_new.node} acknowledged after "
                  f"{row['first_ack_s']:.3f} s", flush=True)
            if row["first_ack_s"] > bound:
                _quote_logs(report, cluster, f"failover round {k + 1} (kill -9 {old}): the "
                            f"first write in the new term after {row['first_ack_s']:.3f} s")
        rows.append(row)
        if first_new is None:
            _recover(cluster, old, report)
            continue
        t0 = time.monotonic()
        cluster.restart(old)
        row["rejoin_s"] = time.monotonic() - t0
    return rows


def _rounds_text(seconds: list[float], missed: str) -> str:
    """'max 1.23 s (rounds: 1.00, 1.23 s)', a missed round (nan) shown as ``missed``."""
    done = [t for t in seconds if not math.isnan(t)]
    if not seconds:
        return "no round ran"
    each = ", ".join(missed if math.isnan(t) else f"{t:.2f}" for t in seconds)
    top = f"max {max(done):.2f} s" if done else "no round met"
    return f"{top} (rounds: {each} s)"


def add_targets(report: Report, loads: list[dict[str, Any]], switchovers: list[dict[str, Any]],
                failovers: list[dict[str, Any]], args: Any) -> None:
    bound = args.ttl + FAILOVER_MARGIN_SECONDS
    times = [r["first_ack_s"] for r in failovers]
    report.targets.append(Target(
        f"unplanned failover: kill -9 of the leader under load -> first write "
        f"acknowledged by the new leader (synchronous_replicas = "
        f"{args.failover_sync_replicas}, TTL {args.ttl} s)",
        f"<= {bound:g} s (TTL + 3 s), every round", _rounds_text(times, "no new leader"),
        len(times) == args.rounds and all(t <= bound for t in times)))
    windows = [r["window_s"] for r in switchovers]
    report.targets.append(Target(
        f"planned switchover under load: longest window of refused writes "
        f"(synchronous_replicas = {args.failover_sync_replicas})",
        f"<= {SWITCHOVER_WINDOW_SECONDS_MAX:g} s, every round",
        _rounds_text(windows, "refused"), len(windows) == args.rounds
        and all(w <= SWITCHOVER_WINDOW_SECONDS_MAX for w in windows)))
    for sync in sorted({r["synchronous_replicas"] for r in loads}):
        rs = [r for r in loads if r["synchronous_replicas"] == sync]
        p99 = max(r["lag_p99_ms"] for r in rs)
        report.targets.append(Target(
            f"replica lag under {args.clients} writers, synchronous_replicas = {sync}",
            f"p99 <= {LAG_P99_SECONDS_MAX * 1e3:g} ms (the worst round)",
            f"p99 {p99:.1f} ms, p50 {statistics.median(r['lag_p50_ms'] for r in rs):.1f} "
            f"ms, max {max(r['lag_max_ms'] for r in rs):.1f} ms; "
            f"{statistics.median(r['per_s'] for r in rs):,.0f} writes/s",
            p99 <= LAG_P99_SECONDS_MAX * 1e3))
    ratios = []
    for k in range(1, args.rounds + 1):
        rate = {r["synchronous_replicas"]: r["per_s"] for r in loads if r["round"] == k}
        if rate.get(0):
            ratios.append(rate[1] / rate[0])
    if ratios:
        k0 = statistics.median(r["per_s"] for r in loads if r["synchronous_replicas"] == 0)
        k1 = statistics.median(r["per_s"] for r in loads if r["synchronous_replicas"] == 1)
        ratio = statistics.median(ratios)
        report.targets.append(Target(
            f"write rate at {args.clients} clients, synchronous_replicas = 1 against 0",
            f">= {SYNC_RATE_RATIO_MIN:.0%} (median of the rounds' ratios)",
            f"{ratio:.0%} ({k1:,.0f} vs {k0:,.0f} writes/s; rounds: "
            f"{', '.join(f'{x:.0%}' for x in ratios)})", ratio >= SYNC_RATE_RATIO_MIN))


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0], MODULE)
    p.add_argument("--ttl", type=int, default=10,
                   help="[cluster] lease_ttl_seconds of every node (default: 10)")
    p.add_argument("--rounds", type=int, default=3,
                   help="failovers, switchovers, and load runs of each K (default: 3)")
    p.add_argument("--seconds", type=float, default=10.0,
                   help="seconds of each load run (default: 10)")
    p.add_argument("--clients", type=int, default=64,
                   help="wrk connections of the load runs (default: 64)")
    p.add_argument("--writers", type=int, default=8,
                   help="writer threads during switchovers and failovers (default: 8)")
    p.add_argument("--failover-sync-replicas", type=int, choices=(0, 1), default=0,
                   help="synchronous_replicas of the cluster that is switched over and "
                        "killed (default: 0, the product's default)")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.ttl < 2:
        p.error("--rounds must be at least 1 and --ttl at least 2 (etcd's minimum lease)")
    ensure_tool("wrk", "wrk")
    ensure_tool("etcd", "etcd-server")
    report = Report("cluster", command_line(MODULE, argv))
    loads: list[dict[str, Any]] = []
    switchovers: list[dict[str, Any]] = []
    failovers: list[dict[str, Any]] = []
    with bench_dir(args.dir, args.keep, "stemedb-bench-cluster-") as root:
        info = machine_info(root)
        print_machine(info)
        post = write_scripts(root)["post"]
        etcd = Etcd(root)
        clusters: dict[int, BenchCluster] = {}
        try:
            etcd.start()
            report.notes.append(f"etcd {etcd.version()} (one member, on 127.0.0.1)")
            for sync in (0, 1):
                clusters[sync] = BenchCluster(root, etcd, f"bench-k{sync}", nodes=NODES,
                                              ttl_seconds=args.ttl,
                                              synchronous_replicas=sync).start()
            loads = rate_rounds(clusters, post, args)
            clusters.pop(1 - args.failover_sync_replicas).close()
            target = clusters[args.failover_sync_replicas]
            with Writers(target, args.writers) as writers:
                try:
                    failovers = failover_rounds(target, writers, args.rounds, report)
                    switchovers = switchover_rounds(target, writers, args.rounds, report)
                except TimeoutError as exc:  # a cluster that did not come back: say so
                    report.notes.append(f"aborted: {exc}; the members: {target.roles()}")
            report.notes.append(
                f"writers during switchovers and failovers: {len(writers.acks):,} "
                f"acknowledged, {writers.refused:,} refused or failed (each retried)")
        finally:
            for c in clusters.values():
                with contextlib.suppress(Exception):
                    c.close()
            etcd.stop()
        wrk_version = run(["wrk", "-v"], timeout=10, check=False).stdout.split("[")[0].strip()
        report.notes.append(
            f"load runs: {wrk_version}, -c {args.clients} -t 2, POST /v1/assertions to the "
            f"leader; lag: GET /v1/admin/status on the leader every "
            f"{LAG_SAMPLE_SECONDS * 1e3:.0f} ms, cluster.replicas[*].lag_seconds and "
            "lag_bytes of both replicas pooled; catch_up_s: from the end of the load "
            "until every replica held the leader's durable LSN")
    report.table(f"Write rate and replica lag at {args.clients} clients (3 nodes, "
                 "fsync=always)", loads)
    report.table(f"Unplanned failover under {args.writers} writers (kill -9 of the "
                 f"leader, lease TTL {args.ttl} s)", failovers)
    report.table(f"Planned switchover under {args.writers} writers (POST "
                 "/v1/admin/switchover; window: last 201 of the old term to the first of "
                 "the new)", switchovers)
    add_targets(report, loads, switchovers, failovers, args)
    report.emit(args.json, info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
