"""Base backups, restore, verify, drill and expire on a real S3 protocol server on
127.0.0.1 (moto's, authentication on), encrypted with the archive's key: the bucket
holds no plaintext, a restore without the key is refused, with it the state comes
back whole."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from stemedb.archive import ArchiveKey
from stemedb.backup import BackupSettings
from stemedb.engine import WriteRequest
from stemedb.wal import RecordType
from tests._archive import archive_settings, assertion, engine, scratch, wait_for
from tests._backup import dump_dir, restore_cli, run_cli, settle
from tests._moto import BUCKET, S3Server, moto_s3_server


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    yield from moto_s3_server()


def test_backup_restore_verify_drill_expire_over_s3_encrypted(
        s3: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    s3.env(monkeypatch, str(tmp_path))
    with scratch("s3bk", tmp_path) as d:
        key_file = d / "archive.key"
        key_file.write_text(os.urandom(32).hex())
        url = f"s3://{BUCKET}/backups-test"
        settings = archive_settings(url, encryption_key_file=str(key_file))
        eng = engine(d / "db", settings,
                     backup=BackupSettings(interval_hours=0, drill_interval_hours=0))
        try:
            wait_for("the first backup", lambda: eng.status()["backup"]["last_backup"]
                     is not None)
            for i in range(30):
                eng.write(assertion(f"secret-subject-{i}", 200))
            eng.write(WriteRequest(RecordType.SEAL))
            m = eng.backup_now().result(30)
            assert m.encrypted and m.key_id == ArchiveKey(
                bytes.fromhex(key_file.read_text())).key_id.hex()
            eng.write(assertion("after-the-backup"))
            settle(eng)
            drill = eng.drill_now().result(60)
            assert drill.passed, drill.problems
        finally:
            eng.close()
        live = dump_dir(d / "db")
        admin = s3.admin_s3()
        keys = [o["Key"] for o in admin.list_objects_v2(Bucket=BUCKET,
                                                        Prefix="backups-test/")["Contents"]]
        assert any(k.startswith("backups-test/backups/") for k in keys)
        for k in keys:  # no plaintext in the bucket: neither WAL nor state
            body = admin.get_object(Bucket=BUCKET, Key=k)["Body"].read()
            assert b"secret-subject" not in body, k
        res = restore_cli(url, d / "nokey")
        assert res.exit_code == 2 and "encrypted" in res.output, res.output
        assert not (d / "nokey").exists()
        kf = ("--encryption-key-file", str(key_file))
        res = restore_cli(url, d / "r", *kf)
        assert res.exit_code == 0, res.output
        assert dump_dir(d / "r") == live
        res = run_cli("verify", "--from", url, *kf, "--json")
        assert res.exit_code == 0, res.output
        assert len(json.loads(res.output)["backups"]) == 2
        res = run_cli("expire", "--from", url, "--retain-count", "1", "--retain-days", "0",
                      "--json")
        assert res.exit_code == 0, res.output
        assert json.loads(res.output)["kept"] == [m.id]
        res = run_cli("verify", "--from", url, *kf)
        assert res.exit_code == 0, res.output
        res = run_cli("drill", "--from", url, *kf, "--scratch-dir", str(d))
        assert res.exit_code == 0, res.output
