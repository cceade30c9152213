"""Encryption at rest: SQLCipher keys, encrypted connections, and conversions.

Owns everything that knows about SQLCipher: loading the optional
``sqlcipher3`` driver, turning a key into SQL that cannot inject, applying it
before anything else touches the file, checking that the driver really
encrypts, deriving per-user keys, and rewriting a file under a new key (or
none) atomically. Does not own the pragma sequence every connection gets
(connect.py) or where keys come from in cloud mode (the caller passes them).

A key is one of:

* ``str``: a passphrase. SQLCipher stretches it with PBKDF2 (256,000 rounds
  of HMAC-SHA512) on every open, about 100 ms; fine for a desktop app, too
  slow for a server opening many files. The SQLCipher spelling of a raw key,
  ``"x'<64 hex digits>'"``, is recognised as a raw key.
* ``bytes``: a raw 256-bit key (exactly 32 bytes), used as it is; opening
  costs about as much as a plain file. ``derive_user_key`` makes these.

Two copies of SQLite live in a process that uses this module: the standard
library's and the one inside ``sqlcipher3``. Their file locks do not see each
other (https://sqlite.org/howtocorrupt.html, section 2.2.1), so a file is
only ever opened through one of them at a time in one process.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import importlib
import logging
import os
import re
import secrets
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

from .errors import DBError, EncryptionUnavailableError, OpenError
from .files import fsync, remove_quietly
from .sqlite_facts import (
    DEFAULT_BUSY_TIMEOUT,
    FIRST_SQLITE_WITHOUT_WAL_RESET_BUG,
    HEADER,
    SQLITE_NOTADB,
    WAL_RESET_BUG_URL,
    error_code,
    has_wal_reset_bug,
    quote_identifier,
)

logger = logging.getLogger("circuitforge_core.db")

#: A passphrase (str) or a raw 256-bit key (32 bytes).
Key = str | bytes

RAW_KEY_BYTES = 32
INSTALL_HINT = "pip install 'circuitforge-core[sqlcipher]'"
MIN_SERVER_SECRET_BYTES = 16

# SQLCipher's own spelling of raw key material inside the key string: 64 hex
# digits (the key) or 96 (key and salt). The same text is also what we send
# for a bytes key, so both go through one quoting path.
_RAW_KEY_TEXT = re.compile(r"[xX]'(?:[0-9A-Fa-f]{64}|[0-9A-Fa-f]{96})'")
_TEMP_PREFIX = ".{name}.cf-db-"  # + verb-random.tmp: the copy a conversion builds

# HKDF parameters for derive_user_key. Changing any of them makes every
# existing user database unreadable: they are part of the file format.
_USER_KEY_SALT = b"circuitforge_core.db"
_USER_KEY_INFO = b"user-database-key/v1\x00"


# -- keys ----------------------------------------------------------------------------


def derive_user_key(server_secret: str | bytes, user_id: str) -> bytes:
    """The raw 256-bit key of ``user_id``'s database, derived from the server secret.

    HKDF-SHA256 (RFC 5869) with salt ``b"circuitforge_core.db"`` and info
    ``b"user-database-key/v1\\x00" + user_id`` (UTF-8): the same secret and
    user id always give the same key, so no per-user key is stored, and
    knowing one user's key reveals nothing about another's. Keep the secret
    (``CF_SERVER_SECRET``, at least 16 bytes; 32 random bytes recommended) out
    of the data folder: whoever holds it and the files can read every user.
    """
    secret = server_secret.encode("utf-8") if isinstance(server_secret, str) else server_secret
    if not isinstance(secret, bytes):
        raise TypeError(f"server_secret must be str or bytes, not {type(server_secret).__name__}")
    if len(secret) < MIN_SERVER_SECRET_BYTES:
        raise ValueError(
            f"the server secret is {len(secret)} bytes long; it needs at least "
            f"{MIN_SERVER_SECRET_BYTES} (32 random bytes recommended, e.g. the output of "
            f'`python -c "import secrets; print(secrets.token_hex(32))"`).'
        )
    if not isinstance(user_id, str):
        raise TypeError(f"user_id must be a str, not {type(user_id).__name__}")
    if not user_id or "\x00" in user_id:
        raise ValueError(f"user_id must be a non-empty string without NUL, not {user_id!r}")
    try:
        info = _USER_KEY_INFO + user_id.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"user_id {user_id!r} is not valid Unicode text") from exc
    return _hkdf_sha256(secret, salt=_USER_KEY_SALT, info=info, length=RAW_KEY_BYTES)


def _hkdf_sha256(ikm: bytes, *, salt: bytes, info: bytes, length: int) -> bytes:
    """HKDF (RFC 5869) with SHA-256, from the standard library's hmac."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    okm = b""
    block = b""
    counter = 1
    while len(okm) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        okm += block
        counter += 1
    return okm[:length]


