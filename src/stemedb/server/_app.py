"""The aiohttp application: routes, one middleware for auth, errors and metrics.

The middleware is the only place that turns an exception into a response, so every
error leaves the server in the one shape of SPEC.md::

    {"error": {"code": "snake_case", "message": "human text"}}

A :class:`~stemedb.errors.StemeError` keeps its own status and code; aiohttp's own
404/405 get ``not_found``/``method_not_allowed``; anything else is a bug, logged with
its traceback and answered 500 ``internal_error`` (never with the traceback).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from aiohttp import web

from ..errors import StemeError
from ._auth import Authenticator
from ._http import dumps, error_body, error_response, json_response
from ._node import Node
from ._openapi import openapi_document
from ._routes import NODE_KEY, OPENAPI_KEY, ROUTES, Handler

log = logging.getLogger("stemedb.server")

# The method label of the request metrics takes these values only, so a client
# sending made-up methods cannot grow the series without bound.
_METHOD_LABELS = frozenset({"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"})
_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed",
               413: "body_too_large", 415: "unsupported_media_type"}
SCOPES_KEY: web.AppKey[dict[tuple[str, str], str | None]] = web.AppKey("stemedb_scopes", dict)
AUTH_KEY: web.AppKey[Authenticator] = web.AppKey("stemedb_auth", Authenticator)
SERIES_KEY: web.AppKey[dict[tuple[str, str, int], tuple[Any, Any]]] = web.AppKey(
    "stemedb_http_series", dict)


def _http_exception_response(exc: web.HTTPException) -> web.Response:
    code = _HTTP_CODES.get(exc.status, f"http_{exc.status}")
    message = exc.reason or code
    if exc.status == 404:
        message = "no such route; see /openapi.json for the routes"
    elif exc.status == 405:
        message = f"method not allowed; allowed: {exc.headers.get('Allow', '')}"
    headers = {k: v for k, v in exc.headers.items() if k in ("Allow", "Retry-After")}
    return json_response(error_body(code, message), exc.status, headers)


@web.middleware
async def _middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    node = request.app[NODE_KEY]
    resource = request.match_info.route.resource
    template = resource.canonical if resource is not None else "unmatched"
    method = request.method if request.method in _METHOD_LABELS else "other"
    t0 = time.perf_counter()
    try:
        scope = request.app[SCOPES_KEY].get((request.method, template))
        request.app[AUTH_KEY].check(request.headers.get("Authorization"), scope)
        resp = await handler(request)
    except StemeError as exc:
        resp = error_response(exc)
        if exc.http_status >= 500:
            log.warning("%s %s -> %d %s: %s", request.method, template, exc.http_status,
                        exc.code, exc.message)
    except web.HTTPException as exc:
        resp = _http_exception_response(exc)
    except Exception as exc:
        log.exception("%s %s failed: %s", request.method, template, exc)
        resp = json_response(error_body("internal_error", "internal error; the server log "
                                        "has the details"), 500)
    elapsed = time.perf_counter() - t0
    if log.isEnabledFor(logging.DEBUG):  # an access log at --log-level debug; no headers
        log.debug("%s %s -> %d in %.1f ms", request.method, template, resp.status,
                  elapsed * 1000)
    # The labelled children are looked up once per (route, method, status): labels()
    # takes a lock and builds a key on every call.  Bounded: routes x methods x codes.
    series = request.app[SERIES_KEY]
    key = (template, method, resp.status)
    children = series.get(key)
    if children is None:
        children = series[key] = (
            node.m.http_requests_total.labels(route=template, method=method,
                                              status=str(resp.status)),
            node.m.http_request_duration_seconds.labels(route=template, method=method))
    children[0].inc()
    children[1].observe(elapsed)
    return resp


def build_app(node: Node) -> web.Application:
    """The application for ``node`` (auth from its config)."""
    auth = Authenticator(node.config.tokens)
    app = web.Application(middlewares=[_middleware], client_max_size=node.body_bytes_max)
    app[NODE_KEY] = node
    app[AUTH_KEY] = auth
    app[SCOPES_KEY] = {(r.method, r.path): r.scope for r in ROUTES}
    app[SERIES_KEY] = {}
    app[OPENAPI_KEY] = dumps(openapi_document(auth_enabled=auth.enabled,
                                              body_bytes_max=node.body_bytes_max))
    for r in ROUTES:
        app.router.add_route(r.method, r.path, r.handler, name=r.operation_id)
    return app


__all__ = ["build_app", "error_response"]
