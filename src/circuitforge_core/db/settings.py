"""Settings.from_env: the only place the package reads environment variables.

Owns the names of the variables (``CLOUD_MODE``, ``CLOUD_DATA_ROOT``,
``CF_DB_PATH``, ``CF_SERVER_SECRET``, ``CF_DB_MIGRATIONS``,
``CF_DB_PRODUCT_PATH``, ``CF_DB_SQLITE``, ``CF_DB_ACCEPT_WAL_RESET_BUG``; for
replication ``CF_REPLICA_URL``,
``CF_LITESTREAM_SOCKET``, ``CF_LITESTREAM``), how their values are spelled,
and refusing values that cannot be used with a ``SettingsError`` that says
what to set; and ``ToolDefaults``, what ``cf-db`` uses for arguments left
out: those variables, else the ``[tool.cf-db]`` table of the product's
``pyproject.toml``. Also the two readings replication needs beyond its settings:
the environment handed on to the Litestream child process, and the object
store credentials Litestream itself reads (so an erasure reaches the storage
the way Litestream does), and the one writing: ``CF_DB_SQLITE`` handed on to
child processes. Does not act on any of them: paths are joined by tenancy.py,
keys derived by cipher.py, Litestream run by replication/, the SQLite library
switched by bundled_sqlite/, the WAL-reset warning given by wal_reset.py.
(The CLI's ``--key-env NAME`` reads the variable its user names, which is the
user's choice, not a setting.)

Imports nothing that imports ``sqlite3``: the package's ``__init__`` reads
``CF_DB_SQLITE`` through here before any module has loaded a SQLite library.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from .errors import SettingsError

# Nothing of the package is imported at the top: the package's __init__ reads CF_DB_SQLITE
# through here before any module has imported sqlite3, and errors.py (for SettingsError)
# subclasses sqlite3.OperationalError, as cipher.py (MIN_SERVER_SECRET_BYTES) imports it.

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}

#: Which SQLite library the process runs on (``CF_DB_SQLITE``): the one the
#: standard library's ``sqlite3`` links against, or the one bundled in pysqlite3.
SQLiteLibrary = Literal["stdlib", "bundled"]


@dataclass(frozen=True, slots=True)
class Settings:
    """Where a product's databases live, from the environment.

    ``cloud_mode`` (``CLOUD_MODE``, default off): one database per user under
    ``data_root`` (``CLOUD_DATA_ROOT``, an absolute path, required in cloud
    mode). ``db_path`` (``CF_DB_PATH``): the local-mode database, None when
    unset so the product's own default applies. ``server_secret``
    (``CF_SERVER_SECRET``): what per-user encryption keys are derived from
    (``user_key_resolver``), None when unset; never shown in ``repr``.

    Replication (docs/replication.md): ``replica_url`` (``CF_REPLICA_URL``),
    where every user's file is replicated, None when replication is off;
    ``litestream_socket`` (``CF_LITESTREAM_SOCKET``), the sidecar's control
    socket, None for ``DATA_ROOT/.litestream/control.sock``; ``litestream``
    (``CF_LITESTREAM``), the binary, None to find the one the replication
    extra installs.

    ``migrations_dir`` (``CF_DB_MIGRATIONS``) and ``product_path``
    (``CF_DB_PRODUCT_PATH``, each user's file under the data root, such as
    ``kiwi.db``): what ``cf-db`` uses when a command line leaves them out.

    The SQLite library (docs/upgrading.md): ``sqlite_library``
    (``CF_DB_SQLITE``, ``stdlib`` or ``bundled``), the SQLite the whole process
    runs on, acted on when the package is first imported (bundled_sqlite/);
    ``accept_wal_reset_bug`` (``CF_DB_ACCEPT_WAL_RESET_BUG``, default off), the
    operator knows the library has the WAL-reset bug and accepts the risk, so
    the warning about it is not given.
    """

    cloud_mode: bool = False
    data_root: Path | None = None
    db_path: Path | None = None
    server_secret: str | None = field(default=None, repr=False)
    replica_url: str | None = None
    litestream_socket: Path | None = None
    litestream: Path | None = None
    migrations_dir: Path | None = None
    product_path: str | None = None
    sqlite_library: SQLiteLibrary = "stdlib"
    accept_wal_reset_bug: bool = False

    def __post_init__(self) -> None:
        # Made by hand (a test, a product's own config) as well as by from_env: a
        # cloud mode without a usable root fails here, not as a TypeError per request.
        if self.cloud_mode and self.data_root is None:
            raise _refused(
                "cloud mode is on but there is no data root (CLOUD_DATA_ROOT); set it to the "
                "absolute path of the folder holding the per-user databases."
            )
        if self.data_root is not None and not Path(self.data_root).is_absolute():
            raise _refused(
                f"the data root {str(self.data_root)!r} (CLOUD_DATA_ROOT) is a relative path; "
                f"set it to the absolute path of the folder holding the per-user databases."
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read every variable of the package (see the class docstring)."""
        env = os.environ if environ is None else environ
        cloud_mode = _flag(env, "CLOUD_MODE")
        raw_root = env.get("CLOUD_DATA_ROOT", "")
        data_root = Path(raw_root) if raw_root else None
        if data_root is not None and not data_root.is_absolute():
            raise _refused(
                f"CLOUD_DATA_ROOT={raw_root!r} is a relative path; set it to the absolute path "
                f"of the folder holding the per-user databases."
            )
        if cloud_mode and data_root is None:
            raise _refused(
                "CLOUD_MODE is on but CLOUD_DATA_ROOT is not set; set it to the absolute path "
                "of the folder holding the per-user databases."
            )
        raw_db = env.get("CF_DB_PATH", "")
        secret = env.get("CF_SERVER_SECRET", "") or None
        from .cipher import MIN_SERVER_SECRET_BYTES

        if secret is not None and len(secret.encode("utf-8")) < MIN_SERVER_SECRET_BYTES:
            raise _refused(
                f"CF_SERVER_SECRET is shorter than {MIN_SERVER_SECRET_BYTES} bytes, too weak to "
                f"derive database keys from; set it to 32 random bytes, e.g. the output of "
                f'`python -c "import secrets; print(secrets.token_hex(32))"`.'
            )
        replica_url = env.get("CF_REPLICA_URL", "").strip() or None
        if replica_url is not None and "://" not in replica_url:
            raise _refused(
                f"CF_REPLICA_URL={replica_url!r} is not a URL; set it to the replica's URL, "
                f"e.g. s3://bucket/tenants or file:///srv/replicas, or unset it to turn "
                f"replication off."
            )
        socket = _absolute_path(env, "CF_LITESTREAM_SOCKET", "the sidecar's control socket")
        binary = _absolute_path(env, "CF_LITESTREAM", "the litestream binary")
        raw_migrations = env.get("CF_DB_MIGRATIONS", "")
        return cls(
            cloud_mode,
            data_root,
            Path(raw_db) if raw_db else None,
            secret,
            replica_url,
            socket,
            binary,
            Path(raw_migrations) if raw_migrations else None,
            env.get("CF_DB_PRODUCT_PATH", "") or None,
            sqlite_library=sqlite_library_from_env(env),
            accept_wal_reset_bug=wal_reset_bug_accepted(env),
        )


