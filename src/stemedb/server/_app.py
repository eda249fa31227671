"""The ASGI application: the route table, and one place for auth, errors and metrics.

The application is the only place that turns an exception into a response, so every
error leaves the server in the one shape of SPEC.md::

    {"error": {"code": "snake_case", "message": "human text"}}

A :class:`~stemedb.errors.StemeError` keeps its own status and code; a path that no
route has is 404 ``not_found``, a method a path does not take 405
``method_not_allowed`` (with ``Allow``); anything else is a bug, logged with its
traceback and answered 500 ``internal_error`` (never with the traceback).

Routing matches the *raw* path segment by segment and only then percent-decodes a
parameter, so an encoded ``/`` (``%2F``) in a voter's name stays inside that segment.
"""

from __future__ import annotations

import logging
import time
from typing import Any
from urllib.parse import unquote

from ..errors import StemeError
from ._auth import Authenticator
from ._http import (
    Context,
    Receive,
    Request,
    Scope,
    Send,
    dumps,
    error_body,
    error_response,
    json_response,
)
from ._node import ApiError, Node
from ._openapi import openapi_document
from ._routes import ROUTES, Route

log = logging.getLogger("stemedb.server")

# Load balancers ask these many times a second; their 503 is an answer, not a fault.
QUIET_503_ROUTES = frozenset({"/leader", "/replica"})

# The method label of the request metrics takes these values only, so a client
# sending made-up methods cannot grow the series without bound.
_METHOD_LABELS = frozenset({"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"})


class _Template:
    """A route's path split into segments; ``{name}`` segments are parameters."""

    __slots__ = ("handlers", "names", "path", "segments")

    def __init__(self, path: str) -> None:
        self.path = path
        self.segments = path.strip("/").split("/")
        self.names = [s[1:-1] if s.startswith("{") and s.endswith("}") else None
                      for s in self.segments]
        self.handlers: dict[str, Route] = {}

    def match(self, parts: list[str]) -> dict[str, str] | None:
        if len(parts) != len(self.segments):
            return None
        params: dict[str, str] = {}
        for part, segment, name in zip(parts, self.segments, self.names, strict=True):
            if name is None:
                if part != segment:
                    return None
            elif not part:
                return None
            else:
                params[name] = part
        return params


class Router:
    """Static paths by dictionary; templated ones in table order (``/v1/epochs/current``
    comes before ``/v1/epochs/{n}``, so the static one wins)."""

    def __init__(self, routes: tuple[Route, ...]) -> None:
        self.static: dict[str, _Template] = {}
        self.templated: list[_Template] = []
        by_path: dict[str, _Template] = {}
        for r in routes:
            t = by_path.get(r.path)
            if t is None:
                t = by_path[r.path] = _Template(r.path)
                if any(name is not None for name in t.names):
                    self.templated.append(t)
                else:
                    self.static[r.path] = t
            t.handlers[r.method] = r

    def resolve(self, raw_path: str) -> tuple[_Template, dict[str, str]] | None:
        t = self.static.get(raw_path)
        if t is not None:
            return t, {}
        parts = raw_path.strip("/").split("/") if raw_path.startswith("/") else []
        for t in self.templated:  # bounded by the route table
            params = t.match(parts)
            if params is not None:
                try:
                    return t, {k: unquote(v, errors="strict") for k, v in params.items()}
                except UnicodeDecodeError as exc:
                    raise ApiError(400, "invalid_utf8",
                                   "a path segment is not valid UTF-8 once decoded") from exc
        return None


class App:
    """The ASGI callable for one node."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.auth = Authenticator(node.config.tokens)
        self.router = Router(ROUTES)
        self.context = Context(node, dumps(openapi_document(
            auth_enabled=self.auth.enabled, body_bytes_max=node.body_bytes_max)))
        # (route, method, status) -> the labelled metric children, looked up once each:
        # labels() takes a lock and builds a key on every call.  Bounded: routes x
        # methods x status codes.
        self._series: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan is off; websockets are not served
            return
        t0 = time.perf_counter()
        method_name: str = scope["method"]
        method = method_name if method_name in _METHOD_LABELS else "other"
        raw = scope.get("raw_path")
        raw_path = raw.decode("latin-1") if raw else scope["path"]
        template = "unmatched"
        try:
            found = self.router.resolve(raw_path)
            if found is None:
                raise ApiError(404, "not_found",
                               "no such route; see /openapi.json for the routes")
            t, params = found
            template = t.path
            route = t.handlers.get(method_name)
            if route is None:
                allowed = ",".join(sorted(t.handlers))
                raise ApiError(405, "method_not_allowed",
                               f"method not allowed; allowed: {allowed}",
                               headers={"Allow": allowed})
            request = Request(scope, receive, self.context, params)
            self.auth.check(request.header(b"authorization"), route.scope)
            resp = await route.handler(request)
        except StemeError as exc:
            resp = error_response(exc)
            if exc.http_status >= 500 and template not in QUIET_503_ROUTES:
                log.warning("%s %s -> %d %s: %s", method_name, template, exc.http_status,
                            exc.code, exc.message)
        except Exception as exc:
            log.exception("%s %s failed: %s", method_name, template, exc)
            resp = json_response(error_body("internal_error", "internal error; the server "
                                            "log has the details"), 500)
        await resp.send(send)
        elapsed = time.perf_counter() - t0
        if log.isEnabledFor(logging.DEBUG):  # an access log at --log-level debug; no headers
            log.debug("%s %s -> %d in %.1f ms", method_name, template, resp.status,
                      elapsed * 1000)
        key = (template, method, resp.status)
        children = self._series.get(key)
        if children is None:
            m = self.node.m
            children = self._series[key] = (
                m.http_requests_total.labels(route=template, method=method,
                                             status=str(resp.status)),
                m.http_request_duration_seconds.labels(route=template, method=method))
        children[0].inc()
        children[1].observe(elapsed)


def build_app(node: Node) -> App:
    """The ASGI application for ``node`` (auth from its config)."""
    return App(node)


__all__ = ["App", "Router", "build_app", "error_response"]
