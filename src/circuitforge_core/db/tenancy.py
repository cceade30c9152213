"""Cloud mode: which database a request uses, where per-user files live, their pools.

Owns three things products need when one process serves many per-user
SQLite files, kept apart by lifetime:

- request lifetime: ``request_db``, the ContextVar naming this request's
  database file, with ``current_db_path()`` and ``use_db()``;
- per-user paths: ``user_db_path()`` joins a data root, a user id and the
  product's sub-path, refusing anything that could leave or confuse the root,
  and creates folders 0700 and the file 0600;
- app lifetime: ``PoolRegistry``, one ``ConnectionPool`` per file under a
  process-wide cap on open connections, with LRU eviction of idle ones and
  ``drop_database()`` for account deletion;

plus ``Settings.from_env()``, the only place the package reads environment
variables. Does not know who the user is (the product's resolver does), nor
anything about ASGI (asgi.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sqlite3
import stat
import threading
import time
import unicodedata
import warnings
from collections.abc import Callable, Mapping
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any

from .cipher import MIN_SERVER_SECRET_BYTES, derive_user_key
from .connect import Connection
from .errors import (
    NoDatabaseError,
    OpenError,
    PoolClosedError,
    SettingsError,
    UnsafePathError,
)
from .migrations import DEFAULT_LOCK_TIMEOUT, MigrationsDir
from .pool import (
    DEFAULT_POOL_TIMEOUT,
    ConnectionPool,
    KeySource,
    PooledConnection,
    RowFactory,
    _Budget,
)

logger = logging.getLogger("circuitforge_core.db")

# -- settings: the one place environment variables are read --------------------------

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


@dataclass(frozen=True, slots=True)
class Settings:
    """Where a product's databases live, from the environment.

    ``cloud_mode`` (``CLOUD_MODE``, default off): one database per user under
    ``data_root`` (``CLOUD_DATA_ROOT``, an absolute path, required in cloud
    mode). ``db_path`` (``CF_DB_PATH``): the local-mode database, None when
    unset so the product's own default applies. ``server_secret``
    (``CF_SERVER_SECRET``): what per-user encryption keys are derived from
    (``user_key_resolver``), None when unset; never shown in ``repr``.
    """

    cloud_mode: bool = False
    data_root: Path | None = None
    db_path: Path | None = None
    server_secret: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read ``CLOUD_MODE``, ``CLOUD_DATA_ROOT``, ``CF_DB_PATH`` and ``CF_SERVER_SECRET``."""
        env = os.environ if environ is None else environ
        raw_mode = env.get("CLOUD_MODE", "").strip().lower()
        if raw_mode not in _TRUE | _FALSE:
            raise SettingsError(
                f"CLOUD_MODE={env['CLOUD_MODE']!r} is neither on nor off; set it to 1 or 0 "
                f"(true/false, yes/no and on/off also work)."
            )
        cloud_mode = raw_mode in _TRUE
        raw_root = env.get("CLOUD_DATA_ROOT", "")
        data_root = Path(raw_root) if raw_root else None
        if data_root is not None and not data_root.is_absolute():
            raise SettingsError(
                f"CLOUD_DATA_ROOT={raw_root!r} is a relative path; set it to the absolute path "
                f"of the folder holding the per-user databases."
            )
        if cloud_mode and data_root is None:
            raise SettingsError(
                "CLOUD_MODE is on but CLOUD_DATA_ROOT is not set; set it to the absolute path "
                "of the folder holding the per-user databases."
            )
        raw_db = env.get("CF_DB_PATH", "")
        secret = env.get("CF_SERVER_SECRET", "") or None
        if secret is not None and len(secret.encode("utf-8")) < MIN_SERVER_SECRET_BYTES:
            raise SettingsError(
                f"CF_SERVER_SECRET is shorter than {MIN_SERVER_SECRET_BYTES} bytes, too weak to "
                f"derive database keys from; set it to 32 random bytes, e.g. the output of "
                f'`python -c "import secrets; print(secrets.token_hex(32))"`.'
            )
        return cls(cloud_mode, data_root, Path(raw_db) if raw_db else None, secret)


# -- the request context ---------------------------------------------------------------

