"""Settings.from_env: the only place the package reads environment variables.

Owns the names of the variables (``CLOUD_MODE``, ``CLOUD_DATA_ROOT``,
``CF_DB_PATH``, ``CF_SERVER_SECRET``), how their values are spelled, and
refusing values that cannot be used with a ``SettingsError`` that says what to
set. Does not act on them: paths are joined by tenancy.py, keys derived by
cipher.py. (The CLI's ``--key-env NAME`` reads the variable its user names,
which is the user's choice, not a setting.)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .cipher import MIN_SERVER_SECRET_BYTES
from .errors import SettingsError

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

    def __post_init__(self) -> None:
        # Made by hand (a test, a product's own config) as well as by from_env: a
        # cloud mode without a usable root fails here, not as a TypeError per request.
        if self.cloud_mode and self.data_root is None:
            raise SettingsError(
                "cloud mode is on but there is no data root (CLOUD_DATA_ROOT); set it to the "
                "absolute path of the folder holding the per-user databases."
            )
        if self.data_root is not None and not Path(self.data_root).is_absolute():
            raise SettingsError(
                f"the data root {str(self.data_root)!r} (CLOUD_DATA_ROOT) is a relative path; "
                f"set it to the absolute path of the folder holding the per-user databases."
            )

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
