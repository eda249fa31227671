"""A scratch directory on tmpfs when there is one: fdatasync costs nothing there."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

SHM = Path("/dev/shm")


def fast_dir(name: str, fallback: Path) -> Path:
    """A fresh ``/dev/shm/stemedb-test-<pid>-<name>``, or ``fallback`` without tmpfs.

    The caller removes it (``shutil.rmtree``) when done.
    """
    if not (SHM.is_dir() and os.access(SHM, os.W_OK)):
        fallback.mkdir(parents=True, exist_ok=True)
        return fallback
    d = SHM / f"stemedb-test-{os.getpid()}-{name}"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    return d
