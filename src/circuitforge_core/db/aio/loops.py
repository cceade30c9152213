"""The running event loop, asyncio or trio, as the rest of aio/ needs it.

Owns how a coroutine waits for a worker thread and is woken by it (a
``Waiter`` per wait), with a timeout, or shielded from cancellation; and
finding the running loop without importing trio unless the program runs it.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any


class Waiter:
    """One wait of a coroutine for a worker thread: the thread marks it done, then wakes it."""

    __slots__ = ("done", "future", "loop")

    def __init__(self, loop: Loop) -> None:
        self.loop = loop
        self.done = False
        self.future: Any = loop.new_future()


class Loop:
    """What this module needs of the running event loop; one subclass per library."""

    cancelled: type[BaseException]

    def new_future(self) -> Any:
        raise NotImplementedError

    def wake(self, waiter: Waiter) -> None:
        """Called from a worker thread, after ``waiter.done`` was set."""
        raise NotImplementedError

    async def wait(self, waiter: Waiter, timeout: float | None = None) -> None:
        """Until ``waiter`` is done (or ``timeout`` passed); cancellable."""
        raise NotImplementedError

    async def wait_shielded(self, waiter: Waiter) -> bool:
        """Until ``waiter`` is done, whatever cancellations arrive; True if one arrived."""
        raise NotImplementedError

    def rearm(self, waiter: Waiter) -> None:
        """In the loop's thread: make ``waiter`` wait for its next wake-up."""
        waiter.done = False
        waiter.future = self.new_future()


class _AsyncioLoop(Loop):
    cancelled = asyncio.CancelledError

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def new_future(self) -> Any:
        return self.loop.create_future()

    def wake(self, waiter: Waiter) -> None:
        self.loop.call_soon_threadsafe(_resolve, waiter)

    async def wait(self, waiter: Waiter, timeout: float | None = None) -> None:
        if timeout is None:
            await waiter.future
            return
        timer = self.loop.call_later(timeout, _resolve_future, waiter.future)
        try:
            await waiter.future
        finally:
            timer.cancel()

    async def wait_shielded(self, waiter: Waiter) -> bool:
        interrupted = False
        while not waiter.done:
            # A cancellation cancels the future awaited; the thread resolves
            # whichever future is current when it wakes us (both in this thread).
            if waiter.future.done():
                waiter.future = self.new_future()
            try:
                await waiter.future
            except asyncio.CancelledError:
                interrupted = True
        return interrupted


def _resolve(waiter: Waiter) -> None:
    _resolve_future(waiter.future)


def _resolve_future(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _TrioLoop(Loop):
    def __init__(self, trio: Any) -> None:
        self.trio = trio
        self.token = trio.lowlevel.current_trio_token()
        self.cancelled = trio.Cancelled

    def new_future(self) -> Any:
        return self.trio.Event()

    def wake(self, waiter: Waiter) -> None:
        self.token.run_sync_soon(_set_event, waiter)

    async def wait(self, waiter: Waiter, timeout: float | None = None) -> None:
        if timeout is None:
            await waiter.future.wait()
            return
        with self.trio.move_on_after(timeout):
            await waiter.future.wait()

    async def wait_shielded(self, waiter: Waiter) -> bool:
        with self.trio.CancelScope(shield=True):
            await waiter.future.wait()
        return False  # trio delivers the cancellation again at the next checkpoint


def _set_event(waiter: Waiter) -> None:
    waiter.future.set()  # the event current when this runs, in trio's thread


def running_loop() -> Loop:
    """The loop this coroutine runs on, or a RuntimeError saying which loops work."""
    try:
        return _AsyncioLoop(asyncio.get_running_loop())
    except RuntimeError:
        pass
    trio = sys.modules.get("trio")  # imported only by a program that runs trio
    if trio is not None:
        try:
            return _TrioLoop(trio)
        except RuntimeError:
            pass
    raise RuntimeError(
        "async connections need a running asyncio or trio event loop (anyio runs on either); "
        "call them from a coroutine, or use the sync connection() instead."
    )


def wake_quietly(waiter: Waiter) -> bool:
    """Wake ``waiter``'s coroutine; False when its loop has ended (nobody will ever read it)."""
    try:
        waiter.loop.wake(waiter)
    except Exception:  # asyncio: "Event loop is closed"; trio: RunFinishedError
        return False
    return True
