"""A small Python client for the StemeDB HTTP API, sync and async (httpx).

Example::

    from stemedb.client import Client, assert_op, vote_op

    with Client("http://127.0.0.1:18180", token=None) as db:
        a = db.create_assertion("paris", "capital_of", "france", author="alice")
        db.vote(a.id, "bob", +1)
        print(db.get_assertion(a.id).score)        # 1
        db.batch([assert_op("rome", "capital_of", "italy", author="alice"),
                  vote_op(a.id, "carol", -1)])
        sealed = db.seal_epoch()
        print(db.get_epoch(sealed.sealed).digest)

Results are frozen dataclasses; an error response raises a
:class:`StemeClientError` subclass carrying ``status``, ``code`` and ``message``.

Retries: every write carries an ``Idempotency-Key`` (a fresh UUID4 unless you pass
one) and is retried - always with that same key - on connection errors and 503,
at most :data:`stemedb.limits.client_retries_max` times with capped exponential
backoff (a server's ``Retry-After`` is honoured up to the cap).  The server answers
a retry of a write it already made with the first response, so a retry never
writes twice.  Reads are retried the same way.  A 500 ``wal_fsync_failed`` is
never retried: the write's outcome is unknown until the server restarts; retry it
yourself later with the same key (``idempotency_key=``) to learn it.

Consistency (SPEC "Reads and consistency"): a read sees every write acknowledged
before it (``consistency="linearizable"``, the default); ``min_lsn=N`` asks for at
least every write whose ``lsn`` is at most N; ``consistency="stale"`` (optionally
with ``max_staleness_ms=``) takes what the server has applied now, without waiting.
Every read answer's ``StemeDB-Applied-LSN`` lands in :attr:`Client.last_applied_lsn`
(and in ``applied_lsn`` of an error).  A :meth:`Client.session` remembers the
highest ``lsn`` of its own writes and reads with it as ``min_lsn``
(read-your-writes)::

    with Client("http://127.0.0.1:18180") as db:
        s = db.session()
        a = s.create_assertion("paris", "capital_of", "france", author="alice")
        s.get_assertion(a.id)                      # sent with min_lsn=a.lsn
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field, fields
from typing import Any, Literal, TypeVar
from urllib.parse import quote

import httpx

from . import limits

__all__ = [
    "DEFAULT_URL",
    "Assertion",
    "AssertionCreated",
    "AssertionPage",
    "AsyncClient",
    "AsyncSession",
    "BadRequest",
    "BatchResult",
    "CheckpointResult",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "DrainResult",
    "Epoch",
    "EpochResult",
    "Forbidden",
    "InsufficientStorage",
    "NotFound",
    "NotLeader",
    "SealResult",
    "SealedEpoch",
    "ServerError",
    "Session",
    "StemeClientError",
    "TooLarge",
    "Unauthorized",
    "Unavailable",
    "UnsupportedMediaType",
    "Vote",
    "VoteResult",
    "Votes",
    "WalFsyncFailed",
    "assert_op",
    "tls_context",
    "vote_op",
]

DEFAULT_URL = "http://127.0.0.1:18180"
T = TypeVar("T")
APPLIED_LSN_HEADER = "StemeDB-Applied-LSN"
Consistency = Literal["linearizable", "stale"]


# -- errors -------------------------------------------------------------------------

class StemeClientError(Exception):
    """An error response (or no response at all, for :class:`ConnectionFailed`)."""

    def __init__(self, status: int, code: str, message: str, *, hint: str | None = None,
                 retry_after_seconds: float | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.hint = hint
        self.retry_after_seconds = retry_after_seconds
        # The server state's applied LSN when it answered (errors of reads: 404, 503).
        self.applied_lsn: int | None = None


class ConnectionFailed(StemeClientError):
    """No response after every retry (status 0)."""


class BadRequest(StemeClientError):
    """400: the request was refused as it stands; nothing was written."""


class Unauthorized(StemeClientError):
    """401: no token, or an unknown one."""


class Forbidden(StemeClientError):
    """403: the token lacks the scope."""


class NotFound(StemeClientError):
    """404: unknown assertion or epoch."""


class Conflict(StemeClientError):
    """409: e.g. an Idempotency-Key reused with another request."""


class TooLarge(StemeClientError):
    """413: the body is over the server's limit."""


