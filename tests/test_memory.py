"""Nothing a request leaves behind grows with the number of requests.

A slow leak is found by metric history at 3 a.m. (a line that only goes up), or here,
first.  The server runs in this process (the same app, node and engine that `stemedb
serve` builds), so ``tracemalloc`` sees every Python allocation of the event loop, the
writer and the reader threads.  After a warm-up that fills every bounded structure
(statement caches, metric children, the fsync sliding window, given 64 samples here
instead of 4,096 so that the warm-up fills it), the traced memory at the end of a round must not
grow by more than ``GROWTH_BYTES_MAX`` over two more rounds of the same mix of
requests: a leak of one small object per request (a dict, a future, an exception and
its traceback) would be several times that.
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from pathlib import Path

import aiohttp
import pytest

from stemedb.config import load_config
from stemedb.metrics import Metrics
from stemedb.server._app import build_app
from stemedb.server._listener import Listener, bind
from stemedb.server._node import Node

ROUND_REQUESTS = 3000  # requests per measured round, in CLIENTS concurrent streams
CLIENTS = 8
WARMUP_REQUESTS = 3000
FSYNC_WINDOW_SAMPLES = 64  # the fsync summary's window, filled by the warm-up
# Traced memory may differ by this much between the end of the first measured round
# and the end of the third (2 x ROUND_REQUESTS requests later): ~44 bytes a request.
# Measured here: 1 to 40 KiB (what happens to be in flight at the end of a
# round).  One leaked dict per request would be ~1.2 MiB; an exception kept with its
# traceback, many times that.
GROWTH_BYTES_MAX = 256 * 1024


async def _one(session: aiohttp.ClientSession, base: str, i: int) -> None:
    """One request of the mix: every kind of route and answer, errors included."""
    k = i % 8
    if k in (0, 1):
        body = {"subject": f"urn:s/{i % 97}", "predicate": "p", "object": {"n": i},
                "author": f"a{i % 5}"}
        async with session.post(f"{base}/v1/assertions", json=body) as r:
            assert r.status == 201, await r.text()
    elif k == 2:
        body = {"subject": "urn:s/k", "predicate": "p", "object": i, "author": "a"}
        headers = {"Idempotency-Key": f"key-{i % 50}"}  # retries of 50 keys: replays
        async with session.post(f"{base}/v1/assertions", json=body, headers=headers) as r:
            assert r.status in (200, 201, 409), await r.text()
    elif k == 3:
        async with session.put(f"{base}/v1/assertions/1/votes/v{i % 40}",
                               json={"value": 1 if i % 3 else -1}) as r:
            assert r.status in (200, 201), await r.text()
    elif k == 4:
        async with session.get(f"{base}/v1/assertions/{1 + i % 100}") as r:
            assert r.status == 200, await r.text()
    elif k == 5:
        async with session.get(f"{base}/v1/assertions?subject=urn:s/{i % 97}&limit=5") as r:
            assert r.status == 200, await r.text()
    elif k == 6:  # bad input: an error answer, a StemeError raised and caught
        async with session.post(f"{base}/v1/assertions", data=b'{"subject": 1',
                                headers={"Content-Type": "application/json"}) as r:
            assert r.status == 400, await r.text()
    else:  # an unknown assertion and an unknown route
        async with session.get(f"{base}/v1/assertions/999999999") as r:
            assert r.status == 404, await r.text()
        async with session.get(f"{base}/v1/nowhere") as r:
            assert r.status == 404, await r.text()


async def _round(session: aiohttp.ClientSession, base: str, start: int, n: int) -> None:
    async def stream(c: int) -> None:
        for i in range(start + c, start + n, CLIENTS):  # bounded: n requests in all
            await _one(session, base, i)
    await asyncio.gather(*(stream(c) for c in range(CLIENTS)))


def _traced_bytes() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


@pytest.mark.timeout(300)
def test_requests_leave_nothing_behind(tmp_path: Path) -> None:
    config = load_config(None, env={}, overrides={
        ("", "data_dir"): str(tmp_path / "data"), ("wal", "fsync"): "always",
        ("server", "listen"): "127.0.0.1:0"})

    async def main() -> list[int]:
        node = Node(config, Metrics(fsync_window_samples_max=FSYNC_WINDOW_SAMPLES))
        await node.start_recovery()
        sock = bind("127.0.0.1", 0)
        base = f"http://127.0.0.1:{sock.getsockname()[1]}"
        server = Listener(build_app(node), sock, grace_seconds=5)
        await server.start()
        sizes: list[int] = []
        try:
            async with aiohttp.ClientSession() as session:
                ops = [{"assert": {"subject": f"urn:s/{i}", "predicate": "p", "object": i,
                                   "author": "a"}} for i in range(100)]
                async with session.post(f"{base}/v1/batch", json={"ops": ops}) as r:
                    assert r.status == 201, await r.text()  # ids 1..100 for the GETs
                # Warm-up: a full fsync window, and every route and answer.
                await _round(session, base, 0, WARMUP_REQUESTS)
                tracemalloc.start()
                try:
                    start = 10**6
                    for _ in range(3):
                        await _round(session, base, start, ROUND_REQUESTS)
                        start += ROUND_REQUESTS
                        sizes.append(_traced_bytes())
                    if sizes[2] - sizes[0] > GROWTH_BYTES_MAX:
                        top = tracemalloc.take_snapshot().statistics("lineno")[:10]
                        print("\n".join(str(s) for s in top))
                finally:
                    tracemalloc.stop()
        finally:
            await server.stop()
            await node.close_engine()
        return sizes

    sizes = asyncio.run(main())
    growth = sizes[2] - sizes[0]
    assert growth <= GROWTH_BYTES_MAX, (
        f"traced memory grew by {growth} bytes over {2 * ROUND_REQUESTS} requests "
        f"({growth / (2 * ROUND_REQUESTS):.0f} B/request); after each round: {sizes}")
