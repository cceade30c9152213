"""A real uvicorn on loopback: while async requests wait for another process's write lock, for
an exhausted pool and for a slow query, the event loop's heartbeat keeps beating."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

HERE = Path(__file__).resolve().parent
HOLD_LOCK_FOR_TWO_SECONDS = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(2.0)
db.execute("ROLLBACK")
"""
# The heartbeat sleeps 1 ms; how late one wake-up may be. Generous for a loaded 2-core
# machine, and far below what a blocked loop shows (the whole 2 s lock wait, or the
# second a slow query runs).
STALL_LIMIT = 0.5


@contextmanager
def serve(root: Path, *, blocking: bool) -> Iterator[str]:
    """Start uvicorn on a loopback socket bound here (so the port is certainly free)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    env = os.environ | {"CF_TEST_ROOT": str(root), "CF_TEST_BLOCKING": "1" if blocking else "0"}
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "--app-dir",
        str(HERE),
        "aio_server:create_app",
        "--fd",
        str(listener.fileno()),
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    with subprocess.Popen(command, env=env, pass_fds=(listener.fileno(),)) as server:
        listener.close()
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(400):  # bounded: about 20 s
                try:
                    httpx.get(f"{base}/heartbeat", timeout=1.0).raise_for_status()
                    break
                except httpx.TransportError:
                    assert server.poll() is None, "uvicorn exited at start-up"
                    time.sleep(0.05)
            else:
                pytest.fail("uvicorn did not answer within 20 s")
            yield base
        finally:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(10)


def make_user(root: Path, user: str) -> Path:
    path = root / f"{user}.db"
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE hits (n INTEGER)")
    db.commit()
    db.close()
    return path


@contextmanager
def lock_held_by_another_process(path: Path) -> Iterator[None]:
    with subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK_FOR_TWO_SECONDS, str(path)],
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "locked\n"
        yield
        holder.wait(30)


async def waiting_requests(base: str, *, with_pool: bool) -> tuple[list[httpx.Response], Any]:
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        (await client.post("/heartbeat/reset")).raise_for_status()
        requests = [client.post("/write/locked") for _ in range(3)]
        requests += [client.get("/slow/slowpoke")]
        if with_pool:
            # Two connections per file: four of these six wait for the pool.
            requests += [client.post("/hold/crowded", params={"seconds": 0.5}) for _ in range(6)]
        requests += [client.post(f"/write/user{n}") for n in range(20)]
        responses = await asyncio.gather(*requests)
        beats = (await client.get("/heartbeat")).json()
        return responses, beats


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "users"
    folder.mkdir()
    for user in ["locked", "slowpoke", "crowded"] + [f"user{n}" for n in range(20)]:
        make_user(folder, user)
    return folder


@pytest.mark.slow
def test_the_loop_keeps_beating_while_requests_wait(root: Path) -> None:
    """Requests waiting 2 s for a lock another process holds, for an exhausted pool, and for
    a slow query: every request succeeds and no heartbeat is late by more than STALL_LIMIT."""
    with serve(root, blocking=False) as base, lock_held_by_another_process(root / "locked.db"):
        started = time.monotonic()
        responses, beats = asyncio.run(waiting_requests(base, with_pool=True))
        took = time.monotonic() - started
    assert [r.status_code for r in responses] == [200] * len(responses)
    assert took > 1.0  # the locked writes really waited for the other process
    assert beats["beats"] > 200
    assert beats["worst"] < STALL_LIMIT, beats
    with contextlib.closing(sqlite3.connect(root / "locked.db")) as db:
        assert db.execute("SELECT count(*) FROM hits").fetchone() == (3,)


@pytest.mark.slow
def test_the_heartbeat_does_see_a_blocked_loop(root: Path) -> None:
    """The control: the same endpoints calling the sync pool inside async def stall the loop
    for the whole lock wait, and the heartbeat shows it (so the test above can fail)."""
    with serve(root, blocking=True) as base, lock_held_by_another_process(root / "locked.db"):
        responses, beats = asyncio.run(waiting_requests(base, with_pool=False))
    assert [r.status_code for r in responses] == [200] * len(responses)
    assert beats["worst"] > 3 * STALL_LIMIT, beats


def test_a_client_that_disconnects_cancels_its_query(root: Path) -> None:
    """Behind CancelOnDisconnect, closing the socket mid-query interrupts the query and the
    connection is back within moments (the query alone would run for minutes); requests with
    a body still read it whole."""
    with serve(root, blocking=False) as base:
        port = int(base.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as client:
            client.sendall(b"GET /endless/slowpoke HTTP/1.1\r\nHost: test\r\n\r\n")
            for _ in range(1000):  # bounded: the query starts within moments
                if httpx.get(f"{base}/busy").json()["busy"] == 1:
                    break
                time.sleep(0.01)
            assert httpx.get(f"{base}/busy").json()["busy"] == 1
        closed = time.monotonic()
        for _ in range(1000):
            state = httpx.get(f"{base}/busy").json()
            if state == {"busy": 0, "in_use": 0}:
                break
            time.sleep(0.01)
        assert state == {"busy": 0, "in_use": 0}
        assert time.monotonic() - closed < 5.0
        body = b"x" * 1_000_000
        assert httpx.post(f"{base}/echo", content=body).json() == {"length": len(body)}
