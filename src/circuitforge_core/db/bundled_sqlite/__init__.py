"""Running the whole process on the SQLite bundled in pysqlite3 (``CF_DB_SQLITE=bundled``).

Owns the switch: ``apply_setting`` runs first thing in the package's
``__init__``, before any module imports ``sqlite3``, and with
``CF_DB_SQLITE=bundled`` makes pysqlite3 (the ``bundled-sqlite`` extra) the
process's one ``sqlite3``: ``sys.modules["sqlite3"]``, ``["sqlite3.dbapi2"]``
and ``["_sqlite3"]`` all point at it, so product code that imports
``sqlite3``, sets ``sqlite3.Row`` or catches ``sqlite3.IntegrityError``
works with this package's connections unchanged. Refuses
(``SQLiteLibraryError``) when the standard library's ``sqlite3`` was loaded
first, rather than leave two SQLite copies in one process: they do not see
each other's POSIX locks (https://sqlite.org/howtocorrupt.html, 2.2.1).
Children that ``multiprocessing`` spawns switch before they import anything
else. ``python -m circuitforge_core.db.bundled_sqlite`` (``__main__.py``)
starts a program with the switch made before its first import.

Does not own reading the variable (settings.py), the differences between
the two modules (connect.py and the pool adapt to what the module offers) or
the WAL-reset warning (wal_reset.py). Imports nothing that imports
``sqlite3`` (errors.py does: it is imported only to refuse).
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ..settings import hand_sqlite_library_to_children, sqlite_library_from_env

if TYPE_CHECKING:
    from ..errors import SQLiteLibraryError

#: What to install for the switch; the extra carries pysqlite3 0.6.1 or newer (SQLite 3.53).
INSTALL_HINT = "pip install 'circuitforge-core[bundled-sqlite]'"
#: How to start a program so that the switch comes before its first import.
LAUNCHER = "python -m circuitforge_core.db.bundled_sqlite"

# The module names the standard library's SQLite lives under, and pysqlite3's equivalents.
_MODULES = {
    "sqlite3": "pysqlite3",
    "sqlite3.dbapi2": "pysqlite3.dbapi2",
    "_sqlite3": "pysqlite3._sqlite3",
}
# Distributions that install the import name pysqlite3 (they overwrite each other's files).
_DISTRIBUTIONS = ("pysqlite3", "pysqlite3-binary")


def apply_setting() -> None:
    """Switch to the bundled SQLite if ``CF_DB_SQLITE=bundled``; the package's first step."""
    if sqlite_library_from_env() == "bundled":
        install()


def install() -> None:
    """Make pysqlite3 the ``sqlite3`` of this whole process, or raise ``SQLiteLibraryError``.

    Does nothing more when that is done already (here, or partly by another
    tool). Also sets ``CF_DB_SQLITE=bundled`` for the processes this one starts.
    """
    _refuse_if_too_late()
    try:
        modules = {name: importlib.import_module(real) for name, real in _MODULES.items()}
    except ImportError as exc:
        raise _refused(
            f"CF_DB_SQLITE=bundled asks for the SQLite bundled in pysqlite3, but pysqlite3 "
            f"cannot be imported ({exc}). Install it: {INSTALL_HINT}; or unset "
            f"CF_DB_SQLITE to run on the SQLite this Python links against."
        ) from exc
    sys.modules.update(modules)
    hand_sqlite_library_to_children("bundled")
    _switch_spawned_children()


def active() -> bool:
    """Whether this process's ``sqlite3`` is pysqlite3's (switched here or by another tool)."""
    current = sys.modules.get("sqlite3")
    return current is not None and current is sys.modules.get("pysqlite3")


def describe(module: ModuleType) -> str:
    """Which DB-API module ``module`` is, for the log: its name, and the distribution behind it."""
    if module.__name__ != "pysqlite3":
        return f"the {module.__name__} module of Python {sys.version.split()[0]}"
    from importlib import metadata  # here: it costs more to import than the rest of start-up

    for name in _DISTRIBUTIONS:
        try:
            return f"{name} {metadata.version(name)} (bundled, for the whole process)"
        except metadata.PackageNotFoundError:
            continue
    return "pysqlite3 (bundled, for the whole process)"


def _refuse_if_too_late() -> None:
    """Refuse when a name of the standard library's SQLite already holds another module."""
    loaded = [
        name
        for name, real in _MODULES.items()
        if name in sys.modules and sys.modules[name] is not sys.modules.get(real)
    ]
    if not loaded:
        return
    where = getattr(sys.modules[loaded[0]], "__file__", None) or "built in"
    raise _refused(
        f"CF_DB_SQLITE=bundled asks for the SQLite bundled in pysqlite3, but {loaded[0]} "
        f"({where}) was imported before circuitforge_core.db, so the process would hold two "
        f"SQLite copies (their file locks do not see each other, and sqlite3.Row or "
        f"sqlite3.IntegrityError would not match this package's connections). Import "
        f"circuitforge_core.db before anything that imports sqlite3, or start the program "
        f"with {LAUNCHER} -m MODULE ... (or SCRIPT ...), which switches first; or unset "
        f"CF_DB_SQLITE."
    )


def _refused(message: str) -> SQLiteLibraryError:
    """The error to raise; errors.py imports sqlite3, so it is imported only now, refusing."""
    from ..errors import SQLiteLibraryError

    return SQLiteLibraryError(message)


# -- children started by multiprocessing ------------------------------------------------
#
# A spawned child (uvicorn --workers, a "spawn" or "forkserver" pool) is a fresh
# interpreter that imports the parent's objects by name, so a module of the product that
# imports sqlite3 at its top would load the standard library's before this package.
# multiprocessing unpickles its preparation data first, before importing anything of the
# program: a marker placed in it imports this package first (coverage.py measures
# children the same way). Fork children inherit the switched modules as they are.


def _switch_spawned_children() -> None:
    from multiprocessing import spawn

    original = spawn.get_preparation_data
    if getattr(original, "_switches_to_bundled_sqlite", False):
        return

    def get_preparation_data(name: str) -> dict[str, Any]:
        data: dict[str, Any] = original(name)
        data["circuitforge_core.db.bundled_sqlite"] = _SwitchFirst()
        return data

    get_preparation_data._switches_to_bundled_sqlite = True  # type: ignore[attr-defined]
    spawn.get_preparation_data = get_preparation_data


class _SwitchFirst:
    """Unpickled in a spawned child before anything else: importing this package switches."""

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return (install, ())
