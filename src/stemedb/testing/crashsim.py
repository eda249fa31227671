"""Seeded crash simulation of the engine.

One seed is one run: a random workload (assertions, votes, batches, idempotent
retries, epoch seals, checkpoints, holds) against an engine on a
:class:`SimFileSystem` that loses power at a random operation.  Then:

1. the file system is replaced by its crash image (unsynced writes lost, the last
   write torn at a sector boundary, unsynced directory entries forgotten);
2. SQLite, which lives outside the simulated layer, is rolled back to a random
   commit point at or after its last durable checkpoint;
3. a new engine recovers, and its state must equal a reference engine that ran
   the acknowledged requests without a crash - or those plus the one request in
   flight at the crash, which may or may not have become durable;
4. when a hold kept every segment, a fresh state rebuilt from the whole surviving
   WAL must equal the recovered state;
5. the recovered engine takes more writes, stops cleanly, and restarts replaying
   nothing.

Run more seeds than CI does with ``python -m stemedb.testing.crashsim --seeds 20000``.
:func:`run_replica_seed` does the same for a replica's write path (the leader's records
appended at its LSNs): the recovered log is a prefix of the leader's.
A failure prints ``reproduce with seed=N``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from .. import state as st
from ..engine import Engine, EngineConfig, WriteRequest, body_digest, validate_request
from ..errors import StemeError
from ..metrics import Metrics
from ..wal import RecordType
from .simfs import SimCrash, SimFileSystem

SEGMENT_BYTES = 64 * 1024  # the minimum: rotations happen every few dozen records


@dataclass
class SimResult:
    seed: int
    requests: int
    acked: int
    crashed_at_op: int | None
    inflight: bool
    matched: str  # "acked" or "acked+inflight"
    torn_tail: bool
    segments_removed: int
    full_replay_checked: bool
    group_commits: int = 0
    # The crash came while durable records waited for the applier: recovery had to
    # apply records that writers had been told were written.
    crashed_unapplied: bool = False
    notes: list[str] = field(default_factory=list)


class SimFailure(AssertionError):
    pass


class _Clock:
    """A clock that stands still: group commits and single commits then stamp records
    alike, so a reference that applies requests one at a time can be compared with a
    subject that grouped them."""

    def __call__(self) -> float:
        return 1_764_097_200.0


def _engine(data_dir: str, fs: SimFileSystem, cfg: EngineConfig,
            on_ckpt: Any = None) -> Engine:
    return Engine(data_dir, cfg, fs=fs, metrics=Metrics(), clock=_Clock(), background=False,
                  on_checkpoint_durable=on_ckpt)


def _dump(db_path: str) -> dict[str, Any]:
    conn = sqlite3.connect(db_path)
    try:
        return st.dump(conn)
    finally:
        conn.close()


def _snapshot(db_path: str) -> bytes:
    conn = sqlite3.connect(db_path)
    try:
        return conn.serialize()
    finally:
        conn.close()


def _restore(db_path: str, image: bytes) -> None:
    """Put a serialized SQLite image back as the database file (no -wal: a clean file)."""
    for suffix in ("-wal", "-shm"):
        if os.path.exists(db_path + suffix):
            os.remove(db_path + suffix)
    with open(db_path + ".tmp", "wb") as f:
        f.write(image)
    os.replace(db_path + ".tmp", db_path)


def _random_request(rng: random.Random, next_id: int, keys: list[tuple[str, WriteRequest]]
                    ) -> WriteRequest:
    def assertion() -> dict[str, Any]:
        a: dict[str, Any] = {"subject": f"s{rng.randrange(50)}",
                             "predicate": rng.choice(["is", "has", "knows"]),
                             "object": rng.choice([1, "x" * rng.randrange(1, 2000),
                                                   {"k": [1, 2, None]}, None, 2.5]),
                             "author": f"a{rng.randrange(5)}"}
        if rng.random() < 0.3:
            a["confidence"] = round(rng.random(), 3)
        return a

    def vote() -> dict[str, Any]:
        aid = rng.randrange(1, next_id + 3)  # sometimes an unknown id: must be refused
        return {"assertion_id": aid, "voter": f"v{rng.randrange(8)}",
                "value": rng.choice([1, -1])}

    r = rng.random()
    if keys and r < 0.05:
        _key, req = rng.choice(keys)  # an idempotent retry of an earlier request
        return req
    if r < 0.45:
        req = WriteRequest(RecordType.ASSERT, [{"assert": assertion()}])
    elif r < 0.75:
        req = WriteRequest(RecordType.VOTE, [{"vote": vote()}])
    elif r < 0.95:
        ops = [{"assert": assertion()} if rng.random() < 0.6 else {"vote": vote()}
               for _ in range(rng.randint(1, 25))]
        req = WriteRequest(RecordType.BATCH, ops)
    else:
        req = WriteRequest(RecordType.SEAL)
    if rng.random() < 0.2:
        req.idempotency_key = f"key-{rng.randrange(1 << 30)}"
        req.body_sha256 = body_digest(repr(req.ops).encode())
        keys.append((req.idempotency_key, req))
    return req


def run_seed(seed: int, workdir: str, *, fsync: str = "always") -> SimResult:
    rng = random.Random(seed)
    n_requests = rng.randint(5, 160)
    crash_at = rng.randint(1, 3 * n_requests)
    keep_all = rng.random() < 0.5
    cfg = EngineConfig(fsync=fsync, segment_size_bytes=SEGMENT_BYTES, disk_reserve_bytes=0,
                       checkpoint_wal_bytes=rng.choice([8 * 1024, 64 * 1024, 10**12]),
                       checkpoint_interval_seconds=1e9, replay_budget_seconds=1e9,
                       idempotency_ttl_seconds=1e12)
    base = os.path.join(workdir, f"seed{seed}")
    shutil.rmtree(base, ignore_errors=True)
    subject_dir, ref_dir, replay_dir = (os.path.join(base, d) for d in ("a", "ref", "full"))
    for d in (subject_dir, ref_dir, replay_dir):
        os.makedirs(d)
    fs = SimFileSystem(seed, crash_after_ops=crash_at)
    db_path = os.path.join(subject_dir, "state.sqlite3")
    snapshots: list[bytes] = []

    def on_ckpt(path: str) -> None:
        snapshots.clear()
        snapshots.append(_snapshot(path))

    requests: list[WriteRequest] = []
    acked = 0
    inflight: list[WriteRequest] = []
    groups = 0
    crashed = False
    unapplied = False
    removed = 0
    keys: list[tuple[str, WriteRequest]] = []
    apply_chance = rng.choice([1.0, 0.5, 0.1])
    eng = _engine(subject_dir, fs, cfg, on_ckpt)
    next_id = 1
    try:
        eng.recover()
        snapshots.append(_snapshot(db_path))
        eng.start()
        if keep_all:
            eng.set_hold("sim", 0).result()
        for _ in range(n_requests):
            r = rng.random()
            if r < 0.06:
                removed += len(eng.checkpoint().result().removed_segments)
                continue
            # Mostly one request per commit; sometimes a group commit of several, as the
            # writer thread makes under concurrent load (partial refusals, keys retried).
            size = 1 if rng.random() < 0.7 else rng.randint(2, 6)
            group = [_random_request(rng, next_id + 3 * i, keys) for i in range(size)]
            for req in group:
                validate_request(req)
            inflight = group
            futures = eng.step_commit(group)
            # The state follows the WAL: sometimes at once, sometimes groups later, so
            # that crashes fall between durable and applied too.
            if rng.random() < apply_chance:
                eng.step_apply()
            for req, fut in zip(group, futures, strict=True):
                if not fut.done():
                    continue  # durable; its response (a vote's, a seal's) needs the state
                exc = fut.exception(0)
                if exc is None:
                    res = fut.result(0)
                    if not res.idempotent_replay and req.type in (RecordType.ASSERT,
                                                                  RecordType.BATCH):
                        next_id += sum(1 for op in req.ops if "assert" in op)
                elif not isinstance(exc, StemeError):
                    raise exc
                # a StemeError is a refusal: a request invalid against the state
            inflight = []
            requests.extend(group)
            acked += len(group)
            groups += size > 1
            if rng.random() < 0.3:
                snapshots.append(_snapshot(db_path))  # SQLite may keep any commit point
    except SimCrash:
        crashed = True
        unapplied = eng.read_index.lag_bytes() > 0
    finally:
        # The process dies: its connections go, nothing is flushed or checkpointed.
        eng.abandon()
    # Power loss: the file system as found after the crash, SQLite at a random commit
    # point at or after its last durable checkpoint (or where it was).
    fs2 = fs.crash_image(random.Random(seed * 7919 + 1))
    if rng.random() < 0.5 and snapshots:
        _restore(db_path, rng.choice(snapshots))
    eng2 = _engine(subject_dir, fs2, cfg)
    try:
        report = eng2.recover()
    except Exception as exc:
        raise SimFailure(f"recovery failed: {exc!r}; last ops: {fs.log[-8:]}") from exc
    recovered = _dump(db_path)
    # The reference: the same requests on a file system that never crashes.
    ref = _engine(ref_dir, SimFileSystem(seed), cfg)
    ref.recover()
    ref.start()
    for req in requests:
        with contextlib.suppress(StemeError):
            ref.submit(req).result()
    matched = ""
    if _dump(os.path.join(ref_dir, "state.sqlite3")) == recovered:
        matched = "acked"
    else:
        # A torn group write can leave any prefix of the group's records durable.
        for req in inflight:
            with contextlib.suppress(StemeError):
                ref.submit(req).result()
            if _dump(os.path.join(ref_dir, "state.sqlite3")) == recovered:
                matched = "acked+inflight"
                break
    ref.close()
    if not matched:
        raise SimFailure(f"recovered state differs from the reference ({acked} acknowledged "
                         f"requests, {len(inflight)} in flight); last ops: {fs.log[-8:]}")
    # The state equals a replay of the whole durable WAL (when every segment was kept).
    full_checked = False
    if keep_all:
        full = _engine(replay_dir, fs2.copy(), cfg)
        full.wal_dir = eng2.wal_dir  # the same WAL, a fresh state
        try:
            full.recover()
        except Exception as exc:
            raise SimFailure(f"replaying the whole WAL failed: {exc!r}") from exc
        if _dump(os.path.join(replay_dir, "state.sqlite3")) != recovered:
            raise SimFailure("replaying the whole durable WAL gives another state")
        full.close()
        full_checked = True
    # The recovered engine takes writes, stops cleanly, and restarts replaying nothing.
    eng2.start()
    res = eng2.submit(WriteRequest(RecordType.ASSERT, [{"assert": {
        "subject": "after", "predicate": "crash", "object": seed, "author": "sim"}}])).result()
    if res.status != 201:
        raise SimFailure(f"write after recovery returned {res.status}")
    eng2.close()
    eng3 = _engine(subject_dir, fs2, cfg)
    rep3 = eng3.recover()
    if rep3.records != 0:
        raise SimFailure(f"restart after a clean stop replayed {rep3.records} records")
    eng3.close()
    shutil.rmtree(base, ignore_errors=True)
    return SimResult(seed, len(requests) + len(inflight), acked,
                     fs.ops if crashed else None, bool(inflight), matched,
                     report.torn_tail is not None, removed, full_checked, groups,
                     unapplied)


@dataclass
class ReplicaSimResult:
    seed: int
    records: int  # the leader's records after its genesis
    acked_end: int  # the end of the last replicate() that returned
    recovered_end: int  # where the replica's recovered log ends
    crashed_at_op: int | None
    torn_tail: bool
    rotations: int  # segments the replica opened following the leader's


def _frames(eng: Engine, fs: SimFileSystem) -> list[tuple[int, int, bytes]]:
    """(type, lsn, payload) of every record of ``eng``'s log, in order."""
    from ..archive import WalSource
    from ..replication import split_frames

    src = WalSource(fs, eng.wal_dir)
    start, end = src.first_lsn(), eng.read_index.durable_lsn
    out: list[tuple[int, int, bytes]] = []
    pos = start + 64
    while pos < end:  # bounded: each chunk moves pos forward
        chunk = src.read(pos, end, 1 << 20)
        out.extend(split_frames(chunk.data, pos))
        pos = chunk.end_lsn
    return out


