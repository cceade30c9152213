"""Cloud mode's request lifetime: which database a request uses, and where per-user files live.

Owns two things products need when one process serves many per-user SQLite
files:

- the request context: ``request_db``, the ContextVar naming this request's
  database file, with ``current_db_path()``, ``use_db()`` and
  ``request_aconnection()`` (an async connection to that file);
- per-user paths: ``user_db_path()`` joins a data root, a user id and the
  product's sub-path, refusing anything that could leave or confuse the root,
  and creates folders 0700 and the file 0600; ``user_key_resolver()`` maps
  such a path back to its user's encryption key.

Does not own the app-lifetime registry of pools (pool/registry.py; re-exported
here, its old home, with ``Settings`` from settings.py), who the user is (the
product's resolver), nor anything about ASGI (asgi.py).
"""

from __future__ import annotations

import os
import re
import stat
import unicodedata
from collections.abc import Callable
from contextvars import ContextVar, Token
from pathlib import Path

from .aio import AsyncCheckout
from .cipher import derive_user_key
from .errors import NoDatabaseError, OpenError, SettingsError, UnsafePathError
from .open_errors import cannot_create, path_length
from .pool import (
    CLOUD_CONNECT_KWARGS,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_PER_DATABASE,
    MigrationsFor,
    PoolRegistry,
    RegistryStats,
)
from .settings import Settings
from .sqlite_facts import MAX_DATABASE_PATH_BYTES

__all__ = [  # its own names, and the registry and Settings at their old import path
    "CLOUD_CONNECT_KWARGS",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_PER_DATABASE",
    "MAX_NAME_LENGTH",
    "MigrationsFor",
    "PoolRegistry",
    "RegistryStats",
    "Settings",
    "current_db_path",
    "request_aconnection",
    "request_db",
    "use_db",
    "user_db_path",
    "user_key_resolver",
]


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


def request_aconnection(
    registry: PoolRegistry, *, default: str | os.PathLike[str] | None = None
) -> AsyncCheckout:
    """``async with request_aconnection(registry, default=DB_PATH) as db:``: this request's file.

    ``registry.aconnection(current_db_path(default))``: the database the
    middleware chose for this request, else ``default``; with neither,
    ``NoDatabaseError`` at once. Here rather than on the registry, which
    lives as long as the app and knows nothing of requests.
    """
    return registry.aconnection(current_db_path(default))


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
    outside ``root`` through a symbolic link or one longer than SQLite can open
    (504 bytes, links resolved). ``root`` must exist. With ``create``, missing
    folders are made 0700 and a missing database file 0600 (its -wal and -shm
    inherit that mode), whatever the umask; what the system refuses (no
    permission, a read-only or full file system) raises ``OpenError``.
    """
    if root is None:  # Settings.data_root outside cloud mode, or a product's own None
        raise SettingsError(
            f"no data root to put user {_shown(str(user_id))}'s database in: the root is None "
            f"(CLOUD_DATA_ROOT unset?). Set CLOUD_DATA_ROOT to the absolute path of the folder "
            f"holding the per-user databases, or check the settings at start-up "
            f"(check_startup)."
        )
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
        _check_length(root_path, levels[-1])
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
                reason="not_a_file" if os.path.exists(root_path) else "missing",
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


def _check_length(root: str, path: str) -> None:
    """Refuse a per-user path SQLite could never open: too long once links are resolved."""
    length = path_length(path)
    if length > MAX_DATABASE_PATH_BYTES:
        raise UnsafePathError(
            f"refusing the database path {path}: it is {length} bytes long (links resolved), "
            f"and SQLite opens database files whose full path is at most "
            f"{MAX_DATABASE_PATH_BYTES} bytes. Shorten the data root {root} or the product "
            f"sub-path by {length - MAX_DATABASE_PATH_BYTES} bytes.",
            value=path,
        )


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
                reason="not_a_file",
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
    database = os.path.join(root, *names)
    folder = root
    try:
        for name in names[:-1]:
            folder = os.path.join(folder, name)
            try:
                os.mkdir(folder, 0o700)
            except FileExistsError:
                continue
            os.chmod(folder, 0o700)  # mkdir's mode is filtered by the umask
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(database, flags | getattr(os, "O_CLOEXEC", 0), 0o600)
        except FileExistsError:
            return
        try:
            os.fchmod(fd, 0o600)  # os.open's mode is filtered by the umask too
        finally:
            os.close(fd)
    except OSError as exc:  # no permission, a read-only or full file system
        raise cannot_create(database, exc.filename or database, exc) from exc