class UnsupportedMediaType(StemeClientError):
    """415."""


class ServerError(StemeClientError):
    """A 5xx without a more specific class."""


class NotLeader(StemeClientError):
    """307: a write sent to a replica of a cluster.  ``leader_url`` is where the server
    says the write goes (the client does not follow it: point it at the leader, or at
    a load balancer that checks ``GET /leader``)."""

    leader_url: str | None = None


class WalFsyncFailed(ServerError):
    """500 ``wal_fsync_failed``: the outcome of the write is unknown (never retried)."""


class Unavailable(ServerError):
    """503 after every retry: replaying, draining or stopping."""


class InsufficientStorage(ServerError):
    """507: the disk guard refuses writes."""


_BY_STATUS: dict[int, type[StemeClientError]] = {
    307: NotLeader, 400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound,
    409: Conflict, 413: TooLarge, 415: UnsupportedMediaType, 503: Unavailable,
    507: InsufficientStorage,
}


def _retry_after(resp: httpx.Response) -> float | None:
    try:
        return float(resp.headers["Retry-After"])
    except (KeyError, ValueError):
        return None


def _applied_lsn(resp: httpx.Response) -> int | None:
    try:
        return int(resp.headers[APPLIED_LSN_HEADER])
    except (KeyError, ValueError):
        return None


def _error_from(resp: httpx.Response) -> StemeClientError:
    code, message, hint = f"http_{resp.status_code}", resp.reason_phrase, None
    try:
        err = resp.json()["error"]
        code, message, hint = str(err["code"]), str(err["message"]), err.get("hint")
    except (ValueError, KeyError, TypeError):
        pass
    cls = _BY_STATUS.get(resp.status_code)
    if cls is None:
        if code == "wal_fsync_failed":
            cls = WalFsyncFailed
        elif resp.status_code >= 500:
            cls = ServerError
        else:
            cls = StemeClientError
    err = cls(resp.status_code, code, message, hint=hint,
              retry_after_seconds=_retry_after(resp))
    err.applied_lsn = _applied_lsn(resp)
    if isinstance(err, NotLeader):
        err.leader_url = resp.headers.get("Location")
    return err


# -- results ------------------------------------------------------------------------

def _build(cls: type[T], data: dict[str, Any], **extra: Any) -> T:
    """``cls`` from a response object, ignoring fields a newer server may add."""
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in data.items() if k in names}, **extra)


@dataclass(frozen=True)
class AssertionCreated:
    id: int
    lsn: int
    epoch: int
    created_at: str
    replayed: bool = False  # True when answered from an earlier try with the same key


@dataclass(frozen=True)
class Assertion:
    id: int
    subject: str
    predicate: str
    object: Any
    author: str
    epoch: int
    lsn: int
    created_at: str
    confidence: float | None = None
    source: str | None = None
    support: int = 0  # tallies in the open epoch (GET /v1/assertions/{id} only)
    dispute: int = 0
    score: int = 0


@dataclass(frozen=True)
class AssertionPage:
    items: list[Assertion]
    next: int | None  # pass as after= for the next page; None on the last page


@dataclass(frozen=True)
class VoteResult:
    assertion_id: int
    voter: str
    value: int
    lsn: int
    epoch: int
    created: bool  # False when it replaced this voter's earlier vote in the epoch
    replayed: bool = False


@dataclass(frozen=True)
class BatchResult:
    results: list[AssertionCreated | VoteResult]
    lsn: int
    epoch: int | None = None
    replayed: bool = False


@dataclass(frozen=True)
class Vote:
    voter: str
    value: int
    lsn: int
    updated_at: str


@dataclass(frozen=True)
class Votes:
    assertion_id: int
    epoch: int
    sealed: bool
    votes: list[Vote]
    support: int
    dispute: int
    score: int


@dataclass(frozen=True)
class Epoch:
    epoch: int
    opened_at: str
    assertions: int
    votes: int


