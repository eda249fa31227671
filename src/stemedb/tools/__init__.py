"""Operator tools: the library behind ``stemedb wal verify|repair|dump`` and ``stemedb
doctor``.  The CLI (:mod:`stemedb.cli`) is a thin layer over these functions; this
package never imports the CLI.
"""

from ._common import ReadOnlyFileSystem, ToolError, resolve_wal_dir
from .doctor import DoctorReport, Finding, run_doctor
from .dump import Dump, DumpFilter, DumpRecord, parse_time
from .repair import DirRepairReport, RepairReport, repair_dir, repair_segment
from .verify import VerifyFault, VerifyReport, verify_dir, verify_file

__all__ = [
    "DirRepairReport",
    "DoctorReport",
    "Dump",
    "DumpFilter",
    "DumpRecord",
    "Finding",
    "ReadOnlyFileSystem",
    "RepairReport",
    "ToolError",
    "VerifyFault",
    "VerifyReport",
    "parse_time",
    "repair_dir",
    "repair_segment",
    "resolve_wal_dir",
    "run_doctor",
    "verify_dir",
    "verify_file",
]
