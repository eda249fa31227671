"""The HTTP layer's edges that no route sees: the request head's bound, malformed
requests, path decoding, methods, keep-alive and pipelining, in the API's error shape.

Requests are written by hand on a socket where a client library would refuse to send
them (or would fix them up), against a real ``stemedb serve``.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import pytest

from stemedb import limits
from tests._server import ServerProcess

RECV_BYTES = 65536
SOCKET_TIMEOUT_SECONDS = 10.0
DRIP_CHUNK_BYTES = 1024  # a head sent in pieces this size, each its own send()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("edges")) as s:
        s.start()
        yield s


def _end_lsn(server: ServerProcess) -> int:
    with server.client() as c:
        lsn: int = c.get("/v1/admin/status").json()["wal"]["end_lsn"]
        return lsn


def _read_all(s: socket.socket) -> bytes:
    """Everything the server sends until it closes (bounded by the socket timeout)."""
    chunks = []
    while True:
        try:
            chunk = s.recv(RECV_BYTES)
        except (ConnectionResetError, TimeoutError):
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def _responses(data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Split a byte stream of HTTP/1.1 responses with Content-Length bodies."""
    out = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        assert sep, data[:200]
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip()
                   for k, _, v in (line.partition(":") for line in lines[1:])}
        n = int(headers.get("content-length", "0"))
        out.append((status, headers, rest[:n]))
        data = rest[n:]
    return out


def _post(i: int, *, extra_headers: str = "", close: bool = False) -> bytes:
    body = json.dumps({"subject": f"urn:edge/{i}", "predicate": "p", "object": i,
                       "author": "a"}).encode()
    return (f"POST /v1/assertions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{extra_headers}"
            f"{'Connection: close' + chr(13) + chr(10) if close else ''}\r\n").encode() + body


def test_a_head_over_the_limit_gets_431_and_writes_nothing(server: ServerProcess) -> None:
    before = _end_lsn(server)
    filler = "x" * (limits.http_head_bytes_max + 1)
    with socket.create_connection(("127.0.0.1", server.port),
                                  timeout=SOCKET_TIMEOUT_SECONDS) as s:
        s.sendall(_post(1, extra_headers=f"X-Filler: {filler}\r\n"))
        got = _responses(_read_all(s))
    assert len(got) == 1
    status, headers, body = got[0]
    assert status == 431
    assert headers["connection"] == "close"
    assert json.loads(body)["error"]["code"] == "request_head_too_large"
    assert _end_lsn(server) == before


def test_a_head_dripped_in_small_pieces_is_bounded_too(server: ServerProcess) -> None:
    """One endless header, sent a kilobyte at a time: the server answers 431 once the
    head passes the limit, without waiting for the header to end."""
    piece = b"x" * DRIP_CHUNK_BYTES
    with socket.create_connection(("127.0.0.1", server.port),
                                  timeout=SOCKET_TIMEOUT_SECONDS) as s:
        s.sendall(b"GET /v1/epochs/current HTTP/1.1\r\nHost: x\r\nX-Endless: ")
        sent = 0
        answered = b""
        # Bounded: twice the limit; the server must have answered and closed by then.
        while sent < 2 * limits.http_head_bytes_max:
            try:
                s.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(piece)
            time.sleep(0.001)
        answered = _read_all(s)
    assert answered.startswith(b"HTTP/1.1 431"), answered[:200]
    assert b'"request_head_too_large"' in answered


def test_a_head_under_the_limit_is_served(server: ServerProcess) -> None:
    filler = "x" * (limits.http_head_bytes_max // 2)
    with socket.create_connection(("127.0.0.1", server.port),
                                  timeout=SOCKET_TIMEOUT_SECONDS) as s:
        s.sendall(_post(2, extra_headers=f"X-Filler: {filler}\r\n", close=True))
        got = _responses(_read_all(s))
    assert [g[0] for g in got] == [201]


@pytest.mark.parametrize("request_bytes", [
    b"NOT HTTP AT ALL\r\n\r\n",
    b"GET /v1/epochs/current HTTP/1.1\r\nHost: x\r\nBad Header Name: 1\r\n\r\n",
    b"POST /v1/assertions HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    b"GET /v1/epochs/current HTTP/1.1\r\nHost: x\r\nX-Nul: a\x00b\r\n\r\n",
], ids=["not_http", "space_in_header_name", "bad_content_length", "nul_in_header"])
def test_a_malformed_request_gets_400_in_the_api_shape(server: ServerProcess,
                                                       request_bytes: bytes) -> None:
    before = _end_lsn(server)
    with socket.create_connection(("127.0.0.1", server.port),
                                  timeout=SOCKET_TIMEOUT_SECONDS) as s:
        s.sendall(request_bytes)
        got = _responses(_read_all(s))
    assert len(got) == 1
    status, headers, body = got[0]
    assert status == 400
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["error"]["code"] == "malformed_request"
    assert _end_lsn(server) == before
    assert "Traceback" not in server.log()


def test_an_encoded_slash_stays_inside_the_voter(server: ServerProcess) -> None:
    with server.client() as c:
        aid = c.post("/v1/assertions", json={"subject": "s", "predicate": "p", "object": 1,
                                             "author": "a"}).json()["id"]
        r = c.put(f"/v1/assertions/{aid}/votes/team%2Fbob", json={"value": 1})
        assert r.status_code == 201, r.text
        votes = c.get(f"/v1/assertions/{aid}/votes").json()
    assert [v["voter"] for v in votes["votes"]] == ["team/bob"]


def test_a_method_a_route_does_not_take_names_the_ones_it_does(
        server: ServerProcess) -> None:
    with server.client() as c:
        r = c.delete("/v1/assertions")
        assert r.status_code == 405
        assert r.headers["Allow"] == "GET,POST"
        assert r.json()["error"]["code"] == "method_not_allowed"
        head = c.head("/v1/epochs/current")
        assert head.status_code == 405 and head.headers["Allow"] == "GET"


def test_pipelined_requests_are_answered_in_order(server: ServerProcess) -> None:
    with socket.create_connection(("127.0.0.1", server.port),
                                  timeout=SOCKET_TIMEOUT_SECONDS) as s:
        s.sendall(_post(10) + _post(11) + b"GET /v1/epochs/current HTTP/1.1\r\nHost: x\r\n\r\n"
                  + _post(12, close=True))
        got = _responses(_read_all(s))
    assert [g[0] for g in got] == [201, 201, 200, 201]
    ids = [json.loads(g[2])["id"] for g in got if g[0] == 201]
    assert ids == sorted(ids) and len(set(ids)) == 3


def test_responses_name_no_server_software(server: ServerProcess) -> None:
    with server.client() as c:
        r = c.get("/healthz")
    assert r.status_code == 200
    assert "server" not in r.headers
