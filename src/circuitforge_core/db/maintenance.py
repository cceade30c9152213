"""Looking after a database file that may be in use: backup and checks.

Owns the online backup (SQLite's backup API into a temporary file beside the
destination, checked, synced and renamed into place) and the integrity and
foreign-key check; ``verify_migrations`` is imported from the migrations package
for its old import path. Never writes the database it looks at. Does not print or parse
arguments (the CLI does). An encrypted database is read through SQLCipher with
its key (cipher.py owns the driver and the keys) and its backup is encrypted
with the same key: SQLCipher's backup API copies between two connections
keyed alike, decrypting each page from the source and encrypting it for the
copy, and refuses an encrypted source with a plain destination.

Why the backup holds a read transaction: ``sqlite3_backup_step`` copies a
few pages at a time, and when another connection writes between two steps
the copy restarts from the first page, so a busy database may never finish
(https://sqlite.org/backup.html). Copying in one step avoids that but shows
no progress. Holding a read transaction on the source for the whole copy
pins one snapshot: in WAL mode writers carry on (their commits go to the WAL
after our snapshot), every step reads that same snapshot, and nothing
restarts. The copy holds exactly what was committed when the backup began.
The cost: checkpoints cannot move past that snapshot until the copy ends, so
the WAL grows meanwhile. (A database in rollback-journal mode blocks its
writers for the whole copy instead; ``get_db`` always makes WAL databases.)
"""

from __future__ import annotations

import logging
import os
import sqlite3
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from .cipher import Key, open_keyed
from .connect import Connection, get_db
from .errors import BackupError, OpenError
from .files import fsync, remove_quietly
from .migrations import ChecksumCheck as ChecksumCheck  # the old import path of verify
from .migrations import ChecksumState as ChecksumState
from .migrations import verify_migrations as verify_migrations
from .sqlite_facts import DEFAULT_BUSY_TIMEOUT, HEADER, companion_files, quote_identifier

try:  # POSIX only; elsewhere copies left by a killed backup stay until removed by hand
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger("circuitforge_core.db")

DEFAULT_PAGES_PER_STEP = 1024
#: The first 16 bytes of every SQLite database file.

Progress = Callable[[int, int], None]
CheckMode = Literal["integrity_check", "quick_check"]


# -- backup --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BackupResult:
    """A finished backup: where it is, how big, how long it took, how it was checked."""

    source: str
    path: str
    size: int
    pages: int
    seconds: float
    check: CheckMode


def backup_database(
    source: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    quick: bool = False,
    progress: Progress | None = None,
    pages_per_step: int = DEFAULT_PAGES_PER_STEP,
    busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
    key: Key | None = None,
) -> BackupResult:
    """Copy the database ``source`` to ``dest`` while others keep using it.

    ``dest`` is a file, or an existing folder (the copy then takes the
    source's file name). An existing ``dest`` is replaced only if it is an
    SQLite database (an older backup) or empty. The copy is a consistent
    snapshot of what was committed when the backup began; it must pass
    ``PRAGMA integrity_check`` (``quick_check`` with ``quick=True``), is
    fsynced, and only then renamed over ``dest``, so ``dest`` is never
    half-written: after a failure or a crash it is either the old file or
    the complete new copy. The copy gets the source's permission bits.
    ``progress(pages_done, pages_total)`` is called after each step of
    ``pages_per_step`` pages. Raises ``OpenError`` when the source cannot be
    opened and ``BackupError`` for everything else (its ``problems`` are set
    when the copy failed its check, which means the source is damaged).

    ``key`` (as for ``get_db``) opens an encrypted ``source``; the copy is
    encrypted with the same key, checked after reopening it with that key,
    and an existing ``dest`` may then also be an older backup that the key
    opens. There is no way to get a plain copy of an encrypted database here:
    ``decrypt_database`` a copy if you need one. A wrong key raises
    ``OpenError`` naming ``source`` before ``dest`` is touched.
    """
    if pages_per_step < 1:
        raise ValueError(f"pages_per_step must be at least 1, not {pages_per_step}")
    source_path = _existing_database(source, "nothing to back up")
    check: CheckMode = "quick_check" if quick else "integrity_check"
    started = time.perf_counter()
    # The source first: a wrong key is reported as such, not as a DEST the key cannot open.
    src = get_db(source_path, readonly=True, busy_timeout=busy_timeout, key=key)
    try:
        target = _backup_target(source_path, os.path.abspath(os.fspath(dest)), key)
        folder, name = os.path.split(target)
        _remove_abandoned_copies(folder, name)
        try:
            fd, temp = tempfile.mkstemp(prefix=f".{name}.", suffix=_TEMP_SUFFIX, dir=folder)
        except OSError as exc:
            raise BackupError(
                f"cannot back up to {target}: cannot create a file in {folder} "
                f"({exc.strerror or exc}).",
                path=target,
            ) from exc
        try:
            _lock(fd)  # marks the copy as in progress for _remove_abandoned_copies
            try:
                pages = _copy_snapshot(src, temp, key, pages_per_step, progress)
            except src.Error as exc:  # sqlite3's, or sqlcipher3's for an encrypted source
                raise BackupError(
                    f"could not copy {source_path} to {target}: {exc}. {target} was not written.",
                    path=target,
                ) from exc
            _check_copy(temp, target, check, key)
            os.chmod(temp, os.stat(source_path).st_mode & 0o777)
            fsync(temp)
            os.replace(temp, target)
        except BaseException:
            remove_quietly(*_with_companions(temp))
            raise
        finally:
            os.close(fd)
    finally:
        src.close()
    fsync(folder)
    return BackupResult(
        source_path, target, os.path.getsize(target), pages, time.perf_counter() - started, check
    )