def key_literal(key: Key) -> str:
    """The key as a SQL string literal for ``PRAGMA key``/``ATTACH ... KEY``.

    PRAGMA values cannot be bound parameters, so the key is written into the
    statement: as one single-quoted literal with every quote doubled, which
    SQLite reads back as exactly the original text whatever it holds
    (backslashes mean nothing in SQL). Raises ``ValueError`` for keys that
    cannot be passed faithfully (empty, NUL, not UTF-8, a malformed raw key)
    and ``TypeError`` for anything but ``str`` and ``bytes``.
    """
    if isinstance(key, bytes):
        if len(key) != RAW_KEY_BYTES:
            raise ValueError(
                f"a bytes key is a raw 256-bit key and must be exactly {RAW_KEY_BYTES} bytes, "
                f"not {len(key)}; pass a passphrase as str."
            )
        text = f"x'{key.hex().upper()}'"
    elif isinstance(key, str):
        text = key
        if not text:
            raise ValueError("the key is empty; pass a passphrase or a raw 32-byte key.")
        if "\x00" in text:
            raise ValueError("the key contains a NUL character, which SQLCipher cannot take.")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError("the key is not valid Unicode text (lone surrogates).") from exc
        if text[:2] in ("x'", "X'") and text.endswith("'") and not _RAW_KEY_TEXT.fullmatch(text):
            # SQLCipher would quietly take a mistyped raw key as a passphrase.
            raise ValueError(
                "the key looks like a raw key (x'...') but is not 64 or 96 hex digits; fix it, "
                "or pass the raw key as 32 bytes."
            )
    else:
        raise TypeError(
            f"key must be str (passphrase) or bytes (raw key), not {type(key).__name__}"
        )
    return "'" + text.replace("'", "''") + "'"


# -- the driver ----------------------------------------------------------------------

_driver_logged = threading.Event()
_connection_classes: dict[tuple[int, tuple[type, ...]], type[Any]] = {}
_connection_classes_guard = threading.RLock()


def load_driver(path: str) -> ModuleType:
    """The ``sqlcipher3`` DB-API module, or ``EncryptionUnavailableError``.

    Imported on each call (a dictionary lookup once loaded) rather than at
    module import, so plain databases never load a second SQLite.
    """
    try:
        package = importlib.import_module("sqlcipher3")
        driver: ModuleType = package.dbapi2
    except (ImportError, AttributeError) as exc:
        raise EncryptionUnavailableError(
            f"{path}: a key was given but the SQLCipher driver (sqlcipher3) is not installed, so "
            f"the database cannot be encrypted; nothing was written. Install it: {INSTALL_HINT}"
        ) from exc
    return driver


