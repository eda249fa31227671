"""Logging setup: one line per event, plain text or JSON.

Plain lines read ``2026-11-25T19:00:00.123Z INFO stemedb.engine: message`` so that
``journalctl -u stemedb-api | grep "WAL.*corrupt"`` (the runbook's search) finds the
engine's messages.  JSON lines (``--log-format json``) carry ``ts``, ``level``,
``logger`` and ``msg``, plus any ``extra={...}`` fields the call site passed, so a log
pipeline indexes them without parsing text.

Secrets never reach a log line: the server logs the effective configuration through
:meth:`stemedb.config.Config.effective` (tokens masked) and never logs request
headers.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import Any, TextIO

__all__ = ["LOG_FORMATS", "LOG_LEVELS", "JsonFormatter",
           "PlainFormatter", "setup_logging"]

LOG_FORMATS = ("plain", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RESERVED = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message", "asctime", "taskName"}


def _utc_timestamp(created: float) -> str:
    t = dt.datetime.fromtimestamp(created, dt.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


class PlainFormatter(logging.Formatter):
    """``<RFC 3339 UTC ms> LEVEL logger: message`` and the traceback, if any."""

    def format(self, record: logging.LogRecord) -> str:
        line = (f"{_utc_timestamp(record.created)} {record.levelname} {record.name}: "
                f"{record.getMessage()}")
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line; a traceback goes in ``exc`` (newlines escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"ts": _utc_timestamp(record.created),
                               "level": record.levelname.lower(),
                               "logger": record.name, "msg": record.getMessage()}
        for key, value in vars(record).items():
            if key not in _RESERVED and key not in out:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


class _DuplicateParseWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != "Invalid HTTP request received."


def setup_logging(log_format: str = "plain", level: str = "info",
                  stream: TextIO | None = None) -> None:
    """Route every logger to one handler on ``stream`` (stderr by default).

    Replaces handlers set up earlier, so calling it twice (tests, a reload) never
    duplicates lines.
    """
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, "
                         f"got {log_format!r}")
    if level.lower() not in LOG_LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LOG_LEVELS)}, got {level!r}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else PlainFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # The HTTP server's start and stop lines repeat the server's own; its warnings
    # (a malformed request, a connection limit) and errors stay.  There is no access
    # log: the application logs what matters (errors, and every request at debug)
    # without headers.
    server_log = logging.getLogger("uvicorn.error")
    server_log.setLevel(logging.WARNING)
    # httpx logs every request at INFO: the cluster's keepalives and the replication
    # stream would drown the log.  Its warnings stay.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if not any(isinstance(f, _DuplicateParseWarning) for f in server_log.filters):
        # The server's own line names the client and the answer.
        server_log.addFilter(_DuplicateParseWarning())
