"""StemeDB's HTTP server: an ASGI application on uvicorn.

- :mod:`._node` - the engine's lifecycle as the API sees it: phases, readiness,
  in-flight writes, drain.
- :mod:`._routes` - one handler per route of SPEC.md and the route table.
- :mod:`._http` - strict decoding of bodies, queries and paths.
- :mod:`._auth` - bearer tokens with scopes; the loopback rule.
- :mod:`._openapi` - the document at ``/openapi.json``.
- :mod:`._app` - the ASGI application: routing, auth, errors, metrics.
- :mod:`._listener` - uvicorn under it, with a bounded request head.
- :mod:`._run` - the process: listen, recover, serve, stop on SIGTERM.

Typical use (what ``stemedb serve`` does)::

    config = load_config(None)
    exit_code = asyncio.run(serve(config))
"""

from ._app import build_app
from ._auth import INSECURE_FLAG, Authenticator, check_bind, is_loopback
from ._node import ApiError, Node
from ._openapi import openapi_document
from ._routes import ROUTES, Route
from ._run import Exit, MainThreadHost, SignalRelay, serve

__all__ = [
    "INSECURE_FLAG",
    "ROUTES",
    "ApiError",
    "Authenticator",
    "Exit",
    "MainThreadHost",
    "Node",
    "Route",
    "SignalRelay",
    "build_app",
    "check_bind",
    "is_loopback",
    "openapi_document",
    "serve",
]
