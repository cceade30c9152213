"""The migration runner products use today, re-implemented as the benchmark baseline.

Written from its description, not copied: one ``executescript`` per pending
file (which commits statement by statement, so it is not atomic), then the
file's name recorded in ``_migrations``. Every call creates the table if
needed, commits, and reads all applied names before it globs the folder, so
even a call with nothing pending costs SQL and a listing. Kept only to be
measured against; never use it.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path


def run_old_migrations(conn: sqlite3.Connection, migrations_dir: Path) -> list[str]:
    """Apply the ``*.sql`` files not yet recorded, the way the old module did."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS _migrations "
        "(name TEXT PRIMARY KEY, applied_at TEXT DEFAULT CURRENT_TIMESTAMP)"
    )
    conn.commit()
    applied = {row[0] for row in conn.execute("SELECT name FROM _migrations")}
    ran = []
    for path in sorted(migrations_dir.glob("*.sql")):
        if path.name in applied:
            continue
        conn.executescript(path.read_text())
        conn.execute("INSERT OR IGNORE INTO _migrations (name) VALUES (?)", (path.name,))
        conn.commit()
        ran.append(path.name)
    return ran


def connect_old(path: Path) -> sqlite3.Connection:
    """The old connection factory: ``sqlite3.connect`` with a 30 s timeout, nothing else."""
    return sqlite3.connect(path, timeout=30)
