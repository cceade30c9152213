"""Small file-system steps shared by the modules that replace database files.

Owns making a write durable (fsync of a file or of the folder that holds a
rename) and removing files that may already be gone. Knows nothing of SQLite.
"""

from __future__ import annotations

import contextlib
import os


def fsync(path: str) -> None:
    """Flush ``path`` (a file, or a folder after a rename in it) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_quietly(*paths: str) -> list[str]:
    """Remove each of ``paths`` that exists, in order; the ones that were removed."""
    removed = []
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
            removed.append(path)
    return removed
