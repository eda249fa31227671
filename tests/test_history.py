"""A history check over HTTP: what readers see against what writers were told.

Writers create assertions with unique subjects and note when each was acknowledged
(and its ``lsn``); readers, at the same time, look up subjects of writes acknowledged
before their read began.  The server's applier is slowed (``[state] apply_delay_ms``,
a drill setting), so the state trails the WAL by tens of milliseconds and a read that
did not wait would miss writes.  Then:

- every default (linearizable) read sees every write acknowledged before it began;
- every ``min_lsn`` read sees the write whose ``lsn`` it names;
- no read ever sees a subject that no writer sent;
- and the same reads with ``consistency=stale`` do miss some: the check can fail, and
  would, were the read index gone.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from tests._server import ServerProcess

WRITERS = 6
READERS = 4
RUN_SECONDS = 6.0
APPLY_DELAY_MS = 30
REQUEST_TIMEOUT_SECONDS = 30.0


class History:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sent: set[str] = set()
        self.acked: list[tuple[float, str, int]] = []  # (ack time, subject, lsn)
        self.violations: list[str] = []
        self.reads = {"linearizable": 0, "min_lsn": 0, "stale": 0}
        self.stale_misses = 0

    def acked_before(self, t: float) -> list[tuple[float, str, int]]:
        with self.lock:
            return [a for a in self.acked if a[0] < t]


def _writer(url: str, h: History, k: int, stop: float) -> None:
    with httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT_SECONDS) as c:
        i = 0
        while time.monotonic() < stop:  # bounded by the run time
            subject = f"w{k}-{i}"
            i += 1
            with h.lock:
                h.sent.add(subject)
            r = c.post("/v1/assertions", json={"subject": subject, "predicate": "p",
                                               "object": i, "author": f"w{k}"})
            if r.status_code != 201:
                with h.lock:
                    h.violations.append(f"write {subject}: {r.status_code} {r.text}")
                continue
            done = time.monotonic()
            with h.lock:
                h.acked.append((done, subject, int(r.json()["lsn"])))


def _check_items(h: History, items: list[dict[str, Any]], what: str) -> None:
    with h.lock:
        for it in items:
            if it["subject"] not in h.sent:
                h.violations.append(f"{what} saw {it['subject']!r}, which no writer sent")


def _reader(url: str, h: History, seed: int, stop: float) -> None:
    rng = random.Random(seed)
    with httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT_SECONDS) as c:
        while time.monotonic() < stop:  # bounded by the run time
            began = time.monotonic()
            before = h.acked_before(began)
            if not before:
                time.sleep(0.005)
                continue
            # Mostly the newest writes: the ones a read that did not wait would miss.
            _, subject, lsn = before[-1 - min(len(before) - 1, int(rng.expovariate(0.5)))]
            mode = rng.choice(["linearizable", "min_lsn", "stale"])
            params: dict[str, Any] = {"subject": subject}
            if mode == "min_lsn":
                params["min_lsn"] = lsn
            elif mode == "stale":
                params["consistency"] = "stale"
            r = c.get("/v1/assertions", params=params)
            if r.status_code != 200 or "StemeDB-Applied-LSN" not in r.headers:
                with h.lock:
                    h.violations.append(f"{mode} read of {subject}: {r.status_code} {r.text}")
                continue
            items = r.json()["items"]
            _check_items(h, items, f"{mode} read")
            found = any(it["subject"] == subject for it in items)
            with h.lock:
                h.reads[mode] += 1
                if mode == "stale":
                    h.stale_misses += not found
                elif not found:
                    h.violations.append(
                        f"{mode} read of {subject} (acknowledged at lsn {lsn} before the "
                        f"read began) did not see it; applied LSN "
                        f"{r.headers['StemeDB-Applied-LSN']}")


def test_reads_see_every_acknowledged_write_and_nothing_else(tmp_path: Path) -> None:
    config = f"[state]\napply_delay_ms = {APPLY_DELAY_MS}\n"
    with ServerProcess(tmp_path, config_toml=config) as server:
        server.start()
        h = History()
        stop = time.monotonic() + RUN_SECONDS
        threads = [threading.Thread(target=_writer, args=(server.url, h, k, stop))
                   for k in range(WRITERS)]
        threads += [threading.Thread(target=_reader, args=(server.url, h, 100 + k, stop))
                    for k in range(READERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(RUN_SECONDS + 2 * REQUEST_TIMEOUT_SECONDS)
        assert not any(t.is_alive() for t in threads)
        assert "Traceback" not in server.log()
    assert not h.violations, h.violations[:10]
    assert len(h.acked) >= 100 and min(h.reads.values()) >= 20, (len(h.acked), h.reads)
    # The check has teeth: reads that do not wait miss writes under this lag.
    assert h.stale_misses >= 1, h.reads
