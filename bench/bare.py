"""The hand-rolled connection the benchmarks compare get_db against.

Owns one definition of "a bare ``sqlite3.connect`` with the same pragmas",
so the open benchmark and the writer benchmark measure the same baseline.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

#: What get_db sets after checking WAL, written out by hand the way products do it.
PRAGMAS = (
    "PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON; PRAGMA journal_size_limit=67108864; "
    "PRAGMA cache_size=-8192; PRAGMA mmap_size=0; PRAGMA temp_store=MEMORY;"
)


def bare_connect(path: Path | str) -> sqlite3.Connection:
    """Connect in autocommit mode with a 5 s busy timeout, WAL and get_db's pragmas."""
    db = sqlite3.connect(path, timeout=5.0, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")  # a no-op on a WAL file, but every product issues it
    db.executescript(PRAGMAS)
    return db
