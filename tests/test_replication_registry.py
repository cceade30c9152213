"""The registry driving a real Litestream: the lifecycle, drops, moves, host loss, the cap.

Each test starts its own sidecars with ``cf-db replicate`` (and shares the
session's moto server for S3 replicas); "hosts" are data roots of their own
on this machine, each with its sidecar, registry and replicator.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from circuitforge_core.db import (
    PlacedElsewhereError,
    Placement,
    PoolRegistry,
    QuiescedError,
    ReplicaNotFoundError,
    ReplicationError,
    Replicator,
    transaction,
    user_db_path,
)
from circuitforge_core.db.replication import (
    ControlClient,
    litestream_state_folder,
    replica_url_for,
    restore_database,
    user_file,
)
from replication_support import MIGRATIONS, Sidecar, listed, titles, wait_for

# Every test here starts real Litestream processes (and some a moto server).
pytestmark = pytest.mark.slow

StartSidecar = Callable[..., Sidecar]


class Host:
    """One 'host' on this machine: a data root, its sidecar, replicator and registry."""

    def __init__(
        self,
        root: Path,
        base: str,
        sidecar: Sidecar,
        *,
        placement: Placement | None = None,
        max_connections: int = 16,
    ) -> None:
        self.root = root
        self.sidecar = sidecar
        self.control = ControlClient(sidecar.socket_path)
        self.replicator = Replicator(
            root, base, socket_path=sidecar.socket_path, check_interval=0.1
        )
        self.registry = PoolRegistry(
            migrations=MIGRATIONS,
            replication=self.replicator,
            placement=placement,
            max_connections=max_connections,
            max_per_database=1,
        )

    def path(self, user: str) -> str:
        return str(user_db_path(self.root, user, "kiwi.db"))

    def write(self, user: str, title: str) -> str:
        path = self.path(user)
        with self.registry.connection(path) as db, transaction(db):
            db.execute("INSERT INTO notes (title) VALUES (?)", (title,))
        return path

    def close(self) -> None:
        self.registry.close()
        self.replicator.close()


@pytest.fixture
def hosts(
    tmp_path: Path, file_base_url: str, start_sidecar: StartSidecar
) -> Iterator[Callable[..., Host]]:
    made: list[Host] = []

    def make(name: str, base: str | None = None, **options: object) -> Host:
        root = tmp_path / name
        root.mkdir(mode=0o700)
        url = base or file_base_url
        host = Host(root, url, start_sidecar(root, url), **options)  # type: ignore[arg-type]
        made.append(host)
        return host

    yield make
    for host in made:
        host.close()


@pytest.fixture
def file_base_url(tmp_path: Path) -> str:
    folder = tmp_path / "replicas"
    folder.mkdir(mode=0o700)
    return f"file://{folder}"


def restored_titles(base: str, relative: str, tmp_path: Path) -> list[str]:
    """Restore ``relative`` from ``base`` into a fresh root and read its notes."""
    other = tmp_path / f"check-{time.monotonic_ns()}"
    other.mkdir()
    target = user_file(other, relative)
    restore_database(target, replica_url_for(base, target))
    return titles(target.path)


# -- the lifecycle -------------------------------------------------------------------------


def test_first_checkout_registers_and_eviction_unregisters(
    hosts: Callable[..., Host], file_base_url: str, tmp_path: Path
) -> None:
    """Litestream has exactly the files the registry has open; evicted ones are synced first."""
    host = hosts("a", max_connections=2)
    alice = host.write("alice", "one")
    assert host.replicator.flush(10)
    assert listed(host.control) == {alice}
    bob = host.write("bob", "two")
    carol = host.write("carol", "three")  # the cap is 2: alice's connection is evicted
    assert host.replicator.flush(30)
    assert listed(host.control) == {bob, carol}
    assert restored_titles(file_base_url, "alice/kiwi.db", tmp_path) == ["one"]
    assert not os.path.exists(alice + "-wal") or os.path.getsize(alice + "-wal") == 0


def test_replication_off_is_the_default(tmp_path: Path) -> None:
    """No replicator: nothing to sync, and restore/compact say what they need."""
    registry = PoolRegistry(migrations=MIGRATIONS)
    path = user_db_path(tmp_path, "alice", "kiwi.db")
    with registry.connection(path) as db, transaction(db):
        db.execute("INSERT INTO notes (title) VALUES ('x')")
    assert registry.sync(path) is None
    with pytest.raises(ValueError, match="replication"):
        registry.restore(path)
    registry.close()


def test_encrypted_files_cannot_be_replicated(tmp_path: Path, short_dir: Path) -> None:
    """Litestream must read the database: key= with replication= is refused at once."""
    replicator = Replicator(tmp_path, f"file://{tmp_path}", socket_path=short_dir / "n.sock")
    with pytest.raises(ValueError, match="encrypted"):
        PoolRegistry(key="k" * 32, replication=replicator)
    replicator.close()


def test_a_confirmed_write_is_in_the_replica_when_sync_returns(
    hosts: Callable[..., Host], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """registry.sync: once it returns, a restore elsewhere has the write (S3 replica)."""
    base = str(request.getfixturevalue("s3_base"))
    host = hosts("a", base)
    path = host.write("alice", "paid")
    result = host.registry.sync(path)
    assert result is not None
    assert result.replicated
    assert restored_titles(base, "alice/kiwi.db", tmp_path) == ["paid"]


# -- account deletion ----------------------------------------------------------------------


def test_delete_and_recreate_a_user_replicates_the_new_account_only(
    hosts: Callable[..., Host], file_base_url: str, tmp_path: Path
) -> None:
    """drop_database unregisters, erases the replica and Litestream's state, then deletes."""
    host = hosts("a")
    path = host.write("alice", "old-account")
    host.registry.sync(path)
    assert os.path.isdir(litestream_state_folder(path))
    removed = host.registry.drop_database(path)
    assert path in removed
    assert litestream_state_folder(path) in removed
    assert any(name.startswith(file_base_url.removeprefix("file://")) for name in removed)
    assert path not in listed(host.control)
    with pytest.raises(ReplicaNotFoundError):
        restored_titles(file_base_url, "alice/kiwi.db", tmp_path)
    erased_at = datetime.now(UTC)
    time.sleep(0.3)  # ordering timestamps, not waiting for an outcome
    host.write("alice", "new-account")  # a re-signup under the same id
    host.registry.sync(path)
    assert restored_titles(file_base_url, "alice/kiwi.db", tmp_path) == ["new-account"]
    other = tmp_path / "pitr"
    other.mkdir()
    target = user_file(other, "alice/kiwi.db")
    with pytest.raises(ReplicationError):  # nothing of the old account is left to go back to
        restore_database(target, replica_url_for(file_base_url, target), timestamp=erased_at)


