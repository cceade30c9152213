"""Checking a connection out for a coroutine, and back in; one unit of work in one trip.

Owns ``AsyncCheckout`` (a slot, then the pool's sync checkout pipelined on a
worker; the check-in awaited and shielded; a checkout still waiting when the
block fails or a statement behind it is cancelled abandoned to the worker),
and ``run_checked_out`` (checkout, function, check-in as one job). Does not
own pooling: it is handed the pool's or registry's sync checkout.
"""

from __future__ import annotations

import asyncio
import contextvars
import sqlite3
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any, TypeVar

from ..connect import Connection
from .connection import AsyncConnection
from .loops import Loop, Waiter, running_loop
from .workers import AsyncWorkers, Job, Lane, Skipped

T = TypeVar("T")

Checkout = Callable[[], AbstractContextManager[Connection]]


class AsyncCheckout:
    """``async with ... as db:``: a pooled connection for the block, driven from a coroutine.

    ``checkout`` is the pool's or registry's sync checkout for the file at
    ``path`` (a function returning ``pool.connection()``), run on a worker
    thread like everything else; ``workers`` the pool's or registry's
    ``AsyncWorkers``; ``key`` the file, for a registry's per-file limit.
    Entering waits only for a slot (one per connection the pool may open);
    the checkout itself is pipelined ahead of the first statement. Leaving
    checks the connection in (rolled back if the block left a transaction
    open) and waits for that, shielded from cancellation.
    A checkout still waiting for a connection when the block ends with an
    exception, or when a statement waiting behind it is cancelled, is
    abandoned at once: the worker returns the connection when it gets one.
    """

    __slots__ = (
        "_checkout",
        "_connection",
        "_context",
        "_key",
        "_lane",
        "_loop",
        "_path",
        "_pending",
        "_workers",
    )

    def __init__(
        self, checkout: Checkout, workers: AsyncWorkers, *, path: str, key: str | None = None
    ) -> None:
        self._checkout = checkout
        self._workers = workers
        self._path = path
        self._key = key
        self._connection: AsyncConnection | None = None
        self._pending: PendingCheckout | None = None
        self._lane: Lane | None = None
        self._context: contextvars.Context | None = None
        self._loop: Loop | None = None

    async def __aenter__(self) -> AsyncConnection:
        loop = running_loop()
        workers = self._workers
        await workers.take_slot(loop, self._key)
        context = contextvars.copy_context()
        lane = Lane()
        pending = PendingCheckout(self._checkout, workers, self._path, self._key)
        lane.submit(Job(pending.enter, (), context, None, lane), workers)
        connection = AsyncConnection(self._path, pending, workers, lane, loop, context)
        # Kept here too: the exit needs them, and they are the connection's own business.
        self._connection, self._pending = connection, pending
        self._lane, self._context, self._loop = lane, context, loop
        return connection

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        pending, lane, context, loop = self._pending, self._lane, self._context, self._loop
        self._connection = self._pending = self._lane = self._context = self._loop = None
        if pending is None or lane is None or context is None or loop is None:
            raise RuntimeError("__aexit__ without __aenter__ on an async checkout")
        pending.closed = True  # refuse further use from now on, even while checking in
        if exc is not None and pending.abandon():
            return  # still waiting for a connection: not worth delaying the error for
        waiter = Waiter(loop)
        job = Job(pending.exit, (exc,), context, waiter, lane, always=True)
        lane.submit(job, self._workers)
        cancelled = await loop.wait_shielded(waiter)
        job.outcome()
        if cancelled:
            raise loop.cancelled()