def connection_class(driver: ModuleType, mixins: tuple[type, ...] = ()) -> type[Any]:
    """The driver's connection class with our ``path``/``readonly``/``busy_timeout``.

    ``mixins`` (e.g. the pool's cursor tracking) go in front of it. Made once
    per driver module and mixins, because ``sqlcipher3`` is optional and
    cannot be subclassed at import time.
    """
    cache_key = (id(driver), mixins)
    cls = _connection_classes.get(cache_key)
    if cls is None:
        with _connection_classes_guard:
            cls = _connection_classes.get(cache_key)
            if cls is None:
                base = driver.Connection
                if mixins:
                    base = connection_class(driver)  # reentrant: the guard is an RLock
                name = "".join(m.__name__.strip("_") for m in mixins) + "EncryptedConnection"
                cls = type(
                    name,
                    (*mixins, base),
                    {
                        "__doc__": "A sqlcipher3 connection that remembers its file, like "
                        "circuitforge_core.db.Connection.",
                        "__module__": __name__,
                        "__annotations__": {"path": str, "readonly": bool, "busy_timeout": float},
                    },
                )
                _connection_classes[cache_key] = cls
    return cls


def apply_key(db: Any, path: str, key: Key | None, literal: str | None = None) -> None:
    """Key a fresh driver connection, check SQLCipher is in effect, and check the key.

    ``PRAGMA key`` must be the connection's first statement: SQLCipher
    derives the key at the first page read. Plain SQLite ignores unknown
    pragmas, so ``PRAGMA cipher_version`` must answer, or nothing is
    encrypted. A wrong key fails at the first read with "file is not a
    database"; that read is done here so the error names the key, not a
    corrupt file. Nothing is written on any of these paths. ``key=None``
    checks only the driver (used when a conversion reads a plain file).
    """
    if key is not None:
        db.execute(f"PRAGMA key = {literal if literal is not None else key_literal(key)}")
    row = db.execute("PRAGMA cipher_version").fetchone()
    if row is None or not row[0]:
        raise EncryptionUnavailableError(
            f"{path}: the installed sqlcipher3 is built against plain SQLite, which ignores "
            f"PRAGMA key; refusing to write the database unencrypted. Reinstall it: "
            f"{INSTALL_HINT}"
        )
    try:
        db.execute("SELECT count(*) FROM sqlite_schema").fetchone()
    except db.DatabaseError as exc:
        if error_code(exc) != SQLITE_NOTADB:
            raise
        raise OpenError(path, _why_undecryptable(path, key is not None)) from exc
    # After the read: any statement, even SELECT sqlite_version(), reads the schema first,
    # so logging earlier let the first wrong key of a process fail outside the try above.
    _log_driver_once(db, row[0])


def _why_undecryptable(path: str, keyed: bool) -> str:
    try:
        with open(path, "rb") as handle:
            plain = handle.read(len(HEADER)) == HEADER
    except OSError:
        plain = False
    if keyed and plain:
        return (
            f"{path} is a plain (unencrypted) SQLite database, but a key was given. Open it "
            f"without a key, or encrypt it first (`cf-db encrypt`); the file was not changed."
        )
    if keyed:
        return (
            f"{path}: cannot decrypt the database: the key is wrong, or the file is not a "
            f"SQLCipher 4 database. The file was not changed; open it with the key it was "
            f"encrypted with."
        )
    return (
        f"{path} is not a plain SQLite database: it is encrypted (give its key) or not a "
        f"database at all. The file was not changed."
    )


def _log_driver_once(db: Any, cipher_version: str) -> None:
    if _driver_logged.is_set():
        return
    _driver_logged.set()
    sqlite_version = db.execute("SELECT sqlite_version()").fetchone()[0]
    logger.info("SQLCipher %s on SQLite %s (sqlcipher3)", cipher_version, sqlite_version)
    if has_wal_reset_bug(sqlite_version):
        logger.warning(
            "the SQLite %s inside sqlcipher3 is older than %s and has the WAL-reset bug "
            "(%s); upgrade: %s",
            sqlite_version,
            ".".join(map(str, FIRST_SQLITE_WITHOUT_WAL_RESET_BUG)),
            WAL_RESET_BUG_URL,
            INSTALL_HINT,
        )