# -- quiesce, restore, compact -------------------------------------------------------------


def test_quiesce_refuses_checkouts_and_syncs_a_last_time(
    hosts: Callable[..., Host], file_base_url: str, tmp_path: Path
) -> None:
    """New checkouts raise QuiescedError; the replica has everything; resume hands out again."""
    host = hosts("a")
    path = host.write("alice", "before")
    with host.registry.quiesce(path):
        with pytest.raises(QuiescedError), host.registry.connection(path):
            pass
        assert path not in listed(host.control)
        assert restored_titles(file_base_url, "alice/kiwi.db", tmp_path) == ["before"]
    host.write("alice", "after")
    assert host.registry.sync(path) is not None


def test_restore_in_the_service_to_a_point_in_time(
    hosts: Callable[..., Host], file_base_url: str
) -> None:
    """registry.restore: quiesce, restore over the live file, resume; replication goes on."""
    host = hosts("a")
    path = host.write("alice", "good")
    host.registry.sync(path)
    time.sleep(0.3)  # ordering timestamps, not waiting for an outcome
    before_mistake = datetime.now(UTC)
    time.sleep(0.3)
    host.write("alice", "mistake")
    host.registry.sync(path)
    result = host.registry.restore(path, timestamp=before_mistake)
    assert result.replaced
    host.write("alice", "after-restore")
    host.registry.sync(path)
    with host.registry.connection(path) as db:
        assert [r[0] for r in db.execute("SELECT title FROM notes ORDER BY id")] == [
            "good",
            "after-restore",
        ]


def test_compact_gives_a_busy_files_wal_back(hosts: Callable[..., Host]) -> None:
    """Under Litestream's read lock the WAL keeps its size; compact empties it."""
    host = hosts("a")
    path = host.write("alice", "x")
    with host.registry.connection(path) as db:
        for _ in range(40):
            with transaction(db):
                db.execute("INSERT INTO notes (title, body) VALUES ('big', ?)", ("y" * 65536,))
    host.registry.sync(path)
    assert os.path.getsize(path + "-wal") > 256 * 1024
    assert host.registry.compact(path)
    assert not os.path.exists(path + "-wal") or os.path.getsize(path + "-wal") == 0
    assert len(titles(path)) == 41


# -- placement and moves -------------------------------------------------------------------


def test_restore_on_miss_only_for_users_placed_here(
    hosts: Callable[..., Host], file_base_url: str
) -> None:
    """Absent file: restored if this host owns the user, refused if another does, new if unknown."""
    directory: dict[str, str] = {}
    source = hosts("a")
    source.write("alice", "from-a")
    source.write("bob", "bobs")
    source.registry.sync(source.path("alice"))
    source.registry.sync(source.path("bob"))
    target = hosts("b", placement=None)
    target.registry.close()
    target.registry = PoolRegistry(
        migrations=MIGRATIONS,
        replication=target.replicator,
        placement=Placement(target.root, "b", directory.get),
    )
    directory.update(alice="b", bob="a")
    assert titles(target.write("alice", "on-b")) == ["from-a", "on-b"]
    with pytest.raises(PlacedElsewhereError) as caught:
        target.write("bob", "must-not")
    assert caught.value.host == "a"
    assert titles(target.write("carol", "new")) == ["new"]  # nobody placed carol: no restore
    assert not os.path.exists(target.path("bob")) or os.path.getsize(target.path("bob")) == 0


