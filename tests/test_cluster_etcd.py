"""The etcd client over the JSON gateway, against a real etcd."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from stemedb.cluster import (
    Compare,
    DeleteRange,
    EtcdClient,
    EtcdError,
    EtcdUnavailable,
    Put,
    Range,
    gateway_prefix,
    parse_endpoints,
    prefix_range_end,
)

from ._etcd import EtcdServer, etcd_server, free_port


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    yield from etcd_server(tmp_path_factory.mktemp("etcd-client"))


@pytest.fixture
def client(etcd: EtcdServer) -> Iterator[EtcdClient]:
    with EtcdClient(etcd.url, timeout_seconds=1.0) as c:
        yield c


def test_put_get_range_and_delete(client: EtcdClient) -> None:
    rev = client.put(b"/t/kv/a", b"1")
    client.put(b"/t/kv/b", b"\x00\xff binary")
    client.put(b"/t/kw", b"outside the prefix")
    kv = client.get(b"/t/kv/a")
    assert kv is not None and kv.value == b"1" and kv.create_revision == rev == kv.mod_revision
    assert kv.version == 1 and kv.lease == 0
    got = client.get_prefix(b"/t/kv/")
    assert [k.key for k in got.kvs] == [b"/t/kv/a", b"/t/kv/b"]
    assert got.kvs[1].value == b"\x00\xff binary" and got.key_count == 2
    assert client.get(b"/t/kv/none") is None
    assert client.delete_range(b"/t/kv/", prefix_range_end(b"/t/kv/")) == 2
    assert client.get_prefix(b"/t/kv/").kvs == []
    assert client.get(b"/t/kw") is not None


@pytest.mark.parametrize("compare_of, holds", [
    (lambda kv: Compare.create_revision(b"/t/txn", 0), False),
    (lambda kv: Compare.create_revision(b"/t/txn", kv.create_revision), True),
    (lambda kv: Compare.mod_revision(b"/t/txn", kv.mod_revision), True),
    (lambda kv: Compare.mod_revision(b"/t/txn", kv.mod_revision, "LESS"), False),
    (lambda kv: Compare.version(b"/t/txn", 1), True),
    (lambda kv: Compare.version(b"/t/txn", 1, "GREATER"), False),
    (lambda kv: Compare.value_is(b"/t/txn", b"v1"), True),
    (lambda kv: Compare.value_is(b"/t/txn", b"v2"), False),
    (lambda kv: Compare.value_is(b"/t/txn", b"v2", "NOT_EQUAL"), True),
])
def test_txn_compares_and_branches(client: EtcdClient, compare_of, holds) -> None:  # type: ignore[no-untyped-def]
    client.delete_range(b"/t/txn")
    client.put(b"/t/txn", b"v1")
    kv = client.get(b"/t/txn")
    assert kv is not None
    result = client.txn([compare_of(kv)], [Put(b"/t/txn-ok", b"yes")],
                        [Range(b"/t/txn"), DeleteRange(b"/t/txn-ok")])
    assert result.succeeded is holds
    assert (client.get(b"/t/txn-ok") is not None) is holds
    if not holds:
        assert [r.kvs[0].value for r in result.ranges] == [b"v1"]
    client.delete_range(b"/t/txn-ok")


def test_create_if_absent_lets_one_of_two_win(client: EtcdClient) -> None:
    key = b"/t/once"
    first = client.txn([Compare.create_revision(key, 0)], [Put(key, b"a")], [Range(key)])
    second = client.txn([Compare.create_revision(key, 0)], [Put(key, b"b")], [Range(key)])
    assert first.succeeded and not second.succeeded
    assert second.ranges[0].kvs[0].value == b"a"
    assert second.ranges[0].kvs[0].create_revision == first.revision


def test_lease_grant_keepalive_timetolive_revoke(client: EtcdClient) -> None:
    grant = client.lease_grant(5)
    assert grant.ttl_seconds == 5 and grant.lease_id > 0
    client.put(b"/t/leased", b"x", lease=grant.lease_id)
    assert client.lease_keepalive(grant.lease_id) == 5
    ttl = client.lease_timetolive(grant.lease_id, keys=True)
    assert ttl.granted_ttl_seconds == 5 and 0 < ttl.ttl_seconds <= 5
    assert ttl.keys == [b"/t/leased"]
    kv = client.get(b"/t/leased")
    assert kv is not None and kv.lease == grant.lease_id
    assert client.lease_revoke(grant.lease_id) is True
    assert client.get(b"/t/leased") is None  # the lease took its key with it
    assert client.lease_keepalive(grant.lease_id) == 0  # gone: TTL 0
    assert client.lease_timetolive(grant.lease_id).ttl_seconds == -1
    assert client.lease_revoke(grant.lease_id) is False


def test_lease_expiry_removes_keys(client: EtcdClient) -> None:
    grant = client.lease_grant(1)
    client.put(b"/t/short", b"x", lease=grant.lease_id)
    end = time.monotonic() + 5
    while client.get(b"/t/short") is not None and time.monotonic() < end:
        time.sleep(0.05)
    assert client.get(b"/t/short") is None


def test_etcd_errors_are_typed_with_code_and_message(client: EtcdClient) -> None:
    with pytest.raises(EtcdError) as e:
        client.put(b"/t/no-lease", b"x", lease=12345)
    assert e.value.etcd_code == EtcdError.NOT_FOUND
    assert "lease not found" in e.value.etcd_message
    assert e.value.endpoint == client.endpoints[0]


def test_fails_over_to_a_live_endpoint_either_way(etcd: EtcdServer) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    for endpoints in (f"{dead},{etcd.url}", f"{etcd.url},{dead}"):
        with EtcdClient(endpoints, timeout_seconds=1.0) as c:
            c.put(b"/t/failover", endpoints.encode())
            kv = c.get(b"/t/failover")
            assert kv is not None and kv.value == endpoints.encode()


def test_fails_over_when_the_fault_hook_cuts_an_endpoint(etcd: EtcdServer) -> None:
    # Two names for the same server: the hook cuts whichever one answered last.
    second = etcd.url.replace("127.0.0.1", "localhost")
    cut: set[str] = set()

    def hook(endpoint: str, path: str) -> None:
        if endpoint in cut:
            raise httpx.ConnectError(f"cut by the test: {endpoint}{path}")

    with EtcdClient([etcd.url, second], timeout_seconds=1.0, fault_hook=hook) as c:
        c.put(b"/t/hook", b"1")
        cut.add(etcd.url)
        c.put(b"/t/hook", b"2")
        cut.clear()
        cut.add(second)
        kv = c.get(b"/t/hook")
        assert kv is not None and kv.value == b"2"
        cut.add(etcd.url)
        with pytest.raises(EtcdUnavailable) as e:
            c.get(b"/t/hook")
        assert sorted(ep for ep, _ in e.value.attempts) == sorted([etcd.url, second])


def test_no_endpoint_answers_raises_unavailable_quickly() -> None:
    dead = [f"http://127.0.0.1:{free_port()}" for _ in range(3)]
    with EtcdClient(",".join(dead), timeout_seconds=0.5) as c:
        t0 = time.monotonic()
        with pytest.raises(EtcdUnavailable) as e:
            c.get(b"/t/x")
        assert time.monotonic() - t0 < 3 * 0.5 + 1
    assert [ep for ep, _ in e.value.attempts] == dead
    assert "etcd_endpoints" in str(e.value)  # the hint says what to check


@pytest.mark.parametrize("version, prefix", [
    ("3.5.9", "/v3"), ("3.4.0", "/v3"), ("3.3.13", "/v3beta"), ("3.2.0", "/v3alpha"),
    ("4.0.0", "/v3")])
def test_gateway_prefix_by_version(version: str, prefix: str) -> None:
    assert gateway_prefix(version) == prefix


def test_client_uses_the_prefix_of_the_running_etcd(client: EtcdClient, etcd: EtcdServer
                                                    ) -> None:
    version = httpx.get(etcd.url + "/version").json()["etcdcluster"]
    paths: list[str] = []
    client.fault_hook = lambda endpoint, path: paths.append(path)
    client.get(b"/t/x")
    assert paths[-1] == gateway_prefix(version) + "/kv/range"


@pytest.mark.parametrize("text, urls", [
    ("http://a:2379,http://b:2379", ["http://a:2379", "http://b:2379"]),
    (" a:2379 , https://b:2379/ ,", ["http://a:2379", "https://b:2379"]),
])
def test_parse_endpoints(text: str, urls: list[str]) -> None:
    assert parse_endpoints(text) == urls


def test_parse_endpoints_refuses_none() -> None:
    with pytest.raises(ValueError):
        parse_endpoints(" , ")


def test_prefix_range_end() -> None:
    assert prefix_range_end(b"/a/") == b"/a0"
    assert prefix_range_end(b"a\xff") == b"b"
    assert prefix_range_end(b"\xff") == b"\0"