@dataclass(frozen=True)
class SealResult:
    sealed: int
    opened: int
    digest: str
    results: int = 0
    lsn: int = 0
    sealed_at: str = ""
    replayed: bool = False


@dataclass(frozen=True)
class EpochResult:
    assertion_id: int
    support: int
    dispute: int
    score: int
    status: str  # accepted | rejected | contested


@dataclass(frozen=True)
class SealedEpoch:
    epoch: int
    opened_at: str
    sealed_at: str
    digest: str
    assertions: int
    votes: int
    voted_assertions: int
    seal_lsn: int
    summary: dict[str, int]
    results: list[EpochResult]
    next: int | None


@dataclass(frozen=True)
class CheckpointResult:
    checkpoint_lsn: int
    removed_segments: list[str]
    seconds: float
    lowest_hold: int = 0
    holds: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class DrainResult:
    draining: bool
    ready: bool
    checkpoint_lsn: int
    end_lsn: int | None = None
    in_flight_writes_finished: bool = True
    checkpoint_error: str | None = None
    seconds: float = 0.0


def assert_op(subject: str, predicate: str, object: Any, *, author: str,
              confidence: float | None = None, source: str | None = None) -> dict[str, Any]:
    """One ``{"assert": {...}}`` op for :meth:`Client.batch`."""
    return {"assert": _assertion_body(subject, predicate, object, author, confidence, source)}


def vote_op(assertion_id: int, voter: str, value: int) -> dict[str, Any]:
    """One ``{"vote": {...}}`` op for :meth:`Client.batch`."""
    return {"vote": {"assertion_id": assertion_id, "voter": voter, "value": value}}


def _assertion_body(subject: str, predicate: str, obj: Any, author: str,
                    confidence: float | None, source: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"subject": subject, "predicate": predicate, "object": obj,
                            "author": author}
    if confidence is not None:
        body["confidence"] = confidence
    if source is not None:
        body["source"] = source
    return body


def _assertion(d: dict[str, Any]) -> Assertion:
    return _build(Assertion, d)


def _page(d: dict[str, Any]) -> AssertionPage:
    return AssertionPage([_assertion(i) for i in d["items"]], d.get("next"))


def _batch(d: dict[str, Any], replayed: bool) -> BatchResult:
    results: list[AssertionCreated | VoteResult] = [
        _build(VoteResult, r) if "voter" in r else _build(AssertionCreated, r)
        for r in d["results"]]
    return BatchResult(results, d["lsn"], d.get("epoch"), replayed)


def _votes(d: dict[str, Any]) -> Votes:
    return Votes(d["assertion_id"], d["epoch"], d["sealed"],
                 [_build(Vote, v) for v in d["votes"]], d["support"], d["dispute"],
                 d["score"])


def _sealed(d: dict[str, Any]) -> SealedEpoch:
    return _build(SealedEpoch, {**d, "results": [_build(EpochResult, r)
                                                 for r in d["results"]]})


@dataclass(frozen=True)
class _Call:
    """One logical request: sent once, or again after a retryable failure."""

    method: str
    path: str
    params: dict[str, Any] | None = None
    body: bytes | None = None
    idempotency_key: str | None = None
    read: bool = False  # a read route: takes min_lsn, consistency, max_staleness_ms

    def headers(self) -> dict[str, str]:
        h: dict[str, str] = {}
        if self.body is not None:
            h["Content-Type"] = "application/json"
        if self.idempotency_key is not None:
            h["Idempotency-Key"] = self.idempotency_key
        return h


def _write(method: str, path: str, body: Any, key: str | None) -> _Call:
    raw = None if body is None else json.dumps(body, separators=(",", ":"),
                                               allow_nan=False).encode()
    return _Call(method, path, body=raw, idempotency_key=key or str(uuid.uuid4()))


