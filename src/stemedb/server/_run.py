"""Running a node as a process: listen, recover, serve, and stop gracefully.

Order at start: refuse an unsafe bind (no tokens beyond loopback), listen, *then*
recover on a thread while the server already answers ``/healthz`` and ``/readyz``.

Order at SIGTERM or SIGINT: turn not-ready and refuse new writes (503), stop
listening, let in-flight requests finish (bounded by ``server.drain_grace_seconds``),
close the engine (its final checkpoint makes the next start replay nothing), exit 0.
A signal that arrives during replay stops at once: nothing was acknowledged yet,
and the next start resumes the replay from the last applied record.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import queue
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from ..config import Config
from ..errors import StemeError
from ..metrics import Metrics
from ._app import build_app
from ._auth import check_bind
from ._listener import Listener, TlsFiles, bind
from ._node import Node

log = logging.getLogger("stemedb.server")


class Exit(enum.IntEnum):
    OK = 0
    RECOVERY_FAILED = 1
    REFUSED = 2  # bad configuration, unsafe bind, port in use
    # Stopped by a signal during replay: the recovery thread is still inside SQLite,
    # so the caller ends the process without waiting for it (exit status 0).
    STOPPED_DURING_REPLAY = 100


class SignalRelay:
    """Carries SIGTERM/SIGINT from the main thread to an event loop on another thread.

    Python runs signal handlers on the main thread only; when the main thread hosts
    the WAL writer (see :class:`MainThreadHost`), the loop lives elsewhere.
    """

    def __init__(self) -> None:
        self._target: Callable[[signal.Signals], object] | None = None
        self._pending: list[signal.Signals] = []
        self._lock = threading.Lock()

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handler)

    def _handler(self, signum: int, frame: object) -> None:
        sig = signal.Signals(signum)
        with self._lock:
            target = self._target
            if target is None:
                self._pending.append(sig)
                return
        target(sig)

    def attach(self, target: Callable[[signal.Signals], object]) -> None:
        with self._lock:
            self._target = target
            pending, self._pending = self._pending, []
        for sig in pending:
            target(sig)


class MainThreadHost:
    """Runs callables handed over by other threads on the thread that calls :meth:`run`.

    The server hands it the engine's writer loop, so the WAL's write(2) and
    fdatasync(2) happen on the process's main thread: ``strace -p $(pgrep
    stemedb-api) -e fsync,fdatasync`` (the runbook's line, without ``-f``) sees them.
    """

    POLL_SECONDS = 0.2  # how often run() checks whether it should return

    def __init__(self) -> None:
        self._work: queue.Queue[Callable[[], None]] = queue.Queue()
        self._finished = threading.Event()

    def __call__(self, fn: Callable[[], None]) -> None:
        self._work.put(fn)

    def finish(self) -> None:
        self._finished.set()

    def run(self) -> None:
        while not self._finished.is_set():  # bounded by finish()
            try:
                fn = self._work.get(timeout=self.POLL_SECONDS)
            except queue.Empty:
                continue
            fn()


async def serve(config: Config, *, insecure_allow_unauthenticated: bool = False,
                metrics: Metrics | None = None,
                writer_host: Callable[[Callable[[], None]], None] | None = None,
                signal_relay: SignalRelay | None = None) -> Exit:
    host, port = config.listen
    insecure = insecure_allow_unauthenticated or bool(
        config.get("server", "insecure_allow_unauthenticated"))
    refusal = check_bind(host, config.tokens, insecure)
    if refusal is not None:
        log.error("%s", refusal)
        return Exit.REFUSED
    if insecure and not config.tokens:
        log.warning("serving without authentication on %s:%d (insecure, as requested)",
                    host, port)
    node = Node(config, metrics, writer_host=writer_host)
    run = asyncio.get_running_loop().run_in_executor
    try:  # a data directory another process has open is refused before listening
        await run(None, node.engine.lock_data_dir)
    except (StemeError, OSError) as exc:
        log.error("cannot open the data directory: %s", exc)
        return Exit.REFUSED
    try:  # a data directory paired with another WAL directory is refused at start
        await run(None, node.engine.place_wal_dir)
    except (StemeError, OSError) as exc:
        log.error("cannot place the WAL: %s", exc)
        await run(None, node.engine.close)
        return Exit.REFUSED
    try:
        sock = bind(host, port)
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", host, port, exc.strerror or exc)
        await run(None, node.engine.close)
        return Exit.REFUSED
    cert = str(config.get("server", "tls_cert_file"))
    tls = TlsFiles(cert, str(config.get("server", "tls_key_file")),
                   str(config.get("server", "tls_client_ca_file"))) if cert else None
    runner = Listener(build_app(node), sock, grace_seconds=node.drain_grace_seconds, tls=tls)
    await runner.start()
    log.info("listening on %s://%s:%d (data dir %s); replaying the WAL before taking "
             "requests", "https" if tls else "http", host, port, node.engine.data_dir)

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    received: list[str] = []

    def on_signal(sig: signal.Signals) -> None:
        received.append(sig.name)
        stop.set()

    if signal_relay is not None:
        signal_relay.attach(lambda sig: loop.call_soon_threadsafe(on_signal, sig))
        return await _lifecycle(node, runner, stop, received)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        return await _lifecycle(node, runner, stop, received)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def _lifecycle(node: Node, runner: Listener, stop: asyncio.Event,
                     received: list[str]) -> Exit:
    recovered = node.start_recovery()
    stopped = asyncio.ensure_future(stop.wait())
    waiters: set[asyncio.Future[Any]] = {recovered, stopped}
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    if not recovered.done():
        p = node.engine.progress
        log.warning("%s during WAL replay (%d of %d bytes applied): stopping now; the next "
                    "start resumes the replay", received[0] if received else "stop",
                    p.bytes_done, p.bytes_total)
        node.begin_stop()
        await runner.stop()
        await node.leave_cluster()
        await node.close_engine_if_started()
        return Exit.STOPPED_DURING_REPLAY
    exc = recovered.exception()
    if exc is not None:
        log.error("recovery failed: %s", exc)
        stopped.cancel()
        await runner.stop()
        await node.leave_cluster()
        return Exit.RECOVERY_FAILED
    report = recovered.result()
    status = node.engine.status()
    log.info("ready: replayed %d WAL records (%d bytes) in %.3fs; WAL ends at LSN %s",
             report.records, report.bytes, report.seconds, status["wal"]["end_lsn"])
    await stopped
    t0 = time.monotonic()
    log.info("%s received: stopping (no new writes; finishing %d in flight, grace %.1fs)",
             received[0] if received else "stop", node.inflight_writes,
             node.drain_grace_seconds)
    node.begin_stop()
    # Stops listening first, then waits for in-flight handlers up to the grace.
    await runner.stop()
    await node.leave_cluster()
    await node.close_engine()
    status = node.engine.status()
    end, ckpt = status["wal"]["end_lsn"], node.engine.checkpoint_lsn
    if end is not None and ckpt >= end:
        log.info("stopped in %.3fs: checkpoint at LSN %s, WAL ends at LSN %s; the next start "
                 "replays nothing", time.monotonic() - t0, ckpt, end)
    else:
        # Fenced after a WAL failure, or the final checkpoint failed: said, not hidden.
        log.warning("stopped in %.3fs without a final checkpoint (checkpoint at LSN %s, WAL "
                    "ends at LSN %s%s); the next start replays the difference",
                    time.monotonic() - t0, ckpt, end,
                    "; writes were fenced" if node.engine.fenced is not None else "")
    return Exit.OK