def test_a_move_between_two_hosts_keeps_one_lineage(
    hosts: Callable[..., Host], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Quiesce on A, flip the directory, first checkout on B restores; A answers 'elsewhere'."""
    base = str(request.getfixturevalue("s3_base"))
    directory = {"alice": "a"}
    host_a = hosts("a", base)
    host_b = hosts("b", base)
    for host, name in ((host_a, "a"), (host_b, "b")):
        host.registry.close()
        host.registry = PoolRegistry(
            migrations=MIGRATIONS,
            replication=host.replicator,
            placement=Placement(host.root, name, directory.get),
        )
    for n in range(20):
        host_a.write("alice", f"a-{n}")
    path_a = host_a.path("alice")
    started = time.perf_counter()
    host_a.registry.quiesce(path_a)
    directory["alice"] = "b"
    path_b = host_b.write("alice", "b-0")  # restore-on-miss, register, write
    moved_in = time.perf_counter() - started
    host_a.registry.drop_database(path_a, erase_replica=False)
    host_b.registry.sync(path_b)
    assert titles(path_b) == [f"a-{n}" for n in range(20)] + ["b-0"]
    assert restored_titles(base, "alice/kiwi.db", tmp_path) == [f"a-{n}" for n in range(20)] + [
        "b-0"
    ]
    with pytest.raises(PlacedElsewhereError):
        host_a.write("alice", "stray")
    assert moved_in < 10


# -- the cap -------------------------------------------------------------------------------


# About 15 s on the 2-core development machine; runs in `make test`.
def test_litestreams_open_files_follow_the_registry_cap(
    hosts: Callable[..., Host], file_base_url: str
) -> None:
    """1,000 users under a cap of 256: never more than 256 registered, fds bounded alike."""
    host = hosts("a", max_connections=256)
    baseline = host.sidecar.open_fds()
    most_listed = most_fds = 0
    for n in range(1000):
        host.write(f"u{n:04d}", "hello")
        if n % 50 == 49:
            count = len(listed(host.control))
            most_listed = max(most_listed, count)
            most_fds = max(most_fds, host.sidecar.open_fds() - baseline)
    assert host.replicator.flush(120)
    count = len(listed(host.control))
    assert count <= 256
    assert most_listed <= 256 + host.replicator.stats().pending + 8
    assert most_fds <= 6 * 256 + 64
    host.registry.close()
    assert host.replicator.flush(120)
    wait_for(lambda: len(listed(host.control)) == 0, 30, "every file to be let go")
    wait_for(lambda: host.sidecar.open_fds() <= baseline + 2, 30, "Litestream's fds to drop")


# -- host loss -------------------------------------------------------------------------------

_APP = """
import sys
from circuitforge_core.db import PoolRegistry, Replicator, transaction, user_db_path
root, base, socket, migrations = sys.argv[1:5]
replicator = Replicator(root, base, socket_path=socket)
registry = PoolRegistry(migrations=migrations, replication=replicator)
n = 0
while True:
    for user in ("alice", "bob", "carol"):
        path = user_db_path(root, user, "kiwi.db")
        with registry.connection(path) as db, transaction(db):
            db.execute("INSERT INTO notes (title) VALUES (?)", (f"{user}-{n}",))
        if n % 5 == 0:
            registry.sync(path)
            print("confirmed", user, n, flush=True)
    n += 1
"""


def test_host_loss_keeps_every_confirmed_write(
    tmp_path: Path, start_sidecar: StartSidecar, request: pytest.FixtureRequest
) -> None:
    """SIGKILL the app and Litestream at once; every user restored elsewhere has every
    write the durability call confirmed."""
    base = str(request.getfixturevalue("s3_base"))
    root = tmp_path / "a"
    root.mkdir(mode=0o700)
    sidecar = start_sidecar(root, base)
    app = subprocess.Popen(
        [sys.executable, "-c", _APP, str(root), base, str(sidecar.socket_path), str(MIGRATIONS)],
        stdout=subprocess.PIPE,
        text=True,
    )
    confirmed: dict[str, int] = {}
    try:
        assert app.stdout is not None
        deadline = time.monotonic() + 30
        while sum(1 for _ in confirmed) < 3 or min(confirmed.values()) < 20:
            line = app.stdout.readline()
            assert line, f"the app died (exit {app.poll()})"
            _, user, n = line.split()
            confirmed[user] = int(n)
            assert time.monotonic() < deadline, "the app confirmed too little in 30 s"
    finally:
        app.send_signal(signal.SIGKILL)
        sidecar.stop(signal.SIGKILL)
        app.wait(10)
        if app.stdout is not None:
            app.stdout.close()
    for user, last in confirmed.items():
        rows = restored_titles(base, f"{user}/kiwi.db", tmp_path)
        present = {int(title.rsplit("-", 1)[1]) for title in rows}
        assert all(n in present for n in range(0, last + 1, 5)), user
