"""Replication with the real thing: Litestream sidecars, a moto S3 server, file replicas.

Every Litestream here is started by ``cf-db replicate`` (which replaces
itself with Litestream), every restore runs
``litestream restore``, and the S3 replicas live in a moto server on
loopback. Waits are bounded polls on the daemon's own answers.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from circuitforge_core.db import UnsafePathError, get_db, user_db_path
from circuitforge_core.db.errors import ReplicaNotFoundError, ReplicationError, RestoreError
from circuitforge_core.db.replication import (
    ControlClient,
    Replicator,
    erase_replica,
    litestream_state_folder,
    prepare_sidecar,
    replica_url_for,
    restore_database,
    user_file,
)
from replication_support import (
    BUCKET,
    MIGRATIONS,
    MotoServer,
    Sidecar,
    add_notes,
    listed,
    new_user,
    titles,
    wait_for,
)

# Every test here starts real Litestream processes (and some a moto server).
pytestmark = pytest.mark.slow

StartSidecar = Callable[..., Sidecar]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "root"
    folder.mkdir(mode=0o700)
    return folder


@pytest.fixture
def file_base(tmp_path: Path) -> str:
    folder = tmp_path / "replicas"
    folder.mkdir(mode=0o700)
    return f"file://{folder}"


@pytest.fixture(params=["file", "s3"])
def base(request: pytest.FixtureRequest, file_base: str) -> str:
    """A replica URL of each kind; S3 ones run with AWS_CA_BUNDLE set, as on real hosts."""
    if request.param == "file":
        return file_base
    request.getfixturevalue("monkeypatch").setenv("AWS_CA_BUNDLE", "/nonexistent/ca.pem")
    return str(request.getfixturevalue("s3_base"))


def restore_into(other_root: Path, path: str, root: Path, base: str) -> str:
    """Restore ``path``'s replica under the same relative path in ``other_root``."""
    relative = user_file(root, path).relative
    target = user_file(other_root, relative)
    result = restore_database(target, replica_url_for(base, target))
    assert result is not None
    return result.path


# -- the sidecar ------------------------------------------------------------------------


def test_the_sidecar_becomes_litestream_and_exits_cleanly_on_sigterm(
    root: Path, file_base: str, start_sidecar: StartSidecar
) -> None:
    """exec: Litestream has the runner's pid, no watcher, logs on stderr; SIGTERM exits 0."""
    sidecar = start_sidecar(root, file_base)
    client = ControlClient(sidecar.socket_path)
    info = client.info()
    assert info.pid == sidecar.pid
    assert info.database_count == 0
    config = json.loads((sidecar.socket_path.parent / "litestream.yml").read_text())
    assert config["dbs"] == []
    assert config["socket"]["path"] == str(sidecar.socket_path)
    assert stat.S_IMODE(os.stat(sidecar.socket_path).st_mode) == 0o600
    assert sidecar.stop(signal.SIGTERM) == 0
    output = sidecar.output()
    assert "starting Litestream" in output
    assert "control socket listening" in output
    assert "litestream shut down" in output


def test_a_second_sidecar_on_the_same_socket_is_refused(
    root: Path, file_base: str, start_sidecar: StartSidecar
) -> None:
    """Litestream would take the socket over; two daemons on one root corrupt replicas."""
    sidecar = start_sidecar(root, file_base)
    with pytest.raises(ReplicationError, match="already serves"):
        prepare_sidecar(root, file_base, socket_path=sidecar.socket_path)
    assert ControlClient(sidecar.socket_path).info().pid == sidecar.pid


def test_the_sidecar_refuses_a_missing_replica_folder(root: Path, tmp_path: Path) -> None:
    """A typo in a file:// URL must not start a replica nobody will find."""
    with pytest.raises(ReplicationError, match="does not exist"):
        prepare_sidecar(root, f"file://{tmp_path}/nowhere", socket_path=tmp_path / "x.sock")


# -- the replicator -----------------------------------------------------------------------


