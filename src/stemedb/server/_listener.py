"""The HTTP server under the application: uvicorn with its httptools (llhttp) parser.

Chosen by measurement (docs/benchmarks.md, history section 13): in one run of
``python -m bench.stack_bench`` a one-route POST did 15,603/s on uvicorn with a plain ASGI
callable, 14,897/s on aiohttp, 13,817/s on granian's ASGI and 16,460/s on granian's own
RSGI interface; and the whole product served 1.10 to 1.30 times the writes per second on
uvicorn that it did on aiohttp, in alternating rounds.  uvicorn is within 5 % of the
fastest, speaks standard ASGI, and lets the server bind its own socket and own its
signals; granian's in-process server is marked experimental.

Two things are added to uvicorn's protocol, both about requests the application never
sees:

- **A bounded request head.**  llhttp keeps a header that is still arriving in memory
  without a limit of its own; here the bytes received between a request's first byte
  and the end of its head are counted, and past ``limits.http_head_bytes_max`` the
  client gets 431 ``request_head_too_large`` and the connection is closed.
- **Malformed requests answered in the API's error shape** (400 ``malformed_request``,
  JSON) and logged as one warning naming the client, without a traceback.

With ``[server] tls_cert_file`` and ``tls_key_file`` it serves HTTPS (TLS 1.2 or newer,
Python's server defaults); with ``tls_client_ca_file`` too, a client must present a
certificate that CA signed (replicas will).

The listener never installs signal handlers (the process's own lifecycle in
:mod:`._run` owns SIGTERM and SIGINT), never configures logging, and serves on a
socket that :mod:`._run` bound itself, so that a port in use is refused before
anything else starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import ssl
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .. import limits
from ._http import dumps, error_body

log = logging.getLogger("stemedb.server")


def _error_bytes(status: int, reason: str, code: str, message: str) -> bytes:
    body = dumps(error_body(code, message))
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode("ascii") + body


class _HeadTooLarge(Exception):
    """Raised from a parser callback: llhttp then stops parsing this connection."""


class BoundedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a bounded request head and JSON parse errors."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = False
        self._head_bytes = 0
        self._head_too_large = False

    def _peer(self) -> str:
        return f"{self.client[0]}:{self.client[1]}" if self.client else "?"

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = 0

    def on_headers_complete(self) -> None:
        self._in_head = False
        # A head that arrived whole in one read: measured from what was parsed.
        size = len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers)
        if size > limits.http_head_bytes_max:
            self._head_too_large = True
            raise _HeadTooLarge
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        if self._head_too_large:
            return
        super().data_received(data)
        if self._in_head and not self.transport.is_closing():
            # A head still arriving: everything the parser holds of it came in these
            # reads, so memory is bounded by the limit plus one read.
            self._head_bytes += len(data)
            if self._head_bytes > limits.http_head_bytes_max:
                self._head_too_large = True
                self._refuse_head()

    def _refuse_head(self) -> None:
        log.warning("the request head from %s is over %d bytes: answered 431 and closed",
                    self._peer(), limits.http_head_bytes_max)
        self.transport.write(_error_bytes(
            431, "Request Header Fields Too Large", "request_head_too_large",
            f"the request line and headers are over {limits.http_head_bytes_max} bytes"))
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """What uvicorn calls when llhttp refuses the bytes (or a callback raised)."""
        if self._head_too_large:
            self._refuse_head()
            return
        log.warning("malformed HTTP request from %s: answered 400 and closed", self._peer())
        self.transport.write(_error_bytes(400, "Bad Request", "malformed_request",
                                          "the request is not valid HTTP/1.1"))
        self.transport.close()


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # the process's lifecycle owns the signals


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (raises OSError, e.g. port in use)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(limits.http_startup_listen_backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


@dataclass(frozen=True)
class TlsFiles:
    """``[server] tls_*``: PEM files, checked when the configuration was loaded."""

    cert_file: str
    key_file: str
    client_ca_file: str = ""


class Listener:
    """Serves an ASGI application on a bound socket until :meth:`stop`."""

    def __init__(self, app: Any, sock: socket.socket, *, grace_seconds: float,
                 tls: TlsFiles | None = None) -> None:
        tls_options: dict[str, Any] = {}
        if tls is not None:
            tls_options = {"ssl_certfile": tls.cert_file, "ssl_keyfile": tls.key_file}
            if tls.client_ca_file:
                tls_options.update(ssl_ca_certs=tls.client_ca_file,
                                   ssl_cert_reqs=ssl.CERT_REQUIRED)
        config = uvicorn.Config(
            app, interface="asgi3", http=BoundedHttpProtocol, lifespan="off",
            log_config=None, access_log=False, server_header=False, proxy_headers=False,
            timeout_keep_alive=limits.http_keepalive_idle_seconds,
            timeout_graceful_shutdown=max(1, math.ceil(grace_seconds)),  # whole seconds
            backlog=limits.http_startup_listen_backlog, **tls_options)
        self._server = _Server(config)
        self._sock = sock
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Begin serving; returns once connections are being accepted."""
        self._task = asyncio.ensure_future(self._server.serve(sockets=[self._sock]))
        while not self._server.started and not self._task.done():  # bounded by startup
            await asyncio.sleep(limits.http_listener_poll_seconds)
        if self._task.done():
            self._task.result()  # raises what made startup fail

    async def stop(self) -> None:
        """Stop accepting, let requests in flight finish (up to the grace), close."""
        if self._task is None:
            self._sock.close()
            return
        self._server.should_exit = True
        await self._task


__all__ = ["BoundedHttpProtocol", "Listener", "TlsFiles", "bind"]