#: The database file of the current request: set by the middleware (or
#: ``use_db``) for one request, None outside one. It follows ``await`` and is
#: copied into the threads Starlette/FastAPI run sync endpoints in. A plain
#: ``threading.Thread`` or ``ThreadPoolExecutor.submit`` starts without it.
request_db: ContextVar[str | None] = ContextVar("circuitforge_core.db.request_db", default=None)


def current_db_path(default: str | os.PathLike[str] | None = None) -> str:
    """This request's database, else ``default`` (local mode's one file).

    Raises ``NoDatabaseError`` when neither is there (a background thread
    that was not given its database, in cloud mode): never a silent fallback
    to some shared file.
    """
    path = request_db.get()
    if path is not None:
        return path
    if default is not None:
        return os.fspath(default)
    raise NoDatabaseError(
        "no database is chosen here: request_db is not set (outside a request, or in a thread "
        "that did not inherit the request's context) and no default was given. Pass the "
        "database path explicitly, or run the code inside `with use_db(path):`."
    )


class use_db:  # lower case: used like a function, as contextlib's helpers are
    """Make ``path`` this context's database for the block, then restore the previous one.

    ``with use_db(path):`` (``use_db(None)`` clears it for the block). A class
    rather than a generator: it runs on every request.
    """

    __slots__ = ("_token", "_value")

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self._value = None if path is None else os.fspath(path)
        self._token: Token[str | None] | None = None

    def __enter__(self) -> str | None:
        self._token = request_db.set(self._value)
        return self._value

    def __exit__(self, *exc_info: object) -> None:
        if self._token is not None:
            request_db.reset(self._token)
            self._token = None


# -- safe per-user paths -----------------------------------------------------------------

MAX_NAME_LENGTH = 128
_NAME_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.@+=")
_SEPARATORS = {"/", "\\", ":"}  # POSIX, Windows, and Windows drives / classic Mac OS
# Control and format characters (NUL, newlines, bidi overrides, zero-width):
# named in the error so a log reader sees what was there.
_CONTROL_CATEGORIES = {"Cc", "Cf", "Zl", "Zp"}


def user_db_path(
    root: str | os.PathLike[str],
    user_id: str,
    product_path: str,
    *,
    create: bool = True,
) -> Path:
    """``root/user_id/product_path``, once it is certain to stay inside ``root``.

    ``user_id`` is one folder name; ``product_path`` is a file name or a few
    ``/``-separated names (``"kiwi.db"``, ``"snipe/user.db"``). Each name may
    use ASCII letters, digits and ``_ - . @ + =``, up to 128 characters, and
    may not start with ``.`` or ``-`` nor end with ``.``; anything else
    (empty, ``..``, separators of any platform, NUL and control characters,
    other characters) raises ``UnsafePathError``, as does a path that resolves
    outside ``root`` through a symbolic link. ``root`` must exist. With
    ``create``, missing folders are made 0700 and a missing database file
    0600 (its -wal and -shm inherit that mode), whatever the umask.
    """
    root_given = os.fspath(root)
    cache_key = (root_given, user_id, product_path)
    try:  # only exact-str keys under an absolute root are ever stored (see _cacheable)
        cached = _checked_names.get(cache_key)
    except TypeError:  # an unhashable user id: refused below
        cached = None
    if cached is None:
        root_path = os.path.abspath(root_given)
        names = _checked_names_of(user_id, product_path)
        levels = [os.path.join(root_path, *names[: n + 1]) for n in range(len(names))]
        cached = (root_path, names, levels, Path(levels[-1]))
        if _cacheable(cache_key):
            if len(_checked_names) >= _CHECKED_NAMES_MAX:
                _checked_names.clear()
            _checked_names[cache_key] = cached
    root_path, names, levels, path = cached
    # Checked on every call: the file system can change between requests.
    exists = _exists_inside(root_path, levels, user_id)
    if create and not exists:
        if not os.path.isdir(root_path):
            raise OpenError(
                root_path,
                f"the data root {root_path} does not exist (or is not a folder); create it "
                f"(mode 0700, owned by the service user) or fix CLOUD_DATA_ROOT.",
            )
        _create_private(root_path, names)
    return path


# (root, user id, product sub-path) -> the checked names and the joined path: what
# does not depend on the file system, so a request need not redo it. Bounded.
_checked_names: dict[tuple[str, str, str], tuple[str, list[str], list[str], Path]] = {}
_CHECKED_NAMES_MAX = 4096


