"""Web glue: choose each request's database, and hand endpoints a pooled connection.

The only module that knows ASGI, and it imports no web framework:
``DatabaseMiddleware`` is a plain ASGI middleware, and
``database_dependency()`` and ``async_database_dependency()`` return plain
generator functions that FastAPI (or anything that understands generator
dependencies) can call, and ``database_lifespan()`` a plain async context
manager factory for ``FastAPI(lifespan=...)``. ``CancelOnDisconnect`` turns a
client that goes away into a cancellation of its request, which the async
connections clean up after (uvicorn and Starlette let the endpoint run on).
Does not know who the user is: the product's resolver decides that from the
request, nor where users live: the product's directory does, through a
``Placement``.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from .aio import AsyncConnection, to_worker
from .connect import Connection
from .errors import UnsafePathError
from .migrations import MigrationsDir, run_migrations
from .placement import Placement
from .pool import PoolRegistry
from .settings import Settings
from .startup import check_startup
from .tenancy import current_db_path, request_aconnection, use_db

logger = logging.getLogger("circuitforge_core.db")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
DatabasePath = str | os.PathLike[str] | None
Resolver = Callable[[Scope], DatabasePath | Awaitable[DatabasePath]]
#: The product's answer for a user placed on another host: an ASGI response
#: (``scope, receive, send``) given that host's name, e.g. a redirect to it.
Elsewhere = Callable[[Scope, Receive, Send, str], Awaitable[None]]


class DatabaseMiddleware:
    """Set ``request_db`` for each HTTP or WebSocket request, from ``resolver(scope)``.

    ``resolver`` gets the ASGI scope (headers, cookies, path, whatever the
    session layer put in it) and returns the request's database path, or None
    for "no per-user database" (endpoints then get their default, or
    ``NoDatabaseError``); it may be async. The value is set for exactly this
    request: it follows every ``await`` and the sync endpoints and
    dependencies run in the thread pool, and is reset when the request ends,
    so nothing carries over to the next request. A resolver raising
    ``UnsafePathError`` (a hostile user id) gets a 400 response (WebSocket:
    close code 1008) and the app is not called. Lifespan events pass through.

    With a ``placement``, a request whose user the product's directory puts
    on another host is not served here: ``elsewhere(scope, receive, send,
    host)`` answers it (a redirect, a ``fly-replay`` header, a proxy), by
    default ``421 Misdirected Request`` (WebSocket: close code 1013, try
    again later). Users nobody placed are served here, as before.
    """

    def __init__(
        self,
        app: ASGIApp,
        resolver: Resolver,
        *,
        placement: Placement | None = None,
        elsewhere: Elsewhere | None = None,
    ) -> None:
        self.app = app
        self.resolver = resolver
        self.placement = placement
        self.elsewhere = elsewhere or misdirected

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        try:
            path = self.resolver(scope)
            if inspect.isawaitable(path):
                path = await path
            where = None if self.placement is None or path is None else self.placement.where(path)
        except UnsafePathError as exc:
            logger.warning("refused a request whose database path is unsafe: %s", exc)
            await _refuse(scope, send)
            return
        if where is not None and where.state == "elsewhere" and where.host is not None:
            await self.elsewhere(scope, receive, send, where.host)
            return
        with use_db(path):
            await self.app(scope, receive, send)


async def misdirected(scope: Scope, receive: Receive, send: Send, host: str) -> None:
    """The default answer for a user placed on another host: 421, or WebSocket close 1013.

    Names no host: which host serves whom is the product's to reveal.
    """
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1013})
        return
    await _plain(send, 421, b"Misdirected request: this user is served by another host.\n")


async def _refuse(scope: Scope, send: Send) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    await _plain(send, 400, b"Bad request: this request's user cannot be mapped to a database.\n")


async def _plain(send: Send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def database_dependency(
    registry: PoolRegistry, *, default: str | os.PathLike[str] | None = None
) -> Callable[[], Iterator[Connection]]:
    """A FastAPI dependency yielding a pooled connection to this request's database.

    ``db: Connection = Depends(database_dependency(registry, default=DB_PATH))``.
    The database is ``request_db`` when the middleware set it, else
    ``default`` (local mode); with neither, ``NoDatabaseError``. The
    connection goes back to the pool, reset, after the endpoint; an
    exception from the endpoint rolls back what it left uncommitted.
    """

    def database() -> Iterator[Connection]:
        with registry.connection(current_db_path(default)) as db:
            yield db

    return database


def async_database_dependency(
    registry: PoolRegistry, *, default: str | os.PathLike[str] | None = None
) -> Callable[[], AsyncIterator[AsyncConnection]]:
    """A FastAPI dependency yielding an async connection to this request's database.

    ``db: AsyncConnection = Depends(async_database_dependency(registry, default=DB_PATH))``
    in an ``async def`` endpoint. The database is chosen as for
    ``database_dependency``; the connection's checkout, statements and
    check-in run on worker threads, so the endpoint never blocks the loop.
    An exception from the endpoint (a cancellation too) rolls back what it
    left uncommitted. See docs/async.md.
    """

    async def database() -> AsyncIterator[AsyncConnection]:
        async with request_aconnection(registry, default=default) as db:
            yield db

    return database


def database_lifespan(
    registry: PoolRegistry,
    *,
    settings: Settings | None = None,
    migrations: MigrationsDir | None = None,
    local_db: str | os.PathLike[str] | None = None,
) -> Callable[[Any], AbstractAsyncContextManager[None]]:
    """``FastAPI(lifespan=database_lifespan(registry, ...))``: check, migrate, serve, close.

    Before the app serves, off the event loop: ``check_startup`` (settings,
    data root or local database, the migrations folder, SQLite), so a bad
    setup fails the start with one ``StartupError`` listing every problem
    instead of a 500 per request; then, in local mode, the database
    (``settings.db_path``, else ``local_db``) is migrated, by the registry's
    own ``migrations`` at its first checkout, or with ``migrations`` if the
    registry has none. Per-user files in cloud mode are migrated by the
    registry at their first checkout, as ever. At shutdown the registry is
    closed. ``migrations`` defaults to the registry's folder (when it is one
    folder for all files). An app with a lifespan of its own enters this one
    inside it: ``async with database_lifespan(...)(app):``.
    """
    folder = migrations
    if folder is None and not callable(registry.migrations):
        folder = registry.migrations

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        checked = await to_worker(
            functools.partial(check_startup, settings, migrations=folder, local_db=local_db)
        )
        database = checked.db_path if checked.db_path is not None else local_db
        if not checked.cloud_mode and database is not None:
            own = registry.migrations is None and folder is not None
            await registry.arun(database, _migrate_at_start, folder if own else None)
        try:
            yield
        finally:
            registry.close()

    return lifespan


def _migrate_at_start(db: Connection, folder: MigrationsDir | None) -> None:
    """On a worker, at start: the checkout has applied the registry's folder; apply ours."""
    if folder is not None:
        applied = run_migrations(db, folder)
        if applied:
            logger.info("%s: applied %d migration(s) at start", db.path, len(applied))


