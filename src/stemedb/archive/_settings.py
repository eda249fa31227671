"""The archive's configuration: the ``[archive]`` keys and the bounds around them."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from .. import limits
from ..errors import InvalidInput

BACKLOG_POLICIES = ("refuse_writes", "drop")
URL_SCHEMES = ("file", "s3")


@dataclass
class ArchiveSettings:
    """``[archive]``: where WAL goes, how often, and what happens when it cannot.

    An empty ``url`` turns archiving off.  The last four fields are not configuration
    keys: they default to :mod:`stemedb.limits` and tests tighten them.
    """

    url: str = ""
    interval_seconds: float = limits.archive_interval_seconds_default
    max_backlog_bytes: int = limits.archive_max_backlog_bytes_default
    on_backlog_full: str = "refuse_writes"
    encryption_key_file: str = ""
    heartbeat_url: str = ""  # GET after caught-up passes: a dead man's switch
    heartbeat_interval_seconds: float = limits.archive_heartbeat_interval_seconds_default
    object_bytes_max: int = limits.archive_object_bytes_max
    upload_attempts_max: int = limits.archive_upload_attempts_max
    backoff_seconds_initial: float = limits.archive_backoff_seconds_initial
    backoff_seconds_max: float = limits.archive_backoff_seconds_max

    @property
    def enabled(self) -> bool:
        return bool(self.url)

    def validate(self) -> None:
        if self.url:
            check_url(self.url)
        if not (limits.archive_interval_seconds_min <= self.interval_seconds
                <= limits.archive_interval_seconds_max):
            raise InvalidInput(
                f"archive.interval_seconds must be between "
                f"{limits.archive_interval_seconds_min} and "
                f"{limits.archive_interval_seconds_max} seconds, got {self.interval_seconds}")
        if self.max_backlog_bytes < limits.archive_max_backlog_bytes_min:
            raise InvalidInput(
                f"archive.max_backlog_bytes must be at least "
                f"{limits.archive_max_backlog_bytes_min} bytes, got {self.max_backlog_bytes}")
        if self.on_backlog_full not in BACKLOG_POLICIES:
            raise InvalidInput(
                f"archive.on_backlog_full must be one of {', '.join(BACKLOG_POLICIES)}, "
                f"got {self.on_backlog_full!r}")
        if self.heartbeat_url and not self.url:
            raise InvalidInput("archive.heartbeat_url needs archive.url: it reports the "
                              "archive's progress")
        if self.heartbeat_url and not self.heartbeat_url.startswith(("http://", "https://")):
            raise InvalidInput("archive.heartbeat_url must be an http:// or https:// URL")
        if self.heartbeat_interval_seconds < limits.archive_heartbeat_interval_seconds_min:
            raise InvalidInput("archive.heartbeat_interval_seconds must be at least "
                              f"{limits.archive_heartbeat_interval_seconds_min:g}")
        if self.encryption_key_file and not self.url:
            raise InvalidInput("archive.encryption_key_file is set but archive.url is not")
        min_object = limits.record_payload_bytes_max + 64
        if not min_object <= self.object_bytes_max <= limits.archive_object_bytes_max:
            raise InvalidInput(f"archive object size cap must be between {min_object} and "
                               f"{limits.archive_object_bytes_max} bytes, got "
                               f"{self.object_bytes_max}")
        if not 1 <= self.upload_attempts_max <= 100:
            raise InvalidInput(f"archive upload attempts must be between 1 and 100, got "
                               f"{self.upload_attempts_max}")
        if not 0 < self.backoff_seconds_initial <= self.backoff_seconds_max <= 3600:
            raise InvalidInput("archive backoff: 0 < initial <= max <= 3600 seconds")


def check_url(url: str) -> tuple[str, str, str]:
    """``(scheme, bucket or "", path or prefix)`` of an archive URL; InvalidInput with
    what a good one looks like otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in URL_SCHEMES:
        raise InvalidInput(f"archive.url must start with file:// or s3://, got {url!r}",
                           hint="file:///var/backups/stemedb or s3://bucket/prefix")
    if parts.query or parts.fragment:
        raise InvalidInput(f"archive.url takes no query or fragment: {url!r}")
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise InvalidInput(f"archive.url file:// names a local path (file:///path), "
                               f"got host {parts.netloc!r}")
        if not parts.path.startswith("/") or parts.path == "/":
            raise InvalidInput(f"archive.url file:// needs an absolute directory below /, "
                               f"got {url!r}")
        return "file", "", parts.path.rstrip("/")
    if not parts.netloc or "@" in parts.netloc or ":" in parts.netloc:
        raise InvalidInput(f"archive.url s3:// needs a bucket name (s3://bucket/prefix), "
                           f"got {url!r}",
                           hint="credentials and the endpoint come from AWS_* variables "
                                "and ~/.aws files, never the URL")
    return "s3", parts.netloc, parts.path.strip("/")


__all__ = ["BACKLOG_POLICIES", "URL_SCHEMES", "ArchiveSettings", "check_url"]
