"""Bearer tokens with scopes, and the rule that keeps an open server on loopback.

Scopes: ``read`` for GET routes, ``write`` for writes, ``admin`` for ``/v1/admin/*``.
``/healthz``, ``/readyz``, ``/metrics`` and ``/openapi.json`` stay open so that load
balancers, Prometheus and API tools need no secret.

A presented token is compared with *every* configured token by
:func:`hmac.compare_digest`, so the time taken says nothing about which token, or
how much of one, matched.  Tokens are never logged: the effective configuration is
printed with them masked, and request headers are never written to the log.
"""

from __future__ import annotations

import hmac
import ipaddress

from ..config import Token
from ._node import ApiError

INSECURE_FLAG = "--insecure-allow-unauthenticated"


class Authenticator:
    def __init__(self, tokens: list[Token]) -> None:
        # Bytes once, at start: comparisons then do no encoding work per request.
        self._tokens = [(t.token.encode("utf-8"), t) for t in tokens]

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def check(self, authorization: str | None, scope: str | None) -> Token | None:
        """The token that grants ``scope``; raises 401/403 otherwise.

        With no tokens configured every request is allowed (the server then only
        binds to loopback unless forced, see :func:`check_bind`).
        """
        if scope is None or not self._tokens:
            return None
        presented = _bearer(authorization)
        if presented is None:
            raise ApiError(401, "unauthorized",
                           "this route needs a bearer token (Authorization: Bearer <token>)",
                           headers={"WWW-Authenticate": 'Bearer realm="stemedb"'})
        given = presented.encode("utf-8", "surrogateescape")
        found: Token | None = None
        for secret, token in self._tokens:  # all of them, whatever matches first
            if hmac.compare_digest(given, secret):
                found = token
        if found is None:
            raise ApiError(401, "unauthorized", "the bearer token is not valid",
                           headers={"WWW-Authenticate":
                                    'Bearer realm="stemedb", error="invalid_token"'})
        if scope not in found.scopes:
            raise ApiError(403, "forbidden",
                           f"the token {found.name!r} lacks the {scope!r} scope",
                           headers={"WWW-Authenticate":
                                    f'Bearer realm="stemedb", error="insufficient_scope", '
                                    f'scope="{scope}"'})
        return found


def _bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


def check_bind(host: str, tokens: list[Token], insecure_allowed: bool) -> str | None:
    """Why the server must not start on ``host``, or None when it may."""
    if tokens or insecure_allowed or is_loopback(host):
        return None
    return (f"refusing to listen on {host}: no auth tokens are configured, so anyone who "
            f"can reach that address could write and administer this node. Configure "
            f"[auth] tokens, listen on 127.0.0.1, or pass {INSECURE_FLAG} (or set "
            f"server.insecure_allow_unauthenticated = true) if you really mean it.")