def test_open_files_are_registered_synced_and_released(
    root: Path, base: str, tmp_path: Path, start_sidecar: StartSidecar
) -> None:
    """Register on open, /sync confirms a commit on the replica, unregister on close frees fds."""
    sidecar = start_sidecar(root, base)
    client = ControlClient(sidecar.socket_path)
    baseline = sidecar.open_fds()
    paths = [new_user(root, f"user{n}") for n in range(3)]
    with Replicator(root, base, socket_path=sidecar.socket_path) as replicator:
        for path in paths:
            replicator.file_opened(path)
        assert replicator.flush(10)
        assert listed(client) == set(paths)
        wait_for(  # Litestream opens a file at its first monitor tick (1 s)
            lambda: sidecar.open_fds() >= baseline + 3 * len(paths), what="Litestream to open them"
        )
        db = get_db(paths[0])
        add_notes(db, 5, "confirmed")
        db.close()
        result = replicator.sync(paths[0])
        assert result.replicated
        assert result.replicated_txid >= result.txid > 0
        for path in paths:
            replicator.file_closed(path)
        assert replicator.flush(30)
        assert listed(client) == set()
        assert replicator.stats().registrations == 3
        assert replicator.stats().unregistrations == 3
    wait_for(lambda: sidecar.open_fds() <= baseline + 2, what="Litestream to close the files")
    other = tmp_path / "other"
    other.mkdir()
    restored = restore_into(other, paths[0], root, base)
    assert titles(restored) == ["user0-0"] + [f"confirmed-{n}" for n in range(5)]


def test_a_file_closed_before_it_was_registered_still_reaches_the_replica(
    root: Path, base: str, tmp_path: Path, start_sidecar: StartSidecar
) -> None:
    """Open, write, close in a blink: the worker still syncs it before letting go."""
    sidecar = start_sidecar(root, base)
    paths = [new_user(root, f"quick{n}", rows=2) for n in range(5)]
    with Replicator(root, base, socket_path=sidecar.socket_path) as replicator:
        for path in paths:
            replicator.file_opened(path)
            replicator.file_closed(path)
        assert replicator.flush(30)
        assert listed(ControlClient(sidecar.socket_path)) == set()
    other = tmp_path / "other"
    other.mkdir()
    for n, path in enumerate(paths):
        assert titles(restore_into(other, path, root, base)) == [f"quick{n}-0", f"quick{n}-1"]


def test_an_idle_files_wal_is_given_back_after_litestream_lets_go(
    root: Path, file_base: str, start_sidecar: StartSidecar
) -> None:
    """Litestream's read lock defeats journal_size_limit; after release the WAL is truncated."""
    sidecar = start_sidecar(root, file_base)
    path = new_user(root, "bulky")
    with Replicator(root, file_base, socket_path=sidecar.socket_path) as replicator:
        replicator.file_opened(path)
        replicator.sync(path)
        db = get_db(path, journal_size_limit=64 * 1024)
        for _ in range(64):
            with db:
                db.execute("INSERT INTO notes (title, body) VALUES ('big', ?)", ("x" * 65536,))
        replicator.sync(path)
        assert os.path.getsize(path + "-wal") > 256 * 1024  # the limit does not hold it
        db.close()
        replicator.file_closed(path)
        assert replicator.flush(30)
    assert not os.path.exists(path + "-wal") or os.path.getsize(path + "-wal") == 0
    assert len(titles(path)) == 65


def test_a_restarted_daemon_gets_every_open_file_again(
    root: Path, file_base: str, tmp_path: Path, start_sidecar: StartSidecar
) -> None:
    """Registrations live in Litestream's memory: after a crash and restart they come back."""
    socket_path = tmp_path.parent / f"{tmp_path.name[:20]}.sock"
    first = start_sidecar(root, file_base, socket_path)
    path = new_user(root, "alice")
    with Replicator(root, file_base, socket_path=socket_path, check_interval=0.05) as replicator:
        replicator.file_opened(path)
        assert replicator.flush(10)
        first.stop(signal.SIGKILL)
        db = get_db(path)
        add_notes(db, 3, "while-down")  # written while no Litestream runs
        db.close()
        second = start_sidecar(root, file_base, socket_path)
        client = ControlClient(socket_path)
        wait_for(lambda: path in listed(client), what="the restarted daemon to get the file")
        assert replicator.stats().daemon_restarts == 1
        replicator.sync(path)
        replicator.file_closed(path)
        assert replicator.flush(30)
    assert second.pid != first.pid
    other = tmp_path / "other"
    other.mkdir()
    assert titles(restore_into(other, path, root, file_base)) == [
        "alice-0",
        "while-down-0",
        "while-down-1",
        "while-down-2",
    ]


