"""Where a data directory keeps its WAL: in ``<data-dir>/wal``, or on a disk of its own.

With ``[wal] dir`` set (``--wal-dir``, ``STEMEDB_WAL_DIR``), the segments live in that
directory and ``<data-dir>/wal`` is a symbolic link to it, made on the first start — as
PostgreSQL's ``initdb --waldir`` links ``pg_wal``.  The WAL's fdatasync then no longer
shares a device queue with SQLite's page writes and syncs (etcd's ``--wal-dir`` exists
for the same reason), and every tool that takes ``--data-dir`` finds the WAL through
the link without being told.

The pairing of a state and its WAL is recorded once, by the link, and checked at every
start: a ``wal.dir`` that names another directory than the link does, or a data
directory whose WAL is a plain directory, is refused with the way out in the message.
A new link is only made to an empty directory, so a data directory never adopts the
segments of another database.
"""

from __future__ import annotations

import os

from .errors import ConfigError
from .storage import sync_dir

WAL_DIR_NAME = "wal"
# Written first by `stemedb backup restore` and removed last: a data directory that
# holds it is a restore that did not finish, which no engine opens.
RESTORE_MARKER_NAME = "RESTORE_INCOMPLETE"
HOW_TO_MOVE = "docs/operations/README.md, \"The WAL on a disk of its own\""


def wal_link_path(data_dir: str) -> str:
    return os.path.join(data_dir, WAL_DIR_NAME)


def place_wal_dir(data_dir: str, wal_dir: str) -> bool:
    """Make ``<data-dir>/wal`` lead to ``wal_dir`` (see the module docstring).

    Returns True when it made the link now, False when the layout was already right
    (or ``wal_dir`` is ``<data-dir>/wal`` itself: the default layout).  Raises
    :class:`ConfigError` naming ``wal.dir`` when the data directory says otherwise.
    """
    link = os.path.abspath(wal_link_path(data_dir))
    target = os.path.abspath(wal_dir)
    if target == link:
        return False
    real_target = os.path.realpath(target)
    real_data = os.path.realpath(data_dir)
    if real_data == real_target or real_data.startswith(real_target.rstrip("/") + "/"):
        raise ConfigError(f"wal.dir {target} is the data directory {data_dir} or a "
                          "directory above it; give the WAL a directory of its own")
    if os.path.islink(link):
        now = os.path.realpath(link)
        if now != real_target:
            raise ConfigError(
                f"wal.dir is {target}, but {link} leads to {now}: this data directory's "
                f"WAL is there. Start with wal.dir = \"{now}\", or move the WAL as "
                f"{HOW_TO_MOVE} says")
        if not os.path.isdir(target):
            # Linked on a start that crashed before the new directory was durable.
            os.makedirs(target, exist_ok=True)
            sync_dir(os.path.dirname(target))
        return False
    if os.path.lexists(link):
        raise ConfigError(
            f"wal.dir is {target}, but this data directory keeps its WAL in the directory "
            f"{link}. To move it: stop the server, `mv {link} {target} && ln -s {target} "
            f"{link}`, then start with wal.dir = \"{target}\" ({HOW_TO_MOVE})")
    os.makedirs(target, exist_ok=True)
    sync_dir(os.path.dirname(target))
    entries = sorted(os.listdir(target))
    if entries:
        more = f" and {len(entries) - 1} more" if len(entries) > 1 else ""
        why = ("; it holds lost+found, so it is a mount point: use a directory under it"
               if "lost+found" in entries else "")
        raise ConfigError(
            f"wal.dir {target} is not empty (it holds {entries[0]}{more}){why}. A new "
            "data directory's WAL starts in an empty directory, so that it never adopts "
            "another database's segments")
    os.makedirs(data_dir, exist_ok=True)
    os.symlink(target, link)
    sync_dir(os.path.abspath(data_dir))
    return True


