"""A tiny notes API on circuitforge_core.db, in local mode or in cloud mode.

Local mode, one database file (CF_DB_PATH, default examples/notes/data/notes.db):

    uvicorn --factory --app-dir examples/notes app:create_app

Cloud mode, one database per user under CLOUD_DATA_ROOT (which must exist):

    export CLOUD_MODE=1 CLOUD_DATA_ROOT=/srv/notes
    uvicorn --factory --app-dir examples/notes app:create_app
    curl -H 'X-User: alice' -d '{"title": "hi"}' -H 'content-type: application/json' \\
        localhost:8000/notes

On the SQLite bundled in pysqlite3: this module imports sqlite3 before
circuitforge_core.db, so CF_DB_SQLITE=bundled alone would be refused; the
launcher switches before anything is imported:

    python -m circuitforge_core.db.bundled_sqlite -m uvicorn --factory \\
        --app-dir examples/notes app:create_app

In cloud mode the user comes from the X-User header. That header is a stand-in
for the product's real session (a signed cookie or token checked by its auth
layer): anyone can send any X-User, so never deploy this resolver as it is.
The rest is what a product really does: a resolver maps the request to a
database path with user_db_path(), DatabaseMiddleware sets it for the request,
sync endpoints take a pooled connection from database_dependency() and async
ones (under /async/) an async connection from async_database_dependency();
database_lifespan() checks the setup and migrates before the app serves.
"""

# No `from __future__ import annotations`: FastAPI and pydantic read these
# annotations at run time, even when the module is loaded by file path.
import os
import sqlite3
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from circuitforge_core.db import (
    AsyncConnection,
    CancelOnDisconnect,
    Connection,
    DatabaseMiddleware,
    NoDatabaseError,
    PoolRegistry,
    Settings,
    async_database_dependency,
    current_db_path,
    database_dependency,
    database_lifespan,
    transaction,
    user_db_path,
)

HERE = Path(__file__).resolve().parent
MIGRATIONS = HERE / "migrations"
DEFAULT_DB_PATH = HERE / "data" / "notes.db"
PRODUCT_DB = "notes.db"  # each user's file: CLOUD_DATA_ROOT/<user id>/notes.db
USER_HEADER = b"x-user"  # stand-in for the session; see the module docstring


class NoteIn(BaseModel):
    title: str = Field(min_length=1, max_length=200)
    body: str = Field(default="", max_length=100_000)
    tags: list[Annotated[str, Field(min_length=1, max_length=50)]] = Field(
        default_factory=list, max_length=20
    )


class NoteOut(BaseModel):
    id: int
    title: str
    body: str
    tags: list[str]
    created_at: str


