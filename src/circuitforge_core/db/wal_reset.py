"""The WAL-reset bug: who is exposed, the ways out, and the one warning a process gets.

SQLite 3.7.0 to 3.51.2 can, rarely, corrupt a WAL database when two
connections to it (threads or processes) write and checkpoint at the same
moment; 3.51.3 fixed it (https://sqlite.org/wal.html#walresetbug). A pooled
or multi-worker server is exactly that setup; one connection used by one
thread is not.

Owns the warning's text and its rule: each SQLite library in the process (the
one ``sqlite3`` is, the one inside ``sqlcipher3``) is warned about at most
once, as one record on the package's logger, and not at all once the operator
has accepted the risk (``CF_DB_ACCEPT_WAL_RESET_BUG``, read through
settings.py). Does not own which library is loaded (bundled_sqlite/) or when
one is first used (connect.py, cipher.py).
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Literal

from .settings import wal_reset_bug_accepted
from .sqlite_facts import FIRST_SQLITE_WITHOUT_WAL_RESET_BUG, WAL_RESET_BUG_URL, has_wal_reset_bug

logger = logging.getLogger("circuitforge_core.db")

#: The SQLite libraries a process may use: the one ``sqlite3`` is (the standard
#: library's or pysqlite3), and the one inside ``sqlcipher3`` for encrypted files.
Library = Literal["sqlite3", "sqlcipher3"]

FIXED_IN = ".".join(map(str, FIRST_SQLITE_WITHOUT_WAL_RESET_BUG))
ACCEPT_SETTING = "CF_DB_ACCEPT_WAL_RESET_BUG=1"
#: Where products find the long version (this repository's docs/ ship as the core's docs/db/).
DETAILS = "docs/db/upgrading.md"

_warned: set[Library] = set()
_warned_guard = threading.Lock()


def warn_once(library: Library, version: str, *, module_name: str) -> None:
    """Warn that ``version`` of ``library`` has the bug, once per library and process.

    ``module_name`` is the DB-API module it came through (``sqlite3``,
    ``pysqlite3`` or ``sqlcipher3``): it decides the way out offered. Nothing
    is said about a fixed version; with the risk accepted, an INFO line only.
    """
    if not has_wal_reset_bug(version):
        return
    with _warned_guard:
        if library in _warned:
            return
        _warned.add(library)
    if wal_reset_bug_accepted():
        logger.info(
            "SQLite %s (%s) has the WAL-reset bug; the risk is accepted (%s)",
            version,
            module_name,
            ACCEPT_SETTING,
        )
        return
    _log_warning(warning_text(version, module_name=module_name))


def warning_text(version: str, *, module_name: str) -> str:
    """The warning: what the bug risks, who is exposed, the ways out, how to silence it."""
    lines = [
        f"SQLite {version} ({_where(module_name)}) has the WAL-reset bug, fixed in {FIXED_IN}: "
        f"rarely, a WAL database is corrupted when two connections write and checkpoint it "
        f"at the same moment ({WAL_RESET_BUG_URL}).",
        "Exposed: several connections, threads or processes writing one database file, as in "
        "every pooled or multi-worker server; one connection used by one thread is not.",
        *_ways_out(module_name),
        f"To accept the risk and silence this warning, set {ACCEPT_SETTING}.",
    ]
    return "\n  ".join(lines)


def _where(module_name: str) -> str:
    if module_name == "sqlcipher3":
        return "inside sqlcipher3, for encrypted databases"
    if module_name == "pysqlite3":
        return "bundled in pysqlite3"
    return "linked by this Python's sqlite3 module"


def _ways_out(module_name: str) -> list[str]:
    if module_name == "sqlcipher3":
        return [
            "Way out: pip install --upgrade 'sqlcipher3>=0.6.4', which bundles SQLite 3.53 "
            "(sqlcipher3-binary 0.6.0 bundles 3.51.1)."
        ]
    if module_name == "pysqlite3":
        return [
            "Way out: pip install 'pysqlite3>=0.6.1' from a wheel, which bundles SQLite 3.53 "
            "(pip uninstall pysqlite3-binary first: it bundles 3.51.1 under the same import "
            "name; and pysqlite3 built from source links the system's SQLite)."
        ]
    return [
        "Way out: pip install 'circuitforge-core[bundled-sqlite]' and set CF_DB_SQLITE=bundled: "
        "the whole process then runs on the SQLite 3.53 of pysqlite3.",
        f"Or run on a Python linked against SQLite {FIXED_IN} or newer: Alpine 3.24, conda-forge, "
        "Homebrew, recent uv and python.org builds; not Debian 12 or 13, Ubuntu 24.04 or 26.04 "
        f"(3.40 to 3.46). See {DETAILS}.",
    ]


def _log_warning(text: str) -> None:
    """One WARNING record on the package's logger, readable even where nothing set logging up.

    With no handler anywhere (uvicorn configures its own loggers only), Python's
    last-resort handler would print the bare text, with neither level nor
    source; the line gets both instead.
    """
    if not logger.isEnabledFor(logging.WARNING):
        return
    if logger.hasHandlers() or logging.lastResort is None:
        logger.warning("%s", text)
    else:
        print(f"WARNING: {logger.name}: {text}", file=sys.stderr)
