"""The Litestream configuration this package runs with, and where its files live.

Owns the one configuration shape: the control socket on, metrics on an
optional address, logs to stderr, and no databases (``dbs: []``): the
registry registers each file over the socket while it is open, so
Litestream's cost follows open files, not files on disk, and no directory
watcher is involved. The file is written as JSON, which YAML readers accept,
so no value ever needs YAML quoting. Does not start anything (sidecar.py).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import ReplicationError

#: The folder under the data root that holds the socket and the generated config.
#: A user id never starts with ".", so it cannot collide with a user's folder.
STATE_FOLDER = ".litestream"
SOCKET_NAME = "control.sock"
CONFIG_NAME = "litestream.yml"
#: sockaddr_un.sun_path is 108 bytes on Linux, including the terminating NUL.
MAX_SOCKET_PATH_BYTES = 107

_LOG_LEVELS = ("debug", "info", "warn", "error")


def default_socket_path(root: str | os.PathLike[str]) -> Path:
    """``ROOT/.litestream/control.sock``: where the sidecar listens unless told otherwise.

    Inside the data root because every process that uses the files can reach
    it already (a shared volume under compose, the same folder under systemd).
    """
    return Path(os.path.abspath(os.fspath(root))) / STATE_FOLDER / SOCKET_NAME


def check_socket_path(path: str | os.PathLike[str]) -> str:
    """``path`` as an absolute string, refused when too long for a Unix socket."""
    absolute = os.path.abspath(os.fspath(path))
    if len(os.fsencode(absolute)) > MAX_SOCKET_PATH_BYTES:
        raise ReplicationError(
            f"the control socket path {absolute} is {len(os.fsencode(absolute))} bytes; Unix "
            f"sockets allow {MAX_SOCKET_PATH_BYTES}. Choose a shorter one (e.g. "
            f"/run/cf-db/litestream.sock) and give the same path to the app.",
            path=absolute,
        )
    return absolute


@dataclass(frozen=True, slots=True)
class SidecarConfig:
    """What goes into Litestream's configuration file.

    ``metrics_addr``: ``HOST:PORT`` for Prometheus metrics (``/metrics``),
    None for none. ``socket_permissions``: the socket's mode; 0600 means only
    the service user (the app and Litestream must run as the same user
    anyway: Litestream writes beside each database). ``shutdown_sync_timeout``:
    how long Litestream retries the final upload of each file at SIGTERM.
    """

    socket_path: str
    metrics_addr: str | None = None
    log_level: str = "info"
    log_json: bool = False
    socket_permissions: int = 0o600
    shutdown_sync_timeout: float = 10.0

    def __post_init__(self) -> None:
        if self.log_level not in _LOG_LEVELS:
            raise ReplicationError(
                f"log level {self.log_level!r} is not one of {', '.join(_LOG_LEVELS)}."
            )
        if self.metrics_addr is not None and ":" not in self.metrics_addr:
            raise ReplicationError(
                f"metrics address {self.metrics_addr!r} is not HOST:PORT (e.g. 127.0.0.1:9090)."
            )

    def as_dict(self) -> dict[str, object]:
        config: dict[str, object] = {
            "socket": {
                "enabled": True,
                "path": self.socket_path,
                "permissions": self.socket_permissions,
            },
            "logging": {
                "level": self.log_level,
                "type": "json" if self.log_json else "text",
                "stderr": True,
            },
            "shutdown-sync-timeout": f"{self.shutdown_sync_timeout:g}s",
            # Files are registered over the socket by the app; Litestream logs
            # "no databases specified in configuration" at start, which is expected.
            "dbs": [],
        }
        if self.metrics_addr is not None:
            config["addr"] = self.metrics_addr
        return config

    def render(self) -> str:
        """The configuration file's text (JSON, a subset of YAML)."""
        return json.dumps(self.as_dict(), indent=2) + "\n"
