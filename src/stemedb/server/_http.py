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

import asyncio
import json
import math
import re
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from .. import limits
from ..errors import InvalidInput, StemeError
from ._node import ApiError

JSON_CONTENT_TYPE = "application/json"
_DIGITS = re.compile(r"[0-9]{1,19}")
# Visible ASCII only: a key travels in a header and is echoed in logs by clients.
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]+")


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON (orjson).  Responses hold no NaN (they are built from
    validated input and SQLite integers), which orjson would write as null."""
    return orjson.dumps(value)


def json_response(value: Any, status: int = 200,
                  headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(body=dumps(value), status=status, content_type=JSON_CONTENT_TYPE,
                        headers=headers)


def error_body(code: str, message: str, hint: str | None = None) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message}
    if hint:
        err["hint"] = hint
    return {"error": err}


def error_response(exc: StemeError) -> web.Response:
    headers = dict(getattr(exc, "headers", {}) or {})
    if exc.http_status == 503 and "Retry-After" not in headers:
        headers["Retry-After"] = str(limits.http_retry_after_seconds)
    return json_response(error_body(exc.code, exc.message, exc.hint), exc.http_status,
                         headers)


# -- bodies -------------------------------------------------------------------------

async def read_body(request: web.Request, max_bytes: int, *, required: bool = True
                    ) -> bytes:
    """The raw body, refused before reading when it cannot fit."""
    declared = request.content_length
    if declared is not None and declared > max_bytes:
        raise ApiError(413, "body_too_large",
                       f"the body is {declared} bytes; the limit is {max_bytes} bytes "
                       "(server.body_bytes_max)", headers={"Connection": "close"})
    if not request.body_exists or declared == 0:
        if required:
            raise ApiError(400, "empty_body", "a JSON body is required")
        return b""
    if request.content_type != JSON_CONTENT_TYPE:
        raise ApiError(415, "unsupported_media_type",
                       f"the body must be {JSON_CONTENT_TYPE}, got "
                       f"{request.headers.get('Content-Type') or 'no Content-Type'}")
    charset = request.charset
    if charset is not None and charset.lower() not in ("utf-8", "utf8"):
        raise ApiError(415, "unsupported_media_type",
                       f"the body must be UTF-8 JSON, got charset={charset}")
    if declared is not None:  # the common case: one read of exactly what was declared
        try:
            return await request.content.readexactly(declared)
        except asyncio.IncompleteReadError as exc:
            raise ApiError(400, "incomplete_body",
                           f"the body ended after {len(exc.partial)} of the {declared} bytes "
                           "its Content-Length declared") from exc
    chunks: list[bytes] = []
    total = 0
    # Bounded: stops as soon as more than max_bytes arrived.
    while True:
        chunk = await request.content.read(limits.http_body_read_chunk_bytes)
        if not chunk:
            break
        total += len(chunk)
        if total > max_bytes:
            raise ApiError(413, "body_too_large",
                           f"the body is over the limit of {max_bytes} bytes "
                           "(server.body_bytes_max)", headers={"Connection": "close"})
        chunks.append(chunk)
    body = b"".join(chunks)
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

def query_params(request: web.Request, allowed: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in request.query.items():
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


def idempotency_key(request: web.Request) -> str | None:
    values = request.headers.getall("Idempotency-Key", [])
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
