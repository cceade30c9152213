"""`make demo`: migrate the example notes app's database, use it, show its status; then serve the
notes app in cloud mode on loopback for a moment and use it as a few users.

Run it twice: the second run applies nothing, because everything is applied.
"""

from __future__ import annotations

import importlib.util
import logging
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import ModuleType

import httpx
import uvicorn

from circuitforge_core.db import (
    Settings,
    get_db,
    migration_status,
    run_migrations,
    transaction,
)

HERE = Path(__file__).parent
DB_PATH = HERE / "notes" / "data" / "notes.db"
MIGRATIONS = HERE / "notes" / "migrations"
USERS = ("alice", "bob", "carol")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="  %(levelname)s: %(message)s")
    local_mode()
    cloud_mode()


def local_mode() -> None:
    print(f"database:   {DB_PATH.relative_to(HERE.parent)}")
    print(f"migrations: {MIGRATIONS.relative_to(HERE.parent)}\n")
    db = get_db(DB_PATH)
    try:
        applied = run_migrations(db, MIGRATIONS)
        print(f"\napplied now: {', '.join(applied) or 'nothing (already up to date)'}")

        with transaction(db):  # one BEGIN IMMEDIATE ... COMMIT
            cursor = db.execute(
                "INSERT INTO notes (title, body) VALUES (?, ?) RETURNING id",
                ("Demo note", "Written by make demo; searchable with full-text search."),
            )
            [(note_id,)] = cursor.fetchall()  # the RETURNING rule: fetch before the commit
            db.execute("INSERT INTO tags (note_id, tag) VALUES (?, 'demo')", (note_id,))
        found = db.execute(
            "SELECT count(*) FROM notes_fts WHERE notes_fts MATCH 'searchable'"
        ).fetchone()[0]
        print(f"notes matching 'searchable': {found}\n")

        print("status:")
        for status in migration_status(db, MIGRATIONS):
            print(f"  {status.state:<8} {status.name:<22} {status.applied_at or ''}")
    finally:
        db.close()
    print("\nThe same from the command line:")
    print(
        f"  .venv/bin/cf-db status {DB_PATH.relative_to(HERE.parent)} "
        f"{MIGRATIONS.relative_to(HERE.parent)}"
    )


def cloud_mode() -> None:
    """The notes app under uvicorn on 127.0.0.1, one database per user, used over HTTP."""
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request
    with tempfile.TemporaryDirectory(prefix="cf-demo-") as data_root:
        app = load_notes_app().create_app(Settings(cloud_mode=True, data_root=Path(data_root)))
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))  # a free port, on loopback only
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
        print(f"\nCloud mode: the notes app at {url}, CLOUD_DATA_ROOT={data_root}")
        thread.start()
        try:
            for _ in range(500):  # bounded: up within moments
                if server.started:
                    break
                time.sleep(0.01)
            with httpx.Client(base_url=url, timeout=10) as client:
                use_as_users(client)
        finally:
            server.should_exit = True
            thread.join(10)
            listener.close()
        print(f"  files: {', '.join(sorted(p.name for p in Path(data_root).iterdir()))}")
    print("  server stopped; the per-user files were in a temporary folder, now removed")


def use_as_users(client: httpx.Client) -> None:
    for user in USERS:
        headers = {"X-User": user}
        client.post("/notes", json={"title": f"{user}'s first (sync endpoint)"}, headers=headers)
        client.post(
            "/async/notes",
            json={"title": f"{user}'s second (async endpoint)", "tags": ["demo"]},
            headers=headers,
        ).raise_for_status()
    for user in USERS:
        sync_titles = [n["title"] for n in client.get("/notes", headers={"X-User": user}).json()]
        async_titles = [
            n["title"] for n in client.get("/async/notes", headers={"X-User": user}).json()
        ]
        assert sync_titles == async_titles, "both endpoints read the same file"
        own = all(title.startswith(f"{user}'s") for title in sync_titles)
        print(
            f"  {user:<6} sees {len(sync_titles)} notes, {'only their own' if own else 'OTHERS!'}:"
        )
        for title in sync_titles:
            print(f"           {title}")
    print(f"  no user: {client.get('/notes').status_code} (no shared database to fall back to)")
    hostile = client.get("/notes", headers={"X-User": "../etc"})
    print(f"  X-User '../etc': {hostile.status_code} (refused before any file is touched)")
    pool = client.get("/pool").json()
    print(
        f"  the pool: {pool['databases']} databases, {pool['open']} connections open "
        f"({pool['idle']} idle, {pool['busy']} busy), {pool['migrations_applied']} migrations "
        f"applied in {pool['migration_runs']} runs (each user's file migrated at its first "
        f"request), {pool['async_threads']} async worker threads"
    )


def load_notes_app() -> ModuleType:
    spec = importlib.util.spec_from_file_location("notes_app", HERE / "notes" / "app.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


if __name__ == "__main__":
    main()
