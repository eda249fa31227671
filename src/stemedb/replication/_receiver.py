"""A replica's side of the stream: ask the leader for WAL from the end of this log,
write what comes at the leader's LSNs (durably), and let the applier apply it.

One thread, one HTTP connection, one request at a time: the leader holds a request open
until it has WAL past ``from`` (or ``poll_wait_seconds`` pass), so a record reaches the
replica one round trip after it is durable on the leader.  The thread ends by itself
only for what the node must handle: the logs forked (``diverged``), or the WAL this
replica needs is gone from the leader (``gone``); both lead to a re-seed.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any, NamedTuple

import httpx

from ..engine import Engine
from ..metrics import Metrics
from ..wal import RecordType
from . import _limits as limits
from ._protocol import (
    DURABLE_HEADER,
    SEGMENT_SIZE_HEADER,
    TERM_HEADER,
    StreamError,
    Term,
    divergence,
    split_frames,
    term_at,
)

log = logging.getLogger("stemedb.replication")


class Outcome(NamedTuple):
    kind: str  # "diverged" | "gone" | "refused"
    detail: str
    diverged_at: int | None = None


class LeaderRef(NamedTuple):
    node: str
    url: str
    term: int


class Receiver:
    def __init__(self, engine: Engine, node: str, advertise_url: str,
                 leader: Callable[[], LeaderRef | None], *, history: list[Term],
                 headers: dict[str, str], verify: Any, metrics: Metrics) -> None:
        self.engine = engine
        self.node = node
        self.advertise_url = advertise_url
        self.leader = leader
        self.history = list(history)
        self.database_id = engine.database_id() or ""
        self.term_seen = max((t.term for t in history), default=0)
        self.headers = headers
        self.verify = verify
        self.m = metrics
        self.outcome: Outcome | None = None
        self.streaming_from: str | None = None  # the leader's node name while streaming
        self.leader_durable = 0  # the leader's durable LSN, as its last answer said
        self.last_error = ""
        self._stop = threading.Event()
        self._write_lock = threading.Lock()  # held from the stop check to the write's end
        self.done = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="stemedb-replica", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """After this returns, nothing more is written to the log by this receiver.
        It does not wait for a stream request in flight (a paused leader may hold it
        for the request's whole timeout): its answer is dropped when it comes."""
        self._stop.set()
        with self._write_lock:  # a group being written finishes first
            pass

    def _finish(self, outcome: Outcome) -> None:
        self.outcome = outcome
        log.warning("replication from the leader stopped: %s", outcome.detail)

    def _run(self) -> None:
        try:
            timeout = httpx.Timeout(limits.request_timeout_seconds,
                                    connect=limits.connect_timeout_seconds)
            with httpx.Client(timeout=timeout, verify=self.verify,
                              headers=self.headers) as client:
                while not self._stop.is_set():  # bounded by stop()
                    if not self._once(client):
                        self.m.replication_streaming.set(0)
                        self.streaming_from = None
                        if self.outcome is not None:
                            return
                        self._stop.wait(limits.retry_seconds)
        except Exception as exc:  # the thread must say why it ended
            self._finish(Outcome("refused", f"the replication thread failed: {exc!r}"))
            log.exception("replication thread failed")
        finally:
            self.m.replication_streaming.set(0)
            self.done.set()

    def _once(self, client: httpx.Client) -> bool:
        """One stream request; False to pause (or stop, with an outcome)."""
        leader = self.leader()
        if leader is None or leader.node == self.node:
            self.last_error = "no leader to stream from"
            return False
        start = self.engine.read_index.durable_lsn
        last_term = term_at(self.history, start - 1)
        try:
            r = client.get(f"{leader.url}/v1/replication/wal", params={
                "node": self.node, "from": start, "term": last_term,
                "url": self.advertise_url, "database": self.database_id})
        except httpx.HTTPError as exc:
            self.last_error = f"{leader.node} ({leader.url}): {exc!r}"
            return False
        if r.status_code == 409:
            body = _json(r)
            code = (body.get("error") or {}).get("code")
            if code == "other_database":
                self._finish(Outcome("refused", (body.get("error") or {}).get(
                    "message", "another database")))
                return False
            if code != "log_diverged":
                self.last_error = f"{leader.node}: 409 {code}"
                return False
            theirs = [Term(int(t["term"]), int(t["start_lsn"]), str(t["node"]))
                      for t in body.get("history", [])]
            at = divergence(self.history, theirs, start, int(body.get("durable_lsn", 0)))
            self._finish(Outcome("diverged", f"this log (to LSN {start}, terms "
                                 f"{[t.term for t in self.history]}) is not a prefix of "
                                 f"{leader.node}'s (terms {[t.term for t in theirs]}, "
                                 f"durable to {body.get('durable_lsn')})",
                                 at if at is not None else min(start, int(
                                     body.get("durable_lsn", start)))))
            return False
        if r.status_code == 410:
            self._finish(Outcome("gone", f"{leader.node} no longer has the WAL from LSN "
                                 f"{start}: {(_json(r).get('error') or {}).get('message')}"))
            return False
        if r.status_code != 200:
            self.last_error = (f"{leader.node}: HTTP {r.status_code} "
                               f"{(_json(r).get('error') or {}).get('code')}")
            return False
        term = int(r.headers.get(TERM_HEADER, "0"))
        if term < self.term_seen:
            self.last_error = (f"{leader.node} streams in term {term}, older than term "
                               f"{self.term_seen} seen here: refused")
            log.warning("%s", self.last_error)
            return False
        self.term_seen = term
        self.leader_durable = int(r.headers.get(DURABLE_HEADER, "0"))
        size = int(r.headers.get(SEGMENT_SIZE_HEADER, "0"))
        if size and size != self.engine.config.segment_size_bytes:
            self._finish(Outcome("refused", f"{leader.node}'s segments are {size} bytes, "
                                 f"this node's {self.engine.config.segment_size_bytes}: "
                                 "members of a cluster share [wal] segment_size_bytes"))
            return False
        self.streaming_from = leader.node
        self.m.replication_streaming.set(1)
        if not r.content:
            return True
        try:
            frames = split_frames(r.content, start)
        except StreamError as exc:
            self.last_error = str(exc)
            log.error("%s", exc)
            return False
        with self._write_lock:
            if self._stop.is_set():
                return False  # stopped while the request was out: the answer is dropped
            self.engine.replicate(frames).result(limits.promote_timeout_seconds)
            for rtype, lsn, payload in frames:
                if rtype == RecordType.TERM:
                    rec = json.loads(payload)
                    self.history.append(Term(int(rec["term"]), lsn, str(rec["node"])))
                    self.term_seen = max(self.term_seen, int(rec["term"]))
        self.m.replication_received_bytes_total.inc(len(r.content))
        return True


def _json(r: httpx.Response) -> dict[str, Any]:
    try:
        body = r.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


__all__ = ["LeaderRef", "Outcome", "Receiver"]
