"""ConnectionBudget: how many connections a group of pools may hold open, and their LRU.

Owns the cap on open connections that a group of pools shares (a registry's
pools, or one pool on its own), the lock that every count of the group lives
under, the wait for room under the cap, and the least-recently-used order of
the group's idle connections, so that a pool that needs a connection at the
cap can close the stalest idle connection of another. Does not own any
connection, nor which pool serves a file (file_pool.py, registry.py).

The pools talk to their budget through the methods under "the pools' side",
always with ``lock`` held; the budget talks back only through the callables a
pool or the group's owner gave it (``on_evicted``, ``on_pool_unused``).
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .connection import PooledConnection
    from .file_pool import ConnectionPool

#: Called with the lock held when a pool of the group has no connection left:
#: True lets the pool close itself (a registry forgets pools it no longer needs).
PoolUnused = Callable[["ConnectionPool"], bool]


class ConnectionBudget:
    """At most ``max_connections`` connections open across the pools that share it.

    Give one to several ``ConnectionPool(..., budget=...)`` to cap them
    together (``PoolRegistry`` makes its own). With ``evict_idle`` (the
    default), a pool that needs a connection when the cap is reached closes
    the least recently used idle connection of another pool of the group;
    without it, it waits until one is closed. Read the counts below for
    metrics; the methods under "the pools' side" are for the pools of the
    group, called with ``lock`` held, not for applications.
    """

    def __init__(
        self,
        max_connections: int,
        *,
        evict_idle: bool = True,
        on_pool_unused: PoolUnused | None = None,
    ) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, not {max_connections}")
        self.max_connections = max_connections
        self.evict_idle = evict_idle
        self._on_pool_unused = on_pool_unused
        self._start_empty()
        self.evictions = 0
        self.migration_runs = 0
        self.migrations_applied = 0
        # Checkouts handed out since the budget was made, kept apart from the budget
        # so that what it counted outlives it (the metrics' zero-wait count).
        self._checkouts = [0]
        weakref.finalize(self, _retire_checkouts, self._checkouts)
        _live_budgets.add(self)

    def _start_empty(self) -> None:
        """No connection open, nobody waiting, fresh locks (also in a forked child)."""
        #: The group's lock: every pool's counts live under it, and every pool's
        #: condition is built on it, so counts across files never need two locks.
        self.lock = threading.Lock()
        # Notified when a connection is closed, or comes back idle while idle
        # ones may be evicted: either may let a waiter for the cap go on.
        self._freed = threading.Condition(self.lock)
        self._open = 0  # open or being opened, across the group
        self._busy = 0  # checked out (or being opened for a checkout)
        self._waiting = 0  # threads blocked in a pool of the group, for any reason
        self._cap_waiters = 0  # of those, the ones waiting on `_freed`
        # id(connection) -> (connection, its pool's eviction callback), oldest first;
        # kept only when idle connections may be evicted.
        self._idle: OrderedDict[int, tuple[PooledConnection, Callable[[PooledConnection], None]]]
        self._idle = OrderedDict()

    # -- counts, for stats and metrics (exact when read with `lock` held) ----------------

    @property
    def open_connections(self) -> int:
        """Connections open (or being opened) across the group right now."""
        return self._open

    @property
    def busy_connections(self) -> int:
        """Connections checked out across the group right now."""
        return self._busy

    @property
    def idle_connections(self) -> int:
        """Idle connections that may be evicted (0 without ``evict_idle``)."""
        return len(self._idle)

    @property
    def waiting(self) -> int:
        """Threads blocked in a pool of the group right now (for a connection, or in close)."""
        return self._waiting

    # -- the pools' side: called with `lock` held -----------------------------------------

    def take_slot(self) -> bool:
        """Count one more connection open, if there is room under the cap."""
        if self._open >= self.max_connections:
            return False
        self._open += 1
        return True

    def give_back_slot(self) -> None:
        """A connection of the group was closed (or failed to open): wake a waiter for the cap."""
        self._open -= 1
        if self._cap_waiters:
            self._freed.notify()

    def add_idle(
        self, conn: PooledConnection, on_evicted: Callable[[PooledConnection], None]
    ) -> None:
        """``conn`` came back idle; ``on_evicted(conn)`` if it is later taken for another pool."""
        if not self.evict_idle:
            return
        self._idle[id(conn)] = (conn, on_evicted)
        if self._cap_waiters:  # it can be evicted for them
            self._freed.notify()

    def remove_idle(self, conn: PooledConnection) -> None:
        """``conn`` is idle no longer: checked out again, or being closed by its pool."""
        if self.evict_idle:
            self._idle.pop(id(conn), None)

    def evict_oldest_idle(self) -> PooledConnection | None:
        """The least recently used idle connection of the group, taken from its pool.

        Its slot passes to the caller, who closes it (outside the lock) before
        opening its own, so the cap is never exceeded. The owning pool is told
        through the ``on_evicted`` it gave with the connection.
        """
        if not self._idle:
            return None
        _, (conn, on_evicted) = self._idle.popitem(last=False)
        self.evictions += 1
        on_evicted(conn)
        return conn

    def wait_for_slot(self, timeout: float) -> None:
        """Block until a connection of the group is closed or comes back idle, or ``timeout``."""
        self._cap_waiters += 1
        try:
            self.wait_on(self._freed, timeout)
        finally:
            self._cap_waiters -= 1

    def wake_cap_waiters(self) -> None:
        """Wake every waiter for the cap: a pool of the group closed, its waiters must see it."""
        self._freed.notify_all()

    def wait_on(self, condition: threading.Condition, timeout: float) -> None:
        """Block on ``condition`` (built on ``lock``): the one place a thread of the group waits."""
        self._waiting += 1
        try:
            condition.wait(timeout)
        finally:
            self._waiting -= 1

    def checked_out(self) -> None:
        """A pool handed a connection out (or began to open one for a checkout)."""
        self._busy += 1
        self._checkouts[0] += 1

    def checked_in(self) -> None:
        """A connection came back from its checkout (or failed to open)."""
        self._busy -= 1

    def migration_ran(self, applied: int) -> None:
        """A pool ran its migrations folder once, applying ``applied`` files."""
        self.migration_runs += 1
        self.migrations_applied += applied

    def pool_unused(self, pool: ConnectionPool) -> bool:
        """``pool`` has no connection left: True if the group's owner lets it go."""
        return self._on_pool_unused is not None and self._on_pool_unused(pool)

    def __repr__(self) -> str:
        return f"<ConnectionBudget {self._open}/{self.max_connections} open>"


# -- fork safety (see connection.py) ----------------------------------------------------
#
# A forked child starts every budget empty, with new locks (another thread may
# have held the old ones at the moment of the fork). This runs before the pools
# start empty themselves (file_pool.py, imported after this module): callbacks
# registered for after_in_child run in registration order, and each pool builds
# its new condition on its budget's new lock.

_live_budgets: weakref.WeakSet[ConnectionBudget] = weakref.WeakSet()
_retired_checkouts = [0]  # what budgets that are gone had counted


def _retire_checkouts(tally: list[int]) -> None:
    _retired_checkouts[0] += tally[0]


def live_budgets() -> list[ConnectionBudget]:
    """Every budget of this process still in use, for the gauges (a copy: safe to iterate)."""
    return list(_live_budgets)


def checkouts_ever() -> int:
    """Checkouts handed out by every budget of this process since it started (or forked)."""
    return _retired_checkouts[0] + sum(budget._checkouts[0] for budget in list(_live_budgets))


def _after_fork_in_child() -> None:
    _retired_checkouts[0] = 0
    for budget in list(_live_budgets):
        budget._start_empty()
        budget._checkouts[0] = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
