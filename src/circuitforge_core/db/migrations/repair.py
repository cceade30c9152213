"""An operator's fixes to a database's migration history: accept an edit, baseline a database.

Owns the two deliberate changes to ``_migrations`` that the runner never
makes on its own:

- ``accept_checksum``: an applied file was edited (a comment, a typo in a
  file that already ran everywhere) and, after review, its new text is
  accepted: its recorded checksum is replaced. Nothing is run; the database
  keeps what the old text did, and the drift of the schema against the new
  text is reported with the result.
- ``baseline``: a database built by other means (a restored dump, an ORM's
  ``create_all``, a hand-made copy) is marked as having every file up to one
  name applied, without running them, after checking that its schema is what
  those files build.

Both take SQLite's write lock like the runner (so they never race it), write
in one transaction, and log what they did, naming the database, the files and
who did it (user and host). Does not print or parse arguments.
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import os
import socket
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass

from ..cipher import Key
from ..connect import get_db
from ..errors import BaselineRefusedError, MigrationError, MigrationSourceError, OpenError
from .drift import (
    SchemaDrift,
    build_schema,
    compare_schemas,
    drift_from,
    read_schema,
)
from .folder import MigrationFile, MigrationsDir, read_migrations
from .locking import DEFAULT_LOCK_TIMEOUT, database_path, immediate
from .records import (
    adopt,
    needs_adoption,
    read_records,
    record_unrun,
    recorded_checksum,
    replace_checksum,
)

logger = logging.getLogger("circuitforge_core.db")

DatabaseOrPath = sqlite3.Connection | str | os.PathLike[str]


@dataclass(frozen=True, slots=True)
class ChecksumAccepted:
    """What ``accept_checksum`` did: ``name``'s checksum went from ``old`` to ``new``.

    ``changed`` is False when the recorded checksum already was the file's.
    ``drift`` compares the database with what the accepted history builds:
    not clean means the edit changed the schema, which the database does not
    have (nothing was run).
    """

    database: str | None
    name: str
    old: str | None
    new: str
    changed: bool
    drift: SchemaDrift


@dataclass(frozen=True, slots=True)
class BaselineResult:
    """What ``baseline`` did: ``marked`` recorded as applied without running, in order;
    ``already`` were recorded before."""

    database: str | None
    up_to: str
    marked: tuple[str, ...]
    already: tuple[str, ...]


def accept_checksum(
    db: DatabaseOrPath,
    migrations_dir: MigrationsDir,
    name: str,
    *,
    key: Key | None = None,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
) -> ChecksumAccepted:
    """Record the current text of the applied migration ``name`` as its text, after review.

    For a file ``run_migrations`` refuses as edited (``MigrationModifiedError``)
    whose change is known to be harmless. Nothing of the file runs. Raises
    ``MigrationSourceError`` when the folder has no such file and
    ``MigrationError`` when it is not recorded as applied. ``db`` is a
    connection, or the path of an existing database file (``key`` for an
    encrypted one). Logged at WARNING with the old and new checksums.
    """
    files = read_migrations(migrations_dir)
    file = _file_named(files, migrations_dir, name)
    with _writing(db, key) as connection:
        where = database_path(connection)
        records, has_columns = read_records(connection)
        if name not in records:
            raise MigrationError(
                f"migration {name} is not recorded as applied in {where or 'the database'}; "
                f"there is no checksum to accept. Run the migrations to apply it.",
                name=name,
            )
        if needs_adoption(records, has_columns, files):
            # The old runner's table: give it our columns first, as the runner would.
            adopt(connection, [f for f in files if f.name != name], _deadline(lock_timeout))
        with immediate(connection, _deadline(lock_timeout)):
            _recorded, old = recorded_checksum(connection, name)
            changed = old != file.checksum
            if changed:
                replace_checksum(connection, name, file.checksum)
        if changed:
            logger.warning(
                "accepted the edited migration %s in %s as applied: checksum %s replaced by %s "
                "(by %s); nothing of it was run",
                name,
                where or "the database",
                (old or "none")[:12],
                file.checksum[:12],
                _who(),
            )
        else:
            logger.info("migration %s in %s already has its file's checksum", name, where)
        drift = drift_from(connection, files, migrations_dir)
    return ChecksumAccepted(where, name, old, file.checksum, changed, drift)


def baseline(
    db: DatabaseOrPath,
    migrations_dir: MigrationsDir,
    up_to: str,
    *,
    key: Key | None = None,
    check_schema: bool = True,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
) -> BaselineResult:
    """Mark every file up to and including ``up_to`` as applied, without running them.

    For a database built by other means that already holds what those files
    make. With ``check_schema`` (the default) its schema is first compared
    with what the files build on an empty database (in filename order, the
    way they would run, with any later file already recorded); any
    difference raises ``BaselineRefusedError`` and nothing is recorded.
    Files already recorded are left as they are; later files stay pending
    for ``run_migrations``. ``db`` is a connection or the path of an existing
    database file. Logged at WARNING.
    """
    files = read_migrations(migrations_dir)
    names = [file.name for file in files]
    if up_to not in names:
        raise MigrationSourceError(
            f"{migrations_dir} has no migration {up_to}; baseline needs the name of the last "
            f"file the database already holds (one of: {', '.join(names) or 'none'}).",
            name=up_to,
        )
    wanted = files[: names.index(up_to) + 1]
    with _writing(db, key) as connection:
        where = database_path(connection)
        records, has_columns = read_records(connection)
        if check_schema and any(file.name not in records for file in wanted):
            # What the history will say once baselined: these files, and any recorded already.
            history = [file for file in files if file in wanted or file.name in records]
            _check_baseline_schema(connection, history, up_to, where)
        if needs_adoption(records, has_columns, files):
            adopt(connection, files, _deadline(lock_timeout))  # creates _migrations if missing
        with immediate(connection, _deadline(lock_timeout)):
            records, _ = read_records(connection)  # again, under the lock
            marked = [file for file in wanted if file.name not in records]
            for file in marked:
                record_unrun(connection, file)
    already = tuple(file.name for file in wanted if file.name in records)
    if marked:
        logger.warning(
            "baseline of %s up to %s: marked %s as applied without running them (by %s)",
            where or "the database",
            up_to,
            ", ".join(file.name for file in marked),
            _who(),
        )
    return BaselineResult(where, up_to, tuple(file.name for file in marked), already)


def _check_baseline_schema(
    db: sqlite3.Connection, files: list[MigrationFile], up_to: str, where: str | None
) -> None:
    expected, problem = build_schema(tuple((file.name, file.text) for file in files))
    if problem is not None:
        raise BaselineRefusedError(
            f"cannot baseline {where or 'the database'} up to {up_to}: {problem}",
            name=up_to,
            differences=[],
        )
    differences = compare_schemas(expected, read_schema(db))
    if differences:
        shown = "; ".join(str(d) for d in differences[:5])
        more = f" and {len(differences) - 5} more" if len(differences) > 5 else ""
        raise BaselineRefusedError(
            f"cannot baseline {where or 'the database'} up to {up_to}: its schema is not what "
            f"the files up to {up_to} build: {shown}{more}. Nothing was recorded. Bring the "
            f"schema in line, pick the name the database really matches, or skip the check "
            f"(check_schema=False / --no-check) if you are sure.",
            name=up_to,
            differences=differences[:20],
        )


def _deadline(lock_timeout: float) -> float:
    return time.monotonic() + lock_timeout


def _file_named(
    files: list[MigrationFile], migrations_dir: MigrationsDir, name: str
) -> MigrationFile:
    for file in files:
        if file.name == name:
            return file
    raise MigrationSourceError(
        f"{migrations_dir} has no migration {name}; give the file name as it is recorded "
        f"(cf-db status lists them).",
        name=name,
    )


@contextlib.contextmanager
def _writing(db: DatabaseOrPath, key: Key | None) -> Iterator[sqlite3.Connection]:
    """``db`` itself, or the existing file at that path opened (never created) and closed after."""
    if not isinstance(db, str | os.PathLike):
        if key is not None:
            raise TypeError("key= goes with a database path, not a connection")
        if db.in_transaction:
            raise MigrationError("needs a connection with no open transaction; commit first.")
        yield db
        return
    path = os.fspath(db)
    if not os.path.exists(path):
        raise OpenError(
            path,
            f"{path} does not exist; there is no migration history to change. Check the path.",
            reason="missing",
        )
    connection = get_db(path, key=key)
    try:
        yield connection
    finally:
        connection.close()


def _who() -> str:
    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no login name (a container without a passwd entry)
        user = f"uid {os.getuid()}" if hasattr(os, "getuid") else "unknown user"
    return f"{user}@{socket.gethostname()}"
