"""Replication across hosts: members on https, checked against ``[cluster] tls_ca_file``,
with auth on and the stream behind the ``replication`` scope."""

from __future__ import annotations

import ssl
import time
from pathlib import Path

import httpx
import pytest

from tests._etcd import EtcdServer
from tests._server import ServerProcess
from tests.test_tls import Pki

REPL = "repl-7c1d9e3b5a2f"
ADMIN = "admin-2b8e4f6a1c9d"
READ_ONLY = "reader-5e9a1c7b3d2f"


def _toml(pki: Pki, etcd: str, node: str, port: int, replication_token: str) -> str:
    return f"""
[server]
tls_cert_file = "{pki.server_cert}"
tls_key_file = "{pki.server_key}"
[auth]
tokens = [
  {{ name = "ops", token = "{ADMIN}", scopes = ["read", "write", "admin"] }},
  {{ name = "replication", token = "{REPL}", scopes = ["replication"] }},
  {{ name = "reader", token = "{READ_ONLY}", scopes = ["read"] }},
]
[cluster]
name = "tls"
node_name = "{node}"
advertise_url = "https://127.0.0.1:{port}"
etcd_endpoints = "{etcd}"
lease_ttl_seconds = 2
replication_token = "{replication_token}"
tls_ca_file = "{pki.ca}"
"""


def _wait(pred: object, what: str, seconds: float = 30.0) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:  # bounded
        if pred():  # type: ignore[operator]
            return
        time.sleep(0.05)
    pytest.fail(what)


def test_members_replicate_over_https_with_a_replication_token(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    etcd = EtcdServer(tmp_path / "etcd")
    etcd.start()
    nodes: dict[str, ServerProcess] = {}
    try:
        for name, token in (("a", REPL), ("b", REPL), ("c", READ_ONLY)):
            d = tmp_path / name
            d.mkdir()
            p = ServerProcess(d, tls=ctx)
            p.config_path.write_text(_toml(pki, etcd.url, name, p.port, token))
            nodes[name] = p
        nodes["a"].start(wait="healthy")
        h = {"Authorization": f"Bearer {ADMIN}"}

        def leads(n: str) -> bool:
            with nodes[n].client() as c:
                return c.get("/leader").status_code == 200

        _wait(lambda: leads("a"), "a does not lead")
        nodes["b"].start(wait="healthy")
        nodes["c"].start(wait="healthy")

        def streams(n: str) -> bool:
            with nodes[n].client() as c:
                return c.get("/replica").status_code == 200

        _wait(lambda: streams("b"), "b does not stream over https")
        with nodes["a"].client(headers=h) as c:
            w = c.post("/v1/assertions", json={"subject": "s", "predicate": "p",
                                                "object": 1, "author": "a"})
            assert w.status_code == 201, w.text
        with nodes["b"].client(headers=h) as c:
            # A linearizable read on the replica asks the leader over https.
            r = c.get(f"/v1/assertions/{w.json()['id']}")
            assert r.status_code == 200, r.text
        # c's token lacks the replication scope: the leader refuses it, c never streams.
        time.sleep(1.0)
        assert not streams("c")
        # (c is new: it asks for a snapshot first, and is refused that too.)
        assert "answered the snapshot request with HTTP 403" in nodes["c"].log()
        with nodes["a"].client(headers=h) as c:
            replicas = c.get("/v1/admin/status").json()["cluster"]["replicas"]
        assert set(replicas) == {"b"}
        # With the system's CAs only, the members' certificates are not trusted.
        with httpx.Client(verify=True, timeout=5) as plain, \
                pytest.raises(httpx.ConnectError):
            plain.get(nodes["a"].url + "/leader")
    finally:
        for p in nodes.values():
            p.stop()
        etcd.stop()
