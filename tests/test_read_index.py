"""The read index: waiters woken exactly when the applied LSN passes their target."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from stemedb.read_index import LsnNotReached, ReadIndex

WAIT_SECONDS = 5.0


def test_targets_linearizable_and_read_your_writes() -> None:
    ri = ReadIndex(100)
    ri.publish_durable(300)
    assert ri.target_for(None) == 300  # everything acknowledged so far
    assert ri.target_for(150) == 151  # just past the record at LSN 150
    assert ri.lag_bytes() == 200


def test_a_thread_waits_until_applied_passes_its_target() -> None:
    ri = ReadIndex(0)
    ri.publish_durable(500)
    got: list[int] = []
    t = threading.Thread(target=lambda: got.append(ri.wait(400, WAIT_SECONDS)))
    t.start()
    time.sleep(0.05)
    ri.publish_applied(399)
    time.sleep(0.05)
    assert not got  # 399 < 400: still waiting
    ri.publish_applied(450)
    t.join(WAIT_SECONDS)
    assert got == [450]
    assert ri.waiting() == 0


def test_a_wait_that_outlasts_its_timeout_is_refused_and_forgotten() -> None:
    ri = ReadIndex(10)
    ri.publish_durable(20)
    with pytest.raises(LsnNotReached) as info:
        ri.wait(20, 0.05)
    assert info.value.code == "lsn_not_reached" and info.value.http_status == 503
    assert ri.waiting() == 0


def test_coroutines_are_woken_from_another_thread() -> None:
    ri = ReadIndex(0)
    ri.publish_durable(1000)

    async def main() -> list[int]:
        waits = [asyncio.ensure_future(ri.wait_async(t, WAIT_SECONDS))
                 for t in (100, 600, 900)]
        await asyncio.sleep(0.01)
        threading.Thread(target=lambda: (ri.publish_applied(650),
                                         time.sleep(0.05), ri.publish_applied(1000))).start()
        return list(await asyncio.gather(*waits))

    got = asyncio.run(main())
    assert got[0] == 650 and got[1] == 650 and got[2] == 1000


def test_an_async_wait_times_out() -> None:
    ri = ReadIndex(0)
    ri.publish_durable(10)

    async def main() -> None:
        with pytest.raises(LsnNotReached):
            await ri.wait_async(10, 0.05)

    asyncio.run(main())
    assert ri.waiting() == 0


def test_staleness_is_the_age_of_the_oldest_unapplied_durable_group() -> None:
    ri = ReadIndex(0)
    assert ri.staleness_seconds() == 0.0
    ri.publish_durable(100)
    t0 = time.monotonic()
    ri.publish_durable(200)
    assert ri.staleness_seconds(now=t0 + 1.0) >= 1.0
    ri.publish_applied(100)
    assert ri.staleness_seconds(now=t0 + 1.0) <= 1.0
    ri.publish_applied(200)
    assert ri.staleness_seconds() == 0.0
