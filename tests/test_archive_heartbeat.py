"""``[archive] heartbeat_url``: a dead man's switch that is called only while the archive
holds everything durable, and falls silent when it does not."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from stemedb.archive import ArchiveSettings
from stemedb.archive._heartbeat import Heartbeat
from stemedb.config import load_config
from stemedb.errors import ConfigError, InvalidInput
from stemedb.metrics import Metrics
from tests._archive import archive_settings, assertion, caught_up, engine, scratch, wait_for

SECRET_PATH = "/ping/0f1e2d3c-secret"
QUIET_SECONDS = 2.5  # longer than two heartbeat intervals of 1 s


class Receiver:
    """An HTTP server on 127.0.0.1 that counts GETs of SECRET_PATH."""

    def __init__(self) -> None:
        self.hits = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == SECRET_PATH:
                    receiver.hits += 1
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{SECRET_PATH}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()


def test_beats_at_most_once_an_interval_and_counts_failures(
        caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    answers = [200, 200, 503, 200]
    calls: list[str] = []

    def get(url: str, timeout: float) -> int:
        calls.append(url)
        status = answers.pop(0)
        if status == 0:
            raise OSError("connection refused")
        return status

    m = Metrics()
    hb = Heartbeat("https://hc.example/ping/s3cr3t", 60.0, m, get=get, clock=lambda: now[0])
    assert hb.beat() is True
    assert hb.beat() is False and len(calls) == 1  # within the interval: nothing sent
    now[0] += 60
    assert hb.beat() is True
    now[0] += 60
    with caplog.at_level(logging.WARNING, logger="stemedb.archive"):
        assert hb.beat() is False  # 503
    assert m.registry.get_sample_value("stemedb_archive_heartbeat_failures_total") == 1
    assert "503" in caplog.text and "s3cr3t" not in caplog.text  # the URL's secret stays out
    assert (m.registry.get_sample_value(
        "stemedb_archive_heartbeat_last_success_timestamp_seconds") or 0) > 0


def test_the_heartbeat_stops_while_the_archive_fails_and_resumes(
        tmp_path: Path, receiver: Receiver) -> None:
    with scratch("hb", tmp_path) as d:
        root = d / "archive"
        root.mkdir()
        settings = archive_settings(f"file://{root}", heartbeat_url=receiver.url,
                                    heartbeat_interval_seconds=1.0)
        eng = engine(d / "db", settings)
        try:
            eng.write(assertion("a"))
            wait_for("a first heartbeat", lambda: receiver.hits >= 1)
            os.rename(root, f"{root}.aside")  # the archive stops taking WAL
            root.write_bytes(b"not a directory")
            eng.write(assertion("held"))
            wait_for("a failed pass", lambda: eng.status()["archive"]["consecutive_failures"]
                     > 0)
            before = receiver.hits
            threading.Event().wait(QUIET_SECONDS)
            assert receiver.hits == before, "the heartbeat went on while the archive failed"
            root.unlink()
            os.rename(f"{root}.aside", root)
            wait_for("the archive to catch up", lambda: caught_up(eng))
            wait_for("the heartbeat to resume", lambda: receiver.hits > before)
            assert eng.status()["archive"]["heartbeat"]["last_success_unix"] is not None
        finally:
            eng.close()


@pytest.mark.parametrize("over, says", [
    ({"heartbeat_url": "http://h/x"}, "needs archive.url"),
    ({"url": "file:///tmp/a", "heartbeat_url": "ftp://h/x"}, "http:// or https://"),
    ({"url": "file:///tmp/a", "heartbeat_url": "http://h/x",
      "heartbeat_interval_seconds": 0.1}, "at least"),
])
def test_bad_heartbeat_settings_are_refused(over: dict[str, object], says: str) -> None:
    with pytest.raises(InvalidInput, match=says):
        ArchiveSettings(**over).validate()  # type: ignore[arg-type]


def test_the_heartbeat_keys_come_from_the_config(tmp_path: Path) -> None:
    cfg = load_config(None, env={
        "STEMEDB_ARCHIVE_URL": f"file://{tmp_path}",
        "STEMEDB_ARCHIVE_HEARTBEAT_URL": "https://hc.example/ping/x",
        "STEMEDB_ARCHIVE_HEARTBEAT_INTERVAL_SECONDS": "30"})
    a = cfg.engine_config().archive
    assert (a.heartbeat_url, a.heartbeat_interval_seconds) == ("https://hc.example/ping/x",
                                                               30.0)
    with pytest.raises(ConfigError):
        load_config(None, env={"STEMEDB_ARCHIVE_HEARTBEAT_URL": "https://hc.example/p"})
