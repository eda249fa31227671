"""Request decoding and response encoding: the strict edge of the API.

Everything a client sends is checked here or in :mod:`stemedb.model` before it
reaches the engine, so bad input gets a 4xx with a precise ``code`` and nothing is
written:

- the body's size is checked from ``Content-Length`` *before* it is read (413
  ``body_too_large``), and a chunked body is read only up to the limit;
- bodies must be ``application/json`` (415 ``unsupported_media_type``) and strict
  UTF-8 (400 ``invalid_utf8``);
- JSON is parsed without NaN/Infinity (400 ``invalid_number``), without duplicate
  keys (400 ``duplicate_key``), without lone surrogate escapes (400
  ``invalid_utf8``: SQLite could not store them) and without runaway nesting (400
  ``too_deep``);
- query parameters are checked against the route's list: unknown or repeated ones
  are 400 ``unknown_parameter`` / ``repeated_parameter``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

import orjson

from .. import limits
from ..errors import InvalidInput, StemeError
from ._node import ApiError, Node

JSON_CONTENT_TYPE = "application/json"
_DIGITS = re.compile(r"[0-9]{1,19}")
# Visible ASCII only: a key travels in a header and is echoed in logs by clients.
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]+")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class Context:
    """What every request of one application shares: the node and the OpenAPI document
    (encoded once, at start)."""

    __slots__ = ("node", "openapi_json")

    def __init__(self, node: Node, openapi_json: bytes) -> None:
        self.node = node
        self.openapi_json = openapi_json


class Request:
    """One HTTP request as the handlers see it, over an ASGI ``http`` scope.

    Headers are looked up by scanning the scope's list (a handful per request, names
    already lower case); the query is parsed once, on first use; the body is read
    only by :func:`read_body`, which enforces the size limit as it reads.
    """

    __slots__ = ("_query", "context", "match_info", "method", "node", "path", "raw_headers",
                 "receive", "scope")

    def __init__(self, scope: Scope, receive: Receive, context: Context,
                 match_info: dict[str, str]) -> None:
        self.scope = scope
        self.receive = receive
        self.context = context
        self.node = context.node
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        self.raw_headers: list[tuple[bytes, bytes]] = scope["headers"]
        self.match_info = match_info
        self._query: list[tuple[str, str]] | None = None

    def header(self, name: bytes) -> str | None:
        """The first value of header ``name`` (lower case).  Bytes that are not UTF-8
        decode to surrogates, which every check of a header's text then refuses."""
        for key, value in self.raw_headers:
            if key == name:
                return value.decode("utf-8", "surrogateescape")
        return None

    def headers_all(self, name: bytes) -> list[str]:
        return [v.decode("utf-8", "surrogateescape") for k, v in self.raw_headers
                if k == name]

    @property
    def query(self) -> list[tuple[str, str]]:
        """The query's pairs in order, repeats kept; ``+`` is a space, as in forms."""
        if self._query is None:
            qs = self.scope.get("query_string", b"")
            if not qs:
                self._query = []
            else:
                try:
                    text = qs.decode("utf-8")
                    pairs = parse_qsl(text, keep_blank_values=True, errors="strict")
                except UnicodeDecodeError as exc:
                    raise ApiError(400, "invalid_utf8",
                                   "the query string is not valid UTF-8") from exc
                self._query = pairs
        return self._query

    @property
    def content_length(self) -> int | None:
        text = self.header(b"content-length")
        if text is None:
            return None
        text = text.strip()
        if not text.isdigit() or not text.isascii():
            raise ApiError(400, "invalid_header",
                           f"Content-Length must be a decimal integer, got {text[:64]!r}")
        return int(text)

    @property
    def chunked(self) -> bool:
        te = self.header(b"transfer-encoding")
        return te is not None and "chunked" in te.lower()

    def content_type(self) -> tuple[str, str | None]:
        """The media type (lower case) and the charset parameter, if any."""
        raw = self.header(b"content-type")
        if raw is None:
            return "application/octet-stream", None
        media, _, params = raw.partition(";")
        charset = None
        for param in params.split(";"):
            key, _, value = param.partition("=")
            if key.strip().lower() == "charset":
                charset = value.strip().strip('"')
        return media.strip().lower(), charset