class CancelOnDisconnect:
    """Cancel an HTTP request's handling when its client disconnects before the response ends.

    uvicorn and Starlette leave an endpoint running after its client has
    gone (measured: a query went on for its whole length). Behind this
    middleware the request's task is cancelled instead, so a statement
    running on an async connection is interrupted, its transaction rolled
    back and the connection returned at once; the server sees the request
    end quietly. A write whose client left is then rolled back rather than
    finished, which is why this is a middleware to add, not the default.

    It listens for the disconnect only once the request body has been read
    (by the app, or at once when the request has none), so uploads keep
    their flow control. asyncio only; under another loop it passes requests
    through unchanged.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            task = asyncio.current_task()
        except RuntimeError:  # not asyncio (trio): nothing to cancel with
            task = None
        if scope["type"] != "http" or task is None:
            await self.app(scope, receive, send)
            return
        watch = _DisconnectWatch(task, receive, send, has_body=_has_body(scope))
        try:
            await self.app(scope, watch.receive, watch.send)
        except asyncio.CancelledError:
            if not watch.cancelled_it:
                raise
            task.uncancel()  # our own cancellation: the client is gone, nothing to report
        finally:
            watch.stop()


def _has_body(scope: Scope) -> bool:
    for name, value in scope.get("headers", ()):
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            return True
    return False


class _DisconnectWatch:
    """The receive/send wrappers of one request, and the task that waits for its disconnect."""

    def __init__(self, task: asyncio.Task[Any], receive: Receive, send: Send, *, has_body: bool):
        self._task = task
        self._receive = receive
        self._send = send
        self._read_by_watcher: list[Message] = []  # messages the app has not asked for yet
        self._watcher: asyncio.Task[None] | None = None
        self._responded = False
        self.cancelled_it = False
        if not has_body:
            self._start()

    async def receive(self) -> Message:
        if self._read_by_watcher:
            return self._read_by_watcher.pop(0)
        if self._watcher is not None:  # past the body: only a disconnect can come
            await asyncio.shield(self._watcher)
            return self._read_by_watcher.pop(0) if self._read_by_watcher else _DISCONNECT
        message = await self._receive()
        if message["type"] == "http.request" and not message.get("more_body", False):
            self._start()
        return message

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            self._responded = True
        await self._send(message)

    def _start(self) -> None:
        self._watcher = asyncio.get_running_loop().create_task(self._wait_for_disconnect())

    async def _wait_for_disconnect(self) -> None:
        while True:
            message = await self._receive()
            self._read_by_watcher.append(message)
            if message["type"] == "http.disconnect":
                break
        if not self._responded and not self._task.done():
            self.cancelled_it = True
            self._task.cancel()

    def stop(self) -> None:
        if self._watcher is not None and not self._watcher.done():
            self._watcher.cancel()


_DISCONNECT: Message = {"type": "http.disconnect"}
