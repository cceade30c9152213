"""Writer-lock policies measured against the one transaction() uses (writer_lock.WriterLock).

Owns the contenders that are not in the package: a ticket lock and Go's
``sync.Mutex`` starvation mode, written the way one would in Python. The
plain ``threading.Lock`` and ``WriterLock`` with other thresholds (0 is
strict first-in first-out hand-off) come from where they live. Each has
``acquire(timeout) -> bool`` and ``release()``.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from typing import Protocol

from circuitforge_core.db.writer_lock import DEFAULT_HANDOFF_AFTER, WriterLock


class Lock(Protocol):
    def acquire(self, timeout: float) -> bool: ...
    def release(self) -> None: ...


class PlainLock:
    """``threading.Lock``: whoever runs first after a release gets it (the old behaviour)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def acquire(self, timeout: float) -> bool:
        return self._lock.acquire(timeout=timeout)

    def release(self) -> None:
        self._lock.release()


class TicketLock:
    """Take a number, wait until it is served: first-in first-out, every waiter woken per turn."""

    def __init__(self) -> None:
        self._turn = threading.Condition(threading.Lock())
        self._next = 0
        self._serving = 0
        self._given_up: set[int] = set()

    def acquire(self, timeout: float) -> bool:
        with self._turn:
            ticket = self._next
            self._next += 1
            if self._turn.wait_for(lambda: self._serving == ticket, timeout):
                return True
            self._given_up.add(ticket)  # skipped when its turn comes
            self._skip_given_up()
            return False

    def release(self) -> None:
        with self._turn:
            self._serving += 1
            self._skip_given_up()
            self._turn.notify_all()

    def _skip_given_up(self) -> None:
        while self._serving in self._given_up:
            self._given_up.discard(self._serving)
            self._serving += 1


class StarvationModeLock:
    """Go's sync.Mutex: barging, until a waiter has waited 1 ms; then hand-off until the queue
    drains or a waiter that got it had waited less than that."""

    STARVE_AFTER = 0.001

    class _Waiter:
        __slots__ = ("arrived", "granted", "signalled", "wake")

        def __init__(self, arrived: float) -> None:
            self.arrived = arrived
            self.granted = False
            self.signalled = False
            self.wake = threading.Lock()
            self.wake.acquire()

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._held = False
        self._starving = False
        self._waiters: collections.deque[StarvationModeLock._Waiter] = collections.deque()

    def acquire(self, timeout: float) -> bool:
        with self._guard:
            if not self._held and not (self._starving and self._waiters):
                self._held = True
                return True
            now = time.monotonic()
            waiter = self._Waiter(now)
            self._waiters.append(waiter)
        deadline = now + timeout
        while True:
            remaining = deadline - time.monotonic()
            woken = remaining > 0 and waiter.wake.acquire(timeout=remaining)
            with self._guard:
                if waiter.granted:
                    waited = time.monotonic() - waiter.arrived
                    if waited < self.STARVE_AFTER or not self._waiters:
                        self._starving = False
                    return True
                if woken:
                    waiter.signalled = False
                if not self._held and not self._starving:
                    self._held = True
                    self._waiters.remove(waiter)
                    return True
                if not woken:
                    self._waiters.remove(waiter)
                    return False
                if time.monotonic() - waiter.arrived >= self.STARVE_AFTER:
                    self._starving = True

    def release(self) -> None:
        with self._guard:
            if not self._waiters:
                self._held = False
                return
            head = self._waiters[0]
            if self._starving:
                self._waiters.popleft()
                head.granted = True
            else:
                self._held = False
            if not head.signalled:
                head.signalled = True
                head.wake.release()


def handoff_after(seconds: float) -> Callable[[], Lock]:
    return lambda: WriterLock(handoff_after=seconds)


#: name -> a factory of one file's lock, in the order the table prints them.
POLICIES: dict[str, Callable[[], Lock]] = {
    "plain threading.Lock": PlainLock,
    "strict FIFO hand-off": handoff_after(0.0),
    "ticket lock": TicketLock,
    "Go starvation mode": StarvationModeLock,
    "hand-off if waited > 0.5 ms": handoff_after(0.0005),
    "hand-off if waited > 1 ms": handoff_after(0.001),
    "hand-off if waited > 5 ms": handoff_after(0.005),
}
CHOSEN = f"hand-off if waited > {DEFAULT_HANDOFF_AFTER * 1000:g} ms"
if CHOSEN not in POLICIES:
    POLICIES[CHOSEN] = handoff_after(DEFAULT_HANDOFF_AFTER)