def create_app(settings: Settings | None = None) -> FastAPI:
    """The app for ``settings`` (default: read from the environment)."""
    settings = settings if settings is not None else Settings.from_env()
    if settings.cloud_mode:
        assert settings.data_root is not None  # Settings.from_env guarantees it
        registry = PoolRegistry(migrations=MIGRATIONS)
        default = None  # no user, no database: never a shared fallback
    else:
        # One file: the single-file get_db defaults (8 MiB cache), more connections to it.
        registry = PoolRegistry(migrations=MIGRATIONS, connect_kwargs={}, max_per_database=8)
        default = os.fspath(settings.db_path or DEFAULT_DB_PATH)

    # Before serving: the settings, the data root (or local file) and the migrations are
    # checked, and the local file migrated, off the event loop; a bad setup stops the start
    # with one StartupError naming each problem. At shutdown the registry is closed.
    lifespan = database_lifespan(registry, settings=settings, local_db=default)
    app = FastAPI(title="notes", lifespan=lifespan)
    app.state.registry = registry
    # A client that disconnects cancels its request: a query it left running is interrupted
    # and its connection returned (uvicorn would let it run on).
    app.add_middleware(CancelOnDisconnect)

    if settings.cloud_mode:
        root = settings.data_root

        def resolve(scope: dict[str, Any]) -> Path | None:
            for name, value in scope["headers"]:
                if name == USER_HEADER:
                    # An unsafe id raises UnsafePathError: the middleware answers 400.
                    return user_db_path(root, value.decode("latin-1"), PRODUCT_DB)
            return None

        app.add_middleware(DatabaseMiddleware, resolver=resolve)

    @app.exception_handler(NoDatabaseError)
    async def no_user(request: Request, exc: NoDatabaseError) -> JSONResponse:
        return JSONResponse({"detail": "send an X-User header (stand-in for a session)"}, 401)

    Db = Annotated[Connection, Depends(database_dependency(registry, default=default))]
    ADb = Annotated[AsyncConnection, Depends(async_database_dependency(registry, default=default))]

    @app.post("/notes", status_code=201)
    def create_note(note: NoteIn, db: Db) -> NoteOut:
        with transaction(db):
            # RETURNING rows are fetched in full before the commit (SQLite's rule).
            [(note_id,)] = db.execute(
                "INSERT INTO notes (title, body) VALUES (?, ?) RETURNING id",
                (note.title, note.body),
            ).fetchall()
            db.executemany(
                "INSERT OR IGNORE INTO tags (note_id, tag) VALUES (?, ?)",
                [(note_id, tag) for tag in note.tags],
            )
        return _get_note(db, note_id)

    @app.get("/notes")
    def list_notes(db: Db, tag: str | None = None, q: str | None = None) -> list[NoteOut]:
        sql = "SELECT id FROM notes"
        params: list[object] = []
        if q:
            # A phrase query: the user's text is never FTS5 syntax.
            sql = "SELECT rowid FROM notes_fts WHERE notes_fts MATCH ?"
            params.append('"' + q.replace('"', '""') + '"')
        if tag:
            sql = f"SELECT id FROM ({sql}) JOIN tags ON note_id = id WHERE tag = ?"
            params.append(tag)
        ids = [row[0] for row in db.execute(f"{sql} ORDER BY 1", params)]
        return [_get_note(db, note_id) for note_id in ids]

    @app.get("/notes/{note_id}")
    def get_note(note_id: int, db: Db) -> NoteOut:
        return _get_note(db, note_id)

    @app.delete("/notes/{note_id}", status_code=204)
    def delete_note(note_id: int, db: Db) -> Response:
        with transaction(db):
            deleted = db.execute("DELETE FROM notes WHERE id = ?", (note_id,)).rowcount
        if not deleted:
            raise HTTPException(404, f"no note {note_id}")
        return Response(status_code=204)

    # -- the same notes from async endpoints: every wait is awaited, none blocks the loop --

    @app.post("/async/notes", status_code=201)
    async def create_note_async(note: NoteIn, db: ADb) -> NoteOut:
        async with db.transaction():
            # execute() fetches every row on the worker before it returns, so the
            # RETURNING rows are complete before the commit by themselves.
            cursor = await db.execute(
                "INSERT INTO notes (title, body) VALUES (?, ?) RETURNING id",
                (note.title, note.body),
            )
            [(note_id,)] = cursor.fetchall()
            await db.executemany(
                "INSERT OR IGNORE INTO tags (note_id, tag) VALUES (?, ?)",
                [(note_id, tag) for tag in note.tags],
            )
        # A unit of several statements: plain sync code, one trip to the worker.
        return await db.run(_get_note, note_id)

    @app.get("/async/notes")
    async def list_notes_async(db: ADb, tag: str | None = None) -> list[NoteOut]:
        if tag:
            rows = await db.fetchall(
                "SELECT id FROM notes JOIN tags ON note_id = id WHERE tag = ? ORDER BY id", (tag,)
            )
        else:
            rows = await db.fetchall("SELECT id FROM notes ORDER BY id")
        return [await db.run(_get_note, note_id) for (note_id,) in rows]

    @app.get("/async/notes/{note_id}")
    async def get_note_async(note_id: int, db: ADb) -> NoteOut:
        return await db.run(_get_note, note_id)

    @app.get("/pool")
    async def pool_stats() -> dict[str, Any]:
        """What the connections did (counts only: no user's data)."""
        stats = registry.stats()
        workers = registry.async_workers
        return {
            "databases": stats.databases,
            "open": stats.open,
            "idle": stats.idle,
            "busy": stats.busy,
            "evictions": stats.evictions,
            "migration_runs": stats.migration_runs,
            "migrations_applied": stats.migrations_applied,
            "async_in_use": workers.in_use,
            "async_threads": workers.threads,
        }

    @app.delete("/account", status_code=204)
    def delete_account() -> Response:
        # No Db dependency here: drop_database waits for every connection to the
        # file to come back, and this request must not be holding one.
        if not settings.cloud_mode:
            raise HTTPException(400, "local mode has no per-user account to delete")
        registry.drop_database(current_db_path())
        return Response(status_code=204)

    return app


def _get_note(db: sqlite3.Connection, note_id: int) -> NoteOut:
    row = db.execute(
        "SELECT id, title, body, created_at FROM notes WHERE id = ?", (note_id,)
    ).fetchone()
    if row is None:
        raise HTTPException(404, f"no note {note_id}")
    tags = [
        tag
        for (tag,) in db.execute("SELECT tag FROM tags WHERE note_id = ? ORDER BY tag", (note_id,))
    ]
    return NoteOut(id=row[0], title=row[1], body=row[2], tags=tags, created_at=row[3])


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(create_app(), host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
