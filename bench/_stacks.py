"""The one-route servers of the HTTP stack benchmark (``python -m bench._stacks``).

Each serves ``POST /v1/assertions`` with the same work as StemeDB's own handler, minus
the product around it (auth, metrics, idempotency keys, readiness, limits): read the
body, :func:`stemedb.server._http.parse_json`, :func:`stemedb.model.validate_assertion`,
:meth:`stemedb.engine.Engine.submit_async` on an engine with ``fsync="always"``, then
answer 201 with the engine's JSON body.  Anything else gets 404; bad input gets 400.

- ``aiohttp``: a bare ``aiohttp.web.Application`` with that one route.
- ``uvicorn``: a plain ASGI callable served by uvicorn (httptools parser, uvloop).
- ``granian``: the same ASGI callable served by granian (a Rust HTTP server, hyper),
  embedded in this process's event loop (``granian.server.embed``).
- ``granian-rsgi``: granian's own RSGI interface, without ASGI's message dicts.
- ``protocol``: an ``asyncio.Protocol`` feeding httptools' parser, no framework.  It is
  *not* an HTTP server one could ship (no chunked bodies, no size limits, no timeouts,
  no flow control): it is the floor, what the Python around one request costs here.

Usage: ``python -m bench._stacks STACK --data-dir D --port P`` (STACK: one of the above).
It prints ``ready`` once it listens on 127.0.0.1 and serves until SIGTERM or SIGINT,
then closes the engine (a final checkpoint) and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any, cast

import orjson
import uvloop

from stemedb.engine import Engine, EngineConfig, WriteRequest
from stemedb.errors import StemeError
from stemedb.model import validate_assertion
from stemedb.server._http import parse_json
from stemedb.wal import RecordType

PATH = b"/v1/assertions"
LISTEN_BACKLOG = 1024  # connections; more than the benchmark's clients


async def write(engine: Engine, raw: bytes) -> tuple[int, bytes]:
    """The shared work: (status, JSON body)."""
    try:
        assertion = validate_assertion(parse_json(raw))
        result = await engine.submit_async(WriteRequest(
            RecordType.ASSERT, [{"assert": assertion}], prevalidated=True))
    except StemeError as exc:
        return exc.http_status, orjson.dumps({"error": {"code": exc.code,
                                                        "message": exc.message}})
    return result.status, orjson.dumps(result.body)


async def serve_aiohttp(engine: Engine, port: int, stop: asyncio.Event) -> None:
    from aiohttp import web

    async def handle(request: web.Request) -> web.Response:
        status, body = await write(engine, await request.read())
        return web.Response(body=body, status=status, content_type="application/json")

    app = web.Application()
    app.router.add_post(PATH.decode(), handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=LISTEN_BACKLOG).start()
    _ready()
    await stop.wait()
    await runner.cleanup()


Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
_NOT_FOUND = b'{"error":{"code":"not_found","message":"no such route"}}'


def plain_asgi(engine: Engine) -> Callable[[dict[str, Any], Receive, Send], Awaitable[None]]:
    """The one route as a plain ASGI callable (served by uvicorn and by granian)."""

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # lifespan is off
        chunks = []
        while True:  # bounded by the request body
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        if scope["method"] == "POST" and scope["path"] == PATH.decode():
            status, body = await write(engine, b"".join(chunks))
        else:
            status, body = 404, _NOT_FOUND
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    return app


async def serve_uvicorn(engine: Engine, port: int, stop: asyncio.Event) -> None:
    import uvicorn

    config = uvicorn.Config(plain_asgi(engine), host="127.0.0.1", port=port, loop="none",
                            http="httptools", lifespan="off", log_level="warning",
                            access_log=False, backlog=LISTEN_BACKLOG)
    server = uvicorn.Server(config)
    # Our loop's own SIGTERM/SIGINT handlers stop every stack alike; uvicorn would
    # replace them for the duration of serve() and raise the signal again after it.
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    task = asyncio.ensure_future(server.serve())
    while not server.started:  # bounded: serve() fails or starts
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    _ready()
    await stop.wait()
    server.should_exit = True
    await task


def rsgi_app(engine: Engine) -> Callable[[Any, Any], Awaitable[None]]:
    """The one route on granian's RSGI: the body in one await, the response in one call."""

    async def app(scope: Any, proto: Any) -> None:
        raw = await proto()
        if scope.method == "POST" and scope.path == PATH.decode():
            status, body = await write(engine, raw)
        else:
            status, body = 404, _NOT_FOUND
        proto.response_bytes(status, [("content-type", "application/json")], body)

    return app


