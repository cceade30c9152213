"""check_startup: what an app can know about its database setup before it serves a request.

Owns the start-up check that turns a misconfiguration into one error at start
instead of a 500 on every request: the settings parse; in cloud mode the data
root exists and this process may create files in it, in local mode the
database file (or the folder it will be made in) can be written; every
migration file passes the runner's own rules (the migrations package's
planner judges them, so the check and a real run cannot disagree); the
SQLCipher driver loads when a server secret is set; and the SQLite library
is one the package works with. Every problem is collected, then raised as one
``StartupError``. Does not fix anything, open a per-user database, nor apply
migrations (``database_lifespan`` in asgi.py migrates local mode's file).
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path

from .cipher import Key, load_driver
from .errors import DBError, EncryptionUnavailableError, SettingsError, StartupError
from .migrations import MigrationsDir, plan_migrations
from .open_errors import on_read_only_mount
from .settings import Settings
from .sqlite_facts import OLDEST_SUPPORTED_SQLITE


def check_startup(
    settings: Settings | None = None,
    *,
    migrations: MigrationsDir | None = None,
    local_db: str | os.PathLike[str] | None = None,
    key: Key | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Check the database setup; return the settings, or raise ``StartupError`` listing all.

    ``settings`` default to ``Settings.from_env(environ)``. ``migrations`` is
    the folder the app migrates its databases with; ``local_db`` local mode's
    database when ``CF_DB_PATH`` is unset (the product's default), and ``key``
    its key if it is encrypted. In local mode an existing database is also
    checked against the folder (an applied migration edited since is a
    problem); in cloud mode the files are judged as if all were pending.
    Usable without any web framework: call it first thing in ``main()``.
    """
    problems: list[str] = []
    if settings is None:
        try:
            settings = Settings.from_env(environ)
        except SettingsError as exc:
            problems.append(str(exc))
    database: Path | None = None
    if settings is not None:
        if settings.cloud_mode:
            assert settings.data_root is not None  # Settings refuses cloud mode without one
            problems += _data_root_problems(settings.data_root)
        else:
            given = settings.db_path if settings.db_path is not None else local_db
            if given is not None:
                database = Path(os.path.abspath(os.fspath(given)))
                problems += _local_database_problems(database)
        if settings.server_secret is not None:
            problems += _encryption_problems()
    if migrations is not None:
        existing = database if database is not None and database.is_file() else None
        problems += _migration_problems(migrations, existing, key)
    problems += _sqlite_problems()
    if problems:
        raise StartupError(problems)
    assert settings is not None  # a SettingsError was a problem
    return settings


def _data_root_problems(root: Path) -> list[str]:
    where = f"the data root {root} (CLOUD_DATA_ROOT)"
    if not root.exists():
        return [f"{where} does not exist; create it (mode 0700, owned by the service user)."]
    if not root.is_dir():
        return [f"{where} is not a folder; point CLOUD_DATA_ROOT at the folder of the databases."]
    return _writable_folder_problems(root, where)


def _local_database_problems(database: Path) -> list[str]:
    where = f"the database {database}"
    if database.is_dir():
        return [f"{where} is a folder; point CF_DB_PATH (or the default) at a file."]
    if database.exists():
        if not os.access(database, os.R_OK | os.W_OK):
            return [f"{where} cannot be read and written by this user; fix its owner or mode."]
        # SQLite also creates -wal and -shm beside it.
        return _writable_folder_problems(database.parent, f"the folder of {where}")
    folder = database.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # get_db creates the missing folders below this one
    if not folder.is_dir():
        return [f"{where} cannot be created: {folder} is not a folder."]
    return _writable_folder_problems(folder, f"{folder}, where {where} will be created,")


def _writable_folder_problems(folder: Path, where: str) -> list[str]:
    if on_read_only_mount(folder):  # else os.access below decides
        return [f"{where} is on a read-only file system; mount it read-write."]
    if not os.access(folder, os.W_OK | os.X_OK):
        return [f"{where} cannot be written by this user; fix its owner or mode."]
    return []


def _encryption_problems() -> list[str]:
    try:
        load_driver("the per-user databases")
    except EncryptionUnavailableError as exc:
        return [f"CF_SERVER_SECRET is set, but {exc}"]
    return []


def _migration_problems(
    migrations: MigrationsDir, database: Path | None, key: Key | None
) -> list[str]:
    # A path that does not exist has everything pending, and plan_migrations never creates it.
    target = database or Path(tempfile.gettempdir(), f"cf-db-startup-{uuid.uuid4().hex}.db")
    try:
        plan = plan_migrations(target, migrations, key=key if database is not None else None)
    except DBError as exc:  # the folder cannot be read, the database cannot be opened
        return [str(exc)]
    return [
        problem.message if problem.name in problem.message else f"{problem.name}: {problem.message}"
        for problem in plan.problems
    ]


def _sqlite_problems() -> list[str]:
    problems = []
    if sqlite3.sqlite_version_info < OLDEST_SUPPORTED_SQLITE:
        oldest = ".".join(map(str, OLDEST_SUPPORTED_SQLITE))
        problems.append(
            f"the SQLite library is {sqlite3.sqlite_version}, older than {oldest}, the oldest "
            f"this package works with; run on a newer one (docs/settings.md, The SQLite library)."
        )
    if sqlite3.threadsafety == 0:
        problems.append(
            "the SQLite library was built single-threaded (SQLITE_THREADSAFE=0), but pooled "
            "connections move between threads; use a build with threads enabled."
        )
    return problems
