"""The bytes of one archived WAL object.  See docs/operations/archive.md.

An object is a 96-byte header followed by its body::

    0   8  magic              b"STEMEARC"
    8   2  format_version     1
    10  2  header_size        96
    12  4  flags              bit 0 (FLAG_ENCRYPTED): the body is AES-256-GCM sealed
    16  4  timeline
    20  4  records            WAL records in the object
    24  8  start_lsn          the object covers [start_lsn, end_lsn)
    32  8  end_lsn
    40  8  plaintext_bytes    length of the WAL frames, uncompressed
    48  32 plaintext_sha256   SHA-256 of those frames
    80  8  key_id             first 8 bytes of SHA-256(key) when encrypted, else zeros
    88  4  reserved           zeros
    92  4  crc32c             CRC-32C of bytes 0..92

The *plaintext* is the WAL's own frames (docs/wal-format.md), byte for byte as they
are in the segments, one after the other: each still carries its LSN and CRC-32C.
The body is the plaintext compressed as one zstd frame; when encrypted, it is
``nonce(12) | AES-256-GCM(zstd frame) | tag(16)`` with the header as associated data.
All integers are little-endian.
"""

from __future__ import annotations

import hashlib
import struct
from typing import NamedTuple

import zstandard

from ..wal import (
    FRAME_HEADER_SIZE,
    FRAME_MAGIC,
    RECORD_TYPES,
    crc32c,
    decode_frame_header,
    frame_crc,
    frame_size,
)
from ._cipher import KEY_ID_BYTES, ArchiveKey, DecryptionFailed

OBJECT_MAGIC = b"STEMEARC"
OBJECT_FORMAT_VERSION = 1
OBJECT_HEADER_SIZE = 96
FLAG_ENCRYPTED = 0x1
ZSTD_LEVEL = 3  # zstd's default: fast enough to keep up with the WAL on one core

_HEADER = struct.Struct("<8sHHIIIQQQ32s8s4s")  # 92 bytes, then the crc
assert _HEADER.size == OBJECT_HEADER_SIZE - 4


class ObjectFault(Exception):
    """Why an object's bytes are not a valid archived WAL object."""


class FrameFault(Exception):
    """A WAL frame that is not valid where it stands."""

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(f"offset {offset}: {reason}")
        self.offset = offset
        self.reason = reason


class ObjectHeader(NamedTuple):
    timeline: int
    records: int
    start_lsn: int
    end_lsn: int
    plaintext_bytes: int
    plaintext_sha256: bytes
    key_id: bytes = bytes(KEY_ID_BYTES)
    flags: int = 0

    @property
    def encrypted(self) -> bool:
        return bool(self.flags & FLAG_ENCRYPTED)

    def encode(self) -> bytes:
        body = _HEADER.pack(OBJECT_MAGIC, OBJECT_FORMAT_VERSION, OBJECT_HEADER_SIZE,
                            self.flags, self.timeline, self.records, self.start_lsn,
                            self.end_lsn, self.plaintext_bytes, self.plaintext_sha256,
                            self.key_id, bytes(4))
        return body + struct.pack("<I", crc32c(body))

    @classmethod
    def decode(cls, data: bytes) -> ObjectHeader:
        if len(data) < OBJECT_HEADER_SIZE:
            raise ObjectFault(f"{len(data)} bytes is shorter than the "
                              f"{OBJECT_HEADER_SIZE}-byte header")
        body = data[:OBJECT_HEADER_SIZE - 4]
        (crc,) = struct.unpack_from("<I", data, OBJECT_HEADER_SIZE - 4)
        (magic, version, hsize, flags, timeline, records, start, end, plain_bytes, sha,
         key_id, _reserved) = _HEADER.unpack(body)
        if magic != OBJECT_MAGIC:
            raise ObjectFault(f"bad magic {magic!r}: not an archived WAL object")
        if crc32c(body) != crc:
            raise ObjectFault("header checksum mismatch")
        if version != OBJECT_FORMAT_VERSION:
            raise ObjectFault(f"unsupported object format version {version}")
        if hsize != OBJECT_HEADER_SIZE or flags & ~FLAG_ENCRYPTED:
            raise ObjectFault(f"bad header size {hsize} or flags {flags:#x}")
        return cls(timeline, records, start, end, plain_bytes, sha, key_id, flags)


