"""An etcd v3 client over etcd's JSON gateway, with ``httpx``.

etcd serves its gRPC API as JSON over plain HTTP POSTs (the "gRPC gateway"): keys and
values travel base64-encoded, 64-bit integers as decimal strings, and fields at their
zero value are left out of the answer (a failed txn has no ``succeeded``, a lease that
is gone answers a keepalive with no ``TTL``).  The path prefix is ``/v3`` from etcd 3.4
on, ``/v3beta`` on 3.3 and ``/v3alpha`` before; the client asks each endpoint's
``/version`` once and picks it.

Endpoints are given as ``ETCDCTL_ENDPOINTS`` takes them: comma-separated URLs.  A call
tries the endpoint that answered last, then each other one once, in order; an endpoint
is passed over when it cannot be reached, times out, or answers that it is unavailable
(gRPC code 14, e.g. "etcdserver: no leader").  Any other error etcd answers is raised
as :class:`EtcdError` with its code and message.  When every endpoint failed,
:class:`EtcdUnavailable` lists what each one did.

A call retried on another endpoint after a timeout may have been applied by the first
one: the callers make every write a guarded txn or an idempotent put, and read the
outcome back when it matters (see :meth:`Leadership.campaign`).

``fault_hook`` is for tests: called with ``(endpoint, path)`` before every request, it
may raise an ``httpx.TransportError`` to make that endpoint unreachable.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import httpx
import orjson

from . import _limits as limits
from ._errors import EtcdError, EtcdUnavailable

__all__ = [
    "Compare",
    "DeleteRange",
    "EtcdClient",
    "FaultHook",
    "KeyValue",
    "LeaseGrant",
    "LeaseTimeToLive",
    "Put",
    "Range",
    "RangeResult",
    "TxnResult",
    "gateway_prefix",
    "parse_endpoints",
    "prefix_range_end",
]

FaultHook = Callable[[str, str], None]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def _int(value: Any) -> int:
    """An int64 of the gateway: a decimal string, a number, or absent (zero)."""
    return int(value) if value is not None else 0


def parse_endpoints(endpoints: str | Sequence[str]) -> list[str]:
    """``"http://a:2379,http://b:2379"`` (or a list) to URLs without a trailing slash.

    A bare ``host:port`` is taken as ``http://host:port``.
    """
    items = endpoints.split(",") if isinstance(endpoints, str) else list(endpoints)
    urls = []
    for item in items:
        url = item.strip().rstrip("/")
        if not url:
            continue
        if "://" not in url:
            url = "http://" + url
        urls.append(url)
    if not urls:
        raise ValueError("no etcd endpoint given (expected e.g. http://127.0.0.1:2379)")
    if len(urls) > limits.etcd_endpoints_max:
        raise ValueError(f"{len(urls)} etcd endpoints: at most {limits.etcd_endpoints_max}")
    return urls


def gateway_prefix(version: str) -> str:
    """The gateway's path prefix for an etcd cluster version such as ``"3.4.0"``."""
    try:
        major, minor = (int(p) for p in version.split(".")[:2])
    except ValueError as e:
        raise ValueError(f"unexpected etcd version {version!r}") from e
    if (major, minor) >= (3, 4):
        return "/v3"
    if (major, minor) == (3, 3):
        return "/v3beta"
    return "/v3alpha"