async def _serve_granian(app: Any, interface: str, port: int, stop: asyncio.Event) -> None:
    from granian.constants import Interfaces
    from granian.server.embed import Server

    server = Server(app, address="127.0.0.1", port=port, interface=Interfaces(interface),
                    backlog=LISTEN_BACKLOG, log_enabled=False, websockets=False)
    task = asyncio.ensure_future(server.serve())
    await asyncio.sleep(0.5)  # granian's embedded server has no "started" flag to poll
    if task.done():
        task.result()
    _ready()
    await stop.wait()
    server.stop()  # type: ignore[no-untyped-call]
    await task


async def serve_granian(engine: Engine, port: int, stop: asyncio.Event) -> None:
    await _serve_granian(plain_asgi(engine), "asgi", port, stop)


async def serve_granian_rsgi(engine: Engine, port: int, stop: asyncio.Event) -> None:
    await _serve_granian(rsgi_app(engine), "rsgi", port, stop)


class _Protocol(asyncio.Protocol):
    """One connection: httptools calls back as it parses; one response per request."""

    def __init__(self, engine: Engine) -> None:
        import httptools

        self.engine = engine
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.WriteTransport | None = None
        self.url = b""
        self.body: list[bytes] = []
        self.pending: asyncio.Future[None] | None = None  # keeps responses in order

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCP transport has Transport's methods but not its base class.
        self.transport = cast(asyncio.WriteTransport, transport)

    def data_received(self, data: bytes) -> None:
        import httptools

        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        raw, self.body = b"".join(self.body), []
        method = self.parser.get_method()
        previous = self.pending
        self.pending = asyncio.ensure_future(self._respond(method, self.url, raw, previous))

    async def _respond(self, method: bytes, url: bytes, raw: bytes,
                       previous: asyncio.Future[None] | None) -> None:
        if method == b"POST" and url == PATH:
            status, body = await write(self.engine, raw)
        else:
            status, body = 404, b'{"error":{"code":"not_found","message":"no such route"}}'
        if previous is not None:
            await previous
        assert self.transport is not None
        if not self.transport.is_closing():
            self.transport.write(b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: %d\r\n\r\n%s"
                                 % (status, b"Created" if status == 201 else b"Error",
                                    len(body), body))


async def serve_protocol(engine: Engine, port: int, stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Protocol(engine), "127.0.0.1", port,
                                      backlog=LISTEN_BACKLOG)
    _ready()
    await stop.wait()
    server.close()
    await server.wait_closed()


STACKS: dict[str, Callable[[Engine, int, asyncio.Event], Awaitable[None]]] = {
    "aiohttp": serve_aiohttp, "uvicorn": serve_uvicorn, "granian": serve_granian,
    "granian-rsgi": serve_granian_rsgi, "protocol": serve_protocol}


def _ready() -> None:
    print("ready", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench._stacks")
    p.add_argument("stack", choices=sorted(STACKS))
    p.add_argument("--data-dir", required=True)
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args(argv)
    engine = Engine(args.data_dir, EngineConfig(fsync="always", disk_reserve_bytes=0))
    engine.recover()
    engine.start()

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await STACKS[args.stack](engine, args.port, stop)

    try:
        uvloop.run(run())
    finally:
        engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
