"""Keeping the host's Litestream replicating exactly the files this process has open.

Owns ``Replicator``, what a registry drives through named methods: a file's
first connection opened (``file_opened``: register it with its replica URL),
its last connection closed (``file_closed``: unregister it, which makes
Litestream sync it a last time and let go of it), and the synchronous steps
that must finish before something else happens (``release`` before a file
is deleted or replaced, ``sync`` for a write that must survive the host).

Registering and unregistering happen on worker threads, never on the
request path (an unregister waits for an upload; eviction happens inside
another user's checkout). The workers apply the latest wish for each file,
so open-close-open in quick succession costs nothing, and one slow upload
does not hold up the others. A watch loop asks the daemon every
``check_interval`` seconds who it is and what it has: a restarted Litestream
(its registrations live in memory only) or one that lost a file (another
process of the host unregistered it when its own last connection closed) gets
the missing files registered again; writes made meanwhile are caught up by
Litestream from the WAL or a fresh snapshot. Does not know pools (the
registry calls in), nor how to restore or erase (restore.py, erasure.py).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass

from ..errors import ControlSocketError, ReplicationError, SettingsError
from ..settings import Settings
from .config import check_socket_path, default_socket_path
from .control import DEFAULT_SYNC_TIMEOUT, DEFAULT_TIMEOUT, ControlClient, SyncResult
from .erasure import ErasureResult, erase_replica
from .restore import (
    RestoreResult,
    remove_litestream_state,
    restore_database,
)
from .urls import check_replica_url, redact, replica_url_for, user_file
from .wal import truncate_wal

logger = logging.getLogger("circuitforge_core.db")

DEFAULT_CHECK_INTERVAL = 1.0
DEFAULT_WORKERS = 2
#: A failing file is logged at most this often.
_LOG_EVERY = 60.0


@dataclass(frozen=True, slots=True)
class ReplicatorStats:
    """Counts since the replicator was made; ``wanted``/``registered``/``pending`` are current.

    ``wanted``: files this process has open. ``registered``: those Litestream
    was told about and acknowledged. ``daemon_restarts``: new Litestream
    processes seen (each got every wanted file again). ``daemon_up``: whether
    the last request reached it.
    """

    wanted: int
    registered: int
    pending: int
    registrations: int
    unregistrations: int
    failures: int
    daemon_restarts: int
    daemon_up: bool


class Replicator:
    """Drives the Litestream serving ``socket_path`` for files under ``data_root``.

    ``replica_url`` is the host's replica; each file goes to its
    root-relative path under it (``replica_url_for``). ``timeout`` bounds a
    plain request to the daemon, ``sync_timeout`` an unregister's final
    sync or a ``sync()``. Threads start at once; ``close()`` stops them.
    """

    def __init__(
        self,
        data_root: str | os.PathLike[str],
        replica_url: str,
        *,
        socket_path: str | os.PathLike[str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        sync_timeout: float = DEFAULT_SYNC_TIMEOUT,
        check_interval: float = DEFAULT_CHECK_INTERVAL,
        workers: int = DEFAULT_WORKERS,
        litestream: str | os.PathLike[str] | None = None,
    ) -> None:
        self.data_root = os.path.abspath(os.fspath(data_root))
        self.litestream = litestream
        self.replica_url = check_replica_url(replica_url)
        self.socket_path = check_socket_path(socket_path or default_socket_path(self.data_root))
        self.sync_timeout = sync_timeout
        self.check_interval = check_interval
        self.control = ControlClient(self.socket_path, timeout=timeout)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._wanted: dict[str, str] = {}  # path -> replica URL, for files open here
        self._registered: set[str] = set()  # acknowledged by the daemon we know
        # Opened since Litestream last confirmed them in the replica: owed a final sync.
        self._touched: dict[str, str] = {}
        # Bumped by every answer the daemon gives about one file; the watch loop
        # trusts a /list only for files nobody changed since it asked.
        self._epoch = 0
        self._changed_at: dict[str, int] = {}
        self._dirty: OrderedDict[str, None] = OrderedDict()  # to be reconciled
        self._in_flight: set[str] = set()
        self._last_logged: dict[str, float] = {}
        self._daemon: tuple[int, str] | None = None
        self._daemon_up = True
        self._counts = dict.fromkeys(
            ("registrations", "unregistrations", "failures", "daemon_restarts"), 0
        )
        self._closed = False
        self._workers = max(1, workers)
        self._check_daemon()  # know the daemon (or that it is down) before the first file
        self._start_threads()
        _live_replicators.add(self)

    def _start_threads(self) -> None:
        self._threads = [
            threading.Thread(target=self._work, name=f"cf-db-replicator-{n}", daemon=True)
            for n in range(self._workers)
        ]
        self._threads.append(
            threading.Thread(target=self._watch, name="cf-db-replicator-watch", daemon=True)
        )
        for thread in self._threads:
            thread.start()

    def _after_fork_in_child(self) -> None:
        """A forked child starts with nothing open (its pools start empty) and new threads."""
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._wanted.clear()
        self._touched.clear()
        self._dirty.clear()
        self._in_flight.clear()
        self._registered.clear()  # the parent's registrations are the parent's to release
        self._changed_at.clear()
        if not self._closed:
            self._start_threads()

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> Replicator:
        """A replicator for ``CLOUD_DATA_ROOT``, ``CF_REPLICA_URL`` and ``CF_LITESTREAM_SOCKET``."""
        settings = settings or Settings.from_env()
        if settings.data_root is None or settings.replica_url is None:
            raise SettingsError(
                "replication needs CLOUD_DATA_ROOT and CF_REPLICA_URL; set both (or leave "
                "replication off by not making a Replicator)."
            )
        return cls(
            settings.data_root,
            settings.replica_url,
            socket_path=settings.litestream_socket,
            litestream=settings.litestream,
        )

    # -- what the registry calls --------------------------------------------------------

    def replica_url_of(self, path: str | os.PathLike[str]) -> str:
        """The replica URL of ``path`` (a per-user file under the data root, or UnsafePathError)."""
        return replica_url_for(self.replica_url, user_file(self.data_root, path))

    def file_opened(self, path: str) -> None:
        """``path``'s first connection in this process is open: have it replicated.

        Returns at once; a worker registers it. A path outside the data root
        raises ``UnsafePathError`` (it could never be restored by the rules).
        """
        url = self.replica_url_of(path)
        with self._lock:
            self._wanted[path] = url
            self._touched[path] = url
            self._mark(path)

    def file_closed(self, path: str) -> None:
        """``path``'s last connection in this process closed: a worker syncs it and lets go."""
        with self._lock:
            self._wanted.pop(path, None)
            if path in self._touched or path in self._registered:
                self._mark(path)

    def release(
        self, path: str, *, final_sync: bool = True, timeout: float | None = None
    ) -> SyncResult | None:
        """Make Litestream let go of ``path`` now, before it is moved, replaced or deleted.

        The caller has closed its connections. With ``final_sync`` (moving,
        replacing) the replica is first brought up to every commit in the
        file, registering it if needed, and ``ReplicationError`` is raised
        when that cannot be confirmed within ``timeout`` (default
        ``sync_timeout``): the replica may be behind, so do not hand the user
        to another host. Without it (deleting), a daemon that is not running
        holds nothing, which counts as released.
        """
        deadline = time.monotonic() + (self.sync_timeout if timeout is None else timeout)
        with self._lock:
            self._wanted.pop(path, None)
            self._dirty.pop(path, None)
            self._claim(path, deadline)
        try:
            result = self._final(path, deadline) if final_sync else None
            self._unregister(path, deadline, strict=final_sync)
            with self._lock:
                self._touched.pop(path, None)
            return result
        finally:
            self._unclaim(path)

    def sync(self, path: str, *, timeout: float | None = None) -> SyncResult:
        """Return once the replica has every transaction committed to ``path`` so far.

        For the few writes that must survive the loss of the host: commit,
        then call this. Registers the file first if needed (Litestream then
        catches up on what it had not seen). Raises ``ReplicationError`` when
        that cannot be confirmed in ``timeout`` (default ``sync_timeout``):
        the data is committed locally, not yet known to be replicated.
        """
        deadline = time.monotonic() + (self.sync_timeout if timeout is None else timeout)
        url = self.replica_url_of(path)
        with self._lock:
            self._claim(path, deadline)
            self._touched.setdefault(path, url)
        try:
            return self._synced(path, url, deadline)
        finally:
            with self._lock:
                if path not in self._wanted:
                    self._dirty[path] = None  # not open here: a worker lets go of it again
            self._unclaim(path)

    def restore(
        self,
        path: str,
        *,
        timestamp: dt.datetime | str | None = None,
        replace: bool = False,
        missing_ok: bool = False,
    ) -> RestoreResult | None:
        """Restore ``path`` from its replica (``restore_database``); release it first."""
        file = user_file(self.data_root, path)
        return restore_database(
            file,
            replica_url_for(self.replica_url, file),
            timestamp=timestamp,
            replace=replace,
            missing_ok=missing_ok,
            litestream=self.litestream,
        )

    def erase(self, path: str) -> ErasureResult:
        """Delete ``path``'s replica and Litestream's state beside it (released first)."""
        return erase_replica(user_file(self.data_root, path), self.replica_url)

    def forget_local_state(self, path: str) -> list[str]:
        """Remove Litestream's state beside ``path`` (released first); the folders removed."""
        return remove_litestream_state(path)

    def truncate_wal(self, path: str, *, timeout: float = 0.0) -> bool:
        """Fold ``path``'s WAL into the database and empty it, if nothing reads it."""
        return truncate_wal(path, timeout=timeout)

    def flush(self, timeout: float) -> bool:
        """Wait until every wish so far is applied (or ``timeout``); True if all were."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._dirty or self._in_flight:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
        return True

    def stats(self) -> ReplicatorStats:
        with self._lock:
            return ReplicatorStats(
                wanted=len(self._wanted),
                registered=len(self._registered),
                pending=len(self._dirty) + len(self._in_flight),
                daemon_up=self._daemon_up,
                **self._counts,
            )

    def close(self, timeout: float | None = None) -> None:
        """Apply what is pending (up to ``timeout``, default ``sync_timeout``), then stop."""
        self.flush(self.sync_timeout if timeout is None else timeout)
        with self._lock:
            self._closed = True
            self._changed.notify_all()
        for thread in self._threads:
            thread.join(self.control.timeout + 1.0)

    def __enter__(self) -> Replicator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<Replicator {self.data_root} -> {redact(self.replica_url)} via "
            f"{self.socket_path}: {len(self._wanted)} open, {len(self._registered)} registered>"
        )

    # -- reconciling ---------------------------------------------------------------------

    def _mark(self, path: str) -> None:
        """Lock held: ``path`` needs reconciling."""
        self._dirty[path] = None
        self._changed.notify_all()

    def _claim(self, path: str, deadline: float) -> None:
        """Lock held: wait until no other thread works on ``path``, then take it."""
        while path in self._in_flight:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ReplicationError(
                    f"Litestream did not answer for {path} in time (a registration or final "
                    f"sync is still under way); retry.",
                    path=path,
                )
            self._changed.wait(remaining)
        self._in_flight.add(path)

    def _unclaim(self, path: str) -> None:
        with self._lock:
            self._in_flight.discard(path)
            self._changed.notify_all()

    def _register(self, path: str, url: str) -> None:
        """Claimed: register ``path`` (a no-op for the daemon if it has it already)."""
        newly = self.control.register(path, url)
        with self._lock:
            self._record(path, registered=True, counted=newly)

    def _synced(self, path: str, url: str, deadline: float) -> SyncResult:
        """Claimed: register if needed, then ``/sync`` with wait; raise if unconfirmed."""
        for attempt in range(2):
            try:
                with self._lock:
                    registered = path in self._registered
                if not registered:
                    self._register(path, url)
                result = self.control.sync(
                    path, wait=True, timeout=max(1.0, deadline - time.monotonic())
                )
            except ControlSocketError as exc:
                if exc.status == 404 and attempt == 0:  # the daemon restarted meanwhile
                    with self._lock:
                        self._registered.discard(path)
                    continue
                raise ReplicationError(
                    f"could not confirm that the replica has {path}'s last commit: {exc}",
                    path=path,
                ) from exc
            if not result.replicated:
                raise ReplicationError(
                    f"Litestream synced {path} to TXID {result.txid} but the replica confirmed "
                    f"only {result.replicated_txid}; the last commits are not replicated yet.",
                    path=path,
                )
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    def _final(self, path: str, deadline: float) -> SyncResult | None:
        """Claimed: bring the replica up to every commit in ``path`` (None if it is gone).

        Litestream's own final sync at unregister only covers what its
        monitor has read so far (nothing, for a file registered a moment
        ago), so an explicit ``/sync`` with wait comes first.
        """
        if not os.path.exists(path):
            return None
        with self._lock:
            url = self._touched.get(path)
        return self._synced(path, url or self.replica_url_of(path), deadline)

    def _unregister(self, path: str, deadline: float, *, strict: bool) -> None:
        """Claimed: ``/unregister``; a daemon that is gone holds nothing (unless ``strict``)."""
        txid = None
        try:
            txid = self.control.unregister(path, timeout=max(1.0, deadline - time.monotonic()))
        except ControlSocketError as exc:
            if exc.status == 500:
                # It dropped the file from its list, then failed to close it (a file
                # deleted under it): it no longer has it.
                logger.warning("Litestream dropped %s but did not close it cleanly: %s", path, exc)
            elif exc.status is not None or strict:
                raise ReplicationError(
                    f"Litestream would not let go of {path}: {exc}", path=path
                ) from exc
        with self._lock:
            self._record(path, registered=False, counted=txid is not None)

    def _work(self) -> None:
        while True:
            with self._lock:
                path = self._next_dirty()
                while path is None:
                    if self._closed:
                        return
                    self._changed.wait()
                    path = self._next_dirty()
                self._in_flight.add(path)
            try:
                self._apply(path)
            finally:
                self._unclaim(path)

    def _next_dirty(self) -> str | None:
        """Lock held: the oldest dirty path no worker is applying, taken off the list."""
        if not self._daemon_up:
            return None  # the watch loop marks everything again when the daemon is back
        for path in self._dirty:
            if path not in self._in_flight:
                del self._dirty[path]
                return path
        return None

    def _apply(self, path: str) -> None:
        """Claimed: make the daemon's view of ``path`` match what this process wants."""
        with self._lock:
            url = self._wanted.get(path)
            registered = path in self._registered
            touched = path in self._touched
        try:
            if url is not None:
                if not registered:
                    self._register(path, url)
            elif registered or touched:
                deadline = time.monotonic() + self.sync_timeout
                self._final(path, deadline)
                self._unregister(path, deadline, strict=True)
                with self._lock:
                    reopened = path in self._wanted
                    if not reopened:
                        self._touched.pop(path, None)
                if not reopened:
                    truncate_wal(path)
        except (ControlSocketError, ReplicationError) as exc:
            self._failed(path, exc)
            return
        with self._lock:
            self._last_logged.pop(path, None)

    def _record(self, path: str, *, registered: bool, counted: bool) -> None:
        """Lock held: the daemon confirmed ``path``'s state."""
        self._epoch += 1
        if registered:
            self._registered.add(path)
            self._changed_at[path] = self._epoch
            self._counts["registrations"] += counted
        else:
            self._registered.discard(path)
            self._changed_at.pop(path, None)
            self._counts["unregistrations"] += counted

    def _failed(self, path: str, exc: ControlSocketError | ReplicationError) -> None:
        """A request for ``path`` failed: wait for the daemon, or retry at the next check."""
        cause = exc.__cause__ if isinstance(exc.__cause__, ControlSocketError) else exc
        down = isinstance(cause, ControlSocketError) and cause.status is None
        key = "" if down else path  # one log entry for "the daemon is down", one per refusal
        now = time.monotonic()
        with self._lock:
            self._counts["failures"] += 1
            if down:
                self._daemon_up = False
                self._dirty[path] = None  # picked up again once the watch loop reaches it
            # A refusal (a bad replica URL, a file Litestream cannot open) is retried by
            # the watch loop every check_interval, and logged once a minute.
            if not self._log_due(key, now):
                return
        if down:
            logger.warning("replication paused, Litestream unreachable: %s", exc)
        else:
            logger.error("Litestream refused %s: %s", path, exc)

    def _log_due(self, key: str, now: float) -> bool:
        """Lock held: whether a message about ``key`` ("" for the daemon) may be logged now.

        At most one a minute per key; a True answer counts as logging it.
        """
        if now - self._last_logged.get(key, -_LOG_EVERY) < _LOG_EVERY:
            return False
        self._last_logged[key] = now
        return True

    def _watch(self) -> None:
        """Every ``check_interval``: notice a restarted or recovered daemon, re-register files."""
        while True:
            with self._lock:
                if self._closed:
                    return
                self._changed.wait(self.check_interval)
                if self._closed:
                    return
            self._check_daemon()

    def _check_daemon(self) -> None:
        with self._lock:
            asked_at = self._epoch
        try:
            info = self.control.info()
            listed = {entry.path for entry in self.control.databases()}
        except ControlSocketError as exc:
            with self._lock:
                was_up, self._daemon_up = self._daemon_up, False
                due = was_up and self._log_due("", time.monotonic())
            if due:
                logger.warning("replication paused, Litestream unreachable: %s", exc)
            return
        with self._lock:
            if self._daemon is not None and info.identity != self._daemon:
                self._counts["daemon_restarts"] += 1
                logger.warning(
                    "Litestream restarted (pid %d, was %d): registering the %d open files again",
                    info.pid,
                    self._daemon[0],
                    len(self._wanted),
                )
            elif not self._daemon_up:
                logger.warning(
                    "Litestream is reachable again (pid %d): %d files open here",
                    info.pid,
                    len(self._wanted),
                )
            self._daemon = info.identity
            self._daemon_up = True
            self._last_logged.pop("", None)
            # What the daemon lists is the truth for every file this process cares about;
            # files other processes registered are theirs to unregister.
            for path in self._wanted.keys() | self._registered | self._dirty.keys():
                if path in self._in_flight or self._changed_at.get(path, 0) > asked_at:
                    continue  # answered after the /list was taken: our view is newer
                if path in listed:
                    if path in self._wanted or path in self._dirty:
                        self._registered.add(path)
                    continue
                self._registered.discard(path)
                if path in self._wanted:
                    self._dirty[path] = None
            for path in self._touched.keys() - self._wanted.keys() - self._in_flight:
                self._dirty[path] = None  # closed here, still owed a final sync: retry it
            if self._dirty:
                self._changed.notify_all()


# -- fork: threads do not survive it ---------------------------------------------------------

_live_replicators: weakref.WeakSet[Replicator] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for replicator in list(_live_replicators):
        replicator._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