def test_sync_without_a_daemon_says_so(root: Path, file_base: str, short_dir: Path) -> None:
    """A write that must be replicated is not confirmed when nobody replicates."""
    path = new_user(root, "alice")
    with Replicator(root, file_base, socket_path=short_dir / "none.sock") as replicator:
        with pytest.raises(ReplicationError, match="no Litestream is listening"):
            replicator.sync(path, timeout=2)
        with pytest.raises(ReplicationError, match="no Litestream"):
            replicator.release(path)  # a move must not go on: the replica may be behind
        replicator.release(path, final_sync=False)  # a deletion may: nothing is held
    with pytest.raises(UnsafePathError):
        Replicator(root, file_base, socket_path=short_dir / "n.sock").file_opened("/etc/x.db")


# -- restore ------------------------------------------------------------------------------


@pytest.fixture
def replicated(
    root: Path, base: str, start_sidecar: StartSidecar
) -> tuple[Replicator, Sidecar, str, str]:
    """A running sidecar and replicator, and alice's file replicated with two notes."""
    sidecar = start_sidecar(root, base)
    replicator = Replicator(root, base, socket_path=sidecar.socket_path)
    path = new_user(root, "alice", rows=2)
    replicator.file_opened(path)
    replicator.sync(path)
    yield replicator, sidecar, path, base
    replicator.close()