def check_frame(buf: bytes | memoryview, at: int) -> tuple[int, int, int]:
    """``(lsn, type, frame size)`` of the valid frame at ``buf[at:]``; FrameFault
    otherwise (its reason says which check failed, "cut short" when it runs past
    ``buf``)."""
    if at + FRAME_HEADER_SIZE > len(buf):
        raise FrameFault(at, "frame header cut short")
    head = decode_frame_header(buf[at:at + FRAME_HEADER_SIZE])
    if head.magic != FRAME_MAGIC:
        raise FrameFault(at, f"bad frame magic 0x{head.magic:04x}")
    if head.type not in RECORD_TYPES:
        raise FrameFault(at, f"unknown record type {head.type}")
    size = frame_size(head.length)
    if at + size > len(buf):
        raise FrameFault(at, f"frame of {size} bytes cut short")
    body = at + FRAME_HEADER_SIZE
    if frame_crc(buf[at:body], buf[body:body + head.length]) != head.crc:
        raise FrameFault(at, f"checksum mismatch in the record at LSN {head.lsn}")
    if any(buf[body + head.length:at + size]):
        raise FrameFault(at, "non-zero padding after the record")
    return head.lsn, head.type, size


class Frames(NamedTuple):
    """The records of a plaintext: ``(lsn, type, offset in the plaintext, size)``."""

    items: list[tuple[int, int, int, int]]


def frames_of(plaintext: bytes, start_lsn: int, end_lsn: int) -> Frames:
    """Every frame of an object's plaintext, checked: valid, in increasing LSN order,
    inside ``[start_lsn, end_lsn)``, the last one ending exactly at ``end_lsn``, and
    nothing else in between."""
    items: list[tuple[int, int, int, int]] = []
    at, prev_end = 0, start_lsn
    while at < len(plaintext):  # bounded: each pass moves past one frame
        lsn, rtype, size = check_frame(plaintext, at)
        if lsn < prev_end:
            raise FrameFault(at, f"record LSN {lsn} is before the end of the one before "
                                 f"it ({prev_end})")
        if lsn + size > end_lsn:
            raise FrameFault(at, f"record LSN {lsn} ends past the object's end LSN {end_lsn}")
        items.append((lsn, rtype, at, size))
        prev_end = lsn + size
        at += size
    if not items:
        raise FrameFault(0, "no record")
    if prev_end != end_lsn:
        raise FrameFault(at, f"the last record ends at LSN {prev_end}, not at the "
                             f"object's end LSN {end_lsn}")
    return Frames(items)


def pack_object(timeline: int, start_lsn: int, end_lsn: int, records: int,
                plaintext: bytes, key: ArchiveKey | None) -> tuple[ObjectHeader, bytes]:
    """The header and the whole object's bytes for these frames."""
    header = ObjectHeader(timeline, records, start_lsn, end_lsn, len(plaintext),
                          hashlib.sha256(plaintext).digest(),
                          key.key_id if key is not None else bytes(KEY_ID_BYTES),
                          FLAG_ENCRYPTED if key is not None else 0)
    head = header.encode()
    packed = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True).compress(
        plaintext)
    if key is not None:
        packed = key.encrypt(packed, head)
    return header, head + packed


def unpack_object(data: bytes, key: ArchiveKey | None, plaintext_bytes_max: int
                  ) -> tuple[ObjectHeader, bytes]:
    """The header and the plaintext of an object, every check passed; ObjectFault
    naming the first that failed."""
    header = ObjectHeader.decode(data)
    if header.plaintext_bytes > plaintext_bytes_max:
        raise ObjectFault(f"header claims {header.plaintext_bytes} plaintext bytes, more "
                          f"than the cap of {plaintext_bytes_max}")
    body = data[OBJECT_HEADER_SIZE:]
    if header.encrypted:
        if key is None:
            raise ObjectFault("the object is encrypted and no key was given "
                              "(archive.encryption_key_file)")
        if key.key_id != header.key_id:
            raise ObjectFault(f"the object was encrypted with key id {header.key_id.hex()}, "
                              f"not with this key ({key.key_id.hex()})")
        try:
            body = key.decrypt(body, data[:OBJECT_HEADER_SIZE])
        except DecryptionFailed as exc:
            raise ObjectFault(f"decryption failed: {exc}") from exc
    try:
        plaintext = zstandard.ZstdDecompressor().decompress(
            body, max_output_size=header.plaintext_bytes)
    except zstandard.ZstdError as exc:
        raise ObjectFault(f"zstd: {exc}") from exc
    if len(plaintext) != header.plaintext_bytes:
        raise ObjectFault(f"{len(plaintext)} plaintext bytes, the header says "
                          f"{header.plaintext_bytes}")
    if hashlib.sha256(plaintext).digest() != header.plaintext_sha256:
        raise ObjectFault("plaintext SHA-256 mismatch")
    return header, plaintext


__all__ = [
    "FLAG_ENCRYPTED",
    "OBJECT_FORMAT_VERSION",
    "OBJECT_HEADER_SIZE",
    "OBJECT_MAGIC",
    "FrameFault",
    "Frames",
    "ObjectFault",
    "ObjectHeader",
    "check_frame",
    "frames_of",
    "pack_object",
    "unpack_object",
]
