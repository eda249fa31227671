"""Client-side encryption of archived objects: AES-256-GCM (``cryptography``).

The key file (``[archive] encryption_key_file``) holds 32 random bytes, raw or as 64
hexadecimal characters (``openssl rand -hex 32 > key``).  Every object gets a fresh
96-bit random nonce; the object's header is the GCM associated data, so a header
moved onto another object's body fails to decrypt.  The *key id* (the first 8 bytes
of the key's SHA-256) is written in the header, so a reader holding the wrong key is
told so instead of "damaged".
"""

from __future__ import annotations

import hashlib
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import ConfigError

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
KEY_ID_BYTES = 8


class DecryptionFailed(Exception):
    """The ciphertext, its nonce, its header or the key is not the one it was made with."""


class ArchiveKey:
    """An AES-256-GCM key and its id."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"an archive key is {KEY_BYTES} bytes, got {len(key)}")
        self._aead = AESGCM(key)
        self.key_id = hashlib.sha256(key).digest()[:KEY_ID_BYTES]

    def encrypt(self, plaintext: bytes, associated: bytes) -> bytes:
        """``nonce | ciphertext | tag``."""
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plaintext, associated)

    def decrypt(self, sealed: bytes, associated: bytes) -> bytes:
        if len(sealed) < NONCE_BYTES + TAG_BYTES:
            raise DecryptionFailed(f"{len(sealed)} bytes is too short for nonce and tag")
        try:
            return self._aead.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], associated)
        except InvalidTag as exc:
            raise DecryptionFailed("authentication tag mismatch") from exc


def load_key(path: str) -> ArchiveKey:
    """Read ``[archive] encryption_key_file``; ConfigError saying what is wrong."""
    try:
        with open(path, "rb") as f:
            raw = f.read(4 * KEY_BYTES + 2)
    except OSError as exc:
        raise ConfigError(f"archive.encryption_key_file {path}: {exc.strerror or exc}",
                          hint="make one with: openssl rand -hex 32 > KEYFILE; "
                               "chmod 600 KEYFILE") from exc
    if len(raw) == KEY_BYTES:
        return ArchiveKey(raw)
    text = raw.strip()
    if len(text) == 2 * KEY_BYTES:
        try:
            return ArchiveKey(bytes.fromhex(text.decode("ascii")))
        except (UnicodeDecodeError, ValueError):
            pass
    raise ConfigError(f"archive.encryption_key_file {path} must hold {KEY_BYTES} raw bytes "
                      f"or {2 * KEY_BYTES} hexadecimal characters",
                      hint="make one with: openssl rand -hex 32 > KEYFILE")


__all__ = ["KEY_BYTES", "KEY_ID_BYTES", "ArchiveKey", "DecryptionFailed", "load_key"]
