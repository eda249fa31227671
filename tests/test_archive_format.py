"""Archived WAL objects: names, bytes, checksums and encryption (stemedb.archive).

- One format string names objects and parses them; names sort as (timeline, LSN).
- An object round-trips to the same WAL frames, with or without encryption.
- Every flipped byte of an object is found, and the error names the object.
- An encrypted object holds no plaintext; the wrong key is told apart from damage.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs
from prometheus_client import CollectorRegistry

from stemedb.archive import (
    OBJECT_HEADER_SIZE,
    ArchiveKey,
    ArchiveSettings,
    FrameFault,
    ObjectFault,
    WalObjectName,
    build_chain,
    frames_of,
    load_key,
    pack_object,
    parse_wal_object_name,
    unpack_object,
    verify_object,
    wal_object_name,
)
from stemedb.config import load_config
from stemedb.errors import ArchiveCorruption, ConfigError, InvalidInput
from stemedb.metrics import ARCHIVE_FAILURE_REASONS, Metrics
from stemedb.wal import RecordType, encode_frame, frame_size

LSNS = hs.integers(min_value=0, max_value=2**63)
TIMELINES = hs.integers(min_value=1, max_value=10**8 - 1)


def _frames(payloads: list[bytes], start_lsn: int) -> tuple[bytes, int]:
    """WAL frames of ``payloads`` from ``start_lsn`` on, as a segment holds them."""
    out, lsn = [], start_lsn
    for p in payloads:
        out.append(encode_frame(int(RecordType.ASSERT), lsn, p))
        lsn += frame_size(len(p))
    return b"".join(out), lsn


# -- names ------------------------------------------------------------------------------

@given(TIMELINES, LSNS, hs.integers(min_value=1, max_value=2**40))
def test_a_name_parses_back_to_its_parts(timeline: int, start: int, length: int) -> None:
    name = wal_object_name(timeline, start, start + length)
    assert parse_wal_object_name(name) == (timeline, start, start + length)
    assert WalObjectName(timeline, start, start + length).name == name


@given(hs.lists(hs.tuples(TIMELINES, LSNS, hs.integers(min_value=1, max_value=2**30)),
                min_size=2, max_size=20))
def test_names_sort_in_timeline_and_lsn_order(parts: list[tuple[int, int, int]]) -> None:
    names = [wal_object_name(t, s, s + n) for t, s, n in parts]
    assert sorted(names) == [wal_object_name(t, s, s + n) for t, s, n in sorted(parts)]


@pytest.mark.parametrize("name", [
    "wal/00000001/00000000000000000000-00000000000000000128.wal",  # another suffix
    "wal/0000001/00000000000000000000-00000000000000000128.swal",  # 7-digit timeline
    "wal/00000001/0000000000000000000-00000000000000000128.swal",  # 19-digit LSN
    "wal/00000001/00000000000000000128-00000000000000000128.swal",  # empty range
    "wal/00000000/00000000000000000000-00000000000000000128.swal",  # timeline 0
    "x/wal/00000001/00000000000000000000-00000000000000000128.swal",
    "timelines/00000002.json",
])
def test_what_is_not_a_wal_object_name_is_refused(name: str) -> None:
    assert parse_wal_object_name(name) is None


# -- bytes -------------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(hs.lists(hs.binary(min_size=0, max_size=3000), min_size=1, max_size=12),
       hs.integers(min_value=0, max_value=2**40).map(lambda n: n * 8), TIMELINES,
       hs.booleans())
def test_an_object_round_trips_to_the_same_frames(payloads: list[bytes], start: int,
                                                  timeline: int, encrypted: bool) -> None:
    key = ArchiveKey(bytes(range(32))) if encrypted else None
    plain, end = _frames(payloads, start)
    header, data = pack_object(timeline, start, end, len(payloads), plain, key)
    got_header, got = unpack_object(data, key, len(plain))
    assert got == plain and got_header == header and header.encrypted == encrypted
    wal = verify_object(WalObjectName(timeline, start, end), data, key)
    assert [p for _lsn, _t, p in wal.records()] == payloads


def test_every_flipped_byte_is_found_and_named() -> None:
    plain, end = _frames([b'{"t":"2026-01-01T00:00:00Z","ops":[]}', b"x" * 200], 128)
    for key in (None, ArchiveKey(os.urandom(32))):
        parts = WalObjectName(1, 128, end)
        _, data = pack_object(1, 128, end, 2, plain, key)
        for i in range(len(data)):
            bad = bytearray(data)
            bad[i] ^= 0x40
            with pytest.raises(ArchiveCorruption) as info:
                verify_object(parts, bytes(bad), key)
            assert info.value.name == parts.name and parts.name in str(info.value), i


def test_a_truncated_object_is_found() -> None:
    plain, end = _frames([b"a" * 100], 64)
    _, data = pack_object(1, 64, end, 1, plain, None)
    for cut in (0, 10, OBJECT_HEADER_SIZE, len(data) - 1):
        with pytest.raises(ArchiveCorruption):
            verify_object(WalObjectName(1, 64, end), data[:cut], None)


def test_an_object_under_another_name_is_refused() -> None:
    plain, end = _frames([b"a" * 100], 64)
    _, data = pack_object(1, 64, end, 1, plain, None)
    with pytest.raises(ArchiveCorruption, match="its header says timeline 1"):
        verify_object(WalObjectName(2, 64, end), data, None)


@pytest.mark.parametrize("case, want", [
    ("records out of order", "before the end of the one before"),
    ("record past the end", "ends past the object's end"),
    ("end not reached", "not at the object's end"),
    ("no record", "no record"),
])
def test_frames_of_checks_order_and_coverage(case: str, want: str) -> None:
    a = encode_frame(1, 64, b"a" * 10)
    b = encode_frame(1, 64 + len(a), b"b" * 10)
    plain, start, end = {
        "records out of order": (b + a, 64 + len(a), 64 + 2 * len(a)),
        "record past the end": (a, 64, 64 + len(a) - 8),
        "end not reached": (a, 64, 64 + len(a) + 8),
        "no record": (b"", 64, 72),
    }[case]
    with pytest.raises(FrameFault, match=want):
        frames_of(plain, start, end)


# -- encryption --------------------------------------------------------------------------

def test_an_encrypted_object_holds_no_plaintext() -> None:
    secret = b"subject-that-must-not-leak-" * 4
    plain, end = _frames([secret, secret], 64)
    _, data = pack_object(1, 64, end, 2, plain, ArchiveKey(os.urandom(32)))
    assert b"subject-that-must-not-leak" not in data
    _, clear = pack_object(1, 64, end, 2, plain, None)
    assert clear[OBJECT_HEADER_SIZE:] not in data  # not the compressed plaintext either


def test_the_wrong_key_or_no_key_is_told_apart_from_damage() -> None:
    plain, end = _frames([b"a" * 50], 64)
    _, data = pack_object(1, 64, end, 1, plain, ArchiveKey(b"\1" * 32))
    with pytest.raises(ObjectFault, match="encrypted with key id"):
        unpack_object(data, ArchiveKey(b"\2" * 32), 1 << 20)
    with pytest.raises(ObjectFault, match="no key was given"):
        unpack_object(data, None, 1 << 20)


def test_key_files_hex_or_raw_and_bad_ones_refused(tmp_path: Path) -> None:
    raw = os.urandom(32)
    (tmp_path / "raw").write_bytes(raw)
    (tmp_path / "hex").write_text(raw.hex() + "\n")
    assert load_key(str(tmp_path / "raw")).key_id == load_key(str(tmp_path / "hex")).key_id
    (tmp_path / "short").write_text("abcd")
    for bad in ("short", "missing"):
        with pytest.raises(ConfigError, match="encryption_key_file"):
            load_key(str(tmp_path / bad))


# -- chains ------------------------------------------------------------------------------

def test_a_chain_names_its_gaps_and_overlaps() -> None:
    objs = [WalObjectName(1, 0, 100), WalObjectName(1, 100, 200),
            WalObjectName(1, 300, 400), WalObjectName(1, 350, 500)]
    chain = build_chain(1, objs)
    assert chain.ranges == [(0, 200), (300, 500)]
    assert [(g.start_lsn, g.end_lsn) for g in chain.gaps] == [(200, 300)]
    assert chain.overlaps == [objs[3].name]


# -- configuration and metrics -------------------------------------------------------------

@pytest.mark.parametrize("env, want", [
    ({"STEMEDB_ARCHIVE_URL": "ftp://host/x"}, "archive.url must start with"),
    ({"STEMEDB_ARCHIVE_URL": "file://relative/x"}, "archive.url file://"),
    ({"STEMEDB_ARCHIVE_URL": "s3://"}, "needs a bucket"),
    ({"STEMEDB_ARCHIVE_URL": "s3://key:secret@bucket/p"}, "needs a bucket"),
    ({"STEMEDB_ARCHIVE_INTERVAL_SECONDS": "0"}, "archive.interval_seconds"),
    ({"STEMEDB_ARCHIVE_INTERVAL_SECONDS": "soon"}, "archive.interval_seconds"),
    ({"STEMEDB_ARCHIVE_MAX_BACKLOG_BYTES": "100"}, "archive.max_backlog_bytes"),
    ({"STEMEDB_ARCHIVE_ON_BACKLOG_FULL": "ignore"}, "archive.on_backlog_full"),
    ({"STEMEDB_ARCHIVE_ENCRYPTION_KEY_FILE": "/k"}, "encryption_key_file is set but"),
    ({"STEMEDB_ARCHIVE_URL": "file:///tmp/a",
      "STEMEDB_ARCHIVE_ENCRYPTION_KEY_FILE": "/nonexistent/key"}, "encryption_key_file"),
])
def test_bad_archive_settings_are_refused_naming_the_key(env: dict[str, str],
                                                         want: str) -> None:
    with pytest.raises(ConfigError, match=want):
        load_config(env=env)


def test_archive_settings_defaults() -> None:
    cfg = load_config(env={"STEMEDB_ARCHIVE_URL": "s3://bucket/prefix"}).engine_config()
    assert cfg.archive == ArchiveSettings(url="s3://bucket/prefix")
    assert (cfg.archive.interval_seconds, cfg.archive.on_backlog_full) == (1.0, "refuse_writes")
    with pytest.raises(InvalidInput, match="upload attempts"):
        ArchiveSettings(upload_attempts_max=0).validate()


def test_contract_metrics_exist_with_their_types_and_reasons_at_zero() -> None:
    m = Metrics(CollectorRegistry())
    families = {f.name: f for f in m.registry.collect()}
    for name, kind in {"stemedb_archive_last_success_timestamp_seconds": "gauge",
                       "stemedb_archive_failures": "counter",
                       "stemedb_archive_backlog_bytes": "gauge",
                       "stemedb_archive_lag_seconds": "gauge"}.items():
        assert families[name].type == kind, name
    reasons = {s.labels["reason"] for s in families["stemedb_archive_failures"].samples
               if s.name.endswith("_total")}
    assert reasons == set(ARCHIVE_FAILURE_REASONS)
