"""The ASGI glue: DatabaseMiddleware sets request_db for exactly one request, and
database_dependency hands FastAPI endpoints a pooled connection to that database."""

# No `from __future__ import annotations`: FastAPI resolves the endpoints'
# annotations at run time, and `Db` below is local to make_app.
import asyncio
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI, Request

from circuitforge_core.db import (
    AsyncConnection,
    Connection,
    DatabaseMiddleware,
    NoDatabaseError,
    PoolRegistry,
    async_database_dependency,
    current_db_path,
    database_dependency,
    request_db,
    use_db,
    user_db_path,
)
from circuitforge_core.db.asgi import Message, Receive, Scope, Send


def http_scope(headers: dict[str, str] | None = None) -> Scope:
    return {
        "type": "http",
        "method": "GET",
        "path": "/",
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
    }


def header_resolver(root: Path) -> Any:
    def resolve(scope: Scope) -> Path | None:
        for name, value in scope["headers"]:
            if name == b"x-user":
                return user_db_path(root, value.decode("latin-1"), "app.db")
        return None

    return resolve


async def call(app: Any, scope: Scope) -> list[Message]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


class Recorder:
    """A bare ASGI app that records what request_db was while it ran."""

    def __init__(self) -> None:
        self.seen: list[str | None] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.seen.append(request_db.get())
        await asyncio.sleep(0)
        self.seen.append(request_db.get())


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "root"
    folder.mkdir()
    return folder


# -- the middleware on its own -----------------------------------------------------------


def test_the_middleware_sets_the_database_for_the_request_only(root: Path) -> None:
    """Inside the app request_db is the resolved path; after the request it is gone again."""
    app = Recorder()
    middleware = DatabaseMiddleware(app, header_resolver(root))
    asyncio.run(call(middleware, http_scope({"X-User": "alice"})))
    assert app.seen == [str(root / "alice" / "app.db")] * 2
    assert request_db.get() is None


def test_a_request_without_a_user_runs_with_no_database_even_inside_another(root: Path) -> None:
    """A resolver answering None clears request_db for the request, whatever was set around it."""
    app = Recorder()
    middleware = DatabaseMiddleware(app, header_resolver(root))

    async def main() -> None:
        with use_db("outer.db"):
            await call(middleware, http_scope())
            assert request_db.get() == "outer.db"

    asyncio.run(main())
    assert app.seen == [None, None]


def test_an_async_resolver_is_awaited(root: Path) -> None:
    """The resolver may be a coroutine function (a session lookup that awaits)."""

    async def resolve(scope: Scope) -> Path:
        await asyncio.sleep(0)
        return root / "async.db"

    app = Recorder()
    asyncio.run(call(DatabaseMiddleware(app, resolve), http_scope()))
    assert app.seen == [str(root / "async.db")] * 2


def test_lifespan_events_pass_through_without_the_resolver() -> None:
    """Non-request scopes go straight to the app; the resolver is not asked."""

    def resolve(scope: Scope) -> None:
        raise AssertionError("the resolver must not see lifespan scopes")

    app = Recorder()
    asyncio.run(call(DatabaseMiddleware(app, resolve), {"type": "lifespan"}))
    assert app.seen == [None, None]


def test_an_unsafe_user_id_gets_400_and_never_reaches_the_app(root: Path) -> None:
    """UnsafePathError from the resolver answers 400 Bad Request; the app is not called."""
    app = Recorder()
    sent = asyncio.run(
        call(DatabaseMiddleware(app, header_resolver(root)), http_scope({"X-User": "../etc"}))
    )
    assert app.seen == []
    assert sent[0]["type"] == "http.response.start"
    assert sent[0]["status"] == 400
    assert b"cannot be mapped to a database" in sent[1]["body"]
    assert list(root.iterdir()) == []


def test_an_unsafe_websocket_user_is_closed_with_policy_violation(root: Path) -> None:
    """For a WebSocket the refusal is a close with code 1008."""
    app = Recorder()
    scope = http_scope({"X-User": "a\\b"}) | {"type": "websocket"}
    sent = asyncio.run(call(DatabaseMiddleware(app, header_resolver(root)), scope))
    assert sent == [{"type": "websocket.close", "code": 1008}]
    assert app.seen == []


# -- through FastAPI ---------------------------------------------------------------------


@pytest.fixture
def registry() -> Iterator[PoolRegistry]:
    with PoolRegistry(max_connections=8, timeout=10) as registry:
        yield registry