class PendingCheckout:
    """The sync checkout behind one ``async with``, as the worker threads see it.

    ``enter`` runs on a worker, pipelined; ``abandon()`` comes from the
    coroutine (its block ended, or a statement waiting behind the checkout
    was cancelled) and races with it; a lock decides which side returns the
    connection. Whoever ends the checkout frees its slot.
    """

    __slots__ = (
        "_abandoned",
        "_block",
        "_entered",
        "_lock",
        "_open",
        "_workers",
        "closed",
        "db",
        "error",
        "key",
        "path",
    )

    def __init__(
        self, open_block: Checkout, workers: AsyncWorkers, path: str, key: str | None
    ) -> None:
        self._open = open_block
        self._workers = workers
        self.path = path
        self.key = key
        self._lock = threading.Lock()
        self._abandoned = False
        self._entered = False
        self._block: AbstractContextManager[Connection] | None = None
        self.db: Connection | None = None
        self.error: BaseException | None = None
        self.closed = False  # the `async with` ended

    def enter(self) -> None:
        """On a worker: check a connection out (waiting for one if need be)."""
        with self._lock:
            if self._abandoned:
                self._entered = True
                self._workers.release_slot(self.key)
                return
        try:
            block = self._open()
            db = block.__enter__()
        except BaseException as exc:
            self.error = exc  # raised by every statement of the block
            self._finish_entering()
            self._workers.release_slot(self.key)
            return
        self._block = block
        self.db = db
        if self._finish_entering():  # given up meanwhile: nobody else will return it
            self.exit(asyncio.CancelledError())

    def _finish_entering(self) -> bool:
        """True if the coroutine gave up meanwhile."""
        with self._lock:
            self._entered = True
            return self._abandoned

    def abandon(self) -> bool:
        """From the coroutine: True if the checkout had not ended; the worker now returns it."""
        with self._lock:
            if self._entered:
                return False
            self._abandoned = True
            return True

    def connection(self) -> Connection:
        """On a worker: the checked-out connection, or the error that kept it from us."""
        db = self.db
        if db is None:
            if self.error is not None:
                raise self.error
            raise sqlite3.ProgrammingError(f"no connection to {self.path} was checked out")
        return db

    def exit(self, exc: BaseException | None) -> None:
        """On a worker: check the connection in (rolled back, reset), then free the slot."""
        block, self._block = self._block, None
        self.db = None
        if block is None:  # the checkout failed, and freed the slot then
            return
        try:
            block.__exit__(type(exc) if exc is not None else None, exc, None)
        finally:
            self._workers.release_slot(self.key)


# -- one unit of work in one trip -----------------------------------------------------------


async def run_checked_out(
    checkout: Checkout,
    workers: AsyncWorkers,
    function: Callable[..., T],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    key: str | None = None,
) -> T:
    """Check out, call ``function(connection, *args, **kwargs)``, check in: one worker trip.

    The fastest way for a coroutine to do one unit of work: a single wake-up
    of a worker thread per request. Cancellation interrupts the statement
    running, and waits for the check-in.
    """
    loop = running_loop()
    await workers.take_slot(loop, key)
    unit = _UnitOfWork(checkout, workers, key, function, args, kwargs)
    waiter = Waiter(loop)
    job = Job(unit.run, (), contextvars.copy_context(), waiter)
    workers.submit(job)
    try:
        await loop.wait(waiter)
    except BaseException:
        if not waiter.done:
            unit.cancel()
            await loop.wait_shielded(waiter)
        raise
    result: T = job.outcome()
    return result


class _UnitOfWork:
    """``run_checked_out``'s job: the connection is published so a cancellation can interrupt it."""

    __slots__ = (
        "_args",
        "_cancelled",
        "_checkout",
        "_db",
        "_function",
        "_key",
        "_kwargs",
        "_workers",
    )

    def __init__(
        self,
        checkout: Checkout,
        workers: AsyncWorkers,
        key: str | None,
        function: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        self._checkout = checkout
        self._workers = workers
        self._key = key
        self._function = function
        self._args = args
        self._kwargs = kwargs
        self._db: Connection | None = None
        self._cancelled = False

    def run(self) -> Any:
        try:
            with self._checkout() as db:
                self._db = db
                if self._cancelled:
                    raise Skipped()
                try:
                    return self._function(db, *self._args, **self._kwargs)
                finally:
                    self._db = None
        finally:
            self._workers.release_slot(self._key)

    def cancel(self) -> None:
        """From the cancelled coroutine (loop thread)."""
        self._cancelled = True
        db = self._db
        if db is not None:
            db.interrupt()