def _read(path: str, params: dict[str, Any] | None = None, *, min_lsn: int | None = None,
          consistency: Consistency | None = None, max_staleness_ms: int | None = None
          ) -> _Call:
    """A read of ``path``, with the consistency it asks for (the server validates it)."""
    out = dict(params or {})
    for name, value in (("min_lsn", min_lsn), ("consistency", consistency),
                        ("max_staleness_ms", max_staleness_ms)):
        if value is not None:
            out[name] = value
    return _Call("GET", path, params=out or None, read=True)


def _list_params(filters: dict[str, Any]) -> dict[str, Any]:
    allowed = ("subject", "predicate", "author", "epoch", "after", "limit")
    unknown = set(filters) - set(allowed)
    if unknown:
        raise TypeError(f"unknown filter(s): {', '.join(sorted(unknown))}")
    return {k: v for k, v in filters.items() if v is not None}


class _Base:
    def __init__(self, base_url: str, token: str | None, timeout_seconds: float,
                 retries_max: int, backoff_seconds_initial: float,
                 backoff_seconds_max: float) -> None:
        if retries_max < 0:
            raise ValueError("retries_max must not be negative")
        self.base_url = base_url.rstrip("/")
        self._headers = {"Accept": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self.timeout_seconds = timeout_seconds
        self.retries_max = retries_max
        self.backoff_seconds_initial = backoff_seconds_initial
        self.backoff_seconds_max = backoff_seconds_max
        # StemeDB-Applied-LSN of the last response that carried it (every read's).
        self.last_applied_lsn: int | None = None

    def __repr__(self) -> str:  # never the token
        return f"{type(self).__name__}({self.base_url!r})"

    def _prepare(self, call: _Call) -> _Call:
        """The call as sent (a session adds its ``min_lsn`` to reads)."""
        return call

    def _observe(self, resp: httpx.Response) -> None:
        applied = _applied_lsn(resp)
        if applied is not None:
            self.last_applied_lsn = applied

    def _wrote(self, body: dict[str, Any]) -> None:
        """A write answered with ``body`` (a session remembers its ``lsn``)."""

    def _wait_seconds(self, attempt: int, retry_after: float | None) -> float:
        backoff = self.backoff_seconds_initial * float(2 ** attempt)
        if retry_after is not None:
            backoff = max(backoff, retry_after)
        return min(backoff, self.backoff_seconds_max)

    def _outcome(self, call: _Call, attempt: int, resp: httpx.Response | None,
                 exc: httpx.TransportError | None) -> tuple[float | None, Any]:
        """(seconds to wait before retrying, or None and the final result/error)."""
        last = attempt >= self.retries_max
        if exc is not None:
            if last:
                return None, ConnectionFailed(0, "connection_failed",
                                              f"{call.method} {call.path}: {exc!r} after "
                                              f"{attempt + 1} tries")
            return self._wait_seconds(attempt, None), None
        assert resp is not None
        if resp.status_code == 503 and not last:
            return self._wait_seconds(attempt, _retry_after(resp)), None
        if resp.status_code >= 300:  # 3xx: a replica's 307 to the leader
            return None, _error_from(resp)
        return None, resp


def tls_context(ca_file: str | None = None, *, cert_file: str | None = None,
                key_file: str | None = None) -> ssl.SSLContext:
    """A client TLS context for an ``https://`` server: trust ``ca_file`` (the system's
    CAs when None) and, for a server with ``[server] tls_client_ca_file``, present
    ``cert_file``/``key_file``.  Pass it as ``Client(url, tls=...)``.

    Example::

        ctx = tls_context("/etc/stemedb/ca.pem")
        with Client("https://db1:18180", token, tls=ctx) as db:
            db.ready()
    """
    ctx = ssl.create_default_context(cafile=ca_file)
    if cert_file is not None:
        ctx.load_cert_chain(cert_file, key_file)
    return ctx


class Client(_Base):
    """Synchronous client.  Use as a context manager, or call :meth:`close`."""

    def __init__(self, base_url: str = DEFAULT_URL, token: str | None = None, *,
                 timeout: float = limits.client_timeout_seconds_default,
                 retries_max: int = limits.client_retries_max,
                 backoff_seconds_initial: float = limits.client_backoff_seconds_initial,
                 backoff_seconds_max: float = limits.client_backoff_seconds_max,
                 transport: httpx.BaseTransport | None = None,
                 tls: ssl.SSLContext | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        super().__init__(base_url, token, timeout, retries_max, backoff_seconds_initial,
                         backoff_seconds_max)
        self._http = httpx.Client(base_url=self.base_url, headers=self._headers,
                                  timeout=timeout, transport=transport,
                                  verify=tls if tls is not None else True)
        self._sleep = sleep

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, call: _Call) -> httpx.Response:
        call = self._prepare(call)
        for attempt in range(self.retries_max + 1):  # bounded: 1 + retries_max tries
            resp: httpx.Response | None = None
            err: httpx.TransportError | None = None
            try:
                resp = self._http.request(call.method, call.path, params=call.params,
                                          content=call.body, headers=call.headers())
                self._observe(resp)
            except httpx.TransportError as exc:
                err = exc
            wait, result = self._outcome(call, attempt, resp, err)
            if wait is None:
                if isinstance(result, StemeClientError):
                    raise result
                assert isinstance(result, httpx.Response)
                return result
            self._sleep(wait)
        raise AssertionError("unreachable: the last try always returns or raises")

    def _json(self, call: _Call) -> tuple[dict[str, Any], bool]:
        resp = self._send(call)
        body: dict[str, Any] = resp.json()
        if call.idempotency_key is not None:
            self._wrote(body)
        return body, resp.headers.get("Idempotent-Replayed") == "true"

    # writes
    def create_assertion(self, subject: str, predicate: str, object: Any, *, author: str,
                         confidence: float | None = None, source: str | None = None,
                         idempotency_key: str | None = None) -> AssertionCreated:
        body = _assertion_body(subject, predicate, object, author, confidence, source)
        d, replayed = self._json(_write("POST", "/v1/assertions", body, idempotency_key))
        return _build(AssertionCreated, d, replayed=replayed)

    def batch(self, ops: list[dict[str, Any]], *, idempotency_key: str | None = None
              ) -> BatchResult:
        d, replayed = self._json(_write("POST", "/v1/batch", {"ops": ops}, idempotency_key))
        return _batch(d, replayed)

    def vote(self, assertion_id: int, voter: str, value: int, *,
             idempotency_key: str | None = None) -> VoteResult:
        path = f"/v1/assertions/{int(assertion_id)}/votes/{_segment(voter)}"
        d, replayed = self._json(_write("PUT", path, {"value": value}, idempotency_key))
        return _build(VoteResult, d, replayed=replayed)

    def seal_epoch(self, *, idempotency_key: str | None = None) -> SealResult:
        d, replayed = self._json(_write("POST", "/v1/epochs", None, idempotency_key))
        return _build(SealResult, d, replayed=replayed)

    # reads: each takes min_lsn=, consistency= and max_staleness_ms= (module docstring)
    def get_assertion(self, assertion_id: int, *, min_lsn: int | None = None,
                      consistency: Consistency | None = None,
                      max_staleness_ms: int | None = None) -> Assertion:
        return _assertion(self._json(_read(
            f"/v1/assertions/{int(assertion_id)}", min_lsn=min_lsn, consistency=consistency,
            max_staleness_ms=max_staleness_ms))[0])

    def list_assertions(self, *, subject: str | None = None, predicate: str | None = None,
                        author: str | None = None, epoch: int | None = None,
                        after: int | None = None, limit: int | None = None,
                        min_lsn: int | None = None, consistency: Consistency | None = None,
                        max_staleness_ms: int | None = None) -> AssertionPage:
        params = _list_params(dict(subject=subject, predicate=predicate, author=author,
                                   epoch=epoch, after=after, limit=limit))
        return _page(self._json(_read("/v1/assertions", params, min_lsn=min_lsn,
                                      consistency=consistency,
                                      max_staleness_ms=max_staleness_ms))[0])

    def iter_assertions(self, **filters: Any) -> Iterator[Assertion]:
        """Every matching assertion, page after page (``after`` is the cursor)."""
        filters = dict(filters)
        for _ in range(limits.client_page_iterations_max):
            page = self.list_assertions(**filters)
            yield from page.items
            if page.next is None:
                return
            filters["after"] = page.next
        raise RuntimeError(f"more than {limits.client_page_iterations_max} pages")

    def votes(self, assertion_id: int, epoch: int | None = None, *,
              min_lsn: int | None = None, consistency: Consistency | None = None,
              max_staleness_ms: int | None = None) -> Votes:
        params = None if epoch is None else {"epoch": epoch}
        return _votes(self._json(_read(f"/v1/assertions/{int(assertion_id)}/votes", params,
                                       min_lsn=min_lsn, consistency=consistency,
                                       max_staleness_ms=max_staleness_ms))[0])

    def current_epoch(self, *, min_lsn: int | None = None,
                      consistency: Consistency | None = None,
                      max_staleness_ms: int | None = None) -> Epoch:
        return _build(Epoch, self._json(_read("/v1/epochs/current", min_lsn=min_lsn,
                                              consistency=consistency,
                                              max_staleness_ms=max_staleness_ms))[0])

    def get_epoch(self, n: int, *, after: int | None = None, limit: int | None = None,
                  min_lsn: int | None = None, consistency: Consistency | None = None,
                  max_staleness_ms: int | None = None) -> SealedEpoch:
        params = {k: v for k, v in (("after", after), ("limit", limit)) if v is not None}
        return _sealed(self._json(_read(f"/v1/epochs/{int(n)}", params, min_lsn=min_lsn,
                                        consistency=consistency,
                                        max_staleness_ms=max_staleness_ms))[0])

    def session(self, *, min_lsn: int | None = None) -> Session:
        """A :class:`Session` on this client's connections (read-your-writes)."""
        return Session(self, min_lsn=min_lsn)

    # operations
    def status(self) -> dict[str, Any]:
        return self._json(_Call("GET", "/v1/admin/status"))[0]

    def checkpoint(self) -> CheckpointResult:
        return _build(CheckpointResult, self._json(_Call("POST", "/v1/admin/checkpoint"))[0])

    def drain(self) -> DrainResult:
        return _build(DrainResult, self._json(_Call("POST", "/v1/admin/node/drain"))[0])

    def ready(self) -> dict[str, Any]:
        """``/readyz`` as a dict (``ready`` is False while replaying or drained)."""
        resp = self._http.get("/readyz")
        body: dict[str, Any] = resp.json()
        return body


class AsyncClient(_Base):
    """Asynchronous client: the same methods as :class:`Client`, awaited."""

    def __init__(self, base_url: str = DEFAULT_URL, token: str | None = None, *,
                 timeout: float = limits.client_timeout_seconds_default,
                 retries_max: int = limits.client_retries_max,
                 backoff_seconds_initial: float = limits.client_backoff_seconds_initial,
                 backoff_seconds_max: float = limits.client_backoff_seconds_max,
                 transport: httpx.AsyncBaseTransport | None = None,
                 tls: ssl.SSLContext | None = None) -> None:
        super().__init__(base_url, token, timeout, retries_max, backoff_seconds_initial,
                         backoff_seconds_max)
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=self._headers,
                                       timeout=timeout, transport=transport,
                                       verify=tls if tls is not None else True)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, call: _Call) -> httpx.Response:
        call = self._prepare(call)
        for attempt in range(self.retries_max + 1):  # bounded: 1 + retries_max tries
            resp: httpx.Response | None = None
            err: httpx.TransportError | None = None
            try:
                resp = await self._http.request(call.method, call.path, params=call.params,
                                                content=call.body, headers=call.headers())
                self._observe(resp)
            except httpx.TransportError as exc:
                err = exc
            wait, result = self._outcome(call, attempt, resp, err)
            if wait is None:
                if isinstance(result, StemeClientError):
                    raise result
                assert isinstance(result, httpx.Response)
                return result
            await asyncio.sleep(wait)
        raise AssertionError("unreachable: the last try always returns or raises")

    async def _json(self, call: _Call) -> tuple[dict[str, Any], bool]:
        resp = await self._send(call)
        body: dict[str, Any] = resp.json()
        if call.idempotency_key is not None:
            self._wrote(body)
        return body, resp.headers.get("Idempotent-Replayed") == "true"

    async def create_assertion(self, subject: str, predicate: str, object: Any, *,
                               author: str, confidence: float | None = None,
                               source: str | None = None,
                               idempotency_key: str | None = None) -> AssertionCreated:
        body = _assertion_body(subject, predicate, object, author, confidence, source)
        d, replayed = await self._json(_write("POST", "/v1/assertions", body,
                                              idempotency_key))
        return _build(AssertionCreated, d, replayed=replayed)

    async def batch(self, ops: list[dict[str, Any]], *, idempotency_key: str | None = None
                    ) -> BatchResult:
        d, replayed = await self._json(_write("POST", "/v1/batch", {"ops": ops},
                                              idempotency_key))
        return _batch(d, replayed)

    async def vote(self, assertion_id: int, voter: str, value: int, *,
                   idempotency_key: str | None = None) -> VoteResult:
        path = f"/v1/assertions/{int(assertion_id)}/votes/{_segment(voter)}"
        d, replayed = await self._json(_write("PUT", path, {"value": value},
                                              idempotency_key))
        return _build(VoteResult, d, replayed=replayed)

    async def seal_epoch(self, *, idempotency_key: str | None = None) -> SealResult:
        d, replayed = await self._json(_write("POST", "/v1/epochs", None, idempotency_key))
        return _build(SealResult, d, replayed=replayed)

    async def get_assertion(self, assertion_id: int, *, min_lsn: int | None = None,
                            consistency: Consistency | None = None,
                            max_staleness_ms: int | None = None) -> Assertion:
        d, _ = await self._json(_read(f"/v1/assertions/{int(assertion_id)}",
                                      min_lsn=min_lsn, consistency=consistency,
                                      max_staleness_ms=max_staleness_ms))
        return _assertion(d)

    async def list_assertions(self, *, subject: str | None = None,
                              predicate: str | None = None, author: str | None = None,
                              epoch: int | None = None, after: int | None = None,
                              limit: int | None = None, min_lsn: int | None = None,
                              consistency: Consistency | None = None,
                              max_staleness_ms: int | None = None) -> AssertionPage:
        params = _list_params(dict(subject=subject, predicate=predicate, author=author,
                                   epoch=epoch, after=after, limit=limit))
        d, _ = await self._json(_read("/v1/assertions", params, min_lsn=min_lsn,
                                      consistency=consistency,
                                      max_staleness_ms=max_staleness_ms))
        return _page(d)

    async def iter_assertions(self, **filters: Any) -> AsyncIterator[Assertion]:
        filters = dict(filters)
        for _ in range(limits.client_page_iterations_max):
            page = await self.list_assertions(**filters)
            for item in page.items:
                yield item
            if page.next is None:
                return
            filters["after"] = page.next
        raise RuntimeError(f"more than {limits.client_page_iterations_max} pages")

    async def votes(self, assertion_id: int, epoch: int | None = None, *,
                    min_lsn: int | None = None, consistency: Consistency | None = None,
                    max_staleness_ms: int | None = None) -> Votes:
        params = None if epoch is None else {"epoch": epoch}
        d, _ = await self._json(_read(f"/v1/assertions/{int(assertion_id)}/votes", params,
                                      min_lsn=min_lsn, consistency=consistency,
                                      max_staleness_ms=max_staleness_ms))
        return _votes(d)

    async def current_epoch(self, *, min_lsn: int | None = None,
                            consistency: Consistency | None = None,
                            max_staleness_ms: int | None = None) -> Epoch:
        d, _ = await self._json(_read("/v1/epochs/current", min_lsn=min_lsn,
                                      consistency=consistency,
                                      max_staleness_ms=max_staleness_ms))
        return _build(Epoch, d)

    async def get_epoch(self, n: int, *, after: int | None = None, limit: int | None = None,
                        min_lsn: int | None = None, consistency: Consistency | None = None,
                        max_staleness_ms: int | None = None) -> SealedEpoch:
        params = {k: v for k, v in (("after", after), ("limit", limit)) if v is not None}
        d, _ = await self._json(_read(f"/v1/epochs/{int(n)}", params, min_lsn=min_lsn,
                                      consistency=consistency,
                                      max_staleness_ms=max_staleness_ms))
        return _sealed(d)

    def session(self, *, min_lsn: int | None = None) -> AsyncSession:
        """An :class:`AsyncSession` on this client's connections (read-your-writes)."""
        return AsyncSession(self, min_lsn=min_lsn)

    async def status(self) -> dict[str, Any]:
        d, _ = await self._json(_Call("GET", "/v1/admin/status"))
        return d

    async def checkpoint(self) -> CheckpointResult:
        d, _ = await self._json(_Call("POST", "/v1/admin/checkpoint"))
        return _build(CheckpointResult, d)

    async def drain(self) -> DrainResult:
        d, _ = await self._json(_Call("POST", "/v1/admin/node/drain"))
        return _build(DrainResult, d)

    async def ready(self) -> dict[str, Any]:
        resp = await self._http.get("/readyz")
        body: dict[str, Any] = resp.json()
        return body


