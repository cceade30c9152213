"""Real parts for the replication tests: a moto S3 server and Litestream sidecars.

Both run as child processes on loopback and stop by themselves: moto exits
when its stdin closes (so a killed test run leaves no server behind), and a
sidecar is SIGTERMed, then SIGKILLed if it lingers. Every wait is bounded.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from circuitforge_core.db import get_db, run_migrations, user_db_path
from circuitforge_core.db.replication import ControlClient

MIGRATIONS = Path(__file__).resolve().parent.parent / "examples" / "notes" / "migrations"
BUCKET = "cf-db-replicas"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}

_MOTO = """
import sys
from moto.moto_server.threaded_moto_server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()  # until the test session closes the pipe
server.stop()
"""


@dataclass
class MotoServer:
    endpoint: str

    def url(self, prefix: str) -> str:
        """A Litestream replica URL for ``prefix`` in the session's bucket."""
        return (
            f"s3://{BUCKET}/{prefix}?endpoint={self.endpoint}&region=us-east-1&forcePathStyle=true"
        )

    def client(self):  # type: ignore[no-untyped-def]
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def keys(self, prefix: str) -> list[str]:
        listed = self.client().list_objects_v2(Bucket=BUCKET, Prefix=prefix)
        return sorted(item["Key"] for item in listed.get("Contents", []))


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """One moto S3 server for the whole session, on a free loopback port, with the bucket."""
    env = {**os.environ, **CREDENTIALS}
    env.pop("AWS_CA_BUNDLE", None)
    child = subprocess.Popen(
        [sys.executable, "-c", _MOTO],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        text=True,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()  # the server prints its port once it listens
        if not line.strip().isdigit():
            raise RuntimeError(f"moto server did not start (exit {child.poll()}): {line!r}")
        server = MotoServer(f"http://127.0.0.1:{int(line)}")
        server.client().create_bucket(Bucket=BUCKET)
        yield server
    finally:
        if child.stdin is not None:
            child.stdin.close()
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(10)
        if child.stdout is not None:
            child.stdout.close()


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials for moto in this process and the children it starts."""
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def s3_base(moto_server: MotoServer, s3_env: None) -> str:
    """A replica URL of its own for one test: a fresh prefix in the session's bucket."""
    return moto_server.url(f"t-{uuid.uuid4().hex[:12]}")


class Sidecar:
    """A real Litestream, started by `cf-db replicate ROOT --to URL --socket PATH`."""

    def __init__(self, root: Path, replica_url: str, socket_path: Path) -> None:
        self.root = root
        self.replica_url = replica_url
        self.socket_path = socket_path
        self.process: subprocess.Popen[bytes] | None = None
        self.log = socket_path.parent / f"sidecar-{uuid.uuid4().hex[:6]}.log"

    def start(self, timeout: float = 15.0) -> ControlClient:
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "circuitforge_core.db",
                    "replicate",
                    str(self.root),
                    "--to",
                    self.replica_url,
                    "--socket",
                    str(self.socket_path),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        client = ControlClient(self.socket_path)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the sidecar exited {self.process.returncode}: {self.output()}")
            if client.is_running() and client.info().pid == self.process.pid:
                return client
            if time.monotonic() > deadline:
                raise RuntimeError(f"the sidecar did not answer in {timeout} s: {self.output()}")
            time.sleep(0.02)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Signal the sidecar and wait for it; its exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout)
            raise

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A folder with a short path: Unix socket paths are limited to 107 bytes."""
    folder = Path(tempfile.mkdtemp(prefix="cfr-"))
    try:
        yield folder
    finally:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def start_sidecar(short_dir: Path) -> Iterator[object]:
    """``start_sidecar(root, url)``: a running sidecar, stopped after the test."""
    started: list[Sidecar] = []

    def start(root: Path, replica_url: str, socket_path: Path | None = None) -> Sidecar:
        sidecar = Sidecar(root, replica_url, socket_path or short_dir / f"s{len(started)}.sock")
        started.append(sidecar)
        sidecar.start()
        return sidecar

    yield start
    for sidecar in started:
        if sidecar.process is not None and sidecar.process.poll() is None:
            sidecar.stop(signal.SIGKILL)


# -- per-user files -----------------------------------------------------------------------


def new_user(root: Path, user_id: str, rows: int = 1) -> str:
    """A user's file as a product makes it: user_db_path, get_db, the notes migrations."""
    path = user_db_path(root, user_id, "kiwi.db")
    db = get_db(path)
    try:
        run_migrations(db, MIGRATIONS)
        add_notes(db, rows, user_id)
    finally:
        db.close()
    return str(path)


def add_notes(db: sqlite3.Connection, count: int, prefix: str = "note") -> None:
    with db:
        db.executemany(
            "INSERT INTO notes (title) VALUES (?)", [(f"{prefix}-{n}",) for n in range(count)]
        )


def titles(path: str | Path) -> list[str]:
    db = sqlite3.connect(path)
    try:
        return [row[0] for row in db.execute("SELECT title FROM notes ORDER BY id")]
    finally:
        db.close()


def wait_for(condition: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def listed(client: ControlClient) -> set[str]:
    return {entry.path for entry in client.databases()}
