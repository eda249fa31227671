"""The node: one engine, its lifecycle phase, readiness, in-flight writes and drain.

The HTTP server listens *before* recovery starts.  Recovery runs on a thread of its
own (``stemedb-recovery``) while the event loop answers ``/healthz`` (200),
``/metrics`` (replay progress) and ``/readyz`` (503 with the progress), and refuses
reads and writes with 503 ``replaying``.  A monitoring system therefore sees a node
that is replaying, not a node that is down.

Phases, in order::

    starting -> replaying -> ready -> draining -> drained -> stopping
                   \\-> failed

Nothing here blocks the event loop: recovery, drain and close run on threads; the
engine's ``status()`` and ``progress`` are cheap snapshots.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from .. import limits
from ..config import Config
from ..engine import Engine, RecoveryReport
from ..errors import StemeError, Unavailable
from ..metrics import Metrics
from ._member import Member

log = logging.getLogger("stemedb.server")

PHASES = ("starting", "replaying", "ready", "draining", "drained", "stopping", "failed")


class ApiError(StemeError):
    """An HTTP-level refusal with its own status and code (bad query, 415, 413, ...)."""

    def __init__(self, http_status: int, code: str, message: str, *,
                 headers: dict[str, str] | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.http_status = http_status
        self.code = code
        self.headers = headers or {}


def unavailable(code: str, message: str) -> ApiError:
    return ApiError(503, code, message,
                    headers={"Retry-After": str(limits.http_retry_after_seconds)})


class Node:
    """What the HTTP layer needs to know about the engine, and when."""

    def __init__(self, config: Config, metrics: Metrics | None = None,
                 engine: Engine | None = None,
                 writer_host: Callable[[Callable[[], None]], None] | None = None) -> None:
        self.config = config
        self.m = metrics or Metrics()
        self._writer_host = writer_host
        self.engine = engine or self._new_engine()
        self.phase = "starting"
        self.started_unix = time.time()
        self.recovery: RecoveryReport | None = None
        self.recovery_error: BaseException | None = None
        self.drain_grace_seconds = float(config.get("server", "drain_grace_seconds"))
        self.body_bytes_max = int(config.get("server", "body_bytes_max"))
        # [read] wait_timeout_ms: how long a read waits for the LSN it needs (then 503).
        self.read_wait_timeout_seconds = int(config.get("read", "wait_timeout_ms")) / 1000
        self._inflight_writes = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._drain_task: asyncio.Task[dict[str, Any]] | None = None
        self._recovered: asyncio.Future[RecoveryReport] | None = None
        self._recovery_thread: threading.Thread | None = None
        self._last_reason: str | None = "starting"
        self._start_lock = threading.Lock()
        self.m.ready.set(0)
        self.m.draining.set(0)
        settings = config.cluster_settings()
        self.member: Member | None = None
        if settings is not None:
            self.member = Member(self, settings, self.m)
        else:
            self.m.cluster_enabled.set(0)
            self.m.cluster_is_leader.set(1)  # a node of its own is its own leader

    def _new_engine(self) -> Engine:
        return Engine(self.config.data_dir, self.config.engine_config(), metrics=self.m,
                      writer_host=self._writer_host)

    def reopen_engine(self) -> Engine:
        """A new engine on the same data directory (after a re-seed replaced it):
        recovered and started.  Blocking."""
        eng = self._new_engine()
        eng.recover()
        eng.start()
        self.engine = eng
        return eng

    # ------------------------------------------------------------------ recovery --
    def start_recovery(self) -> asyncio.Future[RecoveryReport]:
        """Replay the WAL on a dedicated thread; the future resolves on the loop."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[RecoveryReport] = loop.create_future()
        self._recovered = fut
        self.phase = "replaying"

        def done(report: RecoveryReport | None, exc: BaseException | None) -> None:
            if fut.done():
                return
            if exc is not None:
                self.phase = "failed"
                self.recovery_error = exc
                fut.set_exception(exc)
                return
            assert report is not None
            self.recovery = report
            if self.phase == "replaying":
                self.phase = "ready"
            self.refresh_ready()
            fut.set_result(report)

        def tell(report: RecoveryReport | None, exc: BaseException | None) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed: the server stopped
                loop.call_soon_threadsafe(done, report, exc)

        def run() -> None:
            try:
                if self.member is not None:
                    self.member.prepare()  # a fresh node is seeded from the leader
                report = self.engine.recover()
                with self._start_lock:
                    # A stop that came during the replay wins: the engine is not started
                    # behind the back of a server that is exiting (begin_stop).
                    if self.phase == "stopping":
                        return
                    self.engine.start()
                    if self.member is not None:
                        self.member.started(loop)
            except BaseException as exc:  # reported on the loop, never lost with the thread
                tell(None, exc)
                return
            tell(report, None)

        # A daemon thread: a SIGTERM during replay may exit without waiting for it
        # (nothing was acknowledged yet; the next start resumes the replay).
        t = threading.Thread(target=run, name="stemedb-recovery", daemon=True)
        self._recovery_thread = t
        t.start()
        return fut

    @property
    def recovering(self) -> bool:
        return self.phase in ("starting", "replaying")

    # ------------------------------------------------------------------ readiness --
    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """(ready, body of /readyz).  Cheap: no I/O."""
        progress = self.engine.progress.as_dict()
        status = self.engine.status() if not self.recovering else None
        reason: str | None = None
        if self.phase == "failed":
            reason = "recovery_failed"
        elif self.recovering:
            reason = "replaying"
        elif self.phase in ("draining", "drained"):
            reason = "draining"
        elif self.phase == "stopping":
            reason = "stopping"
        elif status is not None and status["state"]["applier_error"]:
            reason = "state_apply_failed"
        elif self.engine.fenced is not None:
            reason = "wal_fsync_failed"
        elif status is not None and (status["state"]["apply_lag_seconds"]
                                     > self.read_wait_timeout_seconds):
            # Default reads would time out (503 lsn_not_reached) waiting for the state.
            reason = "state_lagging"
        elif status is not None and (status.get("disk") or {}).get("refusing_writes"):
            reason = "insufficient_storage"
        elif status is not None and (status.get("archive") or {}).get("refusing_writes"):
            # [archive] on_backlog_full = "refuse_writes" at its cap: writes get 507.
            reason = "archive_backlog_full"
        elif self.member is not None and self.member.role in (
                "bootstrapping", "promoting", "reseeding"):
            reason = f"cluster_{self.member.role}"
        ready = reason is None
        body: dict[str, Any] = {
            "ready": ready, "reason": reason, "phase": progress["phase"],
            "node_phase": self.phase, "bytes_done": progress["bytes_done"],
            "bytes_total": progress["bytes_total"], "records": progress["records"],
            "eta_seconds": progress["eta_seconds"],
        }
        if self.phase == "failed" and self.recovery_error is not None:
            body["error"] = str(self.recovery_error)
        if status is not None:
            body["state"] = {k: status["state"][k] for k in (
                "durable_lsn", "applied_lsn", "apply_lag_bytes", "apply_lag_seconds",
                "applier_error")}
        self.m.ready.set(1 if ready else 0)
        if reason != self._last_reason:
            # Transitions only: a poller does not flood the log.
            if reason is None:
                log.info("ready")
            else:
                log.info("not ready: %s", reason)
            self._last_reason = reason
        return ready, body

    def refresh_ready(self) -> None:
        self.readiness()

    # ------------------------------------------------------------------ gates -----
    def check_readable(self) -> None:
        if self.recovering:
            raise unavailable("replaying", "the node is replaying its WAL; reads are not "
                              "served until the state is complete")
        if self.phase == "failed":
            raise unavailable("recovery_failed", f"recovery failed: {self.recovery_error}")
        if self.phase == "stopping":
            raise unavailable("stopping", "the server is shutting down")

    def check_writable(self) -> None:
        self.check_readable()
        if self.phase in ("draining", "drained"):
            raise unavailable("draining", "the node is drained and takes no writes; "
                              "restart it to take writes again")

    def begin_write(self) -> None:
        self._inflight_writes += 1
        self._idle.clear()

    def end_write(self) -> None:
        self._inflight_writes -= 1
        if self._inflight_writes == 0:
            self._idle.set()

    @property
    def inflight_writes(self) -> int:
        return self._inflight_writes

    async def wait_writes_idle(self, timeout_seconds: float) -> bool:
        """Wait until no write handler is in flight; False if the grace ran out."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_seconds)
        except TimeoutError:
            log.warning("%d writes still in flight after %.1fs", self._inflight_writes,
                        timeout_seconds)
            return False
        return True

    # ------------------------------------------------------------------ drain -----
    async def drain(self) -> dict[str, Any]:
        """Stop taking writes, finish those in flight, checkpoint, turn not-ready.

        Idempotent: a second call waits for the first drain and returns its report.
        """
        if self.recovering:
            raise unavailable("replaying", "the node is replaying its WAL; drain it once "
                              "it is ready")
        if self.phase in ("failed", "stopping"):
            self.check_readable()
        if self._drain_task is None:
            self._drain_task = asyncio.ensure_future(self._drain())
        return await asyncio.shield(self._drain_task)

    async def _drain(self) -> dict[str, Any]:
        self.phase = "draining"
        self.m.draining.set(1)
        self.refresh_ready()
        log.info("draining: taking no new writes, finishing %d in flight, then a checkpoint",
                 self._inflight_writes)
        t0 = time.monotonic()
        finished = await self.wait_writes_idle(self.drain_grace_seconds)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.engine.drain, self.drain_grace_seconds)
        self.phase = "drained"
        status = self.engine.status()
        ckpt = status["checkpoint"]
        report = {"draining": True, "ready": False, "in_flight_writes_finished": finished,
                  "checkpoint_lsn": ckpt["lsn"], "end_lsn": status["wal"]["end_lsn"],
                  "checkpoint_error": ckpt["last_error"],
                  "seconds": round(time.monotonic() - t0, 3)}
        log.info("drained in %.3fs: checkpoint at LSN %s, WAL ends at LSN %s",
                 report["seconds"], report["checkpoint_lsn"], report["end_lsn"])
        return report

    # ------------------------------------------------------------------ shutdown --
    def begin_stop(self) -> None:
        with self._start_lock:  # after this, a recovery still running never starts it
            self.phase = "stopping"
        self.refresh_ready()

    async def leave_cluster(self) -> None:
        """Stop streaming and release the lease (a leader hands on at once)."""
        if self.member is not None:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, self.member.stop)
            await self.member.aclose()

    async def close_engine_if_started(self) -> None:
        """After a stop during replay: a recovery that finished as the signal came may
        have started the engine; close it (its writer runs on the main thread)."""
        if self.engine.started and not self.engine.closed:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, self.engine.close, self.drain_grace_seconds)

    async def close_engine(self) -> None:
        """Final checkpoint and close, on a thread; the next start replays nothing."""
        if self.recovery is None or self.engine.closed:
            return
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.engine.close, self.drain_grace_seconds)

    def status(self) -> dict[str, Any]:
        """GET /v1/admin/status: the engine's snapshot plus the node's own state."""
        ready, _ = self.readiness()
        out = dict(self.engine.status())
        out["node"] = {
            "phase": self.phase, "ready": ready,
            "draining": self.phase in ("draining", "drained"),
            "in_flight_writes": self._inflight_writes,
            "uptime_seconds": round(time.time() - self.started_unix, 3),
            "data_dir": self.engine.data_dir,
            "recovery": None if self.recovery is None else asdict(self.recovery),
        }
        out["cluster"] = None if self.member is None else self.member.node_status()
        return out


def map_unavailable(node: Node, exc: Unavailable) -> ApiError:
    """The engine's 503 refusals, named as the node sees them."""
    if node.phase in ("draining", "drained"):
        return unavailable("draining", "the node is drained and takes no writes")
    if node.phase == "stopping":
        return unavailable("stopping", "the server is shutting down")
    return unavailable(exc.code, exc.message)