def run_replica_seed(seed: int, workdir: str) -> ReplicaSimResult:
    """A replica's write path under power loss: the leader's records arrive in random
    groups (replicate(): append at the leader's LSNs, fdatasync, hand to the applier)
    and the replica's machine crashes at a random operation.  After recovery its log
    must be a prefix of the leader's, byte for byte at the same LSNs, holding at least
    every group replicate() returned; its state must equal the leader's state at that
    prefix; and it must then take the rest and end equal to the leader."""
    rng = random.Random(seed)
    base = os.path.join(workdir, f"rseed{seed}")
    shutil.rmtree(base, ignore_errors=True)
    lead_dir, rep_dir, ref_dir = (os.path.join(base, d) for d in ("leader", "replica", "ref"))
    cfg = EngineConfig(segment_size_bytes=SEGMENT_BYTES, disk_reserve_bytes=0,
                       checkpoint_wal_bytes=10**12, checkpoint_interval_seconds=1e9,
                       replay_budget_seconds=1e9, idempotency_ttl_seconds=1e12)
    lfs = SimFileSystem(seed)
    leader = _engine(lead_dir, lfs, cfg)
    leader.recover()
    leader.start()
    keys: list[tuple[str, WriteRequest]] = []
    next_id = 1
    leader.write_term(1, "leader", 10)
    for _ in range(rng.randint(5, 120)):
        if rng.random() < 0.15:  # large records: the replica follows segment rotations
            req = WriteRequest(RecordType.ASSERT, [{"assert": {
                "subject": "big", "predicate": "p", "object": "x" * rng.randint(2000, 12000),
                "author": "sim"}}])
        else:
            req = _random_request(rng, next_id, keys)
        validate_request(req)
        fut = leader.step_commit([req])[0]
        leader.step_apply()
        if fut.exception(0) is None and req.type in (RecordType.ASSERT, RecordType.BATCH):
            next_id += sum(1 for op in req.ops if "assert" in op)
    frames = _frames(leader, lfs)
    genesis, rest = frames[0], frames[1:]
    leader.close()
    # The replica starts from the same genesis (a snapshot would give it the same).
    rfs = SimFileSystem(seed + 1, crash_after_ops=rng.randint(1, len(rest) // 2 + 12))
    replica = _engine(rep_dir, rfs, cfg)
    acked_end = 0
    crashed = False
    rotations = 0
    try:
        replica.recover()
        replica.start()
        replica.set_follower(True)
        i = 0
        while i < len(rest):  # bounded: each group takes at least one record
            n = rng.randint(1, 12)
            group = rest[i:i + n]
            seg = replica.writer.segment if replica.writer is not None else ""
            acked_end = replica.replicate(group).result(0)
            if replica.writer is not None and replica.writer.segment != seg:
                rotations += 1
            i += n
            if rng.random() < 0.5:
                replica.step_apply()
    except SimCrash:
        crashed = True
    finally:
        replica.abandon()
    fs2 = rfs.crash_image(random.Random(seed * 104729 + 3))
    again = _engine(rep_dir, fs2, cfg)
    try:
        report = again.recover()
    except Exception as exc:
        raise SimFailure(f"replica recovery failed: {exc!r}; last ops: {rfs.log[-8:]}") \
            from exc
    end = again.read_index.durable_lsn
    if end < acked_end:
        raise SimFailure(f"the replica acknowledged LSN {acked_end} durable but recovered "
                         f"to {end}")
    got = _frames(again, fs2)
    want = [f for f in frames if f[1] < end]
    if got[:1] and got[0] != genesis:
        raise SimFailure("the replica's genesis is not the leader's")
    if got != want:
        raise SimFailure(f"the replica's recovered log (to {end}) is not the leader's prefix")
    # Its state equals the same prefix applied without a crash.
    ref = _engine(ref_dir, SimFileSystem(seed + 2), cfg)
    ref.recover()
    ref.start()
    ref.set_follower(True)
    tail = [f for f in rest if f[1] < end]
    if tail:
        ref.replicate(tail).result(0)
        ref.step_apply()
    if _dump(os.path.join(ref_dir, "state.sqlite3")) != _dump(
            os.path.join(rep_dir, "state.sqlite3")):
        raise SimFailure(f"the replica's recovered state differs from its log's (to {end})")
    ref.close()
    # It takes the rest, and ends equal to the leader.
    again.start()
    again.set_follower(True)
    more = [f for f in rest if f[1] >= end]
    if more:
        again.replicate(more).result(0)
    again.step_apply()
    if _frames(again, fs2) != frames:
        raise SimFailure("the replica did not end with the leader's log")
    if _dump(os.path.join(rep_dir, "state.sqlite3")) != _dump(
            os.path.join(lead_dir, "state.sqlite3")):
        raise SimFailure("the replica did not end with the leader's state")
    again.close()
    shutil.rmtree(base, ignore_errors=True)
    return ReplicaSimResult(seed, len(rest), acked_end, end,
                            rfs.ops if crashed else None, report.torn_tail is not None,
                            rotations)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=1000, help="number of seeds (default 1000)")
    ap.add_argument("--start", type=int, default=0, help="first seed (default 0)")
    ap.add_argument("--seed", type=int, default=None, help="run only this seed")
    args = ap.parse_args(argv)
    seeds = [args.seed] if args.seed is not None else range(args.start,
                                                              args.start + args.seeds)
    t0 = time.monotonic()
    stats = {"crashed": 0, "torn": 0, "inflight_durable": 0, "full_replay": 0, "removed": 0,
             "crashed_unapplied": 0}
    with tempfile.TemporaryDirectory(prefix="stemedb-sim-") as tmp:
        for s in seeds:
            try:
                r = run_seed(s, tmp)
            except Exception as exc:
                print(f"FAILED: {exc}\nreproduce with seed={s}", file=sys.stderr)
                return 1
            stats["crashed"] += r.crashed_at_op is not None
            stats["torn"] += r.torn_tail
            stats["inflight_durable"] += r.matched == "acked+inflight"
            stats["full_replay"] += r.full_replay_checked
            stats["removed"] += r.segments_removed
            stats["crashed_unapplied"] += r.crashed_unapplied
    print(f"{len(seeds)} seeds passed in {time.monotonic() - t0:.1f}s: {stats}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
