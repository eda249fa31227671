"""StemeDB's segmented write-ahead log.

Lifecycle
---------
The log is a directory of segments, ``segment.001.wal``, ``segment.002.wal``, ...
(zero-padded to at least three digits; ``segment.1000.wal`` follows
``segment.999.wal``).  Each segment is preallocated to ``segment_size_bytes`` and
starts with a 64-byte header naming its sequence number and *base LSN*.  The
writer appends framed records; when the next record does not fit, the segment is
fdatasynced and the writer switches to the next one, which a background thread
has already created, preallocated and synced as ``segment.next.tmp`` and which is
renamed into place (then the directory is fsynced).  Checkpoints delete whole
segments that every hold has passed.

LSNs
----
An LSN is a byte position in the whole log: a record at offset ``o`` of a segment
with base ``b`` has LSN ``b + o``, and the next segment's base is ``b`` plus the
segment's capacity.  Finding a record's segment is a bisection over base LSNs.

Frames
------
``crc32c | magic | type | flags | length | reserved | lsn | payload | pad to 8``.
The CRC-32C covers everything after itself.  See :mod:`stemedb.wal._format` and
docs/wal-format.md for the bytes.

Damage
------
An all-zero frame header ends a segment's data.  A bad frame in the last segment
with no valid frame after it is a *torn tail* (a crash during an unsynced write);
anything else - a bad frame followed by a valid one, damage in an earlier segment,
a missing segment - is *corruption*, which recovery refuses to paper over.
"""

from ._format import (
    FRAME_HEADER_SIZE,
    FRAME_MAGIC,
    PREALLOC_NAME,
    RECORD_TYPES,
    SEGMENT_HEADER_SIZE,
    RecordType,
    SegmentHeader,
    crc32c,
    decode_frame_header,
    encode_frame,
    frame_crc,
    frame_size,
    parse_segment_name,
    segment_name,
)
from ._reader import (
    BAD_HEADER,
    CORRUPT_RECORD,
    GAP,
    MISSING_SEGMENT,
    TORN_TAIL,
    Chain,
    Fault,
    Frame,
    HeaderError,
    Record,
    SegmentInfo,
    SegmentScanner,
    is_zero,
    list_segment_names,
    load_chain,
    unpadded_len,
)
from ._writer import WalOpError, WalWriter

__all__ = [
    "BAD_HEADER",
    "CORRUPT_RECORD",
    "FRAME_HEADER_SIZE",
    "FRAME_MAGIC",
    "GAP",
    "MISSING_SEGMENT",
    "PREALLOC_NAME",
    "RECORD_TYPES",
    "SEGMENT_HEADER_SIZE",
    "TORN_TAIL",
    "Chain",
    "Fault",
    "Frame",
    "HeaderError",
    "Record",
    "RecordType",
    "SegmentHeader",
    "SegmentInfo",
    "SegmentScanner",
    "WalOpError",
    "WalWriter",
    "crc32c",
    "decode_frame_header",
    "encode_frame",
    "frame_crc",
    "frame_size",
    "is_zero",
    "list_segment_names",
    "load_chain",
    "parse_segment_name",
    "segment_name",
    "unpadded_len",
]
