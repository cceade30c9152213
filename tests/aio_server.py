"""The app tests/test_aio_uvicorn.py serves with a real uvicorn: async endpoints that wait.

``CF_TEST_ROOT`` is the folder of the per-user files; ``CF_TEST_BLOCKING=1``
serves the same endpoints the naive way (the sync pool called inside
``async def``), the control that shows the heartbeat can see a stall. A task
started in the lifespan sleeps 1 ms at a time and records how late it woke.
"""

# No `from __future__ import annotations`: FastAPI reads the annotations at run time.
import asyncio
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request

from circuitforge_core.db import CancelOnDisconnect, PoolRegistry, transaction
from circuitforge_core.db.aio import AsyncCheckout

SLOW_QUERY = (
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 10000000) "
    "SELECT count(*) FROM c"
)


def create_app() -> FastAPI:
    root = Path(os.environ["CF_TEST_ROOT"])
    blocking = os.environ.get("CF_TEST_BLOCKING") == "1"
    registry = PoolRegistry(max_connections=8, max_per_database=2, timeout=20)
    lateness: list[float] = []

    async def heartbeat() -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(0.001)
            lateness.append(time.perf_counter() - before - 0.001)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        beating = asyncio.create_task(heartbeat())
        yield
        beating.cancel()
        registry.close()

    app = FastAPI(lifespan=lifespan)
    app.add_middleware(CancelOnDisconnect)

    def path_of(user: str) -> str:
        return str(root / f"{user}.db")

    def aconnection(user: str) -> AsyncCheckout:
        return registry.aconnection(path_of(user))

    @app.get("/heartbeat")
    async def beats() -> dict[str, Any]:
        ordered = sorted(lateness)
        return {
            "beats": len(ordered),
            "worst": ordered[-1] if ordered else 0.0,
            "p99": ordered[int(len(ordered) * 0.99)] if ordered else 0.0,
        }

    @app.post("/heartbeat/reset")
    async def reset() -> None:
        lateness.clear()

    @app.post("/write/{user}")
    async def write(user: str) -> dict[str, int]:
        if blocking:
            with registry.connection(path_of(user)) as db, transaction(db):
                db.execute("INSERT INTO hits (n) VALUES (1)")
                return {"hits": db.execute("SELECT count(*) FROM hits").fetchone()[0]}
        async with aconnection(user) as adb, adb.transaction():
            await adb.execute("INSERT INTO hits (n) VALUES (1)")
            row = await adb.fetchone("SELECT count(*) FROM hits")
            return {"hits": row[0]}

    @app.post("/hold/{user}")
    async def hold(user: str, seconds: float) -> dict[str, int]:
        # Keeps its connection across an await: the pool of that file runs out.
        if blocking:
            with registry.connection(path_of(user)) as db:
                await asyncio.sleep(seconds)
                return {"one": db.execute("SELECT 1").fetchone()[0]}
        async with aconnection(user) as adb:
            await asyncio.sleep(seconds)
            row = await adb.fetchone("SELECT 1")
            return {"one": row[0]}

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, int]:
        return {"length": len(await request.body())}

    @app.get("/busy")
    async def busy() -> dict[str, int]:
        return {"busy": registry.stats().busy, "in_use": registry.async_workers.in_use}

    @app.get("/endless/{user}")
    async def endless(user: str) -> dict[str, int]:
        # Counts to a billion: minutes, unless the request is cancelled and interrupts it.
        async with aconnection(user) as adb:
            row = await adb.fetchone(SLOW_QUERY.replace("10000000", "1000000000"))
            return {"count": row[0]}

    @app.get("/slow/{user}")
    async def slow(user: str) -> dict[str, int]:
        if blocking:
            with registry.connection(path_of(user)) as db:
                return {"count": db.execute(SLOW_QUERY).fetchone()[0]}
        async with aconnection(user) as adb:
            row = await adb.fetchone(SLOW_QUERY)
            return {"count": row[0]}

    return app