_TEMP_SUFFIX = ".cf-db-backup"


def _with_companions(path: str) -> tuple[str, ...]:
    return (path, *companion_files(path))


def _lock(fd: int) -> None:
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _remove_abandoned_copies(folder: str, name: str) -> None:
    """Delete temporary copies that a killed backup to the same file left behind.

    A running backup holds an ``flock`` on its copy, so only copies nobody
    holds are removed; a concurrent backup to the same file is left alone.
    (``flock`` does not touch the POSIX locks SQLite uses.)
    """
    if fcntl is None:  # pragma: no cover - no flock: keep them rather than guess
        return
    prefix = f".{name}."
    try:
        with os.scandir(folder) as entries:
            candidates = [
                entry.path
                for entry in entries
                if entry.name.startswith(prefix) and entry.name.endswith(_TEMP_SUFFIX)
            ]
    except OSError:
        return
    for path in candidates:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # a backup in progress
        else:
            logger.info("removing %s, left by an interrupted backup", path)
            remove_quietly(*_with_companions(path))
        finally:
            os.close(fd)


def _existing_database(path: str | os.PathLike[str], what_then: str) -> str:
    """The absolute path of an existing file, or OpenError saying what is wrong."""
    fspath = os.path.abspath(os.fspath(path))
    if os.path.isdir(fspath):
        raise OpenError(
            fspath, f"{fspath} is a folder; pass the path of a database file.", reason="not_a_file"
        )
    if not os.path.exists(fspath):
        raise OpenError(
            fspath, f"{fspath} does not exist; {what_then}. Check the path.", reason="missing"
        )
    return fspath


def _backup_target(source: str, dest: str, key: Key | None) -> str:
    """Where the copy goes; refuses the source itself and files that are not backups."""
    if os.path.isdir(dest):
        dest = os.path.join(dest, os.path.basename(source))
    folder = os.path.dirname(dest)
    if not os.path.isdir(folder):
        raise BackupError(
            f"cannot back up to {dest}: its folder {folder} does not exist. Create it first.",
            path=dest,
        )
    companions = {source, *companion_files(source)}
    if os.path.realpath(dest) in {os.path.realpath(p) for p in companions} or (
        os.path.exists(dest) and os.path.samefile(dest, source)
    ):
        raise BackupError(
            f"cannot back up {source} onto itself ({dest}); choose another destination.",
            path=dest,
        )
    if os.path.exists(dest):
        if not os.path.isfile(dest):
            raise BackupError(f"cannot back up to {dest}: it is not a regular file.", path=dest)
        with open(dest, "rb") as existing:
            header = existing.read(len(HEADER))
        if header and header != HEADER and not _opens_with(dest, key):
            also = ", nor one that this key decrypts" if key is not None else ""
            raise BackupError(
                f"{dest} exists and is not an SQLite database{also}; refusing to overwrite it. "
                f"Remove it or choose another destination.",
                path=dest,
            )
    return dest


def _opens_with(path: str, key: Key | None) -> bool:
    """Whether ``key`` decrypts ``path``: an older encrypted backup may be replaced.

    An encrypted file has no header to recognise, so the key must prove it.
    ``immutable=1`` reads without locks and never creates a -wal or -shm
    beside a file that is about to be replaced.
    """
    if key is None:
        return False
    try:
        open_keyed(path, key, mode="immutable").close()
    except OpenError:
        return False
    return True


