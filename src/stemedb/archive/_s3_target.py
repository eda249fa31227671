"""``s3://bucket/prefix``: an archive on any S3-compatible store, through boto3.

Endpoint, region and credentials come from where every AWS tool looks: the
``AWS_*`` variables (``AWS_ENDPOINT_URL`` used as given, so ``http://127.0.0.1:9000``
reaches a local MinIO), ``AWS_PROFILE`` and the ``~/.aws/config`` and
``~/.aws/credentials`` files, and instance or container roles.  The URL holds only the
bucket and the prefix.

A new object is written with ``If-None-Match: *`` (a conditional put: the store
refuses it with 412 when the name exists).  A HEAD before it covers stores that ignore
the header.  boto3's own retries are off: the archiver retries, with its backoff, and
counts and logs every failure.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import boto3
import botocore.exceptions as bexc
from botocore.config import Config

from .. import limits
from ..errors import ArchiveError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

_AUTH_CODES = frozenset({
    "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
    "InvalidToken", "TokenRefreshRequired", "InvalidClientTokenId", "AllAccessDisabled",
    "AccountProblem", "403", "401"})
_NOT_FOUND_CODES = frozenset({"NoSuchBucket", "NoSuchKey", "404"})
_EXISTS_CODES = frozenset({"PreconditionFailed", "412"})


class S3Target:
    def __init__(self, bucket: str, prefix: str, *, url: str,
                 client: S3Client | None = None) -> None:
        self.bucket = bucket
        self.prefix = f"{prefix}/" if prefix else ""
        self.url = url
        if client is None:
            cfg = Config(connect_timeout=limits.archive_connect_timeout_seconds,
                         read_timeout=limits.archive_read_timeout_seconds,
                         retries={"total_max_attempts": 1, "mode": "standard"})
            try:
                client = boto3.session.Session().client("s3", config=cfg)
            except bexc.BotoCoreError as exc:
                raise ArchiveError(f"{url}: cannot make an S3 client: {exc}",
                                   reason="other") from exc
        self._s3 = client

    def _key(self, name: str) -> str:
        return self.prefix + name

    def _fail(self, what: str, exc: Exception) -> ArchiveError:
        return ArchiveError(f"{self.url}: {what}: {_describe(exc)}", reason=_reason(exc))

    def _exists(self, key: str) -> bool:
        """True when the key exists.  Any other answer than "not found" falls through
        to the conditional PUT, whose error carries the store's message (a HEAD's
        error has no body: "403 Forbidden" without "AccessDenied")."""
        try:
            self._s3.head_object(Bucket=self.bucket, Key=key)
            return True
        except bexc.ClientError:
            return False

    def put_if_absent(self, name: str, data: bytes) -> bool:
        key = self._key(name)
        try:
            if self._exists(key):
                return False
            self._s3.put_object(Bucket=self.bucket, Key=key, Body=data, IfNoneMatch="*",
                                ContentType="application/octet-stream")
            return True
        except bexc.ClientError as exc:
            if _code(exc) in _EXISTS_CODES:
                return False
            raise self._fail(f"put {name}", exc) from exc
        except bexc.BotoCoreError as exc:
            raise self._fail(f"put {name}", exc) from exc

    def get(self, name: str) -> bytes:
        try:
            resp = self._s3.get_object(Bucket=self.bucket, Key=self._key(name))
            body: bytes = resp["Body"].read()
            return body
        except (bexc.ClientError, bexc.BotoCoreError) as exc:
            raise self._fail(f"get {name}", exc) from exc

    def _pages(self, prefix: str, start_after: str, delimiter: str) -> Iterator[Any]:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self._key(prefix)}
        if start_after:
            kwargs["StartAfter"] = self._key(start_after)
        if delimiter:
            kwargs["Delimiter"] = delimiter
        try:
            yield from self._s3.get_paginator("list_objects_v2").paginate(**kwargs)
        except (bexc.ClientError, bexc.BotoCoreError) as exc:
            raise self._fail(f"list {prefix}", exc) from exc

    def list_names(self, prefix: str, start_after: str = "") -> Iterator[str]:
        n = 0
        for page in self._pages(prefix, start_after, ""):
            for obj in page.get("Contents", ()):
                n += 1
                if n > limits.archive_list_keys_max:
                    raise ArchiveError(f"{self.url}: more than {limits.archive_list_keys_max}"
                                       f" objects under {prefix}", reason="other")
                yield obj["Key"][len(self.prefix):]

    def children(self, prefix: str) -> list[str]:
        out: list[str] = []
        for page in self._pages(prefix, "", "/"):
            out.extend(p["Prefix"][len(self.prefix):] for p in page.get("CommonPrefixes", ()))
            if len(out) > limits.archive_list_keys_max:
                raise ArchiveError(f"{self.url}: too many entries under {prefix}",
                                   reason="other")
        return sorted(out)

    def delete(self, name: str) -> None:
        try:
            self._s3.delete_object(Bucket=self.bucket, Key=self._key(name))
        except (bexc.ClientError, bexc.BotoCoreError) as exc:
            raise self._fail(f"delete {name}", exc) from exc

    def close(self) -> None:
        self._s3.close()


def _code(exc: bexc.ClientError) -> str:
    err = exc.response.get("Error", {})
    code = str(err.get("Code") or "")
    if not code:
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = str(status or "")
    return code


def _reason(exc: Exception) -> str:
    if isinstance(exc, bexc.ClientError):
        code = _code(exc)
        if code in _AUTH_CODES:
            return "auth"
        if code in _NOT_FOUND_CODES:
            return "not_found"
        return "other"
    if isinstance(exc, (bexc.NoCredentialsError, bexc.PartialCredentialsError)):
        return "auth"
    if isinstance(exc, (bexc.ReadTimeoutError, bexc.ConnectTimeoutError)):
        return "timeout"
    if isinstance(exc, (bexc.EndpointConnectionError, bexc.ConnectionClosedError,
                        bexc.ConnectionError)):
        return "connect"
    return "other"


def _describe(exc: Exception) -> str:
    if isinstance(exc, bexc.ClientError):
        err = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return f"{_code(exc)} (HTTP {status}): {err.get('Message') or exc}"
    return f"{type(exc).__name__}: {exc}"


__all__ = ["S3Target"]