def prefix_range_end(prefix: bytes) -> bytes:
    """The ``range_end`` that makes a range cover every key starting with ``prefix``."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"  # every key


class KeyValue(NamedTuple):
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int

    @classmethod
    def from_json(cls, kv: dict[str, Any]) -> KeyValue:
        return cls(_unb64(kv.get("key")), _unb64(kv.get("value")),
                   _int(kv.get("create_revision")), _int(kv.get("mod_revision")),
                   _int(kv.get("version")), _int(kv.get("lease")))


class RangeResult(NamedTuple):
    revision: int  # the store's revision when the range was read
    kvs: list[KeyValue]
    key_count: int  # keys in the range, even past ``limit``
    more: bool

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> RangeResult:
        return cls(_int(body.get("header", {}).get("revision")),
                   [KeyValue.from_json(kv) for kv in body.get("kvs", [])],
                   _int(body.get("count")), bool(body.get("more", False)))


class LeaseGrant(NamedTuple):
    lease_id: int
    ttl_seconds: int  # as granted: etcd may raise a TTL under its minimum


class LeaseTimeToLive(NamedTuple):
    lease_id: int
    ttl_seconds: int  # remaining, as etcd counts it; -1 when the lease does not exist
    granted_ttl_seconds: int
    keys: list[bytes]


CompareTarget = Literal["CREATE", "MOD", "VERSION", "VALUE", "LEASE"]
CompareResult = Literal["EQUAL", "GREATER", "LESS", "NOT_EQUAL"]
_TARGET_FIELDS: dict[str, str] = {"CREATE": "create_revision", "MOD": "mod_revision",
                                  "VERSION": "version", "VALUE": "value", "LEASE": "lease"}


class Compare(NamedTuple):
    """One condition of a txn: ``key``'s ``target`` compared by ``result`` with ``value``.

    A key that does not exist has create_revision, mod_revision and version 0.
    """

    key: bytes
    target: CompareTarget
    result: CompareResult
    value: int | bytes

    @classmethod
    def create_revision(cls, key: bytes, revision: int,
                        result: CompareResult = "EQUAL") -> Compare:
        return cls(key, "CREATE", result, revision)

    @classmethod
    def mod_revision(cls, key: bytes, revision: int,
                     result: CompareResult = "EQUAL") -> Compare:
        return cls(key, "MOD", result, revision)

    @classmethod
    def version(cls, key: bytes, version: int, result: CompareResult = "EQUAL") -> Compare:
        return cls(key, "VERSION", result, version)

    @classmethod
    def value_is(cls, key: bytes, value: bytes, result: CompareResult = "EQUAL") -> Compare:
        return cls(key, "VALUE", result, value)

    def to_json(self) -> dict[str, Any]:
        field = _TARGET_FIELDS[self.target]
        if self.target == "VALUE":
            if not isinstance(self.value, bytes):
                raise TypeError("a VALUE compare takes bytes")
            operand: Any = _b64(self.value)
        else:
            if not isinstance(self.value, int):
                raise TypeError(f"a {self.target} compare takes an int")
            operand = str(self.value)
        return {"key": _b64(self.key), "target": self.target, "result": self.result,
                field: operand}


class Put(NamedTuple):
    key: bytes
    value: bytes
    lease: int = 0  # 0: no lease, the key lives until deleted

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"key": _b64(self.key), "value": _b64(self.value)}
        if self.lease:
            body["lease"] = str(self.lease)
        return {"request_put": body}


class DeleteRange(NamedTuple):
    key: bytes
    range_end: bytes = b""  # empty: only ``key``

    def to_json(self) -> dict[str, Any]:
        body = {"key": _b64(self.key)}
        if self.range_end:
            body["range_end"] = _b64(self.range_end)
        return {"request_delete_range": body}


class Range(NamedTuple):
    key: bytes
    range_end: bytes = b""

    def to_json(self) -> dict[str, Any]:
        body = {"key": _b64(self.key)}
        if self.range_end:
            body["range_end"] = _b64(self.range_end)
        return {"request_range": body}


Op = Put | DeleteRange | Range


class TxnResult(NamedTuple):
    succeeded: bool
    revision: int  # after the txn: the revision of its writes when it wrote any
    ranges: list[RangeResult]  # the answers of the Range ops of the branch taken, in order


class EtcdClient:
    """Calls to an etcd cluster through its JSON gateway, failing over between endpoints.

    Thread-safe: ``httpx.Client`` pools connections under its own locks, and the
    client's own state (the preferred endpoint, each endpoint's prefix) is guarded.
    """

    def __init__(self, endpoints: str | Sequence[str], *,
                 timeout_seconds: float = limits.etcd_request_timeout_seconds_default,
                 fault_hook: FaultHook | None = None) -> None:
        self.endpoints = parse_endpoints(endpoints)
        self.timeout_seconds = timeout_seconds
        self.fault_hook = fault_hook
        self._http = httpx.Client(timeout=httpx.Timeout(
            timeout_seconds, connect=min(timeout_seconds, limits.etcd_connect_timeout_seconds)))
        self._lock = threading.Lock()
        self._preferred = 0
        self._prefixes: dict[str, str] = {}

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> EtcdClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- transport ------------------------------------------------------------------

    def _read_json(self, response: httpx.Response, endpoint: str) -> dict[str, Any]:
        chunks = []
        size = 0
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > limits.etcd_response_bytes_max:
                raise EtcdError(f"etcd at {endpoint}: response over "
                                f"{limits.etcd_response_bytes_max} bytes",
                                etcd_code=0, etcd_message="response too large",
                                endpoint=endpoint)
            chunks.append(chunk)
        data = b"".join(chunks)
        try:
            body = orjson.loads(data) if data else {}
        except orjson.JSONDecodeError as e:
            raise EtcdError(f"etcd at {endpoint}: answer is not JSON ({data[:120]!r})",
                            etcd_code=0, etcd_message="not json", endpoint=endpoint) from e
        if not isinstance(body, dict):
            raise EtcdError(f"etcd at {endpoint}: answer is not a JSON object",
                            etcd_code=0, etcd_message="not an object", endpoint=endpoint)
        return body

    def _prefix(self, endpoint: str, timeout: float) -> str:
        with self._lock:
            known = self._prefixes.get(endpoint)
        if known is not None:
            return known
        if self.fault_hook is not None:
            self.fault_hook(endpoint, "/version")
        with self._http.stream("GET", endpoint + "/version", timeout=timeout) as r:
            body = self._read_json(r, endpoint)
        version = body.get("etcdcluster") or body.get("etcdserver")
        if not isinstance(version, str) or r.status_code != 200:
            raise EtcdError(f"etcd at {endpoint}: /version answered {r.status_code} {body}",
                            etcd_code=0, etcd_message="no version", endpoint=endpoint)
        # A cluster still forming reports "not_decided": the server's own version serves.
        if version == "not_decided":
            version = str(body.get("etcdserver", "3.4.0"))
        prefix = gateway_prefix(version)
        with self._lock:
            self._prefixes[endpoint] = prefix
        return prefix

    def call(self, path: str, body: dict[str, Any], *,
             timeout_seconds: float | None = None) -> dict[str, Any]:
        """POST ``body`` to ``<prefix>/<path>`` (e.g. ``kv/range``) on the first endpoint
        that answers; each endpoint is tried at most once."""
        timeout = self.timeout_seconds if timeout_seconds is None else timeout_seconds
        payload = orjson.dumps(body)
        attempts: list[tuple[str, str]] = []
        with self._lock:
            first = self._preferred
        n = len(self.endpoints)
        for i in range(n):  # one try per endpoint
            index = (first + i) % n
            endpoint = self.endpoints[index]
            try:
                prefix = self._prefix(endpoint, timeout)
                url = f"{endpoint}{prefix}/{path}"
                if self.fault_hook is not None:
                    self.fault_hook(endpoint, f"{prefix}/{path}")
                with self._http.stream("POST", url, content=payload, timeout=timeout,
                                       headers={"content-type": "application/json"}) as r:
                    answer = self._read_json(r, endpoint)
                    status = r.status_code
            except httpx.TransportError as e:
                attempts.append((endpoint, f"{type(e).__name__}: {e}"))
                continue
            error = answer.get("error")
            if status != 200 or (error is not None and not isinstance(error, dict)):
                code = _int(answer.get("code"))
                message = str(answer.get("message") or error or f"HTTP {status}")
                if code == EtcdError.UNAVAILABLE or status in (502, 503):
                    attempts.append((endpoint, f"unavailable: {message}"))
                    continue
                raise EtcdError(f"etcd at {endpoint} refused {path}: {message} (code {code})",
                                etcd_code=code, etcd_message=message, endpoint=endpoint)
            with self._lock:
                self._preferred = index
            return answer
        tried = "; ".join(f"{ep}: {why}" for ep, why in attempts)
        raise EtcdUnavailable(f"no etcd endpoint answered {path}: {tried}",
                              attempts=attempts,
                              hint="check that etcd runs and that [cluster] etcd_endpoints "
                                   "lists its client URLs")

    # --- kv ---------------------------------------------------------------------------

    def range(self, key: bytes, range_end: bytes = b"", *,
              limit: int = limits.etcd_range_keys_max) -> RangeResult:
        body: dict[str, Any] = {"key": _b64(key), "limit": str(limit)}
        if range_end:
            body["range_end"] = _b64(range_end)
        return RangeResult.from_json(self.call("kv/range", body))

    def get(self, key: bytes) -> KeyValue | None:
        kvs = self.range(key).kvs
        return kvs[0] if kvs else None

    def get_prefix(self, prefix: bytes, *,
                   limit: int = limits.etcd_range_keys_max) -> RangeResult:
        return self.range(prefix, prefix_range_end(prefix), limit=limit)

    def put(self, key: bytes, value: bytes, *, lease: int = 0) -> int:
        """Put ``key``; the revision of the write."""
        body = Put(key, value, lease).to_json()["request_put"]
        return _int(self.call("kv/put", body).get("header", {}).get("revision"))

    def delete_range(self, key: bytes, range_end: bytes = b"") -> int:
        """Delete ``key`` (or ``[key, range_end)``); how many keys were deleted."""
        body = DeleteRange(key, range_end).to_json()["request_delete_range"]
        return _int(self.call("kv/deleterange", body).get("deleted"))

    def txn(self, compare: Sequence[Compare], success: Sequence[Op],
            failure: Sequence[Op] = ()) -> TxnResult:
        """If every ``compare`` holds, run ``success``, else ``failure``: atomically."""
        answer = self.call("kv/txn", {"compare": [c.to_json() for c in compare],
                                      "success": [op.to_json() for op in success],
                                      "failure": [op.to_json() for op in failure]})
        ranges = [RangeResult.from_json(resp["response_range"])
                  for resp in answer.get("responses", []) if "response_range" in resp]
        return TxnResult(bool(answer.get("succeeded", False)),
                         _int(answer.get("header", {}).get("revision")), ranges)

    # --- leases -----------------------------------------------------------------------

    def lease_grant(self, ttl_seconds: int) -> LeaseGrant:
        answer = self.call("lease/grant", {"TTL": str(ttl_seconds)})
        if answer.get("error"):
            raise EtcdError(f"lease grant refused: {answer['error']}", etcd_code=0,
                            etcd_message=str(answer["error"]), endpoint="")
        return LeaseGrant(_int(answer.get("ID")), _int(answer.get("TTL")))

    def lease_keepalive(self, lease_id: int, *, timeout_seconds: float | None = None) -> int:
        """One keepalive; the TTL etcd reset the lease to, 0 when the lease is gone.

        The gateway streams keepalives; one POST sends one and reads one answer.
        """
        answer = self.call("lease/keepalive", {"ID": str(lease_id)},
                           timeout_seconds=timeout_seconds)
        if isinstance(answer.get("error"), dict):
            err = answer["error"]
            code = _int(err.get("grpc_code", err.get("code")))
            message = str(err.get("message", err))
            if code == EtcdError.NOT_FOUND:
                return 0
            raise EtcdError(f"lease keepalive refused: {message}", etcd_code=code,
                            etcd_message=message, endpoint="")
        return _int(answer.get("result", {}).get("TTL"))

    def lease_revoke(self, lease_id: int) -> bool:
        """Revoke a lease and delete its keys; False when it was already gone."""
        try:
            self.call("lease/revoke", {"ID": str(lease_id)})
        except EtcdError as e:
            if e.etcd_code == EtcdError.NOT_FOUND:
                return False
            raise
        return True

    def lease_timetolive(self, lease_id: int, *, keys: bool = False) -> LeaseTimeToLive:
        answer = self.call("lease/timetolive", {"ID": str(lease_id), "keys": keys})
        return LeaseTimeToLive(_int(answer.get("ID")), _int(answer.get("TTL")),
                               _int(answer.get("grantedTTL")),
                               [_unb64(k) for k in answer.get("keys", [])])
