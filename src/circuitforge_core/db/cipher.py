"""Encryption at rest: SQLCipher keys, and the one keyed open that every caller uses.

Owns everything that knows about SQLCipher: loading the optional
``sqlcipher3`` driver, turning a key into SQL that cannot inject, and
``open_keyed``, the only place a file is opened through the driver: it applies
the key before anything else touches the file, checks that the driver really
encrypts and that the key opens the file, and says why not with
``OpenError.reason``. ``get_db(key=...)``, the backups and checks of
maintenance.py and the conversions all open through it; ``attach_keyed`` is
the one other place a key reaches SQL. Also derives per-user keys. Does not
own the pragma sequence every connection gets (connect.py), rewriting a file
under a new key (conversions.py), or where keys come from in cloud mode (the
caller passes them).

A key is one of:

* ``str``: a passphrase. SQLCipher stretches it with PBKDF2 (256,000 rounds
  of HMAC-SHA512) on every open, about 100 ms; fine for a desktop app, too
  slow for a server opening many files. The SQLCipher spelling of a raw key,
  ``"x'<64 hex digits>'"``, is recognised as a raw key.
* ``bytes``: a raw 256-bit key (exactly 32 bytes), used as it is; opening
  costs about as much as a plain file. ``derive_user_key`` makes these.

Two copies of SQLite live in a process that uses this module: the one
``sqlite3`` is (the standard library's, or pysqlite3's with
``CF_DB_SQLITE=bundled``) and the one inside ``sqlcipher3``. Their file locks do not see each
other (https://sqlite.org/howtocorrupt.html, section 2.2.1), so a file is
only ever opened through one of them at a time in one process.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib
import logging
import os
import re
import threading
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal

from . import wal_reset
from .errors import EncryptionUnavailableError, OpenError, OpenReason
from .open_errors import Access, open_failed, unopenable
from .sqlite_facts import (
    DEFAULT_BUSY_TIMEOUT,
    HEADER,
    SQLITE_NOTADB,
    blob_through_open_blob,
    error_code,
)

if TYPE_CHECKING:  # imported lazily below (see __getattr__): conversions.py imports this module
    from .conversions import decrypt_database as decrypt_database
    from .conversions import encrypt_database as encrypt_database
    from .conversions import rekey_database as rekey_database

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
    return _string_literal(text)


def check_key(key: Key) -> None:
    """Refuse a key that cannot be applied faithfully, as ``key_literal`` does, before any open."""
    key_literal(key)


def _string_literal(text: str) -> str:
    """``text`` as one SQL string literal: quotes doubled, nothing else means anything."""
    if "\x00" in text:
        raise ValueError(f"{text!r} contains a NUL character, which SQL text cannot hold")
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
                namespace: dict[str, Any] = {
                    "__doc__": "A sqlcipher3 connection that remembers its file, like "
                    "circuitforge_core.db.Connection.",
                    "__module__": __name__,
                    "__annotations__": {"path": str, "readonly": bool, "busy_timeout": float},
                }
                if not mixins and not hasattr(base, "blobopen"):
                    namespace["blobopen"] = _blobopen  # sqlcipher3 calls it open_blob
                cls = type(name, (*mixins, base), namespace)
                _connection_classes[cache_key] = cls
    return cls


def _blobopen(
    self: Any, table: str, column: str, row: int, /, *, readonly: bool = False, name: str = "main"
) -> Any:
    """The standard library's name for sqlcipher3's ``open_blob``."""
    return blob_through_open_blob(self, table, column, row, readonly=readonly, name=name)


# -- the keyed open ------------------------------------------------------------------

#: How ``open_keyed`` opens a file: SQLite's URI modes, plus ``immutable`` (read
#: only, no locks, never a -wal or -shm: for probing a file nobody writes).
OpenMode = Literal["ro", "rw", "rwc", "immutable"]

_URI_QUERY: dict[str, str] = {
    "ro": "?mode=ro",
    "rw": "?mode=rw",
    "rwc": "?mode=rwc",
    "immutable": "?mode=ro&immutable=1",
}


def open_keyed(
    path: str,
    key: Key | None,
    *,
    mode: OpenMode,
    timeout: float = DEFAULT_BUSY_TIMEOUT,
    isolation_level: str | None = None,
    check_same_thread: bool = True,
    mixins: tuple[type, ...] = (),
    read_schema: bool = True,
) -> Any:
    """A ``sqlcipher3`` connection to ``path`` with ``key`` applied; the one keyed open.

    The key is checked and the driver loaded before the file is touched;
    ``PRAGMA key`` is the connection's first statement; ``PRAGMA
    cipher_version`` must answer (or nothing would be encrypted); and unless
    ``read_schema`` is False the schema is read, so that a wrong key fails
    here with ``OpenError`` (``reason`` ``wrong_key``, ``not_encrypted`` or
    ``not_a_database``) rather than at the caller's first query. ``key=None``
    reads a plain file through the same driver (what the conversions do).
    ``mixins`` go in front of the driver's connection class
    (``connection_class``). On failure the connection is closed and a file
    this call created, still empty, is removed: nothing is left behind.
    """
    if key is not None:
        check_key(key)
    driver = load_driver(path)
    access: Access = "ro" if mode == "immutable" else mode
    created = mode == "rwc" and not os.path.exists(path)
    try:
        db = driver.connect(
            Path(path).as_uri() + _URI_QUERY[mode],
            uri=True,
            timeout=timeout,
            isolation_level=isolation_level,
            check_same_thread=check_same_thread,
            factory=connection_class(driver, mixins),
        )
    except driver.Error as exc:
        raise unopenable(path, exc, access=access) from exc
    try:
        try:
            apply_key(db, path, key, read_schema=read_schema)
        except db.DatabaseError as exc:  # sqlcipher3's: what the first read said
            raise open_failed(path, exc, access=access) from exc
    except BaseException:
        db.close()
        if created and os.path.exists(path) and os.path.getsize(path) == 0:
            os.remove(path)  # we created it and wrote nothing: leave no trace
        raise
    return db


def apply_key(db: Any, path: str, key: Key | None, *, read_schema: bool = True) -> None:
    """Key a fresh driver connection, check SQLCipher is in effect, and check the key.

    The steps of ``open_keyed``, which is what callers use. ``PRAGMA key``
    must be the connection's first statement: SQLCipher derives the key at
    the first page read. Plain SQLite ignores unknown pragmas, so ``PRAGMA
    cipher_version`` must answer, or nothing is encrypted. A wrong key fails
    at the first read with "file is not a database"; that read is done here
    so the error names the key, not a corrupt file. Nothing is written on any
    of these paths. ``key=None`` checks only the driver.
    """
    if key is not None:
        db.execute(f"PRAGMA key = {key_literal(key)}")
    row = db.execute("PRAGMA cipher_version").fetchone()
    if row is None or not row[0]:
        raise EncryptionUnavailableError(
            f"{path}: the installed sqlcipher3 is built against plain SQLite, which ignores "
            f"PRAGMA key; refusing to write the database unencrypted. Reinstall it: "
            f"{INSTALL_HINT}"
        )
    if not read_schema:
        return
    try:
        db.execute("SELECT count(*) FROM sqlite_schema").fetchone()
    except db.DatabaseError as exc:
        if error_code(exc) != SQLITE_NOTADB:
            raise
        reason, message = _why_undecryptable(path, key is not None)
        raise OpenError(path, message, reason=reason) from exc
    # After the read: any statement, even SELECT sqlite_version(), reads the schema first,
    # so logging earlier let the first wrong key of a process fail outside the try above.
    _log_driver_once(db, row[0])


def attach_keyed(db: Any, path: str, schema: str, key: Key | None) -> None:
    """``ATTACH`` the file ``path`` to a keyed connection as ``schema``, under ``key``.

    None attaches it unencrypted (SQLCipher's ``KEY ''``). The only other
    statement besides ``PRAGMA key`` that carries a key.
    """
    literal = key_literal(key) if key is not None else "''"
    if not schema.isidentifier():
        raise ValueError(f"schema name {schema!r} is not a plain identifier")
    db.execute(f"ATTACH DATABASE {_string_literal(path)} AS {schema} KEY {literal}")


def _why_undecryptable(path: str, keyed: bool) -> tuple[OpenReason, str]:
    """Why the first read failed with "file is not a database": the reason and the message."""
    try:
        with open(path, "rb") as handle:
            plain = handle.read(len(HEADER)) == HEADER
    except OSError:
        plain = False
    if keyed and plain:
        return "not_encrypted", (
            f"{path} is a plain (unencrypted) SQLite database, but a key was given. Open it "
            f"without a key, or encrypt it first (`cf-db encrypt`); the file was not changed."
        )
    if keyed:
        return "wrong_key", (
            f"{path}: cannot decrypt the database: the key is wrong, or the file is not a "
            f"SQLCipher 4 database. The file was not changed; open it with the key it was "
            f"encrypted with."
        )
    return "not_a_database", (
        f"{path} is not a plain SQLite database: it is encrypted (give its key) or not a "
        f"database at all. The file was not changed."
    )


def _log_driver_once(db: Any, cipher_version: str) -> None:
    """Log SQLCipher's versions once, and warn (once) if its SQLite has the WAL-reset bug."""
    if _driver_logged.is_set():
        return
    _driver_logged.set()
    sqlite_version = db.execute("SELECT sqlite_version()").fetchone()[0]
    logger.info("SQLCipher %s on SQLite %s (sqlcipher3)", cipher_version, sqlite_version)
    wal_reset.warn_once("sqlcipher3", sqlite_version, module_name="sqlcipher3")


# -- the conversions' old import path ------------------------------------------------

_MOVED_TO_CONVERSIONS = frozenset({"decrypt_database", "encrypt_database", "rekey_database"})


def __getattr__(name: str) -> Any:
    """``from circuitforge_core.db.cipher import encrypt_database`` keeps working.

    Lazily, because conversions.py imports this module for ``open_keyed``.
    """
    if name in _MOVED_TO_CONVERSIONS:
        from . import conversions

        return getattr(conversions, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