# -- conversions ---------------------------------------------------------------------


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
    # Both keys are checked before anything is opened.
    old_literal = key_literal(old_key) if old_key is not None else None
    new_literal = key_literal(new_key) if new_key is not None else "''"
    driver = load_driver(fspath)
    if not os.path.isfile(fspath):
        raise OpenError(fspath, f"{fspath} does not exist (or is not a file); nothing to {verb}.")
    folder, name = os.path.split(fspath)
    temp = os.path.join(
        folder, f"{_TEMP_PREFIX.format(name=name)}{verb}-{secrets.token_hex(4)}.tmp"
    )

    try:
        holder = _open(driver, fspath, old_key, old_literal, busy_timeout)
        try:
            was_wal = _take_exclusive_writer(holder, fspath, verb)
            _remove_leftovers(folder, name)
            try:
                rows = _export(
                    driver, fspath, old_key, old_literal, temp, new_literal, busy_timeout
                )
                _finish(driver, temp, new_key, new_literal, busy_timeout, was_wal)
                _copy_ownership(fspath, temp)
                fsync(temp)
                os.replace(temp, fspath)
            except BaseException:
                remove_quietly(temp, temp + "-wal", temp + "-shm", temp + "-journal")
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


def _open(
    driver: ModuleType, path: str, key: Key | None, literal: str | None, timeout: float
) -> Any:
    """A bare driver connection (autocommit, our own BEGINs) with the key applied."""
    try:
        db = driver.connect(
            Path(path).as_uri() + "?mode=rw", uri=True, timeout=timeout, isolation_level=None
        )
    except driver.Error as exc:
        raise OpenError(path, f"{path}: cannot open the database ({exc}).") from exc
    try:
        apply_key(db, path, key, literal)
    except BaseException:
        db.close()
        raise
    return db


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
        ) from exc
    return was_wal


def _export(
    driver: ModuleType,
    path: str,
    old_key: Key | None,
    old_literal: str | None,
    temp: str,
    new_literal: str,
    timeout: float,
) -> int:
    """Copy everything into ``temp`` under the new key; check it; return the row count."""
    db = _open(driver, path, old_key, old_literal, timeout)
    try:
        db.execute(f"ATTACH DATABASE {_string_literal(temp)} AS converted KEY {new_literal}")
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


def _finish(
    driver: ModuleType,
    temp: str,
    new_key: Key | None,
    new_literal: str,
    timeout: float,
    wal: bool,
) -> None:
    """Reopen the copy the way users will (proves the key), and restore WAL mode.

    Closing the last connection checkpoints and deletes the copy's -wal and
    -shm; a leftover -wal would mean part of the data is not in the file yet.
    """
    db = _open(driver, temp, new_key, new_literal if new_key is not None else None, timeout)
    try:
        if wal:
            db.execute("PRAGMA journal_mode=WAL").fetchone()
    finally:
        db.close()
    for suffix in ("-wal", "-journal"):
        if os.path.exists(temp + suffix) and os.path.getsize(temp + suffix) > 0:
            raise DBError(f"{temp}{suffix} was left behind; nothing was changed.")
    remove_quietly(temp + "-wal", temp + "-shm", temp + "-journal")


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
    for path in stale:
        logger.info("removing %s, left by an interrupted conversion", path)
        remove_quietly(path)


def _release(holder: Any, *, restore_wal: bool) -> None:
    """End the holder's write lock (and give the file its WAL mode back)."""
    with contextlib.suppress(holder.Error):
        holder.execute("ROLLBACK")
    if restore_wal:
        with contextlib.suppress(holder.Error):
            holder.execute("PRAGMA journal_mode=WAL")


def _string_literal(text: str) -> str:
    if "\x00" in text:
        raise ValueError(f"path {text!r} contains a NUL character")
    return "'" + text.replace("'", "''") + "'"
