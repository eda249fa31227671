"""Restore drills: a backup counts as verified only once it has been restored.

A drill restores the newest base backup (on the newest timeline's line of history)
into a scratch directory, replays the archive to its newest record, and checks what
it got: every sealed epoch's digest recomputed from its results equals the stored one,
assertion ids are dense, each sealed epoch's result count matches its rows.  In the
server it also compares with the live state at the restored LSN: each epoch sealed
before it has the live digest, and as many assertions are below that LSN.  The scratch
directory is removed whatever the outcome.  No timeline is claimed: the drill's
directory is never served.
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import state as st
from ..archive import ArchiveKey, Target
from ..errors import StemeError
from ._restore import RestoreReport, TargetNotReached, restore
from ._take import STATE_FILE

log = logging.getLogger("stemedb.backup")


@dataclass
class StateFacts:
    """What a drill compares: at ``lsn``, the sealed epochs' digests and counts."""

    lsn: int
    digests: dict[int, str]
    assertions: int


@dataclass
class DrillReport:
    passed: bool
    started_unix: float
    seconds: float = 0.0
    backup: str | None = None
    lsn: int | None = None
    records_replayed: int = 0
    epochs_checked: int = 0
    problems: list[str] = field(default_factory=list)
    restore: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "started_unix": self.started_unix,
                "seconds": self.seconds, "backup": self.backup, "lsn": self.lsn,
                "records_replayed": self.records_replayed,
                "epochs_checked": self.epochs_checked, "problems": self.problems}


def state_facts(conn: sqlite3.Connection, below_lsn: int | None = None) -> StateFacts:
    """The facts of a state (of its part below ``below_lsn`` when given)."""
    lsn = st.applied_end_lsn(conn) or 0
    where = "" if below_lsn is None else f" AND seal_lsn < {int(below_lsn)}"
    digests = {int(n): str(d) for n, d in conn.execute(
        f"SELECT n, digest FROM epochs WHERE sealed_at IS NOT NULL{where}")}
    if below_lsn is None:
        count = conn.execute("SELECT count(*) FROM assertions").fetchone()[0]
    else:
        count = conn.execute("SELECT count(*) FROM assertions WHERE lsn < ?",
                             (below_lsn,)).fetchone()[0]
    return StateFacts(lsn if below_lsn is None else below_lsn, digests, int(count))


def check_restored(conn: sqlite3.Connection) -> tuple[list[str], int]:
    """Problems of a restored state on its own (empty: none), and epochs checked."""
    problems: list[str] = []
    epochs = conn.execute("SELECT n, digest, results FROM epochs WHERE sealed_at IS NOT NULL"
                          " ORDER BY n").fetchall()
    for n, digest, count in epochs:
        rows = conn.execute("SELECT assertion_id, support, dispute, score, status FROM "
                            "results WHERE epoch=? ORDER BY assertion_id", (n,)).fetchall()
        again = st.digest_results(int(n), [tuple(r) for r in rows])
        if again != digest:
            problems.append(f"epoch {n}: digest {digest} stored, {again} recomputed from "
                            f"its results")
        if len(rows) != count:
            problems.append(f"epoch {n}: {count} results counted, {len(rows)} rows")
    n_rows, max_id = conn.execute("SELECT count(*), max(id) FROM assertions").fetchone()
    if n_rows != (max_id or 0):
        problems.append(f"{n_rows} assertions but ids go up to {max_id}: ids are not dense")
    return problems, len(epochs)


def compare_facts(restored: StateFacts, live: StateFacts) -> list[str]:
    problems = []
    for n, d in sorted(restored.digests.items()):
        if live.digests.get(n) != d:
            problems.append(f"epoch {n}: restored digest {d}, live {live.digests.get(n)}")
    if restored.assertions != live.assertions:
        problems.append(f"{restored.assertions} assertions below LSN {restored.lsn} "
                        f"restored, {live.assertions} live")
    return problems


def run_drill(target: Target, key: ArchiveKey | None, scratch_parent: str, *,
              live: Callable[[int], StateFacts] | None = None,
              clock: Callable[[], float] = time.time) -> DrillReport:
    """One drill; the report says whether it passed and why not.  Never raises for a
    failed restore or check: that is the report's ``problems``."""
    started = clock()
    t0 = time.monotonic()
    report = DrillReport(False, started)
    scratch = tempfile.mkdtemp(prefix="drill-", dir=scratch_parent)
    data_dir = f"{scratch}/data"
    try:
        try:
            r: RestoreReport = restore(target, data_dir, key=key, claim_timeline=False)
        except TargetNotReached as exc:
            report.restore = exc.report.__dict__
            report.problems.append(exc.message)
            return report
        except StemeError as exc:
            report.problems.append(exc.message)
            return report
        report.backup, report.lsn = r.backup["id"], r.end_lsn
        report.records_replayed = r.records
        conn = st.connect(f"{data_dir}/{STATE_FILE}", readonly=True)
        try:
            problems, report.epochs_checked = check_restored(conn)
            facts = state_facts(conn)
        finally:
            conn.close()
        report.problems.extend(problems)
        if live is not None:
            report.problems.extend(compare_facts(facts, live(r.end_lsn)))
        report.passed = not report.problems
        return report
    except Exception as exc:  # a drill reports, it does not crash its caller
        log.exception("restore drill failed")
        report.problems.append(f"{type(exc).__name__}: {exc}")
        return report
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        report.seconds = round(time.monotonic() - t0, 3)


__all__ = ["DrillReport", "StateFacts", "check_restored", "compare_facts", "run_drill",
           "state_facts"]
