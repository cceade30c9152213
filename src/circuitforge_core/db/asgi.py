"""Web glue: choose each request's database, and hand endpoints a pooled connection.

The only module that knows ASGI, and it imports no web framework:
``DatabaseMiddleware`` is a plain ASGI middleware, and
``database_dependency()`` returns a plain generator function that FastAPI
(or anything that understands generator dependencies) can call. Does not
know who the user is: the product's resolver decides that from the request,
nor where users live: the product's directory does, through a ``Placement``.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any

from .connect import Connection
from .errors import UnsafePathError
from .placement import Placement
from .pool import PoolRegistry
from .tenancy import current_db_path, use_db

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