def make_app(root: Path, registry: PoolRegistry, default: str | None = None) -> FastAPI:
    app = FastAPI()
    app.add_middleware(DatabaseMiddleware, resolver=header_resolver(root))
    db_dependency = database_dependency(registry, default=default)
    Db = Annotated[Connection, Depends(db_dependency)]

    @app.get("/async")
    async def in_the_event_loop() -> list[str]:
        seen = []
        for _ in range(3):
            await asyncio.sleep(random.random() / 200)
            seen.append(current_db_path())
        return seen

    @app.get("/sync")
    def in_the_thread_pool() -> list[str]:
        time.sleep(random.random() / 200)
        return [current_db_path()]

    @app.get("/db")
    def with_a_connection(db: Db) -> dict[str, Any]:
        db.execute("CREATE TABLE IF NOT EXISTS hits (n INTEGER)")
        db.execute("INSERT INTO hits VALUES (1)")
        db.commit()
        return {"path": db.path, "hits": db.execute("SELECT count(*) FROM hits").fetchone()[0]}

    @app.get("/fail")
    def fails_after_writing(db: Db) -> None:
        db.execute("CREATE TABLE IF NOT EXISTS hits (n INTEGER)")
        db.commit()
        db.execute("INSERT INTO hits VALUES (1)")
        raise RuntimeError("endpoint failed before committing")

    @app.exception_handler(RuntimeError)
    async def on_failure(request: Request, exc: RuntimeError) -> Any:
        from fastapi.responses import PlainTextResponse

        return PlainTextResponse("failed", 500)

    return app


async def get_all(app: FastAPI, requests: list[tuple[str, str | None]]) -> list[httpx.Response]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await asyncio.gather(
            *(client.get(url, headers={"X-User": user} if user else {}) for url, user in requests)
        )


def test_concurrent_requests_each_see_their_own_database(
    root: Path, registry: PoolRegistry
) -> None:
    """300 interleaved requests of 30 users, async and thread-pool endpoints: no crossing."""
    app = make_app(root, registry)
    requests = [(url, f"user{n % 30}") for n in range(150) for url in ("/async", "/sync")]
    random.Random(3).shuffle(requests)
    responses = asyncio.run(get_all(app, requests))
    for (url, user), response in zip(requests, responses, strict=True):
        assert response.status_code == 200, response.text
        assert set(response.json()) == {str(root / user / "app.db")}, url


def test_the_dependency_gives_a_pooled_connection_to_the_request_database(
    root: Path, registry: PoolRegistry
) -> None:
    """Each user's requests land in that user's file, through a reused pooled connection."""
    app = make_app(root, registry)
    requests = [("/db", user) for user in ("ann", "bob", "ann", "ann", "bob")]
    responses = asyncio.run(get_all(app, requests))
    paths = [response.json()["path"] for response in responses]
    assert paths == [str(root / user / "app.db") for _, user in requests]
    # Requests of one user may interleave, so only the last count is certain.
    for user, expected in (("ann", 3), ("bob", 2)):
        hits = [
            r.json()["hits"] for (_, u), r in zip(requests, responses, strict=True) if u == user
        ]
        assert max(hits) == expected
    stats = registry.stats()
    assert stats.databases == 2
    assert stats.busy == 0


def test_a_failing_endpoint_leaves_nothing_half_written(root: Path, registry: PoolRegistry) -> None:
    """An exception after an uncommitted write: the connection comes back rolled back."""
    app = make_app(root, registry)
    (failed,) = asyncio.run(get_all(app, [("/fail", "carol")]))
    assert failed.status_code == 500
    (ok,) = asyncio.run(get_all(app, [("/db", "carol")]))
    assert ok.json()["hits"] == 1
    assert registry.stats().busy == 0


def test_without_a_user_the_default_is_used_in_local_mode(
    root: Path, registry: PoolRegistry, tmp_path: Path
) -> None:
    """No X-User and a default: the local database; the context never leaks to the next request."""
    local = str(tmp_path / "local.db")
    app = make_app(root, registry, default=local)
    responses = asyncio.run(get_all(app, [("/db", "dave"), ("/db", None), ("/sync", "dave")]))
    assert [r.json() for r in responses[1:]] == [
        {"path": local, "hits": 1},
        [str(root / "dave" / "app.db")],
    ]