def _cacheable(key: tuple[str, object, object]) -> bool:
    """Exact str ids (a subclass could hash or compare oddly) under an absolute root."""
    root, user_id, product_path = key
    return type(user_id) is str and type(product_path) is str and os.path.isabs(root)


def _checked_names_of(user_id: str, product_path: str) -> list[str]:
    """The folder and file names under the root, each checked; or UnsafePathError."""
    _check_name(user_id, "user id")
    if not isinstance(product_path, str) or not product_path:
        raise UnsafePathError(
            f"the product sub-path {product_path!r} is empty or not text; pass a file name "
            f"such as 'app.db' or 'product/app.db'.",
            value=str(product_path),
        )
    parts = product_path.split("/")
    if len(parts) > 4:
        raise UnsafePathError(
            f"the product sub-path {_shown(product_path)} has {len(parts)} levels; use at most 4.",
            value=product_path,
        )
    for part in parts:
        _check_name(part, "product sub-path part", whole=product_path)
    return [user_id, *parts]


def user_key_resolver(
    root: str | os.PathLike[str], server_secret: str | bytes
) -> Callable[[str], bytes]:
    """A ``key=`` for ``PoolRegistry``: each user's file opens with that user's own key.

    The user id is the first folder of a path under ``root`` (the layout
    ``user_db_path`` makes), and the key ``derive_user_key(server_secret,
    user_id)``: a raw 256-bit key, so opening costs no key stretching. A path
    that is not inside ``root`` raises ``UnsafePathError``: it is never opened
    unencrypted, nor with some other user's key. The secret is checked now.
    """
    if server_secret is None:  # Settings.server_secret is None when CF_SERVER_SECRET is unset
        raise SettingsError(
            "no server secret to derive database keys from: set CF_SERVER_SECRET to 32 random "
            "bytes (or pass the secret)."
        )
    root_path = os.path.abspath(os.fspath(root))
    derive_user_key(server_secret, "secret-check")  # a weak secret fails here, not per request

    def resolve(path: str) -> bytes:
        relative = os.path.relpath(os.path.abspath(path), root_path)
        parts = Path(relative).parts
        if len(parts) < 2 or parts[0] == os.pardir:
            raise UnsafePathError(
                f"{path} is not a per-user database under the data root {root_path}; refusing "
                f"to guess its encryption key. Open it through user_db_path(root, user_id, ...).",
                value=os.fspath(path),
            )
        _check_name(parts[0], "user id")
        return derive_user_key(server_secret, parts[0])

    return resolve


# What the rules below accept, as one expression: the fast path for every request.
_SAFE_NAME = re.compile(rf"[A-Za-z0-9_@+=][A-Za-z0-9_.@+=-]{{0,{MAX_NAME_LENGTH - 1}}}")


def _check_name(name: object, what: str, *, whole: str | None = None) -> None:
    """Refuse one path component that could leave or confuse the root."""
    if isinstance(name, str) and _SAFE_NAME.fullmatch(name) and name[-1] != ".":
        return
    if not isinstance(name, str):
        raise UnsafePathError(
            f"the {what} must be text, not {type(name).__name__}; convert it with str() first.",
            value=repr(name),
        )
    shown = _shown(name) + (f" (in {_shown(whole)})" if whole is not None else "")
    problem = None
    if not name:
        problem = "is empty"
    elif name in (".", ".."):
        problem = "names the current or parent folder"
    elif len(name) > MAX_NAME_LENGTH:
        problem = f"is {len(name)} characters long; the limit is {MAX_NAME_LENGTH}"
    elif bad := next((c for c in name if c in _SEPARATORS), None):
        problem = f"contains the path separator {bad!r}"
    elif bad := next((c for c in name if unicodedata.category(c) in _CONTROL_CATEGORIES), None):
        problem = f"contains the control character U+{ord(bad):04X}"
    elif bad := next((c for c in name if c not in _NAME_CHARACTERS), None):
        problem = f"contains {bad!r}; names may use only ASCII letters, digits and _ - . @ + ="
    elif name[0] in ".-":
        problem = f"starts with {name[0]!r} (a hidden file, or an option to command-line tools)"
    elif name.endswith("."):
        problem = "ends with '.' (which Windows tools strip, merging it with another name)"
    raise UnsafePathError(
        f"refusing the {what} {shown}: it {problem or 'is not a plain name'}. Check where "
        f"this value comes from; a user id from a session is never like this.",
        value=name,
    )


