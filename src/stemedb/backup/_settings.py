"""The ``[backup]`` keys: how often base backups and restore drills run, and how many
backups ``stemedb backup expire`` keeps."""

from __future__ import annotations

from dataclasses import dataclass

from .. import limits
from ..errors import InvalidInput


@dataclass
class BackupSettings:
    """``[backup]``.  Backups need ``[archive] url``: they go where the WAL goes.

    ``interval_hours`` and ``drill_interval_hours`` of 0 turn the schedule off (a
    backup or drill then runs only when asked for).  The last two fields are not
    configuration keys: they default to :mod:`stemedb.limits` and tests tighten them.
    """

    interval_hours: float = limits.backup_interval_hours_default
    drill_interval_hours: float = limits.backup_drill_interval_hours_default
    retain_count: int = limits.backup_retain_count_default
    retain_days: float = limits.backup_retain_days_default
    retry_seconds_initial: float = limits.backup_retry_seconds_initial
    retry_seconds_max: float = limits.backup_retry_seconds_max

    def validate(self) -> None:
        for key in ("interval_hours", "drill_interval_hours"):
            v = getattr(self, key)
            if not 0 <= v <= limits.backup_interval_hours_max:
                raise InvalidInput(f"backup.{key} must be between 0 (off) and "
                                   f"{limits.backup_interval_hours_max} hours, got {v}")
        if not 1 <= self.retain_count <= 100_000:
            raise InvalidInput(f"backup.retain_count must be between 1 and 100000 backups, "
                               f"got {self.retain_count}")
        if not 0 <= self.retain_days <= 36_600:
            raise InvalidInput(f"backup.retain_days must be between 0 and 36600 days, got "
                               f"{self.retain_days}")
        if not 0 < self.retry_seconds_initial <= self.retry_seconds_max <= 3600:
            raise InvalidInput("backup retry: 0 < initial <= max <= 3600 seconds")


__all__ = ["BackupSettings"]