def test_without_a_user_or_a_default_the_request_fails_loudly(
    root: Path, registry: PoolRegistry
) -> None:
    """Cloud mode with no user: NoDatabaseError reaches the app, no shared database is used."""
    app = make_app(root, registry)
    with pytest.raises(NoDatabaseError):
        asyncio.run(get_all(app, [("/db", None)]))
    assert registry.stats().databases == 0


# -- the async dependency ------------------------------------------------------------------


def make_async_app(root: Path, registry: PoolRegistry) -> FastAPI:
    app = FastAPI()
    app.add_middleware(DatabaseMiddleware, resolver=header_resolver(root))
    ADb = Annotated[AsyncConnection, Depends(async_database_dependency(registry))]

    @app.get("/hit")
    async def hit(db: ADb) -> dict[str, Any]:
        async with db.transaction():
            await db.execute("CREATE TABLE IF NOT EXISTS hits (n INTEGER)")
            await db.execute("INSERT INTO hits VALUES (1)")
        await asyncio.sleep(random.random() / 200)
        (count,) = await db.fetchone("SELECT count(*) FROM hits")
        return {"path": db.path, "hits": count}

    @app.get("/fail")
    async def fail(db: ADb) -> None:
        await db.execute("CREATE TABLE IF NOT EXISTS hits (n INTEGER)")
        await db.commit()
        await db.execute("INSERT INTO hits VALUES (1)")
        raise RuntimeError("endpoint failed before committing")

    @app.exception_handler(RuntimeError)
    async def on_failure(request: Request, exc: RuntimeError) -> Any:
        from fastapi.responses import PlainTextResponse

        return PlainTextResponse("failed", 500)

    return app


def test_the_async_dependency_gives_each_request_its_own_database(
    root: Path, registry: PoolRegistry
) -> None:
    """100 interleaved async requests of 10 users: each lands in its user's file; a failing
    endpoint's uncommitted write is rolled back; nothing stays checked out."""
    app = make_async_app(root, registry)
    requests = [("/hit", f"user{n % 10}") for n in range(100)]
    random.Random(5).shuffle(requests)
    responses = asyncio.run(get_all(app, requests))
    for (_, user), response in zip(requests, responses, strict=True):
        assert response.status_code == 200, response.text
        assert response.json()["path"] == str(root / user / "app.db")
    (failed,) = asyncio.run(get_all(app, [("/fail", "user0")]))
    assert failed.status_code == 500
    (after,) = asyncio.run(get_all(app, [("/hit", "user0")]))
    assert after.json()["hits"] == 11  # 10 earlier hits, this one; not the failed insert
    assert registry.stats().busy == 0
    assert registry.async_workers.in_use == 0
    with pytest.raises(NoDatabaseError):
        asyncio.run(get_all(app, [("/hit", None)]))


# -- placement -------------------------------------------------------------------------


def test_a_user_placed_elsewhere_gets_the_products_response(root: Path) -> None:
    """421 by default (WebSocket 1013), the product's answer if given; unknown users served."""
    from circuitforge_core.db import Placement

    directory = {"alice": "here", "bob": "host-b"}
    placement = Placement(root, "here", directory.get)
    recorder = Recorder()
    app = DatabaseMiddleware(recorder, header_resolver(root), placement=placement)
    asyncio.run(call(app, http_scope({"X-User": "alice"})))
    asyncio.run(call(app, http_scope({"X-User": "carol"})))  # nobody placed carol
    alice, carol = (str(user_db_path(root, user, "app.db")) for user in ("alice", "carol"))
    assert recorder.seen == [alice, alice, carol, carol]
    sent = asyncio.run(call(app, http_scope({"X-User": "bob"})))
    assert sent[0]["status"] == 421
    assert b"host-b" not in sent[1]["body"]
    websocket = asyncio.run(call(app, {**http_scope({"X-User": "bob"}), "type": "websocket"}))
    assert websocket == [{"type": "websocket.close", "code": 1013}]

    async def redirect(scope: Scope, receive: Receive, send: Send, host: str) -> None:
        location = f"https://{host}.example{scope['path']}".encode()
        await send(
            {"type": "http.response.start", "status": 307, "headers": [(b"location", location)]}
        )
        await send({"type": "http.response.body", "body": b""})

    app = DatabaseMiddleware(
        recorder, header_resolver(root), placement=placement, elsewhere=redirect
    )
    sent = asyncio.run(call(app, http_scope({"X-User": "bob"})))
    assert sent[0]["status"] == 307
    assert dict(sent[0]["headers"])[b"location"] == b"https://host-b.example/"
    assert len(recorder.seen) == 4  # bob's requests never reached the app