def sqlite_library_from_env(environ: Mapping[str, str] | None = None) -> SQLiteLibrary:
    """``CF_DB_SQLITE`` alone: read first, when the package is imported, before the rest."""
    env = os.environ if environ is None else environ
    raw = env.get("CF_DB_SQLITE", "").strip().lower()
    if raw in ("", "stdlib"):
        return "stdlib"
    if raw == "bundled":
        return "bundled"
    raise _refused(
        f"CF_DB_SQLITE={env['CF_DB_SQLITE']!r} is not a SQLite library this package knows; "
        f"set it to 'bundled' (the SQLite inside pysqlite3: pip install "
        f"'circuitforge-core[bundled-sqlite]') or 'stdlib' (the default), or unset it."
    )


def _refused(message: str) -> SettingsError:
    """The ``SettingsError`` to raise (errors.py imported only now; see the imports)."""
    from .errors import SettingsError

    return SettingsError(message)


def hand_sqlite_library_to_children(library: SQLiteLibrary) -> None:
    """Set ``CF_DB_SQLITE`` for the processes this one starts, so they switch as it did."""
    os.environ["CF_DB_SQLITE"] = library


def wal_reset_bug_accepted(environ: Mapping[str, str] | None = None) -> bool:
    """``CF_DB_ACCEPT_WAL_RESET_BUG`` alone: read when the warning is due, not at start."""
    return _flag(os.environ if environ is None else environ, "CF_DB_ACCEPT_WAL_RESET_BUG")


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw not in _TRUE | _FALSE:
        raise _refused(
            f"{name}={env[name]!r} is neither on nor off; set it to 1 or 0 "
            f"(true/false, yes/no and on/off also work)."
        )
    return raw in _TRUE