def _open_copy(temp: str, key: Key | None) -> Any:
    """An autocommit connection to our own copy, through SQLCipher with ``key`` if given.

    The copy of an encrypted database must be opened by the same driver as
    the source (the backup API joins two connections of one SQLite library)
    and keyed alike, or SQLCipher refuses the backup.
    """
    if key is None:
        return sqlite3.connect(temp, isolation_level=None)
    return open_keyed(temp, key, mode="rw")


def _copy_snapshot(
    src: Connection,
    temp: str,
    key: Key | None,
    pages_per_step: int,
    progress: Progress | None,
) -> int:
    """Copy one snapshot of ``src`` into ``temp``; returns the number of pages."""
    # Fresh file, thrown away on failure: no journal or sync needed while copying.
    dst = _open_copy(temp, key)
    try:
        dst.execute("PRAGMA journal_mode=OFF")
        dst.execute("PRAGMA synchronous=OFF")
        src.execute("BEGIN")  # deferred: the SELECT below takes the snapshot
        try:
            src.execute("SELECT count(*) FROM sqlite_master").fetchall()
            pages = int(src.execute("PRAGMA page_count").fetchone()[0])

            def report(_status: int, remaining: int, total: int) -> None:
                if progress is not None:
                    progress(total - remaining, total)

            src.backup(dst, pages=pages_per_step, progress=report)
        finally:
            src.rollback()
    finally:
        dst.close()
    return pages


def _check_copy(temp: str, target: str, check: CheckMode, key: Key | None) -> None:
    """The copy must open (with the key, if any) and pass its check, and leave no -wal behind."""
    if key is not None:
        with open(temp, "rb") as copy:
            if copy.read(len(HEADER)) == HEADER:  # never a plaintext copy
                raise BackupError(
                    f"the copy of an encrypted database came out unencrypted; {target} was not "
                    f"written. Reinstall the SQLCipher driver: pip install "
                    f"'circuitforge-core[sqlcipher]'",
                    path=target,
                )
    # Read-write (it is our own file) so that closing removes the -wal and -shm it creates.
    try:
        db = _open_copy(temp, key)
    except OpenError as exc:  # the key that wrote the copy cannot read it back
        problems = [f"the copy does not open with the key: {exc.__cause__ or exc}"]
    else:
        try:
            problems = list(_messages(db.execute(f"PRAGMA {check}").fetchall()))
        except db.DatabaseError as exc:
            problems = [str(exc)]
        finally:
            db.close()
    if problems:
        raise BackupError(
            f"the copy of the database fails {check} ({len(problems)} problem"
            f"{'s' if len(problems) != 1 else ''}, the first: {problems[0]}), so the database "
            f"itself is damaged; {target} was not written. Run `cf-db check` on the database "
            f"and restore it from an older backup.",
            path=target,
            problems=problems,
        )
    wal = temp + "-wal"
    if os.path.exists(wal) and os.path.getsize(wal) > 0:
        raise BackupError(f"{wal} was left behind; {target} was not written.", path=target)
    remove_quietly(wal, temp + "-shm")


# -- check ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ForeignKeyProblem:
    """Rows of ``table`` whose foreign key ``columns`` point at no row of ``parent``.

    ``rowids`` lists the first few offending rows (None for WITHOUT ROWID
    tables); ``count`` is how many there are in all.
    """

    table: str
    columns: tuple[str, ...]
    parent: str
    parent_columns: tuple[str, ...]
    count: int
    rowids: tuple[int | None, ...]


@dataclass(frozen=True, slots=True)
class CheckResult:
    """What ``check_database`` found; ``ok`` when nothing at all."""

    path: str
    check: CheckMode
    integrity: tuple[str, ...]
    foreign_keys: tuple[ForeignKeyProblem, ...]

    @property
    def ok(self) -> bool:
        return not self.integrity and not self.foreign_keys