class _SessionMixin(_Base):
    """What a session adds to a client: its writes' highest ``lsn``, sent as ``min_lsn``."""

    lsn: int | None

    def _prepare(self, call: _Call) -> _Call:
        params = dict(call.params or {})
        if not call.read or self.lsn is None or params.get("consistency") == "stale":
            return call  # a stale read asks not to wait: it may miss the session's writes
        asked = params.get("min_lsn")
        params["min_lsn"] = self.lsn if asked is None else max(int(asked), self.lsn)
        return _Call(call.method, call.path, params=params, body=call.body,
                     idempotency_key=call.idempotency_key, read=True)

    def _wrote(self, body: dict[str, Any]) -> None:
        lsn = body.get("lsn")
        if isinstance(lsn, int) and not isinstance(lsn, bool) \
                and (self.lsn is None or lsn > self.lsn):
            self.lsn = lsn


class Session(_SessionMixin, Client):
    """Read-your-writes on top of a :class:`Client` (``db.session()``), as causal
    sessions do in Cosmos DB and MongoDB.

    It has every method of the client, on the client's connections and settings.
    ``lsn`` is the highest ``lsn`` any of its writes returned (a replayed write's
    too), or the ``min_lsn`` it was opened with; every read it makes passes it as
    ``min_lsn`` (the larger of it and a ``min_lsn=`` given to the call), so it sees
    its own writes even where reads could lag them.  A ``consistency="stale"`` read
    passes none: it asked not to wait.  Pass ``lsn`` to another process and open
    ``db.session(min_lsn=lsn)`` there to carry the guarantee along.  Closing a
    session leaves the client open.  One session is meant for one thread of work.
    """

    def __init__(self, client: Client, *, min_lsn: int | None = None) -> None:
        _Base.__init__(self, client.base_url, None, client.timeout_seconds,
                       client.retries_max, client.backoff_seconds_initial,
                       client.backoff_seconds_max)
        self._headers = client._headers
        self._http = client._http
        self._sleep = client._sleep
        self.client = client
        self.lsn = min_lsn

    def __enter__(self) -> Session:
        return self

    def close(self) -> None:
        """Nothing to release: the connections are the client's."""


class AsyncSession(_SessionMixin, AsyncClient):
    """:class:`Session` for an :class:`AsyncClient` (``db.session()``)."""

    def __init__(self, client: AsyncClient, *, min_lsn: int | None = None) -> None:
        _Base.__init__(self, client.base_url, None, client.timeout_seconds,
                       client.retries_max, client.backoff_seconds_initial,
                       client.backoff_seconds_max)
        self._headers = client._headers
        self._http = client._http
        self.client = client
        self.lsn = min_lsn

    async def __aenter__(self) -> AsyncSession:
        return self

    async def aclose(self) -> None:
        """Nothing to release: the connections are the client's."""


def _segment(text: str) -> str:
    """A path segment: percent-encode everything but unreserved characters."""
    return quote(text, safe="")
