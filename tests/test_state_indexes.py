"""Every filtered list of assertions is a range scan of one index, never a table scan.

The assertions table's secondary indexes name one column each and rely on SQLite
ending every index entry with the rowid (``id``): an index on ``subject`` is ordered
by (subject, id), so ``subject = ? AND id > ? ORDER BY id LIMIT ?`` (a page of the
cursor pagination) seeks to the cursor and reads forward, without a sort.  These tests
run the real query of :func:`stemedb.state.list_assertions`, as it reaches SQLite, and
read SQLite's plan for it.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from stemedb import state as st


@pytest.fixture()
def conn(tmp_path: Path) -> sqlite3.Connection:
    c = st.connect(str(tmp_path / "state.sqlite3"))
    c.execute("BEGIN IMMEDIATE")
    c.execute("INSERT INTO epochs(n, opened_at) VALUES(1, 't')")
    c.executemany(
        "INSERT INTO assertions(id, subject, predicate, object, author, confidence, source,"
        " epoch, lsn, created_at) VALUES(?,?,?,?,?,NULL,NULL,?,?,'t')",
        [(i, f"s{i % 50}", f"p{i % 7}", "1", f"a{i % 11}", 1 + i // 100, i)
         for i in range(1, 2001)])
    c.execute("COMMIT")
    return c


def _plan_of_list(conn: sqlite3.Connection, **filters: object) -> list[str]:
    """SQLite's plan for the statement list_assertions runs with these filters."""
    seen: list[str] = []
    conn.set_trace_callback(seen.append)
    try:
        page = st.list_assertions(conn, after=10, limit=5, **filters)  # type: ignore[arg-type]
    finally:
        conn.set_trace_callback(None)
    assert page["items"], "the fixture's rows match every filter used here"
    (select,) = [s for s in seen if s.startswith("SELECT")]
    return [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + select)]


@pytest.mark.parametrize(("column", "value"), [
    ("subject", "s3"), ("predicate", "p2"), ("author", "a4"), ("epoch", 1)])
def test_each_filter_seeks_its_index_from_the_cursor(conn: sqlite3.Connection, column: str,
                                                       value: object) -> None:
    plan = _plan_of_list(conn, **{column: value})
    assert plan == [f"SEARCH assertions USING INDEX assertions_{column} "
                    f"({column}=? AND rowid>?)"], plan


def test_no_filter_walks_the_primary_key(conn: sqlite3.Connection) -> None:
    assert _plan_of_list(conn) == ["SEARCH assertions USING INTEGER PRIMARY KEY (rowid>?)"]


def test_two_filters_use_one_index_and_never_sort(conn: sqlite3.Connection) -> None:
    plan = _plan_of_list(conn, subject="s3", author="a4")
    assert len(plan) == 1 and plan[0].startswith("SEARCH assertions USING INDEX "), plan
    assert "rowid>?" in plan[0] and "TEMP B-TREE" not in " ".join(plan), plan


def test_the_indexes_name_one_column_each(conn: sqlite3.Connection) -> None:
    sql = dict(conn.execute("SELECT name, sql FROM sqlite_master WHERE type='index'"
                            " AND tbl_name='assertions'"))
    for name, column in st.ASSERTION_INDEXES.items():
        assert sql[name] == f"CREATE INDEX {name} ON assertions({column})"