class Response:
    """A whole response: status, headers and a body of bytes (no streaming)."""

    __slots__ = ("body", "content_type", "headers", "status")

    def __init__(self, body: bytes, status: int = 200,
                 content_type: str = JSON_CONTENT_TYPE,
                 headers: Mapping[str, str] | None = None) -> None:
        self.body = body
        self.status = status
        self.content_type = content_type
        self.headers = headers

    async def send(self, send: Send) -> None:
        raw = [(b"content-type", self.content_type.encode("latin-1")),
               (b"content-length", str(len(self.body)).encode("ascii"))]
        if self.headers:
            raw.extend((k.lower().encode("latin-1"), v.encode("latin-1"))
                       for k, v in self.headers.items())
        await send({"type": "http.response.start", "status": self.status, "headers": raw})
        await send({"type": "http.response.body", "body": self.body})


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON (orjson).  Responses hold no NaN (they are built from
    validated input and SQLite integers), which orjson would write as null."""
    return orjson.dumps(value)


def json_response(value: Any, status: int = 200,
                  headers: Mapping[str, str] | None = None) -> Response:
    return Response(dumps(value), status, JSON_CONTENT_TYPE, headers)


def error_body(code: str, message: str, hint: str | None = None) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message}
    if hint:
        err["hint"] = hint
    return {"error": err}


def error_response(exc: StemeError) -> Response:
    headers = dict(getattr(exc, "headers", {}) or {})
    if exc.http_status == 503 and "Retry-After" not in headers:
        headers["Retry-After"] = str(limits.http_retry_after_seconds)
    return json_response(error_body(exc.code, exc.message, exc.hint), exc.http_status,
                         headers)


# -- bodies -------------------------------------------------------------------------

async def read_body(request: Request, max_bytes: int, *, required: bool = True
                    ) -> bytes:
    """The raw body, refused before reading when it cannot fit, and read only up to
    ``max_bytes`` when its length was not declared (a chunked body)."""
    declared = request.content_length
    if declared is not None and declared > max_bytes:
        raise ApiError(413, "body_too_large",
                       f"the body is {declared} bytes; the limit is {max_bytes} bytes "
                       "(server.body_bytes_max)", headers={"Connection": "close"})
    if not (declared or (declared is None and request.chunked)):
        if required:
            raise ApiError(400, "empty_body", "a JSON body is required")
        return b""
    media, charset = request.content_type()
    if media != JSON_CONTENT_TYPE:
        raise ApiError(415, "unsupported_media_type",
                       f"the body must be {JSON_CONTENT_TYPE}, got "
                       f"{request.header(b'content-type') or 'no Content-Type'}")
    if charset is not None and charset.lower() not in ("utf-8", "utf8"):
        raise ApiError(415, "unsupported_media_type",
                       f"the body must be UTF-8 JSON, got charset={charset}")
    chunks: list[bytes] = []
    total = 0
    # Bounded: each message adds its bytes, and more than max_bytes ends the loop.
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ApiError(400, "incomplete_body",
                           f"the client went away after {total} bytes of the body")
        chunk = message.get("body", b"")
        if chunk:
            total += len(chunk)
            if total > max_bytes:
                raise ApiError(413, "body_too_large",
                               f"the body is over the limit of {max_bytes} bytes "
                               "(server.body_bytes_max)", headers={"Connection": "close"})
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    if declared is not None and len(body) != declared:
        raise ApiError(400, "incomplete_body",
                       f"the body ended after {len(body)} of the {declared} bytes its "
                       "Content-Length declared")
    if not body and required:
        raise ApiError(400, "empty_body", "a JSON body is required")
    return body


def _reject_constant(name: str) -> Any:
    raise InvalidInput(f"{name} is not a JSON number", code="invalid_number")


def _object_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:  # bounded by the object's size
            if key in seen:
                raise InvalidInput(f"duplicate key {key!r} in a JSON object",
                                   code="duplicate_key")
            seen.add(key)
    return out


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InvalidInput(f"the number {text[:40]} is out of range", code="invalid_number")
    return value


def _check_strings(value: Any) -> None:
    """Lone surrogates (``"\\ud800"``) decode to text that is not UTF-8: refuse them.

    Iterative, so a deep document cannot exhaust the stack; bounded by the body size.
    """
    stack = [value]
    while stack:
        v = stack.pop()
        t = type(v)
        if t is str:
            if not v.isascii():
                try:
                    v.encode("utf-8")
                except UnicodeEncodeError as exc:
                    raise InvalidInput("a string holds an unpaired UTF-16 surrogate escape; "
                                       "it is not valid Unicode", code="invalid_utf8"
                                       ) from exc
        elif t is dict:
            stack.extend(v.keys())
            stack.extend(v.values())
        elif t is list:
            stack.extend(v)


# One decoder for every request (building one per call costs more than a small parse).
# Python's decoder, not orjson's: it keeps integers of any size exact, and the pairs
# hook sees duplicate keys.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_parse_float,
                            object_pairs_hook=_object_pairs)


# A run of 19 digits may be an integer orjson cannot hold exactly (it turns integers
# beyond 64 bits into floats); such bodies take the strict parser.  Found by mapping
# every digit to "0" and everything else to "." (two C passes; a regular expression
# costs ten times more on a body full of short numbers).
_DIGITS_TO_ZERO = bytes(b"0"[0] if 0x30 <= i <= 0x39 else b"."[0] for i in range(256))
_LONG_DIGIT_RUN = b"0" * 19


def _has_long_digit_run(raw: bytes) -> bool:
    return _LONG_DIGIT_RUN in raw.translate(_DIGITS_TO_ZERO)


def parse_json(raw: bytes) -> Any:
    """Parse a request body with the strict rules above.

    Fast path: orjson (C) for bodies without ``\\u`` escapes and without 19-digit
    runs, accepted only when its result provably equals the strict parser's.  orjson
    refuses NaN/Infinity, bad UTF-8, control characters and infinite floats by itself
    (those bodies fall through to the strict parser, which names the exact error);
    what it would let through is a duplicate key (the last one wins).  A JSON text
    holds a ``:`` only between a key and its value or inside a string, and without
    ``\\u`` escapes a decoded string holds exactly the colons its source did; so
    re-encoding the result gives as many colons as the body exactly when no member
    was dropped.  Everything else goes through :func:`parse_json_strict`.
    tests/test_json_parse.py checks that both give the same verdict.
    """
    if b"\\u" not in raw and not _has_long_digit_run(raw):
        try:
            value = orjson.loads(raw)
            same = raw.count(b":") == orjson.dumps(value).count(b":")
        except (orjson.JSONDecodeError, orjson.JSONEncodeError, RecursionError):
            same = False
        if same:
            return value
    return parse_json_strict(raw)


def parse_json_strict(raw: bytes) -> Any:
    """The reference parser: Python's, with hooks for every rule above."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"the body is not valid UTF-8 (byte {exc.start})",
                           code="invalid_utf8") from exc
    try:
        value = _DECODER.decode(text)
    except RecursionError as exc:
        raise InvalidInput(f"the JSON nests deeper than {limits.json_depth_max} levels",
                           code="too_deep") from exc
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"malformed JSON: {exc.msg} at line {exc.lineno} column "
                           f"{exc.colno}", code="malformed_json") from exc
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        raise InvalidInput(f"malformed JSON: {exc}", code="invalid_number") from exc
    if b"\\u" in raw:  # only an escape can decode to a lone surrogate
        _check_strings(value)
    return value



