"""The in-process writer lock of each database file: fair to waiters, cheap when free.

Owns the lock ``transaction()`` takes before ``BEGIN IMMEDIATE`` so that the
threads of one process (and async tasks, through their worker threads) queue
for a file's write lock in about the order they asked, instead of leaving the
order to SQLite's busy handler, and the bounded table of those locks by path.
Does not own transactions (transaction.py) nor waits across processes (the
busy handler's).

The policy, ``WriterLock(handoff_after=...)``: a free lock is taken at once,
even when others wait (so a thread that just committed may go on writing
without a context switch: the no-contention speed of a plain lock); but once
the longest waiter has waited ``handoff_after`` seconds, ``release()`` hands
the lock to it directly, and a newcomer cannot take it first. A plain
``threading.Lock`` lets the releasing thread barge back in for ever (p99
waits near 100 ms at 8 threads with 1 ms of work each); strict first-in
first-out hand-off on every release (``handoff_after=0``) costs a thread
switch per transaction and about a third of the throughput when
transactions are short. ``bench/writers.py`` measures these and others
side by side; the default threshold is the figure it chose.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable

#: How long the longest waiter may wait before the lock is handed to it (seconds).
DEFAULT_HANDOFF_AFTER = 0.002

# Cloud mode touches thousands of files: past this many, locks nobody holds or
# waits for are forgotten. Forgetting one that a thread is about to take only
# costs fairness for a moment (SQLite's own lock still serialises the writers).
WRITER_LOCKS_KEPT = 1024


class WaitTicket:
    """One waiter's place in a ``WriterLock``'s queue."""

    __slots__ = ("arrived", "granted", "notify", "signalled")

    def __init__(self, arrived: float, notify: Callable[[], object]) -> None:
        self.arrived = arrived
        self.notify = notify  # called, by whichever thread releases, when it may claim
        self.granted = False  # the lock was handed to this waiter
        self.signalled = False  # notified and not claimed since


class WriterLock:
    """A lock that barges while waits are short and hands off once a waiter waited too long.

    ``acquire(timeout=...)`` returns False if the lock could not be had in time.
    Any thread may release it (it is not owned by a thread), like
    ``threading.Lock``. Only the longest waiter is notified at a release, so
    a release never wakes a herd. Code that must not block a thread (a
    coroutine) waits with ``enqueue``/``claim``/``withdraw`` instead, in the
    same queue as the threads.
    """

    __slots__ = ("_guard", "_held", "_waiters", "handoff_after")

    def __init__(self, *, handoff_after: float = DEFAULT_HANDOFF_AFTER) -> None:
        self.handoff_after = handoff_after
        self._guard = threading.Lock()
        self._held = False
        self._waiters: collections.deque[WaitTicket] = collections.deque()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """``threading.Lock.acquire``'s signature: wait (``timeout`` < 0: for ever), or not."""
        if not blocking:
            with self._guard:
                if self._held:
                    return False
                self._held = True
                return True
        wake = threading.Lock()
        wake.acquire()
        ticket = self.enqueue(wake.release)
        if ticket is None:
            return True
        deadline = None if timeout < 0 else ticket.arrived + timeout
        while True:
            if deadline is None:
                woken = wake.acquire()
            else:
                remaining = deadline - time.monotonic()
                woken = remaining > 0 and wake.acquire(timeout=remaining)
            if woken:
                if self.claim(ticket):
                    return True
                continue  # a newcomer took it first: stay at the front and wait again
            # True if it was handed over, or freed, just as the wait ran out.
            return self.withdraw(ticket)

    def enqueue(self, notify: Callable[[], object]) -> WaitTicket | None:
        """Take the lock now (None), or join the queue and get a ticket.

        ``notify()`` is called from the releasing thread whenever the ticket
        may have the lock; then ``claim(ticket)``. A waiter that gives up
        calls ``withdraw(ticket)``.
        """
        with self._guard:
            if not self._held:
                self._held = True
                return None
            ticket = WaitTicket(time.monotonic(), notify)
            self._waiters.append(ticket)
            return ticket

    def claim(self, ticket: WaitTicket) -> bool:
        """After a notification: True if the lock is now this ticket's holder's."""
        with self._guard:
            if ticket.granted:
                return True
            ticket.signalled = False
            if not self._held:  # woken to compete for a free lock, and won
                self._held = True
                self._waiters.remove(ticket)
                return True
            return False

    def withdraw(self, ticket: WaitTicket) -> bool:
        """Stop waiting; True if the lock came to the ticket anyway (the caller now holds it)."""
        with self._guard:
            if ticket.granted:
                return True
            if not self._held:
                self._held = True
                self._waiters.remove(ticket)
                return True
            self._waiters.remove(ticket)
            return False

    def release(self) -> None:
        with self._guard:
            if not self._held:
                raise RuntimeError("release of a WriterLock that is not held")
            waiters = self._waiters
            if not waiters:
                self._held = False
                return
            head = waiters[0]
            if time.monotonic() - head.arrived >= self.handoff_after:
                waiters.popleft()
                head.granted = True  # the lock stays held, now by the head waiter
            else:
                self._held = False
            if head.signalled:
                return
            head.signalled = True
        head.notify()

    @property
    def waiting(self) -> int:
        """Threads waiting for the lock now."""
        return len(self._waiters)

    def locked(self) -> bool:
        """Held, or waited for."""
        return self._held or bool(self._waiters)

    def __repr__(self) -> str:
        state = "held" if self._held else "free"
        return f"<WriterLock {state}, {len(self._waiters)} waiting>"


class WriterLocks:
    """One ``WriterLock`` per database path, at most about ``kept`` of them remembered."""

    def __init__(self, *, kept: int = WRITER_LOCKS_KEPT) -> None:
        self.kept = kept
        self._locks: dict[str, WriterLock] = {}
        self._guard = threading.Lock()

    def for_path(self, path: str) -> WriterLock:
        lock = self._locks.get(path)
        if lock is None:
            with self._guard:
                if len(self._locks) >= self.kept:
                    for idle in [p for p, held in self._locks.items() if not held.locked()]:
                        del self._locks[idle]
                lock = self._locks.setdefault(path, WriterLock())
        return lock

    def __len__(self) -> int:
        return len(self._locks)
