"""Rewriting a database file under a new key, or none: encrypt, decrypt, rekey, atomically.

Owns the conversions: taking the file from every other writer, exporting it
with ``sqlcipher_export`` into a copy beside it under the new key, checking
the copy (schema, rows per table, header fields, integrity), and renaming it
over the original, so that the path holds the old database or the complete
new one at every moment. Every file involved is opened through
``cipher.open_keyed`` (and the copy attached with ``cipher.attach_keyed``):
this module never sees a key as SQL. Does not own keys or the driver
(cipher.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from typing import Any

from .cipher import Key, attach_keyed, check_key, load_driver, open_keyed
from .errors import DBError, OpenError
from .files import fsync, remove_quietly
from .sqlite_facts import DEFAULT_BUSY_TIMEOUT, companion_files, quote_identifier

logger = logging.getLogger("circuitforge_core.db")

_TEMP_PREFIX = ".{name}.cf-db-"  # + verb-random.tmp: the copy a conversion builds


def encrypt_database(
    path: str | os.PathLike[str], key: Key, *, busy_timeout: float = DEFAULT_BUSY_TIMEOUT
) -> int:
    """Turn the plain database at ``path`` into one encrypted with ``key``, atomically.

    Returns the number of table rows copied (and checked). See
    ``rekey_database`` for how the file is replaced and what must hold.
    """
    return _convert(path, None, key, busy_timeout=busy_timeout, verb="encrypt")


def decrypt_database(
    path: str | os.PathLike[str], key: Key, *, busy_timeout: float = DEFAULT_BUSY_TIMEOUT
) -> int:
    """Turn the database at ``path``, encrypted with ``key``, back into a plain one.

    Returns the number of table rows copied (and checked).
    """
    return _convert(path, key, None, busy_timeout=busy_timeout, verb="decrypt")


def rekey_database(
    path: str | os.PathLike[str],
    old_key: Key,
    new_key: Key,
    *,
    busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
) -> int:
    """Re-encrypt the database at ``path`` from ``old_key`` to ``new_key``, atomically.

    The data is exported (``sqlcipher_export``) into a new file beside the
    original, row counts per table and ``PRAGMA integrity_check`` are
    checked, the new file is fsynced and renamed over the old one: at every
    moment the path holds either the old database or the complete new one,
    never a mix. The WAL is checkpointed first and writers are locked out
    until the rename. The database must not be open anywhere else (stop the
    service): other connections are detected in WAL mode and refused, but a
    connection opened in this process through the standard ``sqlite3``
    module cannot be seen. Returns the number of table rows copied.
    """
    return _convert(path, old_key, new_key, busy_timeout=busy_timeout, verb="rekey")


def _convert(
    path: str | os.PathLike[str],
    old_key: Key | None,
    new_key: Key | None,
    *,
    busy_timeout: float,
    verb: str,
) -> int:
    fspath = os.path.abspath(os.fspath(path))
    # Both keys and the driver are checked before anything is opened.
    for key in (old_key, new_key):
        if key is not None:
            check_key(key)
    driver = load_driver(fspath)
    if not os.path.isfile(fspath):
        raise OpenError(
            fspath,
            f"{fspath} does not exist (or is not a file); nothing to {verb}.",
            reason="not_a_file" if os.path.exists(fspath) else "missing",
        )
    folder, name = os.path.split(fspath)
    temp = os.path.join(
        folder, f"{_TEMP_PREFIX.format(name=name)}{verb}-{secrets.token_hex(4)}.tmp"
    )

    try:
        holder = _open(fspath, old_key, busy_timeout)
        try:
            was_wal = _take_exclusive_writer(holder, fspath, verb)
            _remove_leftovers(folder, name)
            try:
                rows = _export(fspath, old_key, temp, new_key, busy_timeout)
                _finish(temp, new_key, busy_timeout, was_wal)
                _copy_ownership(fspath, temp)
                fsync(temp)
                os.replace(temp, fspath)
            except BaseException:
                remove_quietly(temp, *companion_files(temp))
                _release(holder, restore_wal=was_wal)
                raise
            # The holder's file is unlinked now; ending its transaction touches nothing.
            _release(holder, restore_wal=False)
        finally:
            holder.close()
    except driver.Error as exc:
        raise DBError(
            f"{fspath}: could not {verb} the database: {exc}. The file was not changed."
        ) from exc
    fsync(folder)
    logger.info("%sed %s (%d rows checked)", verb.removesuffix("e"), fspath, rows)
    return rows


def _open(path: str, key: Key | None, timeout: float) -> Any:
    """A keyed connection in autocommit mode: the conversion issues its own BEGINs."""
    return open_keyed(path, key, mode="rw", timeout=timeout)


def _take_exclusive_writer(holder: Any, path: str, verb: str) -> bool:
    """Checkpoint the WAL, make sure no one else has the file open, lock out writers.

    Leaving WAL mode succeeds only for the last connection to the file, so it
    is the test for "nobody else has it open". In rollback-journal mode the
    held ``BEGIN IMMEDIATE`` lets the export read but keeps every other
    writer out until the new file is in place. Returns whether the file was
    in WAL mode, to restore it if the conversion fails.
    """
    was_wal = bool(holder.execute("PRAGMA journal_mode").fetchone()[0] == "wal")
    if was_wal:
        try:
            holder.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            mode = holder.execute("PRAGMA journal_mode=DELETE").fetchone()[0]
        except holder.OperationalError as exc:
            raise OpenError(
                path,
                f"{path} is open in another connection or process; cannot {verb} it safely "
                f"while it is in use. Stop the service using it (or close every connection) "
                f"and run again. Nothing was changed.",
                reason="in_use",
            ) from exc
        if mode != "delete":
            raise OpenError(path, f"{path}: could not leave WAL mode to {verb} it ({mode!r}).")
    try:
        holder.execute("BEGIN IMMEDIATE")
    except holder.OperationalError as exc:
        if was_wal:
            holder.execute("PRAGMA journal_mode=WAL")
        raise OpenError(
            path,
            f"{path} is being written by another connection; stop the service using it and "
            f"run again. Nothing was changed.",
            reason="in_use",
        ) from exc
    return was_wal


def _export(path: str, old_key: Key | None, temp: str, new_key: Key | None, timeout: float) -> int:
    """Copy everything into ``temp`` under the new key; check it; return the row count."""
    db = _open(path, old_key, timeout)
    try:
        attach_keyed(db, temp, "converted", new_key)
        try:
            db.execute("BEGIN")
            db.execute("SELECT sqlcipher_export('converted')").fetchall()
            # sqlcipher_export copies schema and rows, not the header fields.
            for pragma in ("user_version", "application_id"):
                value = int(db.execute(f"PRAGMA main.{pragma}").fetchone()[0])
                db.execute(f"PRAGMA converted.{pragma} = {value}")
            db.execute("COMMIT")
            rows = _check_copy(db, path)
        finally:
            if db.in_transaction:
                db.execute("ROLLBACK")
            db.execute("DETACH DATABASE converted")
    finally:
        db.close()
    return rows


def _check_copy(db: Any, path: str) -> int:
    """The copy must have the same schema, rows per table and header, and be intact."""
    schema = "SELECT type, name, tbl_name, sql FROM {}.sqlite_schema ORDER BY type, name"
    if (
        db.execute(schema.format("main")).fetchall()
        != db.execute(schema.format("converted")).fetchall()
    ):
        raise DBError(f"{path}: the converted copy has a different schema; nothing was changed.")
    total = 0
    tables = db.execute(
        "SELECT name FROM main.sqlite_schema WHERE type = 'table' AND sql NOT LIKE 'CREATE "
        "VIRTUAL%'"
    ).fetchall()
    for (table,) in tables:
        quoted = quote_identifier(table)
        before = db.execute(f"SELECT count(*) FROM main.{quoted}").fetchone()[0]
        after = db.execute(f"SELECT count(*) FROM converted.{quoted}").fetchone()[0]
        if before != after:
            raise DBError(
                f"{path}: the converted copy of table {table} has {after} rows instead of "
                f"{before}; nothing was changed."
            )
        total += before
    for pragma in ("user_version", "application_id"):
        if (
            db.execute(f"PRAGMA main.{pragma}").fetchone()[0]
            != db.execute(f"PRAGMA converted.{pragma}").fetchone()[0]
        ):
            raise DBError(f"{path}: the converted copy lost PRAGMA {pragma}; nothing was changed.")
    problems = [row[0] for row in db.execute("PRAGMA converted.integrity_check")]
    if problems != ["ok"]:
        raise DBError(
            f"{path}: the converted copy fails its integrity check ({problems[:3]}); nothing "
            f"was changed."
        )
    return int(total)


def _finish(temp: str, new_key: Key | None, timeout: float, wal: bool) -> None:
    """Reopen the copy the way users will (proves the key), and restore WAL mode.

    Closing the last connection checkpoints and deletes the copy's -wal and
    -shm; a leftover -wal would mean part of the data is not in the file yet.
    """
    db = _open(temp, new_key, timeout)
    try:
        if wal:
            db.execute("PRAGMA journal_mode=WAL").fetchone()
    finally:
        db.close()
    for suffix in ("-wal", "-journal"):
        if os.path.exists(temp + suffix) and os.path.getsize(temp + suffix) > 0:
            raise DBError(f"{temp}{suffix} was left behind; nothing was changed.")
    remove_quietly(*companion_files(temp))


def _copy_ownership(source: str, target: str) -> None:
    """The new file keeps the old one's permissions, and its owner where allowed."""
    stat = os.stat(source)
    os.chmod(target, stat.st_mode & 0o7777)
    if (stat.st_uid, stat.st_gid) != (os.getuid(), os.getgid()):
        try:
            os.chown(target, stat.st_uid, stat.st_gid)
        except PermissionError:
            logger.warning("%s: could not keep the file's owner (needs root)", source)


def _remove_leftovers(folder: str, name: str) -> None:
    """Delete copies left by a conversion that was killed before its rename.

    Only called while holding the file's write lock, which any running
    conversion of the same file would hold instead.
    """
    prefix = _TEMP_PREFIX.format(name=name)
    with os.scandir(folder) as entries:
        stale = [entry.path for entry in entries if entry.name.startswith(prefix)]
    for path in remove_quietly(*stale):
        logger.info("removed %s, left by an interrupted conversion", path)


def _release(holder: Any, *, restore_wal: bool) -> None:
    """End the holder's write lock (and give the file its WAL mode back)."""
    with contextlib.suppress(holder.Error):
        holder.execute("ROLLBACK")
    if restore_wal:
        with contextlib.suppress(holder.Error):
            holder.execute("PRAGMA journal_mode=WAL")