# -- query and path -----------------------------------------------------------------

def query_params(request: Request, allowed: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in request.query:
        if key not in allowed:
            known = ", ".join(allowed) if allowed else "none"
            raise ApiError(400, "unknown_parameter",
                           f"unknown query parameter {key!r} (known: {known})")
        if key in out:
            raise ApiError(400, "repeated_parameter", f"query parameter {key!r} is repeated")
        out[key] = value
    return out


def parse_int(name: str, text: str, *, minimum: int, maximum: int = limits.http_id_max
              ) -> int:
    if not _DIGITS.fullmatch(text):
        raise ApiError(400, "invalid_parameter",
                       f"{name} must be a decimal integer, got {text[:64]!r}")
    value = int(text)
    if not minimum <= value <= maximum:
        raise ApiError(400, "out_of_range",
                       f"{name} must be between {minimum} and {maximum}, got {value}")
    return value


def parse_text(name: str, text: str, max_bytes: int) -> str:
    try:
        n = len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise ApiError(400, "invalid_utf8", f"{name} is not valid UTF-8") from exc
    if n < 1:
        raise ApiError(400, "too_short", f"{name} must not be empty")
    if n > max_bytes:
        raise ApiError(400, "too_long", f"{name} is {n} bytes; the limit is {max_bytes}")
    return text


def idempotency_key(request: Request) -> str | None:
    values = request.headers_all(b"idempotency-key")
    if not values:
        return None
    if len(values) > 1:
        raise ApiError(400, "invalid_idempotency_key", "Idempotency-Key is repeated")
    key = values[0]
    if not key or len(key) > limits.idempotency_key_bytes_max \
            or not _IDEMPOTENCY_KEY.fullmatch(key):
        raise ApiError(400, "invalid_idempotency_key",
                       f"Idempotency-Key must be 1 to {limits.idempotency_key_bytes_max} "
                       "visible ASCII characters (a UUID is a good key)")
    return key
