"""Migrations next to a 1,000,000-row child table: the safety checks must not scan it.

Owns the big-database benchmark. One database is built per run: a small
``parent`` table, a ``child`` table of 1,000,000 rows whose foreign key
points at ``parent`` (ON DELETE CASCADE, indexed) and an unrelated small
``tag`` table. Each scenario times ``run_migrations`` applying one file
against the same statements run by hand, then undoes its change (untimed) so
the next sample starts from the same database.

A one-line change to ``parent`` cannot break a reference, so the runner
must not check ``child``: its extra time over the bare statement is a fixed
bookkeeping cost (reading the folder, the ``_migrations`` row), far below one
scan of the big table. A rebuild of ``tag`` switches foreign-key enforcement
off and checks only ``tag``. A rebuild of ``parent`` must check ``child``
(its rows point at the rebuilt table), so it pays for one full
``PRAGMA foreign_key_check`` of the big table: reported, not a goal.
"""

from __future__ import annotations

import itertools
import re
import time
from dataclasses import dataclass
from pathlib import Path

from circuitforge_core.db import get_db, run_migrations, transaction
from circuitforge_core.db.connect import Connection

from .measure import alternate, columns, duration, heading, median, note, ratio_line

CHILD_ROWS = 1_000_000
PARENT_ROWS = 1_000

SCHEMA = """\
-- 001_schema.sql: parents, their many children, and an unrelated small table
CREATE TABLE parent (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE child (
    id        INTEGER PRIMARY KEY,
    parent_id INTEGER NOT NULL REFERENCES parent(id) ON DELETE CASCADE,
    body      TEXT NOT NULL
);
CREATE INDEX child_by_parent ON child(parent_id);
CREATE TABLE tag (id INTEGER PRIMARY KEY, label TEXT NOT NULL UNIQUE);
"""


@dataclass(frozen=True)
class Scenario:
    """One migration file, its hand-run equivalent, and how to undo both."""

    label: str
    name: str  # the migration file name (002_...)
    migration: str
    bare: str  # run with executescript: what a careful person types by hand
    undo: str
    rounds: int
    must_not_scan: bool  # False: the child table has to be checked; reported for context


def _rebuild(table: str, columns_sql: str, copy_columns: str) -> tuple[str, str]:
    """A rebuild migration, and the same statements with enforcement off by hand."""
    statements = (
        f"CREATE TABLE {table}_new ({columns_sql});\n"
        f"INSERT INTO {table}_new ({copy_columns}) SELECT {copy_columns} FROM {table};\n"
        f"DROP TABLE {table};\n"
        f"ALTER TABLE {table}_new RENAME TO {table};\n"
    )
    # Without foreign_keys=OFF, dropping parent would cascade-delete every child.
    bare = f"PRAGMA foreign_keys=OFF; BEGIN IMMEDIATE;\n{statements}COMMIT; PRAGMA foreign_keys=ON;"
    return statements, bare


_TAG_REBUILD, _TAG_REBUILD_BARE = _rebuild(
    "tag", "id INTEGER PRIMARY KEY, label TEXT NOT NULL UNIQUE COLLATE NOCASE", "id, label"
)
_PARENT_REBUILD, _PARENT_REBUILD_BARE = _rebuild(
    "parent", "id INTEGER PRIMARY KEY, name TEXT NOT NULL COLLATE NOCASE", "id, name"
)

SCENARIOS = [
    Scenario(
        "CREATE INDEX on parent",
        "002_parent_by_name.sql",
        "CREATE INDEX parent_by_name ON parent(name);\n",
        "BEGIN IMMEDIATE; CREATE INDEX parent_by_name ON parent(name); COMMIT;",
        "DROP INDEX parent_by_name;",
        rounds=21,
        must_not_scan=True,
    ),
    Scenario(
        "ALTER TABLE parent ADD COLUMN",
        "002_parent_note.sql",
        "ALTER TABLE parent ADD COLUMN note TEXT;\n",
        "BEGIN IMMEDIATE; ALTER TABLE parent ADD COLUMN note TEXT; COMMIT;",
        "ALTER TABLE parent DROP COLUMN note;",
        rounds=21,
        must_not_scan=True,
    ),
    Scenario(
        "rebuild unrelated small table (tag)",
        "002_rebuild_tag.sql",
        _TAG_REBUILD,
        _TAG_REBUILD_BARE,
        "",  # the rebuild leaves the same table behind: nothing to undo
        rounds=21,
        must_not_scan=True,
    ),
    Scenario(
        "rebuild parent itself",
        "002_rebuild_parent.sql",
        _PARENT_REBUILD,
        _PARENT_REBUILD_BARE,
        "",
        rounds=5,
        must_not_scan=False,
    ),
]

