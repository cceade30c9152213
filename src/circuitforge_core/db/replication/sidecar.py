"""Running one Litestream per host in the foreground, as a sidecar of the service.

Owns what happens before Litestream starts: the checks (data root, replica
URL, socket path, no other Litestream on the socket), the generated
configuration, the open-file limit (Litestream needs about 6 descriptors per
registered file), the environment (what breaks Litestream is removed), and
then replacing this process with Litestream (``exec``), so that systemd or
compose signal, watch and restart Litestream itself: SIGTERM and SIGINT make
it sync every registered file once more and exit 0, its log goes to stderr,
and its exit code is the service's. Does not register files (agent.py).
"""

from __future__ import annotations

import logging
import os
import stat
import tempfile
from dataclasses import dataclass, field
from typing import NoReturn

from ..errors import ControlSocketError, ReplicationError
from ..files import remove_quietly
from .binary import (
    BREAKING_VARIABLES,
    check_version,
    find_litestream,
    litestream_environment,
    removed_variables,
)
from .config import CONFIG_NAME, SidecarConfig, check_socket_path, default_socket_path
from .control import ControlClient
from .urls import check_replica_url, file_replica_folder, redact

logger = logging.getLogger("circuitforge_core.db")

#: Descriptors Litestream holds per registered file (database, -wal, -shm, its own
#: connection's, LTX files being written): 5-6 measured with 0.5.17.
FDS_PER_FILE = 6
#: Its own: sockets, the log, the Go runtime.
FDS_BASE = 64
#: A host's registry cap (PoolRegistry's default max_connections): files open at once.
DEFAULT_MAX_FILES = 256