def test_restore_to_a_new_host_is_complete_private_and_checked(
    replicated: tuple[Replicator, Sidecar, str, str], root: Path, tmp_path: Path
) -> None:
    """Into an absent file on another root: rows, _migrations, mode 0600, no leftovers."""
    _, _, _path, base = replicated
    other = tmp_path / "host-b"
    other.mkdir(mode=0o700)
    target = user_file(other, "alice/kiwi.db")
    result = restore_database(target, replica_url_for(base, target), migrations=MIGRATIONS)
    assert result is not None
    assert not result.replaced
    assert result.pending == ()
    assert result.migrations == ("001_initial.sql", "002_add_tags.sql", "003_add_search.sql")
    assert titles(target.path) == ["alice-0", "alice-1"]
    assert stat.S_IMODE(os.stat(target.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(other / "alice").st_mode) == 0o700
    assert sorted(os.listdir(other / "alice")) == ["kiwi.db"]
    db = get_db(target.path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()


def test_restore_fills_the_empty_placeholder_user_db_path_makes(
    replicated: tuple[Replicator, Sidecar, str, str], tmp_path: Path
) -> None:
    """user_db_path creates an empty 0600 file first; that counts as absent."""
    _, _, _, base = replicated
    other = tmp_path / "host-b"
    other.mkdir()
    placeholder = user_db_path(other, "alice", "kiwi.db")
    assert placeholder.stat().st_size == 0
    target = user_file(other, placeholder)
    assert restore_database(target, replica_url_for(base, target)) is not None
    assert titles(placeholder) == ["alice-0", "alice-1"]


def test_a_user_nobody_replicated_is_not_found(
    replicated: tuple[Replicator, Sidecar, str, str], tmp_path: Path
) -> None:
    """No copy: ReplicaNotFoundError, or None with missing_ok; nothing is created either way."""
    _, _, _, base = replicated
    other = tmp_path / "host-b"
    other.mkdir()
    target = user_file(other, "nobody/kiwi.db")
    with pytest.raises(ReplicaNotFoundError):
        restore_database(target, replica_url_for(base, target))
    assert restore_database(target, replica_url_for(base, target), missing_ok=True) is None
    assert os.listdir(other / "nobody") == []


def test_an_existing_database_is_replaced_only_when_asked_and_unused(
    replicated: tuple[Replicator, Sidecar, str, str], root: Path
) -> None:
    """Without replace: refused. In use (Litestream or a connection): refused, intact."""
    replicator, _, path, base = replicated
    target = user_file(root, path)
    url = replica_url_for(base, target)
    with pytest.raises(RestoreError, match="replace"):
        restore_database(target, url)
    with pytest.raises(RestoreError, match="in use"):  # Litestream still holds it
        restore_database(target, url, replace=True, lock_wait=0.1)
    replicator.release(path)
    db = get_db(path)
    add_notes(db, 1, "after-backup")  # never replicated: Litestream let go of the file
    db.close()
    holder = get_db(path)
    holder.execute("SELECT count(*) FROM notes").fetchone()
    with pytest.raises(RestoreError, match="in use"):  # a connection of the service
        restore_database(target, url, replace=True, lock_wait=0.1)
    holder.close()
    assert titles(path)[-1] == "after-backup-0"
    assert os.path.isdir(litestream_state_folder(path))
    result = restore_database(target, url, replace=True)
    assert result is not None
    assert result.replaced
    assert titles(path) == ["alice-0", "alice-1"]
    assert not os.path.exists(litestream_state_folder(path))


def test_restore_to_a_point_in_time(
    replicated: tuple[Replicator, Sidecar, str, str], tmp_path: Path
) -> None:
    """--timestamp: the state as it was then."""
    replicator, _, path, base = replicated
    # Litestream dates an LTX file by its storage time: S3 listings have whole seconds.
    gap = 1.1 if base.startswith("s3:") else 0.3
    time.sleep(gap)  # ordering timestamps, not waiting for an outcome
    between = datetime.now(UTC)
    time.sleep(gap)
    db = get_db(path)
    add_notes(db, 2, "later")
    db.close()
    replicator.sync(path)
    other = tmp_path / "host-b"
    other.mkdir()
    target = user_file(other, "alice/kiwi.db")
    restore_database(target, replica_url_for(base, target), timestamp=between)
    assert titles(target.path) == ["alice-0", "alice-1"]


def test_a_damaged_replica_leaves_the_target_as_it_was(
    root: Path, file_base: str, tmp_path: Path, start_sidecar: StartSidecar
) -> None:
    """Flipped bytes in the replica: restore fails, the target is untouched, nothing is left."""
    sidecar = start_sidecar(root, file_base)
    path = new_user(root, "alice")
    with Replicator(root, file_base, socket_path=sidecar.socket_path) as replicator:
        replicator.file_opened(path)
        replicator.sync(path)
        replicator.release(path)
    folder = Path(file_base.removeprefix("file://")) / "alice" / "kiwi.db"
    for ltx in folder.rglob("*.ltx"):
        data = bytearray(ltx.read_bytes())
        data[200:260] = bytes(60)
        ltx.write_bytes(bytes(data))
    other = tmp_path / "host-b"
    (other / "alice").mkdir(parents=True)
    (other / "alice" / "kiwi.db").write_bytes(b"")
    target = user_file(other, "alice/kiwi.db")
    with pytest.raises(RestoreError):
        restore_database(target, replica_url_for(file_base, target))
    assert os.listdir(other / "alice") == ["kiwi.db"]
    assert (other / "alice" / "kiwi.db").stat().st_size == 0


# -- erasure --------------------------------------------------------------------------------


def test_erasure_deletes_the_replica_and_litestreams_state(
    root: Path,
    base: str,
    tmp_path: Path,
    start_sidecar: StartSidecar,
    request: pytest.FixtureRequest,
) -> None:
    """After erasure the account cannot be restored; another user's replica is untouched."""
    sidecar = start_sidecar(root, base)
    alice, bob = new_user(root, "alice"), new_user(root, "bob")
    with Replicator(root, base, socket_path=sidecar.socket_path) as replicator:
        for path in (alice, bob):
            replicator.file_opened(path)
            replicator.sync(path)
        replicator.release(alice)
        result = erase_replica(user_file(root, alice), base)
        assert result.replica_objects
        assert result.local_state == (litestream_state_folder(alice),)
        assert not os.path.exists(litestream_state_folder(alice))
        assert erase_replica(user_file(root, alice), base).replica_objects == ()
    other = tmp_path / "host-b"
    other.mkdir()
    target = user_file(other, "alice/kiwi.db")
    with pytest.raises(ReplicaNotFoundError):
        restore_database(target, replica_url_for(base, target))
    assert titles(restore_into(other, bob, root, base)) == ["bob-0"]
    if base.startswith("file://"):
        assert sorted(os.listdir(base.removeprefix("file://"))) == ["bob"]
    else:
        moto: MotoServer = request.getfixturevalue("moto_server")
        prefix = base.split(f"{BUCKET}/", 1)[1].split("?", 1)[0]
        keys = moto.keys(prefix + "/")
        assert keys
        assert all(key.startswith(f"{prefix}/bob/kiwi.db/") for key in keys)


# -- cf-db ----------------------------------------------------------------------------------


def test_cf_db_replicate_refuses_bad_settings_before_starting_anything(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing root or no URL: exit 2 and an error line; nothing execs."""
    from circuitforge_core.db.cli import main

    assert main(["replicate", str(tmp_path / "nowhere"), "--to", "file:///tmp"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["replicate", str(root)]) == 2
    assert "CF_REPLICA_URL" in capsys.readouterr().err


def test_cf_db_restore_and_erase(
    root: Path,
    file_base: str,
    tmp_path: Path,
    start_sidecar: StartSidecar,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """restore fills a new host (exit 0), says when there is nothing (exit 1); erase lists."""
    from circuitforge_core.db.cli import main

    sidecar = start_sidecar(root, file_base)
    path = new_user(root, "alice", rows=2)
    with Replicator(root, file_base, socket_path=sidecar.socket_path) as replicator:
        replicator.file_opened(path)
        replicator.sync(path)
    other = tmp_path / "host-b"
    other.mkdir()
    monkeypatch.setenv("CF_REPLICA_URL", file_base)  # the sidecar and the CLI share it
    capsys.readouterr()
    assert main(["restore", str(other), "alice/kiwi.db", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["replaced"] is False
    assert len(document["migrations"]) == 3
    assert titles(other / "alice" / "kiwi.db") == ["alice-0", "alice-1"]
    assert main(["restore", str(other), "alice/kiwi.db"]) == 2
    assert "--replace" in capsys.readouterr().err
    assert main(["restore", str(other), "nobody/kiwi.db"]) == 1
    assert "holds no copy" in capsys.readouterr().err
    socket = ["--socket", str(sidecar.socket_path)]
    assert main(["erase", str(root), "alice/kiwi.db", *socket]) == 0
    out = capsys.readouterr().out
    assert f"deleted {path}" in out
    assert "replica object(s) deleted" in out
    assert not os.path.exists(path)
    assert main(["restore", str(tmp_path / "host-b"), "alice/kiwi.db", "--replace"]) == 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() is POSIX only")
def test_a_forked_child_replicates_with_threads_of_its_own(
    root: Path, file_base: str, start_sidecar: StartSidecar
) -> None:
    """gunicorn --preload forks after the replicator started: the child's files still register."""
    import warnings

    sidecar = start_sidecar(root, file_base)
    path = new_user(root, "alice")
    replicator = Replicator(root, file_base, socket_path=sidecar.socket_path)
    with warnings.catch_warnings():
        # Forking a process with threads is the very case under test.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: report through the exit code only
        code = 1
        try:
            replicator.file_opened(path)
            registered = replicator.flush(10)
            code = 0 if registered and path in listed(ControlClient(sidecar.socket_path)) else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert replicator.stats().wanted == 0  # the parent opened nothing
    replicator.close()