def _shown(text: str) -> str:
    """A printable, bounded rendering of untrusted text for messages."""
    return ascii(text if len(text) <= 80 else text[:77] + "...")


def _exists_inside(root: str, levels: list[str], user_id: str) -> bool:
    """Whether the last of ``levels`` exists, refusing symbolic links that lead out of ``root``.

    ``levels`` are the paths from the user's folder down to the file. The
    names are plain (checked above), so only a link on the way can leave the
    root; an ``lstat`` per level finds one far more cheaply than resolving the
    whole path each request.
    """
    for current in levels:
        try:
            mode = os.lstat(current).st_mode
        except FileNotFoundError:
            return False
        except NotADirectoryError as exc:
            raise OpenError(
                current,
                f"{os.path.dirname(current)} is a file where a folder was expected; move it "
                f"out of the data root.",
            ) from exc
        if stat.S_ISLNK(mode):
            real_root, real = os.path.realpath(root), os.path.realpath(current)
            if os.path.commonpath([real_root, real]) != real_root or real == real_root:
                raise UnsafePathError(
                    f"{current} is a symbolic link to {real}, outside the data root "
                    f"{real_root}; refusing to use it. Remove the link.",
                    value=user_id,
                )
    return True


def _create_private(root: str, names: list[str]) -> None:
    """Create the missing folders (0700) and an empty database file (0600) under ``root``."""
    folder = root
    for name in names[:-1]:
        folder = os.path.join(folder, name)
        try:
            os.mkdir(folder, 0o700)
        except FileExistsError:
            continue
        os.chmod(folder, 0o700)  # mkdir's mode is filtered by the umask
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(os.path.join(folder, names[-1]), flags | getattr(os, "O_CLOEXEC", 0), 0o600)
    except FileExistsError:
        return
    try:
        os.fchmod(fd, 0o600)  # os.open's mode is filtered by the umask too
    finally:
        os.close(fd)


# -- the registry of pools --------------------------------------------------------------

DEFAULT_MAX_CONNECTIONS = 256
DEFAULT_MAX_PER_DATABASE = 4

#: ``get_db`` settings for many small per-user files. cache_size 2 MiB (SQLite's
#: own default): the page cache is per connection, and 256 connections at the
#: single-file 8 MiB would be 2 GiB. mmap_size 0: an I/O error on a mapped file
#: is a SIGBUS that kills every request of the process, and each mapping also
#: counts against vm.max_map_count. journal_size_limit 4 MiB: what a WAL stays
#: near with default checkpoints; a big transaction's WAL shrinks back to it.
CLOUD_CONNECT_KWARGS: Mapping[str, Any] = MappingProxyType(
    {"cache_size_kib": 2048, "mmap_size": 0, "journal_size_limit": 4 * 1024 * 1024}
)

MigrationsFor = MigrationsDir | Callable[[str], MigrationsDir | None] | None


@dataclass(frozen=True, slots=True)
class RegistryStats:
    """Counts across every file of a registry.

    ``databases``: files with a pool right now (one with open connections,
    or in use). Since the registry was made: ``evictions``;
    ``migration_runs``, the times a file's folder was run (once when first
    opened, and again, as a cheap check, after all its connections had been
    closed); ``migrations_applied``, the migration files those runs applied.
    """

    databases: int
    open: int
    idle: int
    busy: int
    max_connections: int
    evictions: int
    migration_runs: int
    migrations_applied: int


