"""The materialized state: SQLite in WAL mode, and the domain rules that build it.

:func:`apply_record` is the one state transition, and it applies a record as its
bytes say (:class:`Record`, decoded from the frame's payload).  The engine's applier
calls it for every durable record, live and in replay alike, so a replay reproduces
the state - and every sealed epoch's digest - bit for bit.  ``applied_end_lsn`` (the
LSN just past the last applied record) is written in the same transaction.
"""

from __future__ import annotations

import hashlib
import sqlite3
from dataclasses import dataclass, field
from itertools import chain, groupby
from typing import Any

import msgspec
import orjson

from . import limits
from .errors import InvalidInput, NotFound, StemeError
from .wal import RecordType

SCHEMA_VERSION = 1

# The secondary indexes of the assertions table: derived data only.  connect() creates
# any that are missing, so a replay may drop them and build them again afterwards
# (see :func:`drop_assertion_indexes`) without a crash in between ever leaving a
# state without them for longer than the next start.
#
# One column each: every SQLite index entry ends with the rowid, which ``id`` is, so
# an index on ``subject`` is already ordered by (subject, id) and serves
# ``subject = ? AND id > ? ORDER BY id`` as a range (tests/test_state_indexes.py
# checks each list query's plan).  Naming ``id`` as well stored it twice per entry:
# a state built before keeps those (same plans), and its next rebuild makes these.
ASSERTION_INDEXES: dict[str, str] = {
    "assertions_subject": "subject",
    "assertions_predicate": "predicate",
    "assertions_author": "author",
    "assertions_epoch": "epoch",
}
_ASSERTION_INDEX_DDL = [f"CREATE INDEX IF NOT EXISTS {name} ON assertions({cols});"
                        for name, cols in ASSERTION_INDEXES.items()]

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS assertions (
    id INTEGER PRIMARY KEY,
    subject TEXT NOT NULL, predicate TEXT NOT NULL, object TEXT NOT NULL,
    author TEXT NOT NULL, confidence REAL, source TEXT,
    epoch INTEGER NOT NULL, lsn INTEGER NOT NULL, created_at TEXT NOT NULL);
{assertion_indexes}
CREATE TABLE IF NOT EXISTS votes (
    epoch INTEGER NOT NULL, assertion_id INTEGER NOT NULL, voter TEXT NOT NULL,
    value INTEGER NOT NULL, lsn INTEGER NOT NULL, updated_at TEXT NOT NULL,
    PRIMARY KEY (assertion_id, epoch, voter)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS votes_epoch ON votes(epoch, assertion_id);
CREATE TABLE IF NOT EXISTS epochs (
    n INTEGER PRIMARY KEY, opened_at TEXT NOT NULL, sealed_at TEXT, digest TEXT,
    assertions INTEGER NOT NULL DEFAULT 0, votes INTEGER NOT NULL DEFAULT 0,
    results INTEGER NOT NULL DEFAULT 0, seal_lsn INTEGER);
CREATE TABLE IF NOT EXISTS results (
    epoch INTEGER NOT NULL, assertion_id INTEGER NOT NULL,
    support INTEGER NOT NULL, dispute INTEGER NOT NULL, score INTEGER NOT NULL,
    status TEXT NOT NULL, PRIMARY KEY (epoch, assertion_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS idempotency (
    key TEXT PRIMARY KEY, body_sha256 TEXT NOT NULL, status INTEGER NOT NULL,
    response TEXT NOT NULL, lsn INTEGER NOT NULL, created_unix REAL NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idempotency_age ON idempotency(created_unix);
CREATE TABLE IF NOT EXISTS terms (
    term INTEGER PRIMARY KEY, start_lsn INTEGER NOT NULL, node TEXT NOT NULL,
    started_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS holds (
    name TEXT PRIMARY KEY, lsn INTEGER NOT NULL, updated_unix REAL NOT NULL) WITHOUT ROWID;
""".format(assertion_indexes="\n".join(_ASSERTION_INDEX_DDL))


def connect(path: str, *, readonly: bool = False,
            cache_bytes: int = limits.state_page_cache_bytes_default) -> sqlite3.Connection:
    """A connection to the state database; ``cache_bytes`` bounds its page cache."""
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None,
                               check_same_thread=False)
        conn.execute("PRAGMA query_only=ON")
    else:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                               cached_statements=STATEMENT_CACHE_SIZE)
        conn.execute("PRAGMA journal_mode=WAL")
        # Our WAL is the durability; SQLite's file is made durable at checkpoints.
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA wal_autocheckpoint=0")
        # SQLite's WAL file is reused after each checkpoint; past this size it is cut
        # back when it restarts, so one burst does not keep its high-water mark forever.
        conn.execute(f"PRAGMA journal_size_limit={limits.sqlite_wal_size_limit_bytes}")
        conn.executescript(SCHEMA)
    conn.execute("PRAGMA busy_timeout=5000")
    conn.execute(f"PRAGMA cache_size=-{max(1, int(cache_bytes) // 1024)}")  # KiB when < 0
    return conn


def tune_for_writes(conn: sqlite3.Connection) -> None:
    """Settings for the applier's connection once recovery is over.

    ``temp_store=MEMORY``: a multi-row INSERT keeps a statement journal of the pages it
    changes; past 64 KiB SQLite spills it to a temp file that it creates, writes and
    unlinks in every transaction.  In memory it is bounded by the pages one apply
    transaction changes (``apply_records_max``).  Not set during recovery: the index
    rebuild's sorter must still spill to disk.
    """
    conn.execute("PRAGMA temp_store=MEMORY")


def assertion_indexes_present(conn: sqlite3.Connection) -> int:
    """How many of :data:`ASSERTION_INDEXES` exist."""
    names = {r[0] for r in conn.execute(
        "SELECT name FROM sqlite_master WHERE type='index' AND tbl_name='assertions'")}
    return len(names & ASSERTION_INDEXES.keys())


def drop_assertion_indexes(conn: sqlite3.Connection) -> None:
    """Drop the assertions table's secondary indexes, in one committed transaction.

    For a replay that inserts far more rows than the table holds: inserting without
    them and building them once (:func:`create_assertion_indexes`, a sort) costs less
    than keeping four B-trees up to date row by row.  A crash before they are built
    again is safe: they are derived data and :func:`connect` creates missing ones.
    """
    _in_one_transaction(conn, [f"DROP INDEX IF EXISTS {name}" for name in ASSERTION_INDEXES])


def create_assertion_indexes(conn: sqlite3.Connection) -> None:
    """Create any missing secondary index of the assertions table (one transaction)."""
    _in_one_transaction(conn, _ASSERTION_INDEX_DDL)


def _in_one_transaction(conn: sqlite3.Connection, statements: list[str]) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        for sql in statements:
            conn.execute(sql)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def get_meta(conn: sqlite3.Connection, key: str) -> Any:
    row = conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
    return None if row is None else row[0]


def set_meta(conn: sqlite3.Connection, key: str, value: Any) -> None:
    conn.execute("INSERT INTO meta(key, value) VALUES(?, ?) "
                 "ON CONFLICT(key) DO UPDATE SET value=excluded.value", (key, value))


def set_applied(conn: sqlite3.Connection, end_lsn: int, last_lsn: int, records: int) -> None:
    """Record how far the state has applied the WAL, in the caller's transaction."""
    conn.execute("INSERT INTO meta(key, value) VALUES('applied_end_lsn', ?),"
                 " ('applied_last_lsn', ?), ('applied_records', ?)"
                 " ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                 (end_lsn, last_lsn, records))


def commit(conn: sqlite3.Connection) -> None:
    """COMMIT the caller's transaction: the one statement of a group commit that runs
    after the WAL's fdatasync (tests make it fail there)."""
    conn.execute("COMMIT")


def applied_end_lsn(conn: sqlite3.Connection) -> int | None:
    v = get_meta(conn, "applied_end_lsn")
    return None if v is None else int(v)


def open_epoch(conn: sqlite3.Connection) -> int:
    # The open epoch is always the highest-numbered one: a primary-key lookup.
    row = conn.execute("SELECT max(n) FROM epochs").fetchone()
    if row is None or row[0] is None:
        raise NotFound("no open epoch: the WAL's genesis record has not been applied")
    return int(row[0])


def digest_results(epoch: int, rows: list[tuple[int, int, int, int, str]]) -> str:
    """SHA-256 over the canonical text of a sealed epoch's results (sorted by id)."""
    h = hashlib.sha256(f"stemedb-epoch-v1 {epoch}\n".encode())
    for aid, support, dispute, score, status in rows:
        h.update(f"{aid} {support} {dispute} {score} {status}\n".encode())
    return h.hexdigest()


def status_of(score: int) -> str:
    return "accepted" if score > 0 else "rejected" if score < 0 else "contested"


# -- the state transition ---------------------------------------------------------

_INSERT_ASSERTION = ("INSERT INTO assertions(id, subject, predicate, object, author, confidence,"
                     " source, epoch, lsn, created_at) VALUES(?,?,?,?,?,?,?,?,?,?)")
_ASSERTION_COLUMNS = 10
_INSERT_ROWS_PER_STATEMENT = 16


def _insert_statement(shape: int, rows: int) -> tuple[str, int]:
    """(``rows``-row INSERT, values bound per row) for a row shape: bit 0 set when
    confidence (column 5) is None, bit 1 when source (column 6) is; those columns are
    written in as NULL and left out of the row (see :func:`assertion_row`)."""
    nulls = {5} if shape & 1 else set()
    if shape & 2:
        nulls.add(6)
    values = "(" + ",".join("NULL" if i in nulls else "?"
                            for i in range(_ASSERTION_COLUMNS)) + ")"
    head = _INSERT_ASSERTION[:_INSERT_ASSERTION.index("VALUES")] + "VALUES"
    return head + ",".join([values] * rows), _ASSERTION_COLUMNS - len(nulls)


def assertion_row(aid: int, subject: str, predicate: str, obj: str, author: str,
                  confidence: float | None, source: str | None, epoch: int, lsn: int,
                  ts: str) -> tuple[int, tuple[Any, ...]]:
    """(shape, row) of an assertion as :class:`ApplyContext` buffers it: the row holds
    the columns of :data:`_INSERT_ASSERTION` in order, without confidence and source
    when they are None (the shape's statement writes NULL for them: binding None costs
    the sqlite3 module an adaptation lookup per value).  The applier's fast path builds the
    same rows inline (``Applier.apply``)."""
    if source is None:
        if confidence is None:
            return 3, (aid, subject, predicate, obj, author, epoch, lsn, ts)
        return 2, (aid, subject, predicate, obj, author, confidence, epoch, lsn, ts)
    if confidence is None:
        return 1, (aid, subject, predicate, obj, author, source, epoch, lsn, ts)
    return 0, (aid, subject, predicate, obj, author, confidence, source, epoch, lsn, ts)


# Every (shape, row count) statement, 1 to _INSERT_ROWS_PER_STATEMENT rows: 64 texts,
# which SQLite's statement cache (``STATEMENT_CACHE_SIZE``) keeps prepared.
_INSERT_BY_SHAPE = {(shape, rows): _insert_statement(shape, rows)
                    for shape in range(4) for rows in range(1, _INSERT_ROWS_PER_STATEMENT + 1)}
STATEMENT_CACHE_SIZE = 256


@dataclass
class ApplyContext:
    """What the transition caches between records inside one SQLite transaction.

    The open epoch and the next assertion id are read once, and the epoch's counters
    are added up and written once (:meth:`flush`), instead of per record.  A caller
    that rolls back drops the context.
    """

    epoch: int = 0
    next_id: int = 0
    asserted: int = 0
    new_votes: int = 0
    # The applier buffers assertion rows across records and inserts them with one
    # executemany per run; without it, rows go in per record.
    buffer_rows: bool = False
    # Buffered rows and their shapes, side by side (see :func:`assertion_row`).
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    shapes: list[int] = field(default_factory=list)

    def flush_rows(self, conn: sqlite3.Connection) -> None:
        if self.rows:
            _insert_assertions(conn, self.rows, self.shapes)
            self.asserted += len(self.rows)
            self.rows = []
            self.shapes = []

    def load(self, conn: sqlite3.Connection) -> None:
        if not self.epoch:
            self.epoch = open_epoch(conn)
            self.next_id = (conn.execute("SELECT max(id) FROM assertions").fetchone()[0]
                            or 0) + 1

    def flush(self, conn: sqlite3.Connection) -> None:
        self.flush_rows(conn)
        if self.asserted or self.new_votes:
            conn.execute("UPDATE epochs SET assertions = assertions + ?, votes = votes + ?"
                         " WHERE n=?", (self.asserted, self.new_votes, self.epoch))
            self.asserted = self.new_votes = 0


class _Assertion(msgspec.Struct):
    subject: str
    predicate: str
    object: msgspec.Raw  # the JSON text exactly as the record holds it
    author: str
    confidence: int | float | None = None
    source: str | None = None


class _Vote(msgspec.Struct):
    assertion_id: int
    voter: str
    value: int


class _Op(msgspec.Struct):
    a: _Assertion | None = msgspec.field(default=None, name="assert")
    v: _Vote | None = msgspec.field(default=None, name="vote")


class Record(msgspec.Struct):
    """A WAL record's payload, typed: what :func:`apply_record` applies.

    Every record is decoded from its bytes with :data:`RECORD_DECODER` by the applier,
    live and in replay alike, so both apply the same values.  An assertion's
    ``object`` stays the bytes the record holds (see :func:`object_text`).  Fields the
    state does not use are ignored; a payload of another shape raises
    ``msgspec.DecodeError``.
    """

    t: str
    ops: list[_Op] = []
    k: str | None = None
    h: str | None = None
    term: int | None = None  # TERM records only
    node: str | None = None  # TERM records only


RECORD_DECODER = msgspec.json.Decoder(Record)


def object_text(raw: msgspec.Raw) -> str:
    """The ``object`` column's text: the object's JSON exactly as the record holds it.

    The WAL is the truth and the state a function of its bytes: the text is copied,
    never decoded and encoded again, so the state built from a WAL is the same under
    any version of any JSON library, whatever encoder wrote the record (escaped or
    raw non-ASCII, ``1e16`` or ``1e+16``).  Reads parse it into the same value.
    Raises ``UnicodeDecodeError`` for bytes that are not UTF-8.
    """
    return str(raw, "utf-8")


def buffer_assertions(conn: sqlite3.Connection, ctx: ApplyContext, record: Record,
                      lsn: int) -> range:
    """:func:`apply_record`'s assert branch for a record whose every op is an assertion
    (replay's fast path for BATCH records): the rows buffered in ``ctx``, flushed at
    ``apply_rows_buffered_max``; returns the ids they were given."""
    ctx.load(conn)
    first, epoch, ts = ctx.next_id, ctx.epoch, record.t
    rows, shapes = ctx.rows, ctx.shapes
    for op in record.ops:
        a = op.a
        assert a is not None, "only records of assertions"
        shape, row = assertion_row(ctx.next_id, a.subject, a.predicate, object_text(a.object),
                                   a.author, a.confidence, a.source, epoch, lsn, ts)
        shapes.append(shape)
        rows.append(row)
        ctx.next_id += 1
        if len(rows) >= limits.apply_rows_buffered_max:
            ctx.flush_rows(conn)
            rows, shapes = ctx.rows, ctx.shapes
    return range(first, ctx.next_id)


def apply_record(conn: sqlite3.Connection, rtype: int, record: Record, lsn: int,
                 ctx: ApplyContext | None = None) -> tuple[int, dict[str, Any]]:
    """Apply one WAL record; return (HTTP status, response body).

    Raises a :class:`StemeError` when the request is invalid against the current
    state (an unknown assertion, say), or the record has no op its type needs; the
    caller rolls back (for a durable record, that is corruption).  Assertion ids are
    assigned here, densely and in LSN order, so a replay assigns the same ones.
    Without a ``ctx`` the record's counters are written at once.
    """
    own = ctx is None
    c = ApplyContext() if ctx is None else ctx
    ts = record.t
    if rtype == RecordType.GENESIS:
        conn.execute("INSERT INTO epochs(n, opened_at) VALUES(1, ?)", (ts,))
        set_meta(conn, "database_id", database_id(ts))
        c.epoch = 0  # reload on the next record
        return 201, {"opened": 1}
    if rtype == RecordType.TERM:
        if record.term is None or record.term < 1 or not record.node:
            raise InvalidInput("a TERM record needs a positive term and a node")
        top = conn.execute("SELECT max(term) FROM terms").fetchone()[0]
        if top is not None and record.term <= int(top):
            raise InvalidInput(f"term {record.term} does not follow term {top}")
        conn.execute("INSERT INTO terms(term, start_lsn, node, started_at) VALUES(?,?,?,?)",
                     (record.term, lsn, record.node, ts))
        return 201, {"term": record.term, "lsn": lsn}
    c.load(conn)
    epoch = c.epoch
    if rtype == RecordType.SEAL:
        c.flush(conn)
        body = _seal(conn, epoch, ts, lsn)
        c.epoch = epoch + 1
        return 201, body
    if not record.ops:
        raise InvalidInput(f"a record of type {rtype} holds no op")
    results: list[tuple[int, dict[str, Any]]] = []
    rows, shapes = c.rows, c.shapes
    for op in record.ops:
        a = op.a
        if a is not None:
            shape, row = assertion_row(c.next_id, a.subject, a.predicate,
                                       object_text(a.object), a.author, a.confidence,
                                       a.source, epoch, lsn, ts)
            rows.append(row)
            shapes.append(shape)
            results.append((201, {"id": c.next_id, "lsn": lsn, "epoch": epoch,
                                  "created_at": ts}))
            c.next_id += 1
            if len(rows) >= limits.apply_rows_buffered_max:
                c.flush_rows(conn)
                rows, shapes = c.rows, c.shapes
            continue
        if op.v is None:
            raise InvalidInput("an op that is neither an assertion nor a vote")
        c.flush_rows(conn)  # a vote may name an assertion created just before it
        rows, shapes = c.rows, c.shapes
        status, body = _vote(conn, op.v, epoch, ts, lsn)
        c.new_votes += status == 201
        results.append((status, body))
    if own:
        c.flush(conn)
    elif not c.buffer_rows:
        c.flush_rows(conn)
    if rtype in (RecordType.ASSERT, RecordType.VOTE):
        return results[0]
    return 201, {"results": [r[1] for r in results], "lsn": lsn, "epoch": epoch}


def _insert_assertions(conn: sqlite3.Connection, rows: list[tuple[Any, ...]],
                       shapes: list[int]) -> None:
    """Insert rows built by :func:`assertion_row`, given their shapes, in order."""
    n = len(rows)
    if n == 1:
        conn.execute(_INSERT_BY_SHAPE[shapes[0], 1][0], rows[0])
        return
    # Rows go in runs of one shape, 16 rows to a multi-row INSERT: the same rows in the
    # same order, with a fraction of the per-row work.
    if shapes.count(shapes[0]) == n:
        _insert_run(conn, shapes[0], rows)
        return
    start = 0
    for shape, run in groupby(shapes):
        count = sum(1 for _ in run)
        _insert_run(conn, shape, rows[start:start + count])
        start += count


def _insert_run(conn: sqlite3.Connection, shape: int, rows: list[tuple[Any, ...]]) -> None:
    """Insert rows of one shape, 16 to a statement and the rest in one more.

    Each statement execution is one ``sqlite3_step``, around which the sqlite3 module
    releases the GIL and must take it back; on a busy server that hand-back is where
    the applier waits, so a transaction makes as few steps as it can.
    """
    k = _INSERT_ROWS_PER_STATEMENT
    n = len(rows)
    multi, width = _INSERT_BY_SHAPE[shape, min(n, k)]
    flat = list(chain.from_iterable(rows))
    full = n - n % k
    if full:
        step = k * width
        conn.executemany(multi, [flat[i:i + step] for i in range(0, full * width, step)])
    if full < n:
        rest, _ = _INSERT_BY_SHAPE[shape, n - full]
        conn.execute(rest, flat[full * width:])


def _vote(conn: sqlite3.Connection, v: _Vote, epoch: int, ts: str, lsn: int
          ) -> tuple[int, dict[str, Any]]:
    aid, voter, value = v.assertion_id, v.voter, v.value
    if conn.execute("SELECT 1 FROM assertions WHERE id=?", (aid,)).fetchone() is None:
        raise NotFound(f"assertion {aid} does not exist")
    old = conn.execute("SELECT value FROM votes WHERE assertion_id=? AND epoch=? AND voter=?",
                       (aid, epoch, voter)).fetchone()
    if old is None:
        conn.execute("INSERT INTO votes(epoch, assertion_id, voter, value, lsn, updated_at)"
                     " VALUES(?,?,?,?,?,?)", (epoch, aid, voter, value, lsn, ts))
    else:
        conn.execute("UPDATE votes SET value=?, lsn=?, updated_at=? WHERE assertion_id=? AND"
                     " epoch=? AND voter=?", (value, lsn, ts, aid, epoch, voter))
    body = {"assertion_id": aid, "voter": voter, "value": value, "lsn": lsn,
            "epoch": epoch, "created": old is None}
    return (201 if old is None else 200), body


def _seal(conn: sqlite3.Connection, epoch: int, ts: str, lsn: int) -> dict[str, Any]:
    rows = conn.execute(
        "SELECT assertion_id, SUM(value = 1), SUM(value = -1) FROM votes WHERE epoch=?"
        " GROUP BY assertion_id ORDER BY assertion_id", (epoch,)).fetchall()
    results = []
    for aid, support, dispute in rows:
        score = support - dispute
        results.append((aid, support, dispute, score, status_of(score)))
    conn.executemany("INSERT INTO results(epoch, assertion_id, support, dispute, score, status)"
                     " VALUES(?,?,?,?,?,?)", [(epoch, *r) for r in results])
    digest = digest_results(epoch, results)
    conn.execute("UPDATE epochs SET sealed_at=?, digest=?, results=?, seal_lsn=? WHERE n=?",
                 (ts, digest, len(results), lsn, epoch))
    conn.execute("INSERT INTO epochs(n, opened_at) VALUES(?, ?)", (epoch + 1, ts))
    return {"sealed": epoch, "opened": epoch + 1, "digest": digest, "results": len(results),
            "lsn": lsn, "sealed_at": ts}


def expire_idempotency(conn: sqlite3.Connection, cutoff_unix: float) -> None:
    """Forget keys created before ``cutoff_unix`` (a record time minus the TTL)."""
    conn.execute("DELETE FROM idempotency WHERE created_unix < ?", (cutoff_unix,))


def replace_idempotency(conn: sqlite3.Connection,
                        rows: list[tuple[str, str, int, str, int, float]]) -> None:
    """Replay's idempotency rows, (key, body_sha256, status, response JSON, lsn,
    created_unix) in record order: a key already present takes the later row."""
    conn.executemany("INSERT OR REPLACE INTO idempotency(key, body_sha256, status, response,"
                     " lsn, created_unix) VALUES(?,?,?,?,?,?)", rows)


def lookup_idempotency(conn: sqlite3.Connection, key: str
                       ) -> tuple[str, int, dict[str, Any], float] | None:
    """(body hash, status, response, created_unix) of a key the state holds."""
    row = conn.execute("SELECT body_sha256, status, response, created_unix FROM idempotency"
                       " WHERE key=?", (key,)).fetchone()
    if row is None:
        return None
    return row[0], int(row[1]), orjson.loads(row[2]), float(row[3])


# -- reads ------------------------------------------------------------------------

def _assertion_row(row: tuple[Any, ...]) -> dict[str, Any]:
    aid, subject, predicate, obj, author, confidence, source, epoch, lsn, created = row
    out: dict[str, Any] = {"id": aid, "subject": subject, "predicate": predicate,
                           "object": orjson.loads(obj), "author": author, "epoch": epoch,
                           "lsn": lsn, "created_at": created}
    if confidence is not None:
        out["confidence"] = confidence
    if source is not None:
        out["source"] = source
    return out


_ASSERTION_COLS = ("id, subject, predicate, object, author, confidence, source, epoch, lsn,"
                   " created_at")


def tally(conn: sqlite3.Connection, aid: int, epoch: int) -> dict[str, int]:
    support, dispute = conn.execute(
        "SELECT COALESCE(SUM(value = 1), 0), COALESCE(SUM(value = -1), 0) FROM votes"
        " WHERE assertion_id=? AND epoch=?", (aid, epoch)).fetchone()
    return {"support": support, "dispute": dispute, "score": support - dispute}


def get_assertion(conn: sqlite3.Connection, aid: int) -> dict[str, Any]:
    row = conn.execute(f"SELECT {_ASSERTION_COLS} FROM assertions WHERE id=?",
                       (aid,)).fetchone()
    if row is None:
        raise NotFound(f"assertion {aid} does not exist")
    out = _assertion_row(row)
    epoch = open_epoch(conn)
    out["tally"] = {"epoch": epoch, **tally(conn, aid, epoch)}
    out.update(tally(conn, aid, epoch))
    return out


def list_assertions(conn: sqlite3.Connection, *, subject: str | None = None,
                    predicate: str | None = None, author: str | None = None,
                    epoch: int | None = None, after: int = 0, limit: int = 100
                    ) -> dict[str, Any]:
    where: list[str] = ["id > ?"]
    args: list[str | int] = [after]
    for col, val in (("subject", subject), ("predicate", predicate), ("author", author),
                     ("epoch", epoch)):
        if val is not None:
            where.append(f"{col} = ?")
            args.append(val)
    rows = conn.execute(f"SELECT {_ASSERTION_COLS} FROM assertions WHERE {' AND '.join(where)}"
                        " ORDER BY id LIMIT ?", (*args, limit + 1)).fetchall()
    items = [_assertion_row(r) for r in rows[:limit]]
    nxt = items[-1]["id"] if len(rows) > limit else None
    return {"items": items, "next": nxt}


def list_votes(conn: sqlite3.Connection, aid: int, epoch: int | None) -> dict[str, Any]:
    if conn.execute("SELECT 1 FROM assertions WHERE id=?", (aid,)).fetchone() is None:
        raise NotFound(f"assertion {aid} does not exist")
    current = open_epoch(conn)
    if epoch is None:
        epoch = current
    elif conn.execute("SELECT 1 FROM epochs WHERE n=?", (epoch,)).fetchone() is None:
        raise NotFound(f"epoch {epoch} does not exist")
    rows = conn.execute("SELECT voter, value, lsn, updated_at FROM votes WHERE assertion_id=?"
                        " AND epoch=? ORDER BY voter", (aid, epoch)).fetchall()
    return {"assertion_id": aid, "epoch": epoch, "sealed": epoch != current,
            "votes": [{"voter": r[0], "value": r[1], "lsn": r[2], "updated_at": r[3]}
                      for r in rows], **tally(conn, aid, epoch)}


def current_epoch(conn: sqlite3.Connection) -> dict[str, Any]:
    row = conn.execute("SELECT n, opened_at, assertions, votes FROM epochs WHERE sealed_at IS"
                       " NULL").fetchone()
    if row is None:
        raise NotFound("no open epoch yet")
    return {"epoch": row[0], "opened_at": row[1], "assertions": row[2], "votes": row[3]}


def sealed_epoch(conn: sqlite3.Connection, n: int, *, after: int = 0, limit: int = 100
                 ) -> dict[str, Any]:
    row = conn.execute("SELECT n, opened_at, sealed_at, digest, assertions, votes, results,"
                       " seal_lsn FROM epochs WHERE n=?", (n,)).fetchone()
    if row is None:
        raise NotFound(f"epoch {n} does not exist")
    if row[2] is None:
        raise NotFound(f"epoch {n} is open, not sealed; see GET /v1/epochs/current")
    rows = conn.execute("SELECT assertion_id, support, dispute, score, status FROM results"
                        " WHERE epoch=? AND assertion_id > ? ORDER BY assertion_id LIMIT ?",
                        (n, after, limit + 1)).fetchall()
    items = [{"assertion_id": r[0], "support": r[1], "dispute": r[2], "score": r[3],
              "status": r[4]} for r in rows[:limit]]
    summary: dict[str, int] = {"accepted": 0, "rejected": 0, "contested": 0}
    for (status, count) in conn.execute("SELECT status, COUNT(*) FROM results WHERE epoch=?"
                                        " GROUP BY status", (n,)):
        summary[status] = count
    return {"epoch": row[0], "opened_at": row[1], "sealed_at": row[2], "digest": row[3],
            "assertions": row[4], "votes": row[5], "voted_assertions": row[6],
            "seal_lsn": row[7], "summary": summary, "results": items,
            "next": items[-1]["assertion_id"] if len(rows) > limit else None}


def dump(conn: sqlite3.Connection) -> dict[str, Any]:
    """A canonical image of the ledger (not the caches): equal states dump equal."""
    return {
        "assertions": conn.execute(f"SELECT {_ASSERTION_COLS} FROM assertions ORDER BY id"
                                   ).fetchall(),
        "votes": conn.execute("SELECT * FROM votes ORDER BY assertion_id, epoch, voter"
                              ).fetchall(),
        "epochs": conn.execute("SELECT * FROM epochs ORDER BY n").fetchall(),
        "results": conn.execute("SELECT * FROM results ORDER BY epoch, assertion_id"
                                ).fetchall(),
    }


def database_id(genesis_t: str) -> str:
    """A database's identity: from the time of its genesis record, so that a replay, a
    restore and a replica's snapshot all carry the same one, and two databases created
    apart never share it (a member refuses to stream another database's log)."""
    return hashlib.sha256(f"stemedb-genesis:{genesis_t}".encode()).hexdigest()[:32]


def list_terms(conn: sqlite3.Connection) -> list[tuple[int, int, str]]:
    """The leaderships this state has applied, oldest first: (term, start_lsn, node).
    ``start_lsn`` is the LSN of the leader's TERM record: every record from it up to
    the next term's start was written in that term."""
    return [(int(t), int(s), str(n)) for t, s, n in conn.execute(
        "SELECT term, start_lsn, node FROM terms ORDER BY term")]


__all__ = ["SCHEMA_VERSION", "StemeError", "apply_record", "connect", "dump", "list_terms"]
