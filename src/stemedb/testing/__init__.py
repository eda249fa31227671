"""Testing helpers that are part of the public API (like ``trio.testing``).

:class:`SimFileSystem` is a deterministic in-memory file system that models a
crash: it loses writes that were never synced, tears the last write at a sector
boundary, and forgets directory entries that were never synced.
"""

from .simfs import SimCrash, SimFileSystem

__all__ = ["SimCrash", "SimFileSystem"]