def check_database(
    path: str | os.PathLike[str],
    *,
    quick: bool = False,
    max_errors: int = 100,
    busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
    key: Key | None = None,
) -> CheckResult:
    """Run ``PRAGMA integrity_check`` (``quick_check``) and ``foreign_key_check``; never writes.

    ``integrity`` holds SQLite's messages (at most ``max_errors``), empty when
    the file is intact. ``integrity_check`` also verifies that indexes match
    their tables, in O(N log N); ``quick_check`` skips that and runs in O(N).
    Neither looks at foreign keys, hence the second check. Safe while the
    database is in use: both read one snapshot. Raises ``OpenError`` when
    the file is missing or not a database at all.

    ``key`` (as for ``get_db``) opens an encrypted database. There every page
    read is authenticated, so a damaged page shows up as one SQLite cannot
    read. A first page that does not decrypt is told apart from a wrong key
    by SQLCipher's per-page HMAC check: if the key verifies other pages, the
    file is damaged (a finding); if it verifies none, ``OpenError``.
    """
    fspath = _existing_database(path, "nothing to check")
    check: CheckMode = "quick_check" if quick else "integrity_check"
    try:
        db = get_db(fspath, readonly=True, busy_timeout=busy_timeout, key=key)
    except OpenError as exc:
        if exc.reason == "damaged":  # a readable header, an unreadable schema: a finding
            return CheckResult(fspath, check, (f"cannot read the schema: {exc.__cause__}",), ())
        # A damaged first page of an encrypted file looks just like a wrong key.
        damage = (
            _undecryptable_pages(fspath, key, max_errors)
            if key is not None and exc.reason == "wrong_key"
            else None
        )
        if damage:
            return CheckResult(fspath, check, damage, ())
        raise
    try:
        try:
            rows = db.execute(f"PRAGMA {check}({int(max_errors)})").fetchall()
            integrity = _messages(rows)[:max_errors]
        except db.DatabaseError as exc:  # sqlite3's or sqlcipher3's
            integrity = (f"{check} could not finish: {exc}",)
        try:
            foreign_keys = _foreign_key_problems(db)
        except db.DatabaseError as exc:
            integrity += (f"foreign_key_check could not run: {exc}",)
            foreign_keys = ()
    finally:
        db.close()
    return CheckResult(fspath, check, integrity, foreign_keys)


_ROWIDS_SHOWN = 5


def _undecryptable_pages(path: str, key: Key, max_errors: int) -> tuple[str, ...] | None:
    """SQLCipher's per-page HMAC failures, when the key verifies some pages but not all.

    None when the key verifies no page at all (a wrong key, or not a
    SQLCipher 4 file): then the file cannot be told apart from one that is
    not ours. Only reached when the normal open failed, so the raw read of
    ``cipher_integrity_check`` (no locks, main file only, one pass over the
    file) is good enough here.
    """
    try:
        # Keyed but not read: the first page is the one that may not decrypt.
        db = open_keyed(path, key, mode="immutable", read_schema=False)
    except OpenError:
        return None
    try:
        failures = [str(row[0]) for row in db.execute("PRAGMA cipher_integrity_check")]
        pages = int(db.execute("PRAGMA cipher_page_size").fetchone()[0])
    except db.Error:
        return None
    finally:
        db.close()
    total = os.path.getsize(path) // pages if pages else 0
    if not failures or len(failures) >= total:
        return None
    first = (
        f"the file does not open, but this key verifies {total - len(failures)} of its "
        f"{total} pages: the key is right and the file is damaged"
    )
    return (first, *failures)[:max_errors]


def _messages(rows: list[tuple[object, ...]]) -> tuple[str, ...]:
    """integrity_check's rows as one message per line; empty for ``ok``.

    SQLite packs several messages into one row, separated by newlines, under a
    ``*** in database main ***`` heading that is not a problem of its own.
    """
    lines = (line.strip() for row in rows for line in str(row[0]).splitlines())
    return tuple(
        line for line in lines if line and line != "ok" and not line.startswith("*** in database")
    )


def _foreign_key_problems(db: Connection) -> tuple[ForeignKeyProblem, ...]:
    """``foreign_key_check`` rows grouped by (table, constraint), with column names."""
    groups: dict[tuple[str, int], list[int | None]] = {}
    parents: dict[tuple[str, int], str] = {}
    for table, rowid, parent, fkid in db.execute("PRAGMA foreign_key_check"):
        groups.setdefault((table, fkid), []).append(rowid)
        parents[(table, fkid)] = parent
    problems = []
    for (table, fkid), rowids in groups.items():
        quoted = quote_identifier(table)
        links = [
            (row[3], row[4])
            for row in db.execute(f"PRAGMA foreign_key_list({quoted})")
            if row[0] == fkid
        ]
        problems.append(
            ForeignKeyProblem(
                table=table,
                columns=tuple(str(c) for c, _ in links),
                parent=parents[(table, fkid)],
                parent_columns=tuple(str(p) for _, p in links if p is not None),
                count=len(rowids),
                rowids=tuple(rowids[:_ROWIDS_SHOWN]),
            )
        )
    return tuple(problems)
