"""Reading inside a statement: names as SQLite resolves them, column definitions as it keeps them.

The oracle is SQLite itself: a column definition we read from ``ADD COLUMN``
must be the same as what ``pragma_table_xinfo`` reports for that definition.
"""

from __future__ import annotations

import sqlite3

import pytest
from hypothesis import given
from hypothesis import strategies as st

from circuitforge_core.db.migrations.statements import (
    ColumnDefinition,
    TableRef,
    added_column,
    altered_or_dropped_table,
    may_create_temp,
    pragma_setting,
    same_definition,
)
from circuitforge_core.db.sqlsplit import Statement, split_sql


def statement(sql: str) -> Statement:
    (only,) = split_sql(sql)
    return only


@pytest.mark.parametrize(
    ("sql", "table", "column"),
    [
        ("ALTER TABLE jobs ADD COLUMN score REAL;", TableRef(None, "jobs"), "score"),
        ("alter table main.jobs add score real", TableRef("main", "jobs"), "score"),
        (
            'ALTER TABLE "Job ""List""" ADD "Due Date" TEXT;',
            TableRef(None, 'Job "List"'),
            "Due Date",
        ),
        ("ALTER TABLE [a b].`c``d` ADD COLUMN [x y];", TableRef("a b", "c`d"), "x y"),
        (
            "ALTER /* the */ TABLE -- jobs\n jobs ADD COLUMN 'quoted' INT;",
            TableRef(None, "jobs"),
            "quoted",
        ),
    ],
)
def test_add_column_names(sql: str, table: TableRef, column: str) -> None:
    added = added_column(statement(sql))
    assert added is not None
    assert (added.table, added.column) == (table, column)


@pytest.mark.parametrize(
    "sql",
    [
        "ALTER TABLE jobs RENAME TO tasks;",
        "ALTER TABLE jobs RENAME COLUMN a TO b;",
        "ALTER TABLE jobs DROP COLUMN a;",
        "CREATE TABLE jobs (id);",
        "SELECT 'ALTER TABLE jobs ADD COLUMN x';",
    ],
)
def test_other_statements_add_no_column(sql: str) -> None:
    assert added_column(statement(sql)) is None


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("DROP TABLE _migrations;", ("DROP", TableRef(None, "_migrations"))),
        ("DROP TABLE IF EXISTS temp.x;", ("DROP", TableRef("temp", "x"))),
        ('ALTER TABLE "main"."t" RENAME TO u;', ("ALTER", TableRef("main", "t"))),
        ("DROP VIEW v;", None),
        ("DROP INDEX t;", None),
    ],
)
def test_altered_or_dropped_table(sql: str, expected: tuple[str, TableRef] | None) -> None:
    assert altered_or_dropped_table(statement(sql)) == expected


def test_pragmas_and_temp_objects() -> None:
    assert pragma_setting(statement("PRAGMA main.Legacy_Alter_Table = ON;")) == (
        "legacy_alter_table",
        True,
    )
    assert pragma_setting(statement("PRAGMA cache_size(-2000);")) == ("cache_size", True)
    assert pragma_setting(statement("PRAGMA user_version;")) == ("user_version", False)
    for sql in ("CREATE TEMP TABLE x (a);", "CREATE TEMPORARY VIEW v AS SELECT 1;"):
        assert may_create_temp(statement(sql))
    assert may_create_temp(statement('CREATE TABLE "TEMP".x (a);'))
    assert not may_create_temp(statement("CREATE TABLE x (attempts INTEGER);"))


# -- the definitions SQLite keeps, against the ones we read --------------------------

TYPES = [
    "",
    "INTEGER",
    "int",
    "Text",
    "REAL",
    "BLOB",
    "NUMERIC",
    "varchar(20)",
    "VARCHAR ( 20 )",
    "decimal(10, 2)",
    "DOUBLE PRECISION",
    "unsigned big int",
]
DEFAULTS = [
    "0",
    "-1",
    "+2.5",
    "'x  y'",
    "'it''s'",
    "NULL",
    "CURRENT_TIMESTAMP",
    "TRUE",
    "x'00ff'",
    "(1 + 2)",
    "(lower('A'))",
    "( 'a' || 'b' )",
]
EXTRAS = [
    "",
    "COLLATE NOCASE",
    "CHECK (length(c) < 100)",
    "REFERENCES other (id)",
    "CONSTRAINT named CHECK (c IS NOT NULL)",
]


def _spaced(text: str, spaces: str) -> str:
    return text.replace(" ", spaces)


@st.composite
def column_definitions(draw: st.DrawFn) -> str:
    parts = [draw(st.sampled_from(TYPES))]
    order = draw(st.permutations(["not_null", "default", "extra"]))
    for part in order:
        if part == "not_null" and draw(st.booleans()):
            parts.append(draw(st.sampled_from(["NOT NULL", "not null"])))
        elif part == "default" and draw(st.booleans()):
            parts.append("DEFAULT " + draw(st.sampled_from(DEFAULTS)))
        elif part == "extra":
            parts.append(draw(st.sampled_from(EXTRAS)))
    return _spaced(" ".join(p for p in parts if p), draw(st.sampled_from([" ", "  ", "\n\t"])))


@given(column_definitions())
def test_what_we_read_is_what_sqlite_keeps(definition: str) -> None:
    """Any definition: ours (from ADD COLUMN) and SQLite's (from the table) are the same."""
    db = sqlite3.connect(":memory:")
    try:
        db.execute(f"CREATE TABLE t (id INTEGER PRIMARY KEY, c {definition})")
        _, declared, not_null, default, hidden = db.execute(
            "SELECT name, type, \"notnull\", dflt_value, hidden FROM pragma_table_xinfo('t') "
            "WHERE name = 'c'"
        ).fetchone()
    finally:
        db.close()
    kept = ColumnDefinition(declared, bool(not_null), default, hidden in (2, 3))
    added = added_column(statement(f"ALTER TABLE t ADD COLUMN c {definition};"))
    assert added is not None
    assert same_definition(kept, added.definition), (kept, added.definition)


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("INT", "INTEGER"),
        ("TEXT", "TEXT NOT NULL DEFAULT ''"),
        ("TEXT DEFAULT 'a'", "TEXT DEFAULT 'A'"),
        ("REAL DEFAULT 1", "REAL DEFAULT 1.0"),
        ("VARCHAR(10)", "VARCHAR(20)"),
        ("INTEGER GENERATED ALWAYS AS (1)", "INTEGER GENERATED ALWAYS AS (1)"),
    ],
)
def test_definitions_that_differ(one: str, other: str) -> None:
    first = added_column(statement(f"ALTER TABLE t ADD c {one}"))
    second = added_column(statement(f"ALTER TABLE t ADD c {other}"))
    assert first is not None
    assert second is not None
    assert not same_definition(first.definition, second.definition)
