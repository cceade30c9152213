"""The example notes API end to end, served by a real uvicorn on 127.0.0.1: cloud mode with
many concurrent users (each sees only their own notes), local mode, and a clean shutdown."""

from __future__ import annotations

import importlib.util
import os
import socket
import stat
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType

import httpx
import pytest
import uvicorn

from circuitforge_core.db import Settings

APP_FILE = Path(__file__).resolve().parent.parent / "examples" / "notes" / "app.py"
STARTUP_TIMEOUT = 30.0


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("notes_example_app", APP_FILE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class Server:
    """The app served by uvicorn in a thread, on a port the OS picked."""

    def __init__(self, app: object) -> None:
        self.app = app
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True
        )

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not self.server.started:
            assert self.thread.is_alive(), "uvicorn stopped during startup"
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.should_exit = True
        self.thread.join(STARTUP_TIMEOUT)
        self.socket.close()
        assert not self.thread.is_alive(), "uvicorn did not shut down"


@pytest.fixture(scope="module")
def example() -> ModuleType:
    return load_example()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "data-root"
    folder.mkdir()
    return folder


@pytest.fixture
def cloud(example: ModuleType, root: Path) -> Iterator[Server]:
    app = example.create_app(Settings(cloud_mode=True, data_root=root))
    with Server(app) as server:
        yield server
    assert app.state.registry.closed, "the lifespan shutdown closes every connection"
    assert app.state.registry.stats().open == 0


@pytest.mark.slow
def test_many_users_at_once_each_see_only_their_own_notes(cloud: Server, root: Path) -> None:
    """40 users x 6 notes posted concurrently over HTTP; every list holds only its owner's."""
    users = [f"user{n:02d}" for n in range(40)]

    def post_and_read(user: str) -> tuple[str, list[str], list[str]]:
        with httpx.Client(base_url=cloud.url, headers={"X-User": user}, timeout=30) as client:
            for i in range(6):
                response = client.post(
                    "/notes", json={"title": f"{user} note {i}", "tags": [user, "common"]}
                )
                assert response.status_code == 201, response.text
            listed = [note["title"] for note in client.get("/notes").json()]
            tagged = [note["title"] for note in client.get("/notes?tag=common").json()]
            return user, listed, tagged

    with ThreadPoolExecutor(16) as executor:
        results = list(executor.map(post_and_read, users * 2))
    for user, listed, tagged in results:
        mine = [title for title in listed if title.startswith(f"{user} ")]
        assert mine == listed, f"{user} sees someone else's notes"
        assert tagged == listed
        assert 6 <= len(listed) <= 12  # the user's other round may still be posting
    with httpx.Client(base_url=cloud.url, timeout=30) as client:
        for user in users:
            notes = client.get("/notes", headers={"X-User": user}).json()
            assert [n["title"] for n in notes] == [f"{user} note {i}" for i in range(6)] * 2
    for user in users:
        folder = root / user
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(folder / "notes.db").st_mode) == 0o600


@pytest.mark.slow
def test_async_endpoints_serve_the_same_notes_to_the_same_user_only(cloud: Server) -> None:
    """Notes posted through the sync and the async endpoints land in the user's one file;
    each user's async lists hold only their own; RETURNING ids come back; /pool counts."""
    users = [f"async{n:02d}" for n in range(20)]

    def post_and_read(user: str) -> tuple[str, list[str], list[str]]:
        with httpx.Client(base_url=cloud.url, headers={"X-User": user}, timeout=30) as client:
            made = client.post("/async/notes", json={"title": f"{user} a", "tags": ["x"]})
            assert made.status_code == 201, made.text
            assert client.get(f"/async/notes/{made.json()['id']}").json()["tags"] == ["x"]
            client.post("/notes", json={"title": f"{user} s"})
            listed = [n["title"] for n in client.get("/async/notes").json()]
            tagged = [n["title"] for n in client.get("/async/notes", params={"tag": "x"}).json()]
            return user, listed, tagged

    with ThreadPoolExecutor(16) as executor:
        results = list(executor.map(post_and_read, users))
    for user, listed, tagged in results:
        assert listed == [f"{user} a", f"{user} s"]
        assert tagged == [f"{user} a"]
    with httpx.Client(base_url=cloud.url, timeout=30) as client:
        assert client.get("/async/notes").status_code == 401
        assert client.get("/async/notes/999", headers={"X-User": users[0]}).status_code == 404
        pool = client.get("/pool").json()
    assert pool["databases"] == len(users)
    assert pool["busy"] == pool["async_in_use"] == 0
    assert pool["migrations_applied"] == 3 * len(users)


