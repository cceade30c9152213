"""What a registry does around a file's life when replication or placement is on.

Owns the registry's side of replication (docs/replication.md): telling the
replicator when a file's first connection in this process opened and when
its last one closed, the first checkout of an absent file (restored from the
replica when the placement says this host owns the user, refused when another
host does), and the order of the steps before a file is dropped. The
registry calls it through named methods and holds none of its state; with
replication and placement off the registry has no ``FileLifecycle`` at all,
so a checkout pays one ``is None`` test. Does not talk to Litestream itself
(replication/ does), nor decide placement (the product's directory does).

Lock order: the registry's (budget's) lock, then the replicator's lock, held
only to record a wish (``file_closed`` runs under the budget lock and never
blocks). Restore-on-miss holds a per-file lock of this object while it runs;
no budget lock is held then.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
from typing import TYPE_CHECKING, Protocol

from ..errors import PlacedElsewhereError

if TYPE_CHECKING:
    from ..placement import Placement
    from ..replication import ErasureResult, RestoreResult, SyncResult
    from .file_pool import ConnectionPool

logger = logging.getLogger("circuitforge_core.db")


class FileReplication(Protocol):
    """What the registry asks of replication (``replication.Replicator`` is one)."""

    def file_opened(self, path: str) -> None: ...
    def file_closed(self, path: str) -> None: ...
    def release(
        self, path: str, *, final_sync: bool = True, timeout: float | None = None
    ) -> SyncResult | None: ...
    def sync(self, path: str, *, timeout: float | None = None) -> SyncResult: ...
    def restore(
        self,
        path: str,
        *,
        timestamp: dt.datetime | str | None = None,
        replace: bool = False,
        missing_ok: bool = False,
    ) -> RestoreResult | None: ...
    def erase(self, path: str) -> ErasureResult: ...
    def forget_local_state(self, path: str) -> list[str]: ...
    def truncate_wal(self, path: str, *, timeout: float = 0.0) -> bool: ...


class FileLifecycle:
    """The registry's replication and placement steps, one named method per moment."""

    def __init__(self, replication: FileReplication | None, placement: Placement | None) -> None:
        self.replication = replication
        self.placement = placement
        # File -> the pool whose first connection was reported: a pool let go late (an
        # evict finishing after a new pool took over) must not report its successor's close.
        self._opened: dict[str, ConnectionPool] = {}
        self._lock = threading.Lock()
        self._first_use: dict[str, threading.Lock] = {}

    # -- checkout ------------------------------------------------------------------------

    def before_checkout(self, path: str) -> None:
        """Every checkout: an absent or empty file is first settled with the placement.

        One ``stat`` when the file is there. Otherwise the first thread of
        this process restores it from the replica if this host owns the user
        (the others wait for it), a user placed on another host raises
        ``PlacedElsewhereError``, and a user nobody placed gets a new file
        as before (never a restore: a typo must not resurrect an account).
        """
        if self.placement is None or _has_content(path):
            return
        with self._lock:
            lock = self._first_use.setdefault(path, threading.Lock())
        with lock:
            try:
                if _has_content(path):
                    return  # another thread restored it meanwhile
                where = self.placement.where(path)
                if where.state == "elsewhere":
                    raise PlacedElsewhereError(
                        f"{path}: its user lives on {where.host}, not on this host "
                        f"({self.placement.this_host}); it is not opened here. Send the request "
                        f"to {where.host} (the middleware's 'elsewhere' response does).",
                        path=path,
                        host=where.host or "",
                    )
                if where.state == "here" and self.replication is not None:
                    restored = self.replication.restore(path, missing_ok=True)
                    if restored is not None:
                        logger.info(
                            "%s was missing on this host, which owns its user: restored it "
                            "from the replica (%.3f s)",
                            path,
                            restored.seconds,
                        )
            finally:
                with self._lock:
                    self._first_use.pop(path, None)

    def after_checkout(self, path: str, pool: ConnectionPool) -> None:
        """A checkout from ``pool`` succeeded: report the file's first connection here."""
        if self.replication is None or self._opened.get(path) is pool:
            return
        with self._lock:
            if self._opened.get(path) is pool:
                return
            self._opened[path] = pool
        self.replication.file_opened(path)

    def closed(self, path: str, pool: ConnectionPool | None) -> None:
        """``pool``, the file's, was let go: its last connection closed; records it, no I/O."""
        if self.replication is None or pool is None or self._opened.get(path) is not pool:
            return
        with self._lock:
            if self._opened.get(path) is not pool:
                return  # a newer pool holds the file open now
            del self._opened[path]
        self.replication.file_closed(path)

    # -- retiring ------------------------------------------------------------------------

    def release(
        self,
        path: str,
        pool: ConnectionPool | None,
        *,
        final_sync: bool,
        timeout: float | None,
    ) -> None:
        """``pool``'s connections closed, no new ones: Litestream lets go (after a last sync)."""
        self.closed(path, pool)
        if self.replication is not None:
            self.replication.release(path, final_sync=final_sync, timeout=timeout)

    def drop(self, path: str, *, erase_replica: bool) -> list[str]:
        """Released, about to be deleted: its replica (if asked) and Litestream's state go first.

        Litestream's state beside the file always goes: left behind, it would
        describe a database that no longer exists to a re-signup's new file.
        """
        if self.replication is None:
            return []
        if not erase_replica:
            return self.replication.forget_local_state(path)
        result = self.replication.erase(path)  # it logs what it erased
        return [*result.replica_objects, *result.local_state]


def _has_content(path: str) -> bool:
    """The file exists and is not the empty placeholder ``user_db_path`` creates."""
    try:
        return os.stat(path).st_size > 0
    except FileNotFoundError:
        return False