class PoolRegistry:
    """One ``ConnectionPool`` per database file, under a process-wide cap.

    ``with registry.connection(path) as db:`` checks out a connection to
    ``path``. At most ``max_connections`` connections are open across all
    files (each WAL connection holds up to 3 file descriptors) and at most
    ``max_per_database`` to one file. Opening one more when the cap is reached
    closes the least recently used idle connection of another file; busy
    connections are never closed under their user; with none idle the caller
    waits up to ``timeout`` seconds, then gets ``PoolTimeoutError``. Each file
    has its ``migrations`` applied once per process, before first use (a
    callable maps a path to its folder). ``key`` encrypts the files: a key,
    or a resolver that maps a path to its key (``user_key_resolver`` derives
    each user's from the server secret). ``connect_kwargs`` go to ``get_db``
    (default: ``CLOUD_CONNECT_KWARGS``). ``close()`` closes every connection.
    """

    def __init__(
        self,
        *,
        migrations: MigrationsFor = None,
        key: KeySource = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_per_database: int = DEFAULT_MAX_PER_DATABASE,
        timeout: float = DEFAULT_POOL_TIMEOUT,
        connect_kwargs: Mapping[str, Any] = CLOUD_CONNECT_KWARGS,
        row_factory: RowFactory = None,
        migration_lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    ) -> None:
        if max_connections < 1 or max_per_database < 1:
            raise ValueError("max_connections and max_per_database must be at least 1")
        self.migrations = migrations
        self.max_connections = max_connections
        self.max_per_database = min(max_per_database, max_connections)
        self.timeout = timeout
        self.connect_kwargs = dict(connect_kwargs)
        self.row_factory = row_factory
        self.migration_lock_timeout = migration_lock_timeout
        self._key_source = key
        self._budget = _Budget(max_connections, evicts=True)
        self._budget.on_empty = self._retire
        # Pools exist only while their file has connections (or is in use), so
        # memory follows the cap, not the number of users.
        self._pools: dict[str, ConnectionPool] = {}
        self._dropping: set[str] = set()
        self._closed = False
        _warn_if_too_few_file_descriptors(max_connections)

    # -- connections -----------------------------------------------------------------

    def connection(self, path: str | os.PathLike[str]) -> _RegistryCheckout:
        """``with registry.connection(path) as db:``: a pooled connection to ``path``."""
        given = os.fspath(path)
        # A key of _pools is already absolute and normalised: skip abspath for it.
        return _RegistryCheckout(self, given if given in self._pools else os.path.abspath(given))

    @property
    def open_connections(self) -> int:
        """Connections open right now across all files (cheap: for a metrics gauge)."""
        return self._budget.open

    def _pin(self, key: str) -> ConnectionPool:
        """The pool for the absolute path ``key`` (made when missing), pinned for a checkout.

        A pinned pool is not retired when eviction takes its last connection:
        the caller is about to open one. ``_unpin`` when the checkout ends.
        """
        with self._budget.lock:
            pool = self._pools.get(key)
            if pool is None:
                self._check_open(key)
                pool = self._new_pool(key)
                self._pools[key] = pool
            pool._pins += 1
            return pool

    def _unpin(self, pool: ConnectionPool) -> None:
        with self._budget.lock:
            pool._pins -= 1

    def _retire(self, pool: ConnectionPool) -> None:
        """Budget hook, lock held: eviction took ``pool``'s last connection; forget it."""
        if pool._busy or pool._pins or self._pools.get(pool.path) is not pool:
            return
        del self._pools[pool.path]
        pool._closed = True
        pool._returned.notify_all()

    def _new_pool(self, path: str) -> ConnectionPool:
        migrations = self.migrations(path) if callable(self.migrations) else self.migrations
        return ConnectionPool(
            path,
            migrations=migrations,
            key=self._key_source,
            max_size=self.max_per_database,
            timeout=self.timeout,
            connect_kwargs=self.connect_kwargs,
            row_factory=self.row_factory,
            migration_lock_timeout=self.migration_lock_timeout,
            _budget=self._budget,
        )

    def _check_open(self, key: str) -> None:
        if self._closed:
            raise PoolClosedError(
                f"{key}: the pool registry is closed (the service is shutting down); no new "
                f"connections are handed out."
            )
        if key in self._dropping:
            raise PoolClosedError(
                f"{key} is being deleted (drop_database); no new connections to it are handed out."
            )

    # -- retiring files --------------------------------------------------------------

    def evict(self, path: str | os.PathLike[str], *, timeout: float | None = None) -> None:
        """Close every connection to ``path``, waiting up to ``timeout`` for busy ones.

        Use before replacing the file (a restore) or moving it. The next use
        opens it afresh and checks its migrations again.
        """
        key = os.path.abspath(os.fspath(path))
        with self._budget.lock:
            pool = self._pools.pop(key, None)
        if pool is not None:
            pool._close_and_wait(time.monotonic() + (self.timeout if timeout is None else timeout))

    def drop_database(
        self, path: str | os.PathLike[str], *, timeout: float | None = None
    ) -> list[str]:
        """Delete one database for good (account deletion); returns the files removed.

        Every connection of this process to it is closed first (waiting up to
        ``timeout`` for busy ones; new checkouts are refused meanwhile), then
        the -wal, -shm and -journal files go before the database itself (a
        stray -wal would be replayed into a new file of the same name), then
        ``<db>.migrate-lock``. Other processes must have closed theirs.
        """
        key = os.path.abspath(os.fspath(path))
        with self._budget.lock:
            self._check_open(key)
            self._dropping.add(key)
            pool = self._pools.pop(key, None)
        try:
            if pool is not None:
                deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
                pool._close_and_wait(deadline)
            return _remove_database_files(key)
        finally:
            with self._budget.lock:
                self._dropping.discard(key)

    def close(self) -> None:
        """Close every connection: idle ones now, busy ones as they come back."""
        with self._budget.lock:
            if self._closed:
                return
            self._closed = True
            pools = list(self._pools.values())
            self._pools.clear()
        for pool in pools:
            pool.close()

    # -- introspection ---------------------------------------------------------------

    def stats(self) -> RegistryStats:
        with self._budget.lock:
            pools = list(self._pools.values())
            return RegistryStats(
                databases=len(pools),
                open=self._budget.open,
                idle=len(self._budget.idle),
                busy=sum(pool._busy for pool in pools),
                max_connections=self.max_connections,
                evictions=self._budget.evictions,
                migration_runs=self._budget.migration_runs,
                migrations_applied=self._budget.migrations_applied,
            )

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> PoolRegistry:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<PoolRegistry {len(self._pools)} databases, {self._budget.open}/"
            f"{self.max_connections} connections open{' (closed)' if self._closed else ''}>"
        )

    def __del__(self) -> None:
        budget = getattr(self, "_budget", None)
        if budget is not None and not self._closed and budget.open:
            for pool in self._pools.values():  # nobody can check these out any more
                for conn in pool._idle:
                    with contextlib.suppress(sqlite3.Error):
                        conn.close()
            warnings.warn(
                f"PoolRegistry was garbage-collected with {budget.open} open connection(s); "
                f"call close() at shutdown (or use it as a context manager).",
                ResourceWarning,
                source=self,
                stacklevel=2,
            )