#: The extra time over the bare statements that still proves no scan of child.
SCAN_FRACTION = 0.05


def run(tmp: Path) -> None:
    heading(f"5. one migration on a database with a {CHILD_ROWS:,}-row child table")
    path = tmp / "big" / "big.db"
    started = time.perf_counter()
    db = get_db(path)
    try:
        _build(db, tmp / "big" / "base")
        full_check = median([_time_full_check(db) for _ in range(3)])
        note(
            f"built in {time.perf_counter() - started:.1f} s ({path.stat().st_size >> 20} MiB); "
            f"one scan of child (PRAGMA foreign_key_check(child)) takes {duration(full_check)}"
        )
        columns("ours", "bare")
        for scenario in SCENARIOS:
            _measure(db, tmp / "big" / scenario.name, scenario, full_check)
        # Every rebuild of parent ran with ON DELETE CASCADE children: none may be gone.
        assert db.execute("SELECT count(*) FROM child").fetchone()[0] == CHILD_ROWS
        note(
            "bare: the statements in one BEGIN IMMEDIATE transaction (rebuilds: foreign_keys=OFF "
            "around it, and no check at all)"
        )
        note(
            f"goal 'no scan': run_migrations checks no table referencing parent, and its extra "
            f"time is under {SCAN_FRACTION:.0%} of one scan of child"
        )
    finally:
        db.close()


def _build(db: Connection, folder: Path) -> None:
    folder.mkdir(parents=True)
    (folder / "001_schema.sql").write_text(SCHEMA, encoding="utf-8")
    run_migrations(db, folder)
    with transaction(db):
        db.executemany(
            "INSERT INTO parent (id, name) VALUES (?, ?)",
            ((n, f"parent {n}") for n in range(1, PARENT_ROWS + 1)),
        )
        # Children arrive in parent order, as rows written over time do.
        db.executemany(
            "INSERT INTO child (parent_id, body) VALUES (?, ?)",
            ((n * PARENT_ROWS // CHILD_ROWS + 1, f"child row {n}") for n in range(CHILD_ROWS)),
        )
        db.executemany(
            "INSERT INTO tag (id, label) VALUES (?, ?)", ((n, f"tag {n}") for n in range(100))
        )
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()


def _measure(db: Connection, folder: Path, scenario: Scenario, full_check: float) -> None:
    sample_folders = (folder / str(n) for n in itertools.count())

    def apply() -> float:
        # A folder of its own per sample: run_migrations remembers a folder it
        # has seen fully applied, and deleting the _migrations row (no schema
        # change) is not something that memory is meant to notice.
        migrations = next(sample_folders)
        migrations.mkdir(parents=True)
        (migrations / "001_schema.sql").write_text(SCHEMA, encoding="utf-8")
        (migrations / scenario.name).write_text(scenario.migration, encoding="utf-8")
        started = time.perf_counter()
        applied = run_migrations(db, migrations)
        elapsed = time.perf_counter() - started
        assert applied == [scenario.name], applied
        with transaction(db):
            db.execute("DELETE FROM _migrations WHERE name = ?", (scenario.name,))
        _undo(db, scenario)
        return elapsed

    def bare() -> float:
        started = time.perf_counter()
        db.executescript(scenario.bare)
        elapsed = time.perf_counter() - started
        _undo(db, scenario)
        return elapsed

    # One untimed run with a trace shows which tables the safety check read.
    statements: list[str] = []
    db.set_trace_callback(statements.append)
    try:
        apply()
    finally:
        db.set_trace_callback(None)
    checked = sorted(
        {m.group(1).strip("\"'").lower() for m in map(_FK_CHECK.search, statements) if m}
    )

    samples = alternate({"ours": apply, "bare": bare}, scenario.rounds)
    ours, baseline = median(samples["ours"]), median(samples["bare"])
    extra = ours - baseline
    if scenario.must_not_scan:
        passed = "child" not in checked and extra < SCAN_FRACTION * full_check
        ratio_line(scenario.label, ours, baseline, "no scan", passed)
    else:
        ratio_line(scenario.label, ours, baseline, "context", None)
    note(f"extra {duration(extra)}; foreign_key_check run on: {', '.join(checked) or 'nothing'}")


_FK_CHECK = re.compile(r"foreign_key_check\s*\(\s*([^)]*?)\s*\)", re.IGNORECASE)


def _undo(db: Connection, scenario: Scenario) -> None:
    if scenario.undo:
        db.executescript(scenario.undo)
    # Keep each sample's WAL the same size: a growing WAL would slow later samples.
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()


def _time_full_check(db: Connection) -> float:
    started = time.perf_counter()
    violations = db.execute("PRAGMA foreign_key_check(child)").fetchall()
    elapsed = time.perf_counter() - started
    assert violations == []
    return elapsed
