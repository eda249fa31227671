"""The archive on a real S3 protocol server on 127.0.0.1 (moto's, authentication on):
conditional puts that never overwrite, failures counted by the store's own reason, and
the seed replayed with revoked credentials: the archiver fails loudly, the WAL is held,
and once the credentials work again the backlog drains with nothing acknowledged lost.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from stemedb.archive import ArchiveKey, ArchiveReader, open_target
from stemedb.errors import ArchiveError
from tests._archive import (
    archive_settings,
    archived_records,
    assertion,
    caught_up,
    engine,
    metric,
    scratch,
    wait_for,
)
from tests._moto import BUCKET, S3Server, moto_s3_server


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    yield from moto_s3_server()


@pytest.fixture
def s3_env(s3: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> S3Server:
    s3.env(monkeypatch, str(tmp_path))
    return s3


def test_a_put_never_replaces_an_object(s3_env: S3Server) -> None:
    target = open_target(f"s3://{BUCKET}/puts")
    assert target.put_if_absent("wal/00000001/a", b"first")
    assert not target.put_if_absent("wal/00000001/a", b"second")
    assert not target.put_if_absent("wal/00000001/a", b"first")
    assert target.get("wal/00000001/a") == b"first"
    assert target.put_if_absent("wal/00000002/b", b"x")
    assert list(target.list_names("wal/")) == ["wal/00000001/a", "wal/00000002/b"]
    assert list(target.list_names("wal/", "wal/00000001/a")) == ["wal/00000002/b"]
    assert target.children("wal/") == ["wal/00000001/", "wal/00000002/"]
    # The store itself refuses the overwrite (If-None-Match), not only our HEAD.
    with pytest.raises(Exception, match="PreconditionFailed"):
        s3_env.s3().put_object(Bucket=BUCKET, Key="puts/wal/00000001/a", Body=b"other",
                               IfNoneMatch="*")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("case, reason, text", [
    ("wrong secret", "auth", "SignatureDoesNotMatch"),
    ("no bucket", "not_found", "NoSuchBucket"),
    ("nobody listening", "connect", "Could not connect"),
])
def test_failures_carry_the_stores_own_error_and_a_reason(
        s3_env: S3Server, monkeypatch: pytest.MonkeyPatch, case: str, reason: str,
        text: str) -> None:
    bucket = BUCKET
    if case == "wrong secret":
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    elif case == "no bucket":
        bucket = "no-such-bucket"
    else:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_closed_port()}")
    target = open_target(f"s3://{bucket}/failures")
    with pytest.raises(ArchiveError) as info:
        target.put_if_absent("x", b"y")
    assert info.value.reason == reason and text in str(info.value)


def test_revoked_credentials_hold_the_wal_and_nothing_is_lost(
        s3_env: S3Server, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    url = f"s3://{BUCKET}/seed"
    with scratch("s3", tmp_path) as d, \
            caplog.at_level(logging.INFO, logger="stemedb.archive"):
        key = os.urandom(32)
        (d / "key").write_bytes(key)
        eng = engine(d / "db", archive_settings(url, encryption_key_file=str(d / "key")))
        try:
            acked = [eng.write(assertion(f"secret-{i}", 500)).lsn for i in range(30)]
            wait_for("the archive to catch up", lambda: caught_up(eng))
            hold = eng.holds()["archive"]["lsn"]
            s3_env.revoke()
            acked += [eng.write(assertion(f"secret-held-{i}", 500)).lsn for i in range(60)]
            wait_for("auth failures", lambda: metric(
                eng, "stemedb_archive_failures_total", {"reason": "auth"}) >= 3)
            st = eng.status()["archive"]
            assert "AccessDenied" in st["last_error"] and st["last_error_reason"] == "auth"
            assert "AccessDenied" in caplog.text
            assert eng.holds()["archive"]["lsn"] == hold  # nothing released unarchived
            assert metric(eng, "stemedb_archive_backlog_bytes") > 30_000
            s3_env.restore()
            wait_for("the backlog to drain", lambda: caught_up(eng))
            assert eng.holds()["archive"]["lsn"] > hold
        finally:
            eng.close()
        lsns = [lsn for lsn, _t, _p in archived_records(url, ArchiveKey(key))[1]]
        assert set(acked) <= set(lsns) and lsns == sorted(set(lsns))
        (chain,) = ArchiveReader(open_target(url)).summary()
        assert len(chain.ranges) == 1 and not chain.gaps
        admin = s3_env.admin_s3()
        for obj in admin.list_objects_v2(Bucket=BUCKET, Prefix="seed/")["Contents"]:
            body = admin.get_object(Bucket=BUCKET, Key=obj["Key"])["Body"].read()
            assert b"secret-" not in body  # the bucket holds no plaintext
