"""Worker threads and the async capacity limit of one pool or registry.

Owns ``AsyncWorkers``: the slots (one per connection the pool or registry may
open, in all and per file, waited for in the loop in arrival order), the
shared queue of jobs and the few hot threads serving it (more while they are
stuck in waits), a checkout's lane (its jobs one at a time, in order, on any
free thread), the threads' end after ``IDLE_SECONDS`` without work, starting
empty after ``fork()``, and ``to_worker`` for sync work that needs no
connection. Does not know what the jobs do.
"""

from __future__ import annotations

import collections
import contextvars
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

from ..errors import PoolTimeoutError
from .loops import Loop, Waiter, running_loop, wake_quietly

T = TypeVar("T")

#: A worker thread with nothing to do for this long ends; the next checkout makes a new one.
IDLE_SECONDS = 10.0


#: Threads started at once for queued work; more only while these are stuck.
EAGER_THREADS = max(2, min(4, os.cpu_count() or 2))
#: A job running longer than this counts as stuck in a wait (for a lock, a
#: connection, a slow statement), and queued work gets more threads, up to the
#: limit. Well above the GIL's switch interval (5 ms), so that waiting for the
#: GIL on a busy machine does not count as stuck.
STUCK_AFTER = 0.02


class Job:
    """One call for a worker thread, run in the coroutine's context; ``run`` returns the next.

    A job with a ``waiter`` is awaited; one without is pipelined (the checkout,
    a BEGIN): nobody waits for it, and if it fails the lane keeps its error
    for the next awaited job to raise instead of running. ``always`` jobs (the
    check-in) run whatever failed before them.
    """

    __slots__ = (
        "always",
        "args",
        "context",
        "error",
        "function",
        "lane",
        "result",
        "skip",
        "waiter",
    )

    def __init__(
        self,
        function: Callable[..., Any],
        args: tuple[Any, ...],
        context: contextvars.Context,
        waiter: Waiter | None,
        lane: Lane | None = None,
        *,
        always: bool = False,
    ) -> None:
        self.function = function
        self.args = args
        self.context = context
        self.waiter = waiter
        self.lane = lane
        self.always = always
        self.skip = False  # set by a cancelled coroutine; checked when the job starts
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> Job | None:
        lane = self.lane
        earlier = lane.failure if lane is not None and not self.always else None
        if self.skip:
            self.error = Skipped()
        elif earlier is not None:
            if self.waiter is not None:  # report the pipelined job's error here, once
                assert lane is not None
                lane.failure = None
                self.error = earlier
            else:
                self.error = Skipped()
        else:
            try:
                self.result = self.context.run(self.function, *self.args)
            except BaseException as exc:
                self.error = exc
                if self.waiter is None and lane is not None:
                    lane.failure = exc
        waiter = self.waiter
        if waiter is not None:
            waiter.done = True
            wake_quietly(waiter)
        return lane.next() if lane is not None else None

    def outcome(self) -> Any:
        error, self.error = self.error, None  # drop the traceback's reference cycle with us
        if error is not None:
            raise error
        return self.result


class Skipped(Exception):
    """A job that did not run: its coroutine was cancelled, or a job before it failed."""


class Lane:
    """The jobs of one checkout, one at a time in submission order, on whichever thread is free.

    Any worker thread may run a checkout's next job (SQLite connections may
    move between threads, never be used by two at once); the lane is what
    keeps two tasks sharing one ``AsyncConnection`` from using it at once, and
    lets a job be submitted without waiting for the one before it.
    """

    __slots__ = ("_backlog", "_busy", "_lock", "failure")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._busy = False
        self._backlog: collections.deque[Job] = collections.deque()
        self.failure: BaseException | None = None  # a pipelined job's, not reported yet

    def submit(self, job: Job, workers: AsyncWorkers) -> None:
        with self._lock:
            if self._busy:
                self._backlog.append(job)
                return
            self._busy = True
        workers.submit(job)

    def next(self) -> Job | None:
        with self._lock:
            if self._backlog:
                return self._backlog.popleft()
            self._busy = False
            return None


class _Thread:
    __slots__ = ("started",)

    def __init__(self) -> None:
        self.started = 0.0  # when its current job started (read unlocked by the watcher)


class _SlotWaiter(Waiter):
    __slots__ = ("key",)

    def __init__(self, loop: Loop, key: str | None) -> None:
        super().__init__(loop)
        self.key = key