_CHECKOUT_ATTEMPTS = 5


class _RegistryCheckout:
    """The context manager ``PoolRegistry.connection()`` returns."""

    __slots__ = ("_conn", "_path", "_pool", "_registry")

    def __init__(self, registry: PoolRegistry, path: str) -> None:
        self._registry = registry
        self._path = path
        self._pool: ConnectionPool | None = None
        self._conn: PooledConnection | None = None

    def __enter__(self) -> Connection:
        registry = self._registry
        for attempt in range(_CHECKOUT_ATTEMPTS):
            pool = registry._pin(self._path)
            try:
                conn = pool._checkout()
                break
            except PoolClosedError:
                # evict() closed this pool between the lookup and the checkout:
                # the next lookup makes its successor.
                retired = registry._pools.get(self._path) is not pool
                if not retired or registry.closed or attempt == _CHECKOUT_ATTEMPTS - 1:
                    raise
            finally:
                registry._unpin(pool)
        self._pool, self._conn = pool, conn
        return conn

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        pool, conn = self._pool, self._conn
        self._pool = self._conn = None
        if pool is not None and conn is not None:
            pool._checkin(conn, exc)


def _remove_database_files(path: str) -> list[str]:
    removed = []
    for name in (path + "-wal", path + "-shm", path + "-journal", path, path + ".migrate-lock"):
        try:
            os.remove(name)
        except FileNotFoundError:
            continue
        removed.append(name)
    with contextlib.suppress(OSError):  # make the removal durable; not possible everywhere
        fd = os.open(os.path.dirname(path), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    logger.info("dropped database %s (%d files removed)", path, len(removed))
    return removed


_fd_limit_checked = threading.Event()


def _warn_if_too_few_file_descriptors(max_connections: int) -> None:
    """Warn once when the process cannot hold the cap's file descriptors."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 3 * max_connections + 64
    if soft != resource.RLIM_INFINITY and soft < needed and not _fd_limit_checked.is_set():
        _fd_limit_checked.set()
        logger.warning(
            "the open-file limit (%d) is below what %d pooled connections may need (%d: 3 per "
            "connection plus sockets); raise `ulimit -n` or lower max_connections",
            soft,
            max_connections,
            needed,
        )
