"""The engine's SQLite reader threads.

Each reader owns one read-only connection and takes work from one shared queue.  A
reader that wakes takes every read waiting (up to ``read_batch_max``), runs them, and
answers the reads of one event loop with a single ``call_soon_threadsafe``: under
load a burst of reads costs one wake-up of the loop and one of a reader, not one
per read, which is what kept read latency hostage to GIL hand-offs.

Reads never wait on the writer: SQLite in WAL mode lets readers see the last
committed state while the writer appends.  Each read runs in one read transaction
(:func:`run_in_snapshot`), so all of its statements see the same committed state.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from ._loops import Outcome, settle_by_loop
from .errors import Closed

log = logging.getLogger("stemedb.readers")
T = TypeVar("T")

ReadFn = Callable[[sqlite3.Connection], Any]
# (fn, loop or None, asyncio.Future or concurrent.futures.Future)
_Item = tuple[ReadFn, "asyncio.AbstractEventLoop | None", Any]


def run_in_snapshot(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    """``fn(conn)`` inside one read transaction: every statement it runs sees the same
    committed state, so one response never mixes two moments (an assertion and a
    tally, a page and its summary)."""
    conn.execute("BEGIN")
    try:
        return fn(conn)
    finally:
        conn.execute("ROLLBACK")  # a read has nothing to keep; this ends the snapshot


class ReaderPool:
    """``threads`` reader threads over connections made by ``connect``."""

    def __init__(self, connect: Callable[[], sqlite3.Connection], threads: int,
                 batch_max: int, name: str = "stemedb-reader") -> None:
        if threads < 1 or batch_max < 1:
            raise ValueError("a reader pool needs at least one thread and a batch of one")
        self._connect = connect
        self._batch_max = batch_max
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._closed = False
        self._threads = [threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True)
                         for i in range(threads)]
        for t in self._threads:
            t.start()

    def submit(self, fn: Callable[[sqlite3.Connection], T]) -> cf.Future[T]:
        """Run ``fn(conn)`` on a reader; any thread may wait on the future."""
        if self._closed:
            raise Closed("the engine's readers are stopped")
        fut: cf.Future[T] = cf.Future()
        self._queue.put((fn, None, fut))
        return fut

    def submit_async(self, fn: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        """Run ``fn(conn)`` on a reader; the future belongs to the running loop."""
        if self._closed:
            raise Closed("the engine's readers are stopped")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._queue.put((fn, loop, fut))
        return fut

    def shutdown(self, timeout_seconds: float) -> None:
        """Finish the reads queued, then stop every reader (one sentinel each)."""
        if self._closed:
            return
        self._closed = True
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join(timeout_seconds)
            if t.is_alive():
                log.warning("reader %s did not stop within %.1fs", t.name, timeout_seconds)

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None  # opened at the first read
        try:
            stop = False
            while not stop:
                item = self._queue.get()
                if item is None:
                    return
                items = [item]
                # Bounded: at most batch_max reads per wake-up.
                while len(items) < self._batch_max:
                    try:
                        nxt = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is None:
                        stop = True
                        break
                    items.append(nxt)
                failed: Exception | None = None
                if conn is None:
                    try:
                        conn = self._connect()
                    except Exception as e:  # every read of this wake-up fails; retry later
                        log.error("cannot open a read connection: %s", e)
                        failed = e
                by_loop: dict[asyncio.AbstractEventLoop, list[Outcome]] = {}
                for fn, loop, fut in items:
                    if loop is None and not fut.set_running_or_notify_cancel():
                        continue
                    if failed is not None or conn is None:
                        result, exc = None, failed
                    else:
                        try:
                            result, exc = run_in_snapshot(conn, fn), None
                        except Exception as e:
                            result, exc = None, e
                    if loop is None:
                        if exc is not None:
                            fut.set_exception(exc)
                        else:
                            fut.set_result(result)
                    else:
                        by_loop.setdefault(loop, []).append((fut, result, exc))
                settle_by_loop(by_loop)
        finally:
            if conn is not None:
                conn.close()


__all__ = ["ReaderPool", "run_in_snapshot"]
