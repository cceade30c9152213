"""`make demo`: migrate the example notes app's database, use it, and show its status.

Run it twice: the second run applies nothing, because everything is applied.
"""

from __future__ import annotations

import logging
from pathlib import Path

from circuitforge_core.db import get_db, migration_status, run_migrations, transaction

HERE = Path(__file__).parent
DB_PATH = HERE / "notes" / "data" / "notes.db"
MIGRATIONS = HERE / "notes" / "migrations"


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="  %(levelname)s: %(message)s")
    print(f"database:   {DB_PATH.relative_to(HERE.parent)}")
    print(f"migrations: {MIGRATIONS.relative_to(HERE.parent)}\n")
    db = get_db(DB_PATH)
    try:
        applied = run_migrations(db, MIGRATIONS)
        print(f"\napplied now: {', '.join(applied) or 'nothing (already up to date)'}")

        with transaction(db):  # one BEGIN IMMEDIATE ... COMMIT
            cursor = db.execute(
                "INSERT INTO notes (title, body) VALUES (?, ?) RETURNING id",
                ("Demo note", "Written by make demo; searchable with full-text search."),
            )
            [(note_id,)] = cursor.fetchall()  # the RETURNING rule: fetch before the commit
            db.execute("INSERT INTO tags (note_id, tag) VALUES (?, 'demo')", (note_id,))
        found = db.execute(
            "SELECT count(*) FROM notes_fts WHERE notes_fts MATCH 'searchable'"
        ).fetchone()[0]
        print(f"notes matching 'searchable': {found}\n")

        print("status:")
        for status in migration_status(db, MIGRATIONS):
            print(f"  {status.state:<8} {status.name:<22} {status.applied_at or ''}")
    finally:
        db.close()
    print("\nThe same from the command line:")
    print(
        f"  .venv/bin/cf-db status {DB_PATH.relative_to(HERE.parent)} "
        f"{MIGRATIONS.relative_to(HERE.parent)}"
    )


if __name__ == "__main__":
    main()
