"""Base backups, restore and point-in-time recovery, verification, drills, retention.

A *base backup* is a consistent copy of the state at an LSN, stored in the archive
beside the WAL (``backups/<timeline>/<id>/``: parts, then a manifest).  A *restore*
downloads one and replays archived WAL through the engine's applier up to a target;
the restored directory starts with ``stemedb serve`` on a new timeline.  *Verify*
checks every object and the WAL chain; a *drill* restores the newest backup and
checks the result; *expire* applies retention.  docs/operations/archive.md is the
operator's reference.

Modules, one idea each:

- :mod:`._settings` — the ``[backup]`` keys.
- :mod:`._manifest` — a backup's manifest and the catalog of an archive's backups.
- :mod:`._take` — copying the state online and uploading it.
- :mod:`._fetch` — downloading a backup's files, every checksum checked.
- :mod:`._plan` — timelines, their history, and the WAL a backup's path needs.
- :mod:`._restore` — restore and its targets.
- :mod:`._verify` — ``stemedb backup verify``.
- :mod:`._drill` — restore drills and their checks.
- :mod:`._expire` — retention.
- :mod:`._scheduler` — the server's backup thread.
"""

from ._drill import DrillReport, StateFacts, check_restored, run_drill, state_facts
from ._expire import ExpireReport, expire
from ._manifest import Catalog, Manifest, read_catalog
from ._restore import RestoreReport, RestoreTarget, TargetNotReached, restore
from ._scheduler import BackupScheduler
from ._settings import BackupSettings
from ._take import take_base_backup
from ._verify import Fault, VerifyReport, verify_archive

__all__ = [
    "BackupScheduler",
    "BackupSettings",
    "Catalog",
    "DrillReport",
    "ExpireReport",
    "Fault",
    "Manifest",
    "RestoreReport",
    "RestoreTarget",
    "StateFacts",
    "TargetNotReached",
    "VerifyReport",
    "check_restored",
    "expire",
    "read_catalog",
    "restore",
    "run_drill",
    "state_facts",
    "take_base_backup",
    "verify_archive",
]
