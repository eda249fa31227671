"""The reader pool: reads run on its threads, bursts are answered together, a read
that fails fails alone, and a pool that cannot open its database reports it."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from stemedb.errors import Closed
from stemedb.readers import ReaderPool


def _db(tmp_path: Path) -> str:
    path = str(tmp_path / "r.sqlite3")
    c = sqlite3.connect(path)
    c.execute("CREATE TABLE t(x INTEGER)")
    c.executemany("INSERT INTO t VALUES(?)", [(i,) for i in range(100)])
    c.commit()
    c.close()
    return path


def test_async_reads_run_on_reader_threads_and_bursts_share_a_wakeup(tmp_path: Path) -> None:
    path = _db(tmp_path)
    pool = ReaderPool(lambda: sqlite3.connect(path, check_same_thread=False), 1, 64)
    calls: list[int] = []
    gate = threading.Event()

    def blocker(conn: sqlite3.Connection) -> str:
        gate.wait(5)
        return threading.current_thread().name

    def query(i: int) -> Any:
        return lambda conn: conn.execute("SELECT x FROM t WHERE x=?", (i,)).fetchone()[0]

    def boom(conn: sqlite3.Connection) -> None:
        raise ValueError("bad read")

    async def main() -> list[Any]:
        loop = asyncio.get_running_loop()
        orig = loop.call_soon_threadsafe

        def counting(cb: Any, *args: Any, **kw: Any) -> Any:
            calls.append(len(args[0]))
            return orig(cb, *args, **kw)

        loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
        first = pool.submit_async(blocker)  # holds the only reader while 20 reads queue
        await asyncio.sleep(0.05)
        rest = [pool.submit_async(query(i)) for i in range(20)]
        bad = pool.submit_async(boom)
        gate.set()
        name = await first
        assert name.startswith("stemedb-reader")
        with pytest.raises(ValueError, match="bad read"):
            await bad
        return await asyncio.gather(*rest)

    try:
        assert asyncio.run(main()) == list(range(20))
        assert sum(calls) == 22
        assert len(calls) <= 3  # the 21 queued reads came back in one wake-up, not 21
        assert pool.submit(query(7)).result(5) == 7
    finally:
        pool.shutdown(5)
    with pytest.raises(Closed):
        pool.submit(query(1))


def test_a_pool_that_cannot_connect_fails_the_reads(tmp_path: Path) -> None:
    def connect() -> sqlite3.Connection:
        return sqlite3.connect(f"file:{tmp_path / 'missing.sqlite3'}?mode=ro", uri=True)

    pool = ReaderPool(connect, 2, 8)
    try:
        fut = pool.submit(lambda conn: conn.execute("SELECT 1").fetchone())
        with pytest.raises(sqlite3.OperationalError):
            fut.result(5)
    finally:
        pool.shutdown(5)
