"""Seeded crash simulation: at least 1,000 crash points in CI (STEMEDB_SIM_SEEDS for more).

Each seed crashes the engine at a random file-system operation, recovers, and checks
that every acknowledged write is there, nothing unacknowledged is half-applied, and
the state equals a replay of the durable WAL.  See stemedb.testing.crashsim.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import os
import tempfile
from typing import Any

from stemedb.testing.crashsim import ReplicaSimResult, SimResult, run_replica_seed, run_seed

SEEDS = int(os.environ.get("STEMEDB_SIM_SEEDS", "1000"))
WORKERS = 2


def _run_range(start: int, stop: int, replica: bool = False
               ) -> list[SimResult] | list[ReplicaSimResult] | str:
    """Seeds ``start``..``stop`` of the engine's simulation (or the replica's)."""
    logging.disable(logging.CRITICAL)
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    out: list[Any] = []
    run = run_replica_seed if replica else run_seed
    with tempfile.TemporaryDirectory(prefix="stemedb-sim-", dir=base) as tmp:
        for seed in range(start, stop):
            try:
                out.append(run(seed, tmp))
            except Exception as exc:
                how = (f"stemedb.testing.crashsim.run_replica_seed({seed}, DIR)" if replica
                       else f"python -m stemedb.testing.crashsim --seed {seed}")
                return f"{exc}\nreproduce with seed={seed} ({how})"
    return out


def test_crash_simulation_every_acknowledged_write_survives() -> None:
    chunk = (SEEDS + WORKERS - 1) // WORKERS
    ranges = [(i, min(SEEDS, i + chunk)) for i in range(0, SEEDS, chunk)]
    results: list[SimResult] = []
    with cf.ProcessPoolExecutor(WORKERS) as pool:
        for got in pool.map(_run_range, *zip(*ranges, strict=True)):
            assert not isinstance(got, str), got
            results.extend(got)
    assert len(results) == SEEDS
    crashed = [r for r in results if r.crashed_at_op is not None]
    # The workload must actually exercise what it claims to: crashes mid-write, torn
    # tails cut by recovery, in-flight requests that did become durable, whole-WAL
    # replays, and segments removed by checkpoints.
    assert len(crashed) >= SEEDS // 2
    assert sum(r.torn_tail for r in results) >= SEEDS // 100
    assert sum(r.matched == "acked+inflight" for r in results) >= SEEDS // 50
    assert sum(r.full_replay_checked for r in results) >= SEEDS // 4
    assert sum(r.segments_removed for r in results) >= 1
    assert sum(r.group_commits for r in results) >= SEEDS  # groups of several requests
    # Crashes while acknowledged records waited for the applier: recovery applied them.
    assert sum(r.crashed_unapplied for r in results) >= SEEDS // 20


def test_same_seed_same_run() -> None:
    logging.disable(logging.CRITICAL)
    with tempfile.TemporaryDirectory() as tmp:
        a = run_seed(12, tmp)
        b = run_seed(12, tmp)
    assert a == b


REPLICA_SEEDS = int(os.environ.get("STEMEDB_SIM_REPLICA_SEEDS", "400"))


def test_replica_crash_simulation_keeps_a_prefix_of_the_leaders_log() -> None:
    chunk = (REPLICA_SEEDS + WORKERS - 1) // WORKERS
    ranges = [(i, min(REPLICA_SEEDS, i + chunk)) for i in range(0, REPLICA_SEEDS, chunk)]
    results: list[ReplicaSimResult] = []
    with cf.ProcessPoolExecutor(WORKERS) as pool:
        for got in pool.map(_run_range, *zip(*ranges, strict=True),
                            [True] * len(ranges)):
            assert not isinstance(got, str), got
            results.extend(got)
    assert len(results) == REPLICA_SEEDS
    # Crashes mid-stream, torn replica tails, groups durable though replicate() never
    # returned, and segment rotations that follow the leader's.
    assert sum(r.crashed_at_op is not None for r in results) >= REPLICA_SEEDS // 2
    assert sum(r.torn_tail for r in results) >= REPLICA_SEEDS // 100
    assert sum(r.recovered_end > r.acked_end for r in results) >= REPLICA_SEEDS // 10
    assert sum(r.rotations for r in results) >= REPLICA_SEEDS // 4
