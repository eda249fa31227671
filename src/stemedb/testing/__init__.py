"""Testing helpers that are part of the public API (like ``trio.testing``).

:class:`SimFileSystem` is a deterministic in-memory file system that models a
crash: it loses writes that were never synced, tears the last write at a sector
boundary, and forgets directory entries that were never synced.
:class:`FaultyFileSystem` is the real file system whose WAL fdatasync fails with an
errno, or waits, when a test says so.
"""

from .faults import FaultyFileSystem
from .simfs import SimCrash, SimFileSystem

__all__ = ["FaultyFileSystem", "SimCrash", "SimFileSystem"]
