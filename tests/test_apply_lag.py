"""A state that falls behind the WAL is visible: /readyz says why, the metric says how far.

The server's applier is slowed to one transaction per ``apply_delay_ms`` (a drill
setting standing in for a stalled state disk).  A write is still acknowledged at
once (it is durable), then, while the state trails it by longer than a read would wait,
``/readyz`` answers 503 ``state_lagging`` with the durable and applied LSNs, and
``stemedb_state_apply_lag_bytes`` is the distance; once the state catches up, both
clear.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from tests._server import ServerProcess

APPLY_DELAY_MS = 2500
WAIT_TIMEOUT_MS = 200
POLL_SECONDS_MAX = 10.0


def _lag(text: str) -> float:
    m = re.search(r"^stemedb_state_apply_lag_bytes (\S+)$", text, re.M)
    assert m, "stemedb_state_apply_lag_bytes is missing"
    return float(m.group(1))


def test_a_stalled_applier_shows_in_readyz_and_the_lag_metric(tmp_path: Path) -> None:
    config = (f"[state]\napply_delay_ms = {APPLY_DELAY_MS}\n"
              f"[read]\nwait_timeout_ms = {WAIT_TIMEOUT_MS}\n")
    with ServerProcess(tmp_path, config_toml=config) as server:
        server.start()
        with server.client() as c:
            t0 = time.monotonic()
            r = c.post("/v1/assertions", json={"subject": "s", "predicate": "p",
                                               "object": 1, "author": "a"})
            assert r.status_code == 201
            assert time.monotonic() - t0 < APPLY_DELAY_MS / 1000  # acked, not applied
            lsn = r.json()["lsn"]
            lagging = None
            deadline = time.monotonic() + POLL_SECONDS_MAX
            while time.monotonic() < deadline:  # bounded by POLL_SECONDS_MAX
                ready = c.get("/readyz")
                if ready.status_code == 503 and ready.json()["reason"] == "state_lagging":
                    lagging = ready.json()
                    break
                time.sleep(0.05)
            assert lagging is not None, "readyz never said the state lags"
            assert lagging["state"]["applied_lsn"] <= lsn < lagging["state"]["durable_lsn"]
            assert _lag(c.get("/metrics").text) > 0
            stale = c.get("/v1/assertions", params={"consistency": "stale"})
            assert stale.status_code == 200 and stale.json()["items"] == []
            deadline = time.monotonic() + POLL_SECONDS_MAX
            while c.get("/readyz").status_code != 200:  # bounded by POLL_SECONDS_MAX
                assert time.monotonic() < deadline, "the state never caught up"
                time.sleep(0.05)
            assert _lag(c.get("/metrics").text) == 0
            got = c.get("/v1/assertions")
            assert [i["subject"] for i in got.json()["items"]] == ["s"]
