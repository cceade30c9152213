"""Real parts for the replication tests: a moto S3 server and Litestream sidecars.

Both run as child processes on loopback and stop by themselves: moto exits
when its stdin closes (so a killed test run leaves no server behind), and a
sidecar is SIGTERMed, then SIGKILLed if it lingers. Every wait is bounded.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from circuitforge_core.db.replication import ControlClient

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

# What `cf-db replicate ROOT --to URL --socket SOCKET` runs.
_SIDECAR = """
import logging, sys
logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
from circuitforge_core.db.replication import exec_sidecar, prepare_sidecar
exec_sidecar(prepare_sidecar(sys.argv[1], sys.argv[2], socket_path=sys.argv[3]))
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
    """A real Litestream started the way `cf-db replicate` starts it."""

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
                    "-c",
                    _SIDECAR,
                    str(self.root),
                    self.replica_url,
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