def _absolute_path(env: Mapping[str, str], name: str, what: str) -> Path | None:
    raw = env.get(name, "")
    if not raw:
        return None
    if not os.path.isabs(raw):
        raise _refused(f"{name}={raw!r} is a relative path; set it to the absolute path of {what}.")
    return Path(raw)


def process_environment() -> Mapping[str, str]:
    """This process's environment as it is now, to hand on to a child process (Litestream)."""
    return os.environ


@dataclass(frozen=True, slots=True)
class ObjectStoreCredentials:
    """What Litestream's S3 client reads from the environment, read the same way.

    ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` first, then
    ``LITESTREAM_ACCESS_KEY_ID`` / ``LITESTREAM_SECRET_ACCESS_KEY``;
    ``AWS_SESSION_TOKEN``; ``LITESTREAM_S3_ENDPOINT`` for URLs without an
    ``endpoint``; ``AWS_REGION`` (or ``AWS_DEFAULT_REGION``). Keys never shown
    in ``repr``; None when unset (the SDK's own chain then applies: profiles,
    instance and container roles).
    """

    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    endpoint: str | None = None
    region: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ObjectStoreCredentials:
        env = os.environ if environ is None else environ
        return cls(
            env.get("AWS_ACCESS_KEY_ID") or env.get("LITESTREAM_ACCESS_KEY_ID") or None,
            env.get("AWS_SECRET_ACCESS_KEY") or env.get("LITESTREAM_SECRET_ACCESS_KEY") or None,
            env.get("AWS_SESSION_TOKEN") or None,
            env.get("LITESTREAM_S3_ENDPOINT") or None,
            env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
        )


# -- cf-db's defaults: the environment, then the product's pyproject.toml -------------

#: The keys of ``[tool.cf-db]`` and the ``ToolDefaults`` field each fills.
PYPROJECT_KEYS = {
    "database": "database",
    "migrations": "migrations",
    "data-root": "data_root",
    "product-path": "product_path",
}
_FROM_ENVIRONMENT = {
    "database": "CF_DB_PATH",
    "migrations": "CF_DB_MIGRATIONS",
    "data_root": "CLOUD_DATA_ROOT",
    "product_path": "CF_DB_PRODUCT_PATH",
}