@dataclass(frozen=True, slots=True)
class FileLimit:
    """The open-file limit Litestream will start with (None: unlimited) and what it needs."""

    soft: int | None
    hard: int | None
    needed: int
    raised_from: int | None = None

    @property
    def enough(self) -> bool:
        return self.soft is None or self.soft >= self.needed

    @property
    def files_it_holds(self) -> int | None:
        return None if self.soft is None else max(0, (self.soft - FDS_BASE) // FDS_PER_FILE)


@dataclass(frozen=True, slots=True)
class SidecarPlan:
    """Everything ``exec_sidecar`` needs, checked: the command, its environment, its limit."""

    binary: str
    version: tuple[int, ...]
    config_path: str
    socket_path: str
    replica_url: str
    argv: tuple[str, ...]
    environment: dict[str, str] = field(repr=False)
    file_limit: FileLimit
    removed_variables: tuple[str, ...] = ()


def prepare_sidecar(
    root: str | os.PathLike[str],
    replica_url: str,
    *,
    socket_path: str | os.PathLike[str] | None = None,
    metrics_addr: str | None = None,
    max_files: int = DEFAULT_MAX_FILES,
    litestream: str | os.PathLike[str] | None = None,
    log_level: str = "info",
    log_json: bool = False,
    environ: dict[str, str] | None = None,
) -> SidecarPlan:
    """Check everything, write the configuration, raise the file limit; start nothing.

    ``replica_url`` is where every user's file goes (each under its
    root-relative path); Litestream itself learns it per file from the app's
    registrations, so here it is checked (a file:// folder must exist) and
    logged. ``max_files``: how many files may be registered at once on this
    host, i.e. the sum of the registry caps of every app process that uses
    this sidecar.
    """
    root_path = os.path.abspath(os.fspath(root))
    if not os.path.isdir(root_path):
        raise ReplicationError(
            f"the data root {root_path} does not exist (or is not a folder); create it or fix "
            f"the path given to the sidecar (it must be the app's CLOUD_DATA_ROOT).",
            path=root_path,
        )
    check_replica_url(replica_url)
    if replica_url.lower().startswith("file:"):
        folder = file_replica_folder(replica_url)
        if not os.path.isdir(folder):
            raise ReplicationError(
                f"the replica folder {folder} does not exist; create it (mode 0700, owned by "
                f"the service user), preferably on another disk than the data root.",
                path=folder,
            )
    if max_files < 1:
        raise ValueError(f"max_files must be at least 1, not {max_files}")
    binary = find_litestream(litestream)
    version = check_version(binary)
    socket = check_socket_path(socket_path or default_socket_path(root_path))
    _claim_socket(socket)
    config = SidecarConfig(socket, metrics_addr, log_level, log_json)
    config_path = _write_private(os.path.join(os.path.dirname(socket), CONFIG_NAME), config)
    limit = raise_file_limit(max_files)
    env = litestream_environment(environ)
    removed = tuple(removed_variables(environ))
    argv = (binary, "replicate", "-config", config_path, "-no-expand-env")
    return SidecarPlan(binary, version, config_path, socket, replica_url, argv, env, limit, removed)


def exec_sidecar(plan: SidecarPlan) -> NoReturn:
    """Log what is about to run, then become Litestream (this never returns)."""
    limit = plan.file_limit
    if limit.raised_from is not None:
        logger.info(
            "raised the open-file limit from %d to %d (Litestream needs about %d per "
            "registered file)",
            limit.raised_from,
            limit.soft,
            FDS_PER_FILE,
        )
    if not limit.enough:
        logger.warning(
            "the open-file limit is %s (hard %s): Litestream can hold about %s registered "
            "files, fewer than the %d planned (%d descriptors needed). Raise it: "
            "LimitNOFILE=%d in the systemd unit, or `ulimits: nofile: %d` in compose.",
            limit.soft,
            limit.hard,
            limit.files_it_holds,
            (limit.needed - FDS_BASE) // FDS_PER_FILE,
            limit.needed,
            limit.needed,
            limit.needed,
        )
    for name in plan.removed_variables:
        logger.warning("not passing %s to Litestream: %s", name, BREAKING_VARIABLES[name])
    logger.info(
        "starting Litestream %s: control socket %s, replica %s, config %s (it will log "
        "'no databases specified in configuration': expected, the app registers each file)",
        ".".join(map(str, plan.version)),
        plan.socket_path,
        redact(plan.replica_url),
        plan.config_path,
    )
    for handler in logging.getLogger().handlers:
        handler.flush()
    os.execve(plan.binary, list(plan.argv), plan.environment)


def raise_file_limit(max_files: int) -> FileLimit:
    """Raise this process's soft open-file limit (Litestream inherits it) when it is too low.

    To the hard limit (only root can raise that one), so that more files than
    planned still fit; the result says whether it is enough.
    """
    needed = FDS_PER_FILE * max_files + FDS_BASE
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return FileLimit(None, None, needed)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    infinite = resource.RLIM_INFINITY
    shown_hard = None if hard == infinite else hard
    if soft == infinite or soft >= needed:
        return FileLimit(None if soft == infinite else soft, shown_hard, needed)
    target = needed if hard == infinite else hard
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):  # e.g. a hard limit above the kernel's nr_open
        return FileLimit(soft, shown_hard, needed)
    return FileLimit(target, shown_hard, needed, raised_from=soft)


def _claim_socket(socket_path: str) -> None:
    """Make the socket's folder (0700) and refuse a socket another Litestream still serves.

    Litestream removes a socket file it finds and listens anew, so a second
    sidecar on the same root would silently take the socket from the first:
    two daemons replicating the same files is what Litestream's docs warn
    makes replicas unrestorable.
    """
    folder = os.path.dirname(socket_path)
    try:
        os.makedirs(folder, 0o700, exist_ok=True)
    except OSError as exc:
        raise ReplicationError(
            f"cannot create the socket folder {folder}: {exc.strerror}; create it (0700) or "
            f"choose another socket path.",
            path=folder,
        ) from exc
    try:
        mode = os.lstat(socket_path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ReplicationError(
            f"{socket_path} exists and is not a socket; move it away or choose another socket "
            f"path.",
            path=socket_path,
        )
    client = ControlClient(socket_path, timeout=2.0)
    try:
        info = client.info()
    except ControlSocketError as exc:
        if exc.status is None:
            return  # a stale socket of a Litestream that is gone: it will be replaced
        raise
    raise ReplicationError(
        f"Litestream {info.version} (pid {info.pid}) already serves {socket_path}; one "
        f"sidecar per data root. Stop it first, or give this one another root.",
        path=socket_path,
    )


def _write_private(path: str, config: SidecarConfig) -> str:
    """Write the configuration atomically, readable by the service user only."""
    folder = os.path.dirname(path)
    fd, temporary = tempfile.mkstemp(prefix=".litestream-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(config.render())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        remove_quietly(temporary)
        raise
    return path