class AsyncWorkers:
    """The async side of one pool or registry: its capacity limit and its worker threads.

    At most ``limit`` checkouts are in flight (the pool's or registry's cap on
    connections), and at most ``per_key_limit`` for one key (a registry's
    connections per file; the key is the file): a coroutine asking for one
    more waits in the loop, in arrival order, up to ``timeout`` seconds, then
    gets ``PoolTimeoutError``. So a crowd of requests for one full pool waits
    without holding threads, and the checkouts that run find a connection.
    Statements run on worker threads of this object's own, never the web
    framework's threadpool, so database waits cannot starve sync endpoints
    of its tokens. Few threads run at once (``EAGER_THREADS``; on a small
    machine more threads only contend for the GIL), and more are started
    while the running ones are all stuck longer than ``STUCK_AFTER`` in a
    wait (another process's write lock, a slow statement), up to ``limit``;
    threads idle for ``IDLE_SECONDS`` end. Several event loops may share one
    ``AsyncWorkers``.
    """

    def __init__(
        self,
        limit: int,
        *,
        timeout: float,
        describe: str,
        path: str | None = None,
        per_key_limit: int | None = None,
    ) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        if per_key_limit is not None and per_key_limit < 1:
            raise ValueError(f"per_key_limit must be at least 1, not {per_key_limit}")
        self.limit = limit
        self.per_key_limit = per_key_limit
        self.timeout = timeout
        self.describe = describe
        self.path = path
        self._new_state()
        _live_workers.add(self)

    def _new_state(self) -> None:
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # idle threads wait here for jobs
        self._watch = threading.Condition(self._lock)  # the watcher parks here
        self._queue: collections.deque[Job] = collections.deque()
        self._threads: set[_Thread] = set()
        self._running: set[_Thread] = set()
        self._idle = 0
        self._watcher = False
        self._watcher_parked = False
        self._in_use = 0
        self._in_use_by_key: dict[str, int] = {}
        self._slot_waiters: collections.deque[_SlotWaiter] = collections.deque()

    # -- introspection -------------------------------------------------------------------

    @property
    def threads(self) -> int:
        """Worker threads alive now."""
        return len(self._threads)

    @property
    def in_use(self) -> int:
        """Checkouts in flight now (each holds, or is about to hold, a connection)."""
        return self._in_use

    @property
    def waiting(self) -> int:
        """Coroutines waiting for a checkout slot now."""
        return len(self._slot_waiters)

    def __repr__(self) -> str:
        return (
            f"<AsyncWorkers {self.describe}: {self._in_use}/{self.limit} in use, "
            f"{len(self._threads)} threads>"
        )

    # -- slots: checkouts in flight ------------------------------------------------------

    def _key_full(self, key: str | None) -> bool:
        limit = self.per_key_limit
        return key is not None and limit is not None and self._in_use_by_key.get(key, 0) >= limit

    def _count_in(self, key: str | None) -> None:
        self._in_use += 1
        if key is not None:
            self._in_use_by_key[key] = self._in_use_by_key.get(key, 0) + 1

    def _count_out(self, key: str | None) -> None:
        self._in_use -= 1
        if key is not None:
            left = self._in_use_by_key[key] - 1
            if left:
                self._in_use_by_key[key] = left
            else:
                del self._in_use_by_key[key]

    async def take_slot(self, loop: Loop, key: str | None = None) -> None:
        """A slot for one checkout of ``key``; waits in arrival order up to ``timeout``.

        No coroutine that could use a slot is ever left waiting (a release
        hands its slot to the first that can), so a newcomer with room for
        its key may take one at once without jumping that queue.
        """
        with self._lock:
            if self._in_use < self.limit and not self._key_full(key):
                self._count_in(key)
                return
            waiter = _SlotWaiter(loop, key)
            self._slot_waiters.append(waiter)
        started = time.monotonic()
        try:
            await loop.wait(waiter, self.timeout)
        except BaseException:
            if not self._stop_waiting(waiter):  # cancelled just as a slot was handed over
                self.release_slot(key)
            raise
        if self._stop_waiting(waiter):
            raise self._timeout_error(key, time.monotonic() - started)

    def _stop_waiting(self, waiter: _SlotWaiter) -> bool:
        """Leave the queue; False if a slot was handed to ``waiter`` already."""
        with self._lock:
            if waiter.done:
                return False
            self._slot_waiters.remove(waiter)
            return True

    def release_slot(self, key: str | None = None) -> None:
        """Give the slot back, and hand one to the first waiting coroutine that can use it."""
        with self._lock:
            self._count_out(key)
            self._hand_on()

    def _hand_on(self) -> None:
        """Lock held: hand a free slot to the first waiter with room for its key."""
        if self._in_use >= self.limit:
            return
        for waiter in self._slot_waiters:
            if not self._key_full(waiter.key):
                self._slot_waiters.remove(waiter)
                self._count_in(waiter.key)
                waiter.done = True
                if not wake_quietly(waiter):  # its loop is gone: the slot goes on
                    self._count_out(waiter.key)
                    self._hand_on()
                return

    def _timeout_error(self, key: str | None, waited: float) -> PoolTimeoutError:
        if self._key_full(key):
            limit, scope = self.per_key_limit or self.limit, key
            what = f"{key}: all {limit} connections to it"
        else:
            limit, scope = self.limit, self.path
            what = f"{self.describe}: all {limit} connections it may open"
        return PoolTimeoutError(
            f"{what} stayed checked out by async code for {waited:.3g} s. Requests hold "
            f"connections too long (a slow query, or a connection kept across a network "
            f"call), or raise the pool's size or timeout.",
            path=scope,
            limit=limit,
            timeout=self.timeout,
        )

    # -- threads ---------------------------------------------------------------------------

    def submit(self, job: Job) -> None:
        """Queue ``job`` for a worker thread, starting one if none is idle."""
        new: list[_Thread] = []
        start_watcher = False
        with self._lock:
            self._queue.append(job)
            if self._idle:
                self._work.notify()
                return
            if len(self._threads) < min(EAGER_THREADS, self.limit):
                new = self._add_threads(1)
            elif self._watcher_parked:
                self._watch.notify()
            elif not self._watcher:
                self._watcher = start_watcher = True
        self._start(new)
        if start_watcher:
            threading.Thread(
                target=self._watch_for_stuck_threads, name="cf-db-async-watcher", daemon=True
            ).start()

    def _add_threads(self, count: int) -> list[_Thread]:
        """Lock held: count ``count`` more threads in; start them after releasing the lock."""
        new = [_Thread() for _ in range(min(count, self.limit - len(self._threads)))]
        self._threads.update(new)
        return new

    def _start(self, new: list[_Thread]) -> None:
        for state in new:
            thread = threading.Thread(
                target=self._serve, args=(state,), name="cf-db-async", daemon=True
            )
            try:
                thread.start()
            except BaseException:
                with self._lock:
                    self._threads.discard(state)
                raise

    def _serve(self, me: _Thread) -> None:
        lock = self._lock
        lock.acquire()
        try:
            while True:
                if not self._queue:
                    self._idle += 1
                    woken = self._work.wait(IDLE_SECONDS)
                    self._idle -= 1
                    if not self._queue:
                        if not woken:
                            self._threads.discard(me)
                            return
                        continue
                job: Job | None = self._queue.popleft()
                self._running.add(me)
                lock.release()
                try:
                    while job is not None:
                        me.started = time.monotonic()
                        job = job.run()
                finally:
                    lock.acquire()
                    self._running.discard(me)
        finally:
            lock.release()

    def _watch_for_stuck_threads(self) -> None:
        """Start threads for queued work while the running ones are stuck in waits.

        Doubling: when every running thread is stuck, as many new ones as
        there are stuck (bounded by the queue and the limit), so that a burst
        of requests that all wait (for another process's write lock, say) is
        absorbed in a few steps instead of one thread per step.
        """
        with self._lock:
            while True:
                if not self._queue or self._idle:
                    self._watcher_parked = True
                    woken = self._watch.wait(IDLE_SECONDS)
                    self._watcher_parked = False
                    if not woken and not self._queue:
                        self._watcher = False
                        return
                    continue
                self._watch.wait(STUCK_AFTER / 4)
                if not self._queue or self._idle:
                    continue
                now = time.monotonic()
                moving = sum(1 for t in self._running if now - t.started < STUCK_AFTER)
                if moving >= EAGER_THREADS:
                    continue
                stuck = len(self._running) - moving
                wanted = min(max(EAGER_THREADS - moving, stuck), len(self._queue))
                new = self._add_threads(wanted)
                if new:
                    self._lock.release()
                    try:
                        self._start(new)
                    finally:
                        self._lock.acquire()

    def _after_fork_in_child(self) -> None:
        # Threads do not survive fork(): the child starts with none, and no checkouts.
        self._new_state()


_live_workers: weakref.WeakSet[AsyncWorkers] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for workers in list(_live_workers):
        workers._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# -- other sync work, off the loop ----------------------------------------------------------

_spare_workers: AsyncWorkers | None = None
_spare_workers_guard = threading.Lock()


async def to_worker(function: Callable[..., T], /, *args: Any) -> T:
    """``function(*args)`` on a worker thread, not holding a connection; the loop waits for it.

    For the sync work around the database that must not block the loop
    either (the start-up check, a migration run at start). Uses a few
    threads of its own, on asyncio or trio; a cancellation waits for the
    function to return (it cannot be interrupted).
    """
    global _spare_workers
    with _spare_workers_guard:
        if _spare_workers is None:
            _spare_workers = AsyncWorkers(4, timeout=float("inf"), describe="spare workers")
        workers = _spare_workers
    loop = running_loop()
    waiter = Waiter(loop)
    job = Job(function, args, contextvars.copy_context(), waiter)
    workers.submit(job)
    cancelled = await loop.wait_shielded(waiter)
    result: T = job.outcome()
    if cancelled:
        raise loop.cancelled()
    return result