@dataclass(frozen=True, slots=True)
class ToolDefaults:
    """What ``cf-db`` uses for a database, migrations folder, data root or product sub-path
    that its command line leaves out.

    Each comes from its environment variable (``CF_DB_PATH``,
    ``CF_DB_MIGRATIONS``, ``CLOUD_DATA_ROOT``, ``CF_DB_PRODUCT_PATH``), else
    from ``[tool.cf-db]`` in the nearest ``pyproject.toml`` at or above the
    working folder (``database``, ``migrations``, ``data-root``,
    ``product-path``; relative paths are relative to that file), else it is
    None. ``origin`` names where each value came from, for messages.
    """

    database: Path | None = None
    migrations: Path | None = None
    data_root: Path | None = None
    product_path: str | None = None
    origin: Mapping[str, str] = field(default_factory=dict)

    @staticmethod
    def sources(name: str) -> tuple[str, str]:
        """Where ``name`` (``database``, ``migrations``, ``data_root``, ``product_path``) comes
        from: its environment variable and its key under ``[tool.cf-db]``."""
        key = next(key for key, field_name in PYPROJECT_KEYS.items() if field_name == name)
        return _FROM_ENVIRONMENT[name], key

    @classmethod
    def load(
        cls, environ: Mapping[str, str] | None = None, start: str | os.PathLike[str] | None = None
    ) -> ToolDefaults:
        """Read the environment, then ``pyproject.toml`` from ``start`` (the working folder) up."""
        settings = Settings.from_env(environ)
        from_env: dict[str, object] = {
            "database": settings.db_path,
            "migrations": settings.migrations_dir,
            "data_root": settings.data_root,
            "product_path": settings.product_path,
        }
        values: dict[str, object] = {}
        origin: dict[str, str] = {}
        for name, value in from_env.items():
            if value is not None:
                values[name] = value
                origin[name] = f"${_FROM_ENVIRONMENT[name]}"
        found = _pyproject_table(Path(start) if start is not None else Path.cwd())
        if found is not None:
            path, table = found
            for key, name in PYPROJECT_KEYS.items():
                if name in values or key not in table:
                    continue
                raw = table[key]
                if not isinstance(raw, str) or not raw:
                    raise _refused(
                        f"{path}: [tool.cf-db] {key} must be a non-empty string (a path, or a "
                        f"sub-path such as 'kiwi.db'), not {raw!r}."
                    )
                values[name] = raw if name == "product_path" else path.parent / raw
                origin[name] = f"{path} [tool.cf-db] {key}"
            unknown = sorted(set(table) - set(PYPROJECT_KEYS))
            if unknown:
                raise _refused(
                    f"{path}: [tool.cf-db] has unknown key{'s' if len(unknown) > 1 else ''} "
                    f"{', '.join(unknown)}; the keys are {', '.join(PYPROJECT_KEYS)}."
                )
        return cls(
            database=_path_or_none(values.get("database")),
            migrations=_path_or_none(values.get("migrations")),
            data_root=_path_or_none(values.get("data_root")),
            product_path=str(values["product_path"]) if "product_path" in values else None,
            origin=MappingProxyType(origin),
        )


def _path_or_none(value: object) -> Path | None:
    return None if value is None else Path(str(value))


def _pyproject_table(start: Path) -> tuple[Path, dict[str, Any]] | None:
    """The nearest ``pyproject.toml`` at or above ``start`` and its ``[tool.cf-db]`` table.

    The search stops at the first ``pyproject.toml`` (the project's root): a
    project without the table has no defaults there.
    """
    folder = start.resolve()
    for candidate in (folder, *folder.parents):
        path = candidate / "pyproject.toml"
        if not path.is_file():
            continue
        import tomllib  # only cf-db reads pyproject.toml: not on every import of the package

        try:
            with path.open("rb") as handle:
                document = tomllib.load(handle)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise _refused(
                f"{path}: cannot read it for cf-db's defaults ({exc}); fix the file or pass "
                f"every argument on the command line."
            ) from exc
        table = document.get("tool", {}).get("cf-db")
        if table is None:
            return None
        if not isinstance(table, dict):
            raise _refused(f"{path}: [tool.cf-db] must be a table.")
        return path, table
    return None