def test_cloud_mode_refuses_hostile_or_missing_users(cloud: Server, root: Path) -> None:
    """A hostile X-User gets 400 and creates nothing; no X-User gets 401, never a shared file."""
    with httpx.Client(base_url=cloud.url, timeout=30) as client:
        for hostile in ("..", "../../etc", "a\\b", "x" * 500, "caf\u00e9"):
            headers = [(b"x-user", hostile.encode("utf-8"))]
            response = client.get("/notes", headers=headers)
            assert response.status_code == 400, hostile
        response = client.get("/notes")
        assert response.status_code == 401
        assert "X-User" in response.json()["detail"]
    assert list(root.iterdir()) == []


def test_search_tags_and_deletion_per_user(cloud: Server) -> None:
    """Full-text search and tag filters run inside the user's own database."""
    with httpx.Client(base_url=cloud.url, headers={"X-User": "erin"}, timeout=30) as client:
        first = client.post("/notes", json={"title": "shopping", "body": "milk and eggs"}).json()
        client.post("/notes", json={"title": "work", "body": "quarterly report", "tags": ["job"]})
        assert [n["title"] for n in client.get("/notes", params={"q": "eggs"}).json()] == [
            "shopping"
        ]
        assert [n["title"] for n in client.get("/notes", params={"tag": "job"}).json()] == ["work"]
        assert client.get("/notes", params={"q": 'we"ird OR'}).status_code == 200
        assert client.delete(f"/notes/{first['id']}").status_code == 204
        assert client.get(f"/notes/{first['id']}").status_code == 404
    with httpx.Client(base_url=cloud.url, headers={"X-User": "frank"}, timeout=30) as client:
        assert client.get("/notes", params={"q": "eggs"}).json() == []


def test_deleting_an_account_drops_only_that_database(cloud: Server, root: Path) -> None:
    """DELETE /account removes the user's file (and companions); other users keep theirs."""
    with httpx.Client(base_url=cloud.url, timeout=30) as client:
        for user in ("gina", "hank"):
            client.post("/notes", json={"title": f"{user}'s"}, headers={"X-User": user})
        assert client.delete("/account", headers={"X-User": "gina"}).status_code == 204
        assert list((root / "gina").iterdir()) == []
        assert [n["title"] for n in client.get("/notes", headers={"X-User": "hank"}).json()] == [
            "hank's"
        ]
        assert client.get("/notes", headers={"X-User": "gina"}).json() == []  # a fresh start


def test_local_mode_uses_the_one_database_file(example: ModuleType, tmp_path: Path) -> None:
    """Without cloud mode every request uses CF_DB_PATH, with or without an X-User header."""
    db_file = tmp_path / "local" / "notes.db"
    app = example.create_app(Settings(cloud_mode=False, db_path=db_file))
    with Server(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        client.post("/notes", json={"title": "one"})
        client.post("/notes", json={"title": "two"}, headers={"X-User": "ignored"})
        assert [n["title"] for n in client.get("/notes").json()] == ["one", "two"]
        assert client.delete("/account").status_code == 400
    assert db_file.exists()
    assert not Path(f"{db_file}-wal").exists()  # closed at shutdown: WAL checkpointed away


def test_create_app_reads_the_environment(
    example: ModuleType, monkeypatch: pytest.MonkeyPatch, root: Path
) -> None:
    """With no settings given, create_app takes them from CLOUD_MODE / CLOUD_DATA_ROOT."""
    monkeypatch.setenv("CLOUD_MODE", "1")
    monkeypatch.setenv("CLOUD_DATA_ROOT", str(root))
    app = example.create_app()
    with Server(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.get("/notes").status_code == 401
        assert client.get("/notes", headers={"X-User": "ivy"}).json() == []
    assert (root / "ivy" / "notes.db").exists()


@pytest.mark.slow
def test_make_demo_runs_both_modes_and_stops_by_itself(tmp_path: Path) -> None:
    """examples/demo.py (a copy, so the repository's data folder is untouched): the local
    part, then the notes app on loopback in cloud mode; each user sees only their notes."""
    import shutil
    import subprocess

    examples = tmp_path / "examples"
    shutil.copytree(APP_FILE.parent.parent, examples, ignore=shutil.ignore_patterns("data"))
    done = subprocess.run(
        [sys.executable, str(examples / "demo.py")],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if k not in ("CLOUD_MODE", "CLOUD_DATA_ROOT")},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "applied now: 001_initial.sql, 002_add_tags.sql, 003_add_search.sql" in out
    for user in ("alice", "bob", "carol"):
        assert f"{user:<6} sees 2 notes, only their own:" in out
    assert "no user: 401" in out
    assert "the pool: 3 databases" in out
    assert "server stopped" in out
