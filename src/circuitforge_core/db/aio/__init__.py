"""Async connections: pooled connections for ``async def`` code that never block the loop.

Owns how a coroutine uses a pooled connection: the checkout, every statement
and ``transaction()`` block, and the check-in run on worker threads while
the coroutine only awaits, so waiting for a free connection, for another
process's write lock or for a slow statement costs the event loop nothing.
Owns the capacity limit and the threads (``AsyncWorkers``), cancellation (a
cancelled statement is interrupted with ``Connection.interrupt()``, then the
connection is rolled back and checked in, shielded from further
cancellation), the async wait for a file's in-process writer lock, and
``FetchedCursor``, the rows of a statement fetched on the worker.

Does not own pooling (the pool and the registry hand this module a function
that returns their sync checkout), transactions (transaction.py), the writer
lock (writer_lock.py), nor which database a request uses (tenancy.py). Needs
no dependency: it runs on asyncio, and on trio when trio is the running loop
(anyio runs on one of the two, so FastAPI under either works).

Threads of its own, not ``anyio.to_thread``: database waits must never hold
one of the 40 tokens of the threadpool Starlette runs sync endpoints on. Not
a thread per checkout either: a checkout's jobs run one at a time, in order
(its lane), on whichever worker is free. SQLite connections may move between
threads as long as two never use one at once, and ``transaction()``'s writer
lock is not owned by a thread; while a thread per checkout means as many
threads as requests in flight, and on a small machine those only contend for
the GIL (bench/aio.py: a few hot threads serve 3 to 5 times the requests of
a thread per request). Threads are daemons, started as work needs them up
to the limit, and end after ``IDLE_SECONDS`` without work.

One concern per module; each imports only those above it:

    loops.py       the running loop (asyncio or trio): waiting for a thread, being woken
    workers.py     AsyncWorkers: slots, the job queue and its threads, lanes; to_worker
    connection.py  AsyncConnection, FetchedCursor, AsyncTransaction (the writer lock's wait)
    checkout.py    AsyncCheckout and run_checked_out: a slot, the pool's checkout, check-in

(connection.py names checkout.py's pending checkout in annotations only.)

Lock order: a lane's lock and an ``AsyncWorkers`` lock are leaves; nothing
else is taken under them. The writer lock is taken after the checkout,
never before, as the sync API does.
"""

from .checkout import AsyncCheckout, Checkout, run_checked_out
from .connection import AsyncConnection, AsyncTransaction, FetchedCursor
from .workers import EAGER_THREADS, IDLE_SECONDS, STUCK_AFTER, AsyncWorkers, to_worker

__all__ = [
    "EAGER_THREADS",
    "IDLE_SECONDS",
    "STUCK_AFTER",
    "AsyncCheckout",
    "AsyncConnection",
    "AsyncTransaction",
    "AsyncWorkers",
    "Checkout",
    "FetchedCursor",
    "run_checked_out",
    "to_worker",
]
