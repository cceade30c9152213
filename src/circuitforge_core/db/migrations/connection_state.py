"""What a migration may change of its connection, put back when the file ends.

Owns the connection state a file can leave behind beyond the database
itself: the settings its ``PRAGMA`` statements change (``legacy_alter_table``,
``recursive_triggers``, ``busy_timeout``, ``query_only``, ...), the databases
its ``ATTACH`` statements attach, and the ``TEMP`` tables, views and triggers
it creates. Left in place they would change how the next file runs in the same
call (so the schema would depend on how many files were pending) and how the
application's next statement on that connection behaves. Each is read before
the file only when the planner says the file can change it, and put back after
the file's transaction ended, whether it committed or rolled back.

Not covered, on purpose: what is stored in the database file (``user_version``,
``application_id``, ``journal_mode``, ``page_size``, ``auto_vacuum``) belongs
to the schema a migration may change; ``foreign_keys`` is foreign_keys.py's;
pragmas that change the whole process for good are refused by the planner.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass

from ..errors import MigrationError
from ..sqlite_facts import quote_identifier
from .plan import ConnectionChanges

logger = logging.getLogger("circuitforge_core.db")

#: Settings of the connection, read and restored as ``PRAGMA name``.
CONNECTION_SETTINGS = (
    "analysis_limit",
    "automatic_index",
    "busy_timeout",
    "cell_size_check",
    "checkpoint_fullfsync",
    "count_changes",
    "defer_foreign_keys",
    "empty_result_callbacks",
    "full_column_names",
    "fullfsync",
    "ignore_check_constraints",
    "legacy_alter_table",
    "locking_mode",  # the default for every database, read apart from main's below
    "query_only",
    "read_uncommitted",
    "recursive_triggers",
    "reverse_unordered_selects",
    "short_column_names",
    "soft_heap_limit",
    "temp_store",
    "threads",
    "trusted_schema",
    "writable_schema",
)
#: Settings the connection keeps per database, read and restored for ``main``.
SCHEMA_SETTINGS = (
    "cache_size",
    "cache_spill",
    "journal_size_limit",
    "locking_mode",
    "max_page_count",
    "mmap_size",
    "secure_delete",
    "synchronous",
    "wal_autocheckpoint",
)
#: ``case_sensitive_like`` cannot be read back; how ``LIKE`` compares tells it.
CASE_SENSITIVE_LIKE = "case_sensitive_like"


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The state of a connection before a file: None for what the file cannot change."""

    settings: dict[str, object] | None
    databases: tuple[str, ...] | None
    temp_objects: frozenset[tuple[str, str]] | None


def settings(db: sqlite3.Connection) -> dict[str, object]:
    """Every connection setting a migration may change, by name (``main.`` for per-database)."""
    available = _available_pragmas(db)
    values: dict[str, object] = {}
    for name in CONNECTION_SETTINGS:
        if name in available:
            values[name] = _read(db, f"PRAGMA {name}")
    for name in SCHEMA_SETTINGS:
        if name in available:
            values[f"main.{name}"] = _read(db, f"PRAGMA main.{name}")
    values[CASE_SENSITIVE_LIKE] = _read(db, "SELECT 'a' NOT LIKE 'A'")
    return {name: value for name, value in values.items() if value is not None}


def apply_settings(db: sqlite3.Connection, wanted: dict[str, object]) -> list[str]:
    """Set the settings of ``wanted`` that differ on ``db``; the names it changed."""
    current = settings(db)
    changed = []
    for name, value in wanted.items():
        if name in current and current[name] != value:
            if name == CASE_SENSITIVE_LIKE:
                db.execute(f"PRAGMA case_sensitive_like={'ON' if value else 'OFF'}")
            else:
                db.execute(f"PRAGMA {name}={_literal(value)}").fetchall()
            changed.append(name)
    return changed


def _available_pragmas(db: sqlite3.Connection) -> frozenset[str]:
    return frozenset(row[0] for row in db.execute("SELECT name FROM pragma_pragma_list"))


def _read(db: sqlite3.Connection, sql: str) -> object:
    row = db.execute(sql).fetchone()
    return None if row is None else row[0]


def _literal(value: object) -> str:
    if isinstance(value, int):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


def snapshot(db: sqlite3.Connection, changes: ConnectionChanges) -> Snapshot:
    """What of ``db`` the file may change, as it is now."""
    return Snapshot(
        settings(db) if changes.pragmas else None,
        _databases(db) if changes.attachments else None,
        _temp_objects(db) if changes.temp_objects else None,
    )


def _databases(db: sqlite3.Connection) -> tuple[str, ...]:
    return tuple(row[1] for row in db.execute("PRAGMA database_list"))


def _temp_objects(db: sqlite3.Connection) -> frozenset[tuple[str, str]]:
    return frozenset(
        (kind, name)
        for kind, name in db.execute(
            "SELECT type, name FROM temp.sqlite_master WHERE type IN ('table', 'view', 'trigger')"
        )
    )


def restore(db: sqlite3.Connection, before: Snapshot) -> list[str]:
    """Put back what the file changed since ``before`` (no transaction may be open).

    Returns what it put back, for the log: settings by name, ``detached x``,
    ``dropped temp table y``.
    """
    done: list[str] = []
    if before.settings is not None:  # first: query_only would refuse the drops below
        done += apply_settings(db, before.settings)
    if before.databases is not None:
        for schema in _databases(db):
            if schema not in before.databases:
                db.execute(f"DETACH DATABASE {quote_identifier(schema)}")
                done.append(f"detached {schema}")
    if before.temp_objects is not None:
        # Triggers and views first: they may refer to the tables.
        order = {"trigger": 0, "view": 1, "table": 2}
        for kind, name in sorted(
            _temp_objects(db) - before.temp_objects, key=lambda o: order[o[0]]
        ):
            db.execute(f"DROP {kind.upper()} IF EXISTS temp.{quote_identifier(name)}")
            done.append(f"dropped temp {kind} {name}")
    return done


@contextlib.contextmanager
def kept(
    db: sqlite3.Connection, changes: ConnectionChanges, name: str, label: str
) -> Iterator[None]:
    """Run the block (one file), then put back what of the connection it may have changed.

    ``name`` is the file and ``label`` the database, for messages. When the
    block failed, a failure to put something back is logged and the block's
    error is raised; otherwise it raises ``MigrationError``.
    """
    if not changes:
        yield
        return
    before = snapshot(db, changes)
    try:
        yield
    except BaseException:
        try:
            _restore_logged(db, before, name)
        except db.Error as exc:  # sqlite3's or sqlcipher3's
            logger.warning(
                "after migration %s failed, its connection state could not be put back on %s: "
                "%s; close this connection",
                name,
                label,
                exc,
            )
        raise
    try:
        _restore_logged(db, before, name)
    except db.Error as exc:
        raise MigrationError(
            f"migration {name} was applied to {label}, but what it changed of the connection "
            f"(pragmas, attached databases, TEMP objects) could not be put back: {exc}. Close "
            f"this connection and open a new one.",
            name=name,
        ) from exc


def _restore_logged(db: sqlite3.Connection, before: Snapshot, name: str) -> None:
    if db.in_transaction:
        db.execute("ROLLBACK")
    done = restore(db, before)
    if done:
        logger.info("after migration %s, put back: %s", name, ", ".join(done))
