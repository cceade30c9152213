"""Cloud mode: settings from the environment, the request context, safe per-user paths,
file modes, and the registry of pools (cap, eviction, migrations once, drop_database)."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import os
import random
import re
import signal
import stat
import string
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from circuitforge_core.db import (
    DBError,
    NoDatabaseError,
    OpenError,
    PoolClosedError,
    PoolRegistry,
    PoolTimeoutError,
    Settings,
    SettingsError,
    UnsafePathError,
    current_db_path,
    get_db,
    request_db,
    use_db,
    user_db_path,
    user_key_resolver,
)

JOIN_TIMEOUT = 30.0
NOTES_MIGRATIONS = Path(__file__).resolve().parent.parent / "examples" / "notes" / "migrations"


def start(target: Callable[[], object]) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def join_all(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.join(JOIN_TIMEOUT)
    assert not any(thread.is_alive() for thread in threads), "a thread is stuck (deadlock?)"


def wait_for_waiters(registry: PoolRegistry, count: int = 1) -> None:
    """Return once ``count`` threads are blocked in the registry (its own gauge says so)."""
    deadline = time.monotonic() + JOIN_TIMEOUT
    while registry.stats().waiting < count:
        assert time.monotonic() < deadline, f"{count} thread(s) never started waiting"
        time.sleep(0.001)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "root"
    folder.mkdir()
    return folder


@pytest.fixture
def registry() -> Iterator[PoolRegistry]:
    with PoolRegistry(migrations=NOTES_MIGRATIONS, max_connections=4, timeout=10) as registry:
        yield registry


# -- settings --------------------------------------------------------------------------


def test_settings_default_to_local_mode() -> None:
    """With no variables set: local mode, no data root, no database path override."""
    assert Settings.from_env({}) == Settings(cloud_mode=False, data_root=None, db_path=None)


def test_settings_read_cloud_mode_and_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    """CLOUD_MODE, CLOUD_DATA_ROOT and CF_DB_PATH are read from os.environ."""
    monkeypatch.setenv("CLOUD_MODE", "Yes")
    monkeypatch.setenv("CLOUD_DATA_ROOT", "/srv/data")
    monkeypatch.setenv("CF_DB_PATH", "local.db")
    monkeypatch.delenv("CF_DB_SQLITE", raising=False)  # set under make test-bundled-sqlite
    assert Settings.from_env() == Settings(True, Path("/srv/data"), Path("local.db"))


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"CLOUD_MODE": "maybe"}, "CLOUD_MODE='maybe' is neither on nor off"),
        ({"CLOUD_MODE": "1"}, "CLOUD_DATA_ROOT is not set"),
        ({"CLOUD_MODE": "1", "CLOUD_DATA_ROOT": "rel/data"}, "relative path"),
    ],
)
def test_bad_settings_are_refused_with_what_to_do(environ: dict[str, str], message: str) -> None:
    """An unusable value raises SettingsError (a ValueError) naming the variable."""
    with pytest.raises(SettingsError, match=message) as caught:
        Settings.from_env(environ)
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, DBError)


def test_only_settings_reads_the_environment() -> None:
    """No module but settings.py reads os.environ (the CLI's --key-env reads the one named)."""
    from circuitforge_core.db import settings as settings_module

    source = Path(settings_module.__file__).parent
    readers = sorted(
        str(path.relative_to(source))
        for path in source.rglob("*.py")
        if re.search(r"\bos\.environ\b|\bgetenv\(", path.read_text(encoding="utf-8"))
    )
    assert [r for r in readers if r != "settings.py" and not r.startswith("cli")] == []
    assert "settings.py" in readers


# -- the request context ---------------------------------------------------------------


def test_current_db_path_prefers_the_request_then_the_default() -> None:
    """The request's database wins; without one the default; use_db restores on exit."""
    assert current_db_path("local.db") == "local.db"
    with use_db("a.db"):
        assert current_db_path("local.db") == "a.db"
        with use_db(Path("b.db")):
            assert current_db_path() == "b.db"
            with use_db(None):
                assert current_db_path("local.db") == "local.db"
            assert current_db_path() == "b.db"
        assert request_db.get() == "a.db"
    assert request_db.get() is None


def test_no_request_and_no_default_raises() -> None:
    """Without a request database or a default, NoDatabaseError, never a shared fallback."""
    with pytest.raises(NoDatabaseError, match="use_db") as caught:
        current_db_path()
    assert isinstance(caught.value, LookupError)


def test_use_db_restores_even_when_the_block_raises() -> None:
    """An exception out of the block still puts the previous value back."""
    with pytest.raises(KeyError), use_db("a.db"):
        raise KeyError("x")
    assert request_db.get() is None


def test_context_is_isolated_across_concurrent_asyncio_tasks() -> None:
    """200 interleaved tasks each see only their own database across awaits and to_thread."""

    async def request(n: int) -> list[str]:
        seen = []
        with use_db(f"user{n}.db"):
            for _ in range(5):
                await asyncio.sleep(random.random() / 1000)
                seen.append(current_db_path())
                seen.append(await asyncio.to_thread(current_db_path))
        assert request_db.get() is None
        return seen

    async def main() -> list[list[str]]:
        return await asyncio.gather(*(request(n) for n in range(200)))

    results = asyncio.run(main())
    for n, seen in enumerate(results):
        assert seen == [f"user{n}.db"] * 10


def test_context_is_isolated_across_threads() -> None:
    """Threads lined up on a barrier each keep their own database, however they interleave."""
    barrier = threading.Barrier(16)
    mismatches: list[tuple[int, str]] = []

    def worker(n: int) -> None:
        barrier.wait(JOIN_TIMEOUT)
        with use_db(f"user{n}.db"):
            for _ in range(200):
                if (seen := current_db_path()) != f"user{n}.db":
                    mismatches.append((n, seen))
                time.sleep(0)

    join_all([start(lambda n=n: worker(n)) for n in range(16)])
    assert mismatches == []


def test_plain_threads_do_not_inherit_the_request_database() -> None:
    """threading.Thread and executor.submit start without it, so they must be given a path."""
    outcomes: list[object] = []

    def probe() -> None:
        try:
            outcomes.append(current_db_path())
        except NoDatabaseError as exc:
            outcomes.append(exc)

    with use_db("request.db"):
        join_all([start(probe)])
        with ThreadPoolExecutor(1) as executor:
            executor.submit(probe).result(JOIN_TIMEOUT)
        copied = contextvars.copy_context()
    assert [type(outcome) for outcome in outcomes] == [NoDatabaseError, NoDatabaseError]
    assert copied.run(current_db_path) == "request.db"  # an explicit copy does carry it


# -- safe per-user paths ---------------------------------------------------------------


def test_user_db_path_joins_root_user_and_product(root: Path) -> None:
    """Valid ids and sub-paths give root/user/sub-path, with folders and file created."""
    path = user_db_path(root, "user_42", "snipe/user.db")
    assert path == root / "user_42" / "snipe" / "user.db"
    assert path.is_file()
    for name in ("household_7", "anonymous", "shared", "a1b2-c3d4", "x@example.com", "a+b=c"):
        assert user_db_path(root, name, "kiwi.db") == root / name / "kiwi.db"


HOSTILE_IDS = [
    ("", "is empty"),
    (".", "current or parent folder"),
    ("..", "current or parent folder"),
    ("../../etc", "path separator '/'"),
    ("a/b", "path separator '/'"),
    ("a\\b", "path separator '\\\\'"),
    ("C:", "path separator ':'"),
    ("/etc", "path separator '/'"),
    ("a\x00b", "control character U+0000"),
    ("a\nb", "control character U+000A"),
    ("a\x7fb", "control character U+007F"),
    ("evil\u202etxt", "control character U+202E"),
    ("zero\u200bwidth", "control character U+200B"),
    ("x" * 129, "129 characters long"),
    ("caf\u00e9", "contains '\u00e9'"),
    ("\uff41dmin", "contains '\uff41'"),
    ("with space", "contains ' '"),
    (".hidden", "starts with '.'"),
    ("-rf", "starts with '-'"),
    ("dot.", "ends with '.'"),
]


@pytest.mark.parametrize(("user_id", "reason"), HOSTILE_IDS)
def test_hostile_user_ids_are_refused(root: Path, user_id: str, reason: str) -> None:
    """Each hostile id raises UnsafePathError (a ValueError) saying why; nothing is created."""
    with pytest.raises(UnsafePathError, match=re.escape(reason)) as caught:
        user_db_path(root, user_id, "app.db")
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, DBError)
    assert caught.value.value == user_id
    assert "\x00" not in str(caught.value)
    assert "\n" not in str(caught.value)
    assert list(root.iterdir()) == []


@pytest.mark.parametrize("product_path", ["", "../x.db", "a//b.db", "/abs.db", "a/./b.db", "x\\y"])
def test_hostile_product_sub_paths_are_refused(root: Path, product_path: str) -> None:
    """The product sub-path obeys the same rules, part by part."""
    with pytest.raises(UnsafePathError):
        user_db_path(root, "alice", product_path)


def test_non_text_ids_are_refused(root: Path) -> None:
    """A user id that is not a str (an int, bytes) is refused rather than guessed at."""
    for value in (42, b"alice", None):
        with pytest.raises(UnsafePathError, match="must be text"):
            user_db_path(root, value, "app.db")  # type: ignore[arg-type]


def test_a_symlink_out_of_the_root_is_refused(root: Path, tmp_path: Path) -> None:
    """A user folder that is a symbolic link leading outside the root is refused."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "mallory").symlink_to(outside)
    with pytest.raises(UnsafePathError, match="outside the data root"):
        user_db_path(root, "mallory", "app.db")
    assert list(outside.iterdir()) == []


def test_a_missing_root_is_an_error_not_created(tmp_path: Path) -> None:
    """A data root that does not exist is reported (misconfiguration), never created."""
    with pytest.raises(OpenError, match="does not exist"):
        user_db_path(tmp_path / "typo", "alice", "app.db")
    assert not (tmp_path / "typo").exists()


SAFE_NAME = st.text(
    alphabet=string.ascii_letters + string.digits + "_-.@+=", min_size=1, max_size=128
)
HOSTILE_TEXT = st.text(
    alphabet=st.one_of(
        st.sampled_from(["/", "\\", ":", ".", "\x00", "\n", "\r", "\t", "~", " ", "-"]),
        st.characters(codec="utf-8"),
    ),
    max_size=300,
)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(user_id=st.one_of(HOSTILE_TEXT, SAFE_NAME))
@example(user_id="..")
@example(user_id="../" * 50)
@example(user_id="a" * 128)
def test_any_id_is_refused_or_stays_a_single_folder_in_the_root(root: Path, user_id: str) -> None:
    """Property: whatever the id, the result is refused or exactly root/<id>/app.db."""
    try:
        path = user_db_path(root, user_id, "app.db", create=False)
    except UnsafePathError:
        return
    assert path.parent.parent == root
    assert path.parent.name == user_id
    assert os.path.realpath(path).startswith(os.path.realpath(root) + os.sep)
    assert set(user_id) <= set(string.ascii_letters + string.digits + "_-.@+=")
    assert user_id not in (".", "..")
    assert len(user_id) <= 128


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o277])
def test_folders_are_0700_and_database_files_0600_whatever_the_umask(
    root: Path, umask: int
) -> None:
    """Created folders are 0700 and the database with its -wal and -shm 0600."""
    old = os.umask(umask)
    try:
        path = user_db_path(root, "alice", "product/app.db")
        with PoolRegistry() as registry, registry.connection(path) as db:
            db.execute("CREATE TABLE t (x)")
            db.execute("INSERT INTO t VALUES (1)")
            db.commit()
            modes = {
                name: stat.S_IMODE(os.stat(name).st_mode)
                for name in (
                    root / "alice",
                    root / "alice" / "product",
                    path,
                    Path(f"{path}-wal"),
                    Path(f"{path}-shm"),
                )
            }
    finally:
        os.umask(old)
    assert modes == {
        root / "alice": 0o700,
        root / "alice" / "product": 0o700,
        path: 0o600,
        Path(f"{path}-wal"): 0o600,
        Path(f"{path}-shm"): 0o600,
    }


def test_existing_files_and_folders_are_left_as_they_are(root: Path) -> None:
    """user_db_path changes the mode only of what it creates."""
    (root / "bob").mkdir(mode=0o755)
    os.chmod(root / "bob", 0o755)
    path = user_db_path(root, "bob", "app.db")
    assert stat.S_IMODE(os.stat(root / "bob").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


# -- the registry ----------------------------------------------------------------------


def count_fds(under: Path) -> int:
    """This process's open file descriptors on files below ``under``.

    Only those: other tests' servers and threads may open and close sockets
    and files meanwhile, so a count of every descriptor could flake.
    """
    prefix = str(under.resolve()) + os.sep
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        count += target.startswith(prefix)
    return count


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_eviction_keeps_open_connections_under_the_cap(registry: PoolRegistry, root: Path) -> None:
    """40 files through a cap of 4: never more than 4 open, LRU idle ones evicted, data kept."""
    baseline = count_fds(root)
    peak_open = peak_fds = 0
    paths = [user_db_path(root, f"user{n}", "notes.db") for n in range(40)]
    for n, path in enumerate(paths):
        with registry.connection(path) as db:
            db.execute("INSERT INTO notes (title) VALUES (?)", (f"note of {n}",))
            db.commit()
            peak_fds = max(peak_fds, count_fds(root))
        peak_open = max(peak_open, registry.stats().open)
    for n, path in enumerate(paths):
        with registry.connection(path) as db:
            assert db.execute("SELECT title FROM notes").fetchall() == [(f"note of {n}",)]
    stats = registry.stats()
    assert peak_open == stats.open == 4
    assert baseline == 0
    assert 3 <= peak_fds <= 3 * 4  # db, -wal and -shm of each open connection
    assert stats.evictions == 2 * 40 - 4
    assert stats.migrations_applied == 3 * 40  # each file's three, once
    # The second pass reopened every file: each re-checked its folder (no writes).
    assert stats.migration_runs == 2 * 40
    assert stats.databases == 4  # pools of files without connections are let go


def test_a_file_whose_last_connection_broke_is_let_go(root: Path) -> None:
    """A file whose only connection was discarded at check-in keeps no pool in the registry."""
    with PoolRegistry() as registry:
        with registry.connection(user_db_path(root, "u", "app.db")) as db:
            db.close()  # closed by its user: discarded, not kept
        stats = registry.stats()
        assert (stats.databases, stats.open, stats.busy) == (0, 0, 0)


def test_a_checkout_that_opened_nothing_leaves_no_pool_behind(root: Path, tmp_path: Path) -> None:
    """A first checkout that fails before any connection opens does not leave an empty pool."""
    resolver = user_key_resolver(root, "s" * 32)
    with PoolRegistry(key=resolver) as registry:
        with pytest.raises(UnsafePathError), registry.connection(tmp_path / "elsewhere.db"):
            pass
        stats = registry.stats()
        assert (stats.databases, stats.open, stats.busy) == (0, 0, 0)


def test_a_file_replaced_while_its_pool_was_let_go_is_migrated_again(root: Path) -> None:
    """The registry remembers which file it migrated, not just the path: a restore is noticed."""
    with PoolRegistry(migrations=NOTES_MIGRATIONS, max_connections=1) as registry:
        alice, bob = user_db_path(root, "alice", "notes.db"), user_db_path(root, "bob", "notes.db")
        with registry.connection(alice):
            pass
        with registry.connection(bob):  # evicts alice's only connection: her pool goes
            pass
        assert registry.stats().databases == 1
        os.remove(alice)
        get_db(alice).close()  # an empty database where hers was
        with registry.connection(alice) as db:
            assert db.execute("SELECT count(*) FROM notes").fetchone() == (0,)
        with registry.connection(bob):
            pass
        assert registry.stats().migrations_applied == 3 * 3  # alice twice, bob once


def test_the_least_recently_used_idle_connection_is_evicted(
    registry: PoolRegistry, root: Path
) -> None:
    """With the cap full, the connection evicted is the one idle the longest."""
    paths = [user_db_path(root, f"u{n}", "notes.db") for n in range(5)]
    for path in paths[:4]:
        with registry.connection(path):
            pass
    with registry.connection(paths[0]):  # u0 is now the most recently used
        pass
    with registry.connection(paths[4]):
        pass
    # A file with an open connection keeps its -wal; the last close removes it.
    open_files = [n for n, path in enumerate(paths) if Path(f"{path}-wal").exists()]
    assert open_files == [0, 2, 3, 4]


def test_a_busy_connection_is_never_evicted(root: Path) -> None:
    """With every connection busy the next file waits, then times out; busy ones keep working."""
    with PoolRegistry(max_connections=2, timeout=0.3) as registry:
        a, b, c = (user_db_path(root, name, "app.db") for name in "abc")
        with registry.connection(a) as db_a, registry.connection(b) as db_b:
            with (
                pytest.raises(PoolTimeoutError, match="2 connections open across all") as caught,
                registry.connection(c),
            ):
                pass
            assert caught.value.path is None
            assert caught.value.limit == 2
            assert db_a.execute("SELECT 1").fetchone() == db_b.execute("SELECT 1").fetchone()
        registry.timeout = 10
        holding, release = threading.Event(), threading.Event()
        survived: list[object] = []

        def hold_a() -> None:
            with registry.connection(a) as db:
                holding.set()
                release.wait(JOIN_TIMEOUT)
                survived.append(db.execute("SELECT 1").fetchone())

        holder = start(hold_a)
        assert holding.wait(JOIN_TIMEOUT)
        with registry.connection(b):  # a busy, b idle -> reusing b is fine
            pass
        with registry.connection(c) as db_c:  # evicts idle b, never busy a
            assert db_c.execute("SELECT 1").fetchone() == (1,)
        assert not Path(f"{b}-wal").exists()  # b's only connection was the one closed
        release.set()
        join_all([holder])
        assert survived == [(1,)]
        assert registry.stats().open == 2


def test_a_waiter_for_the_cap_proceeds_when_a_connection_comes_back(root: Path) -> None:
    """A caller waiting on a full cap gets going as soon as another file's connection is idle."""
    with PoolRegistry(max_connections=1, timeout=10) as registry:
        a, b = user_db_path(root, "a", "app.db"), user_db_path(root, "b", "app.db")
        release = threading.Event()
        done: list[float] = []

        holding = threading.Event()

        def hold_a() -> None:
            with registry.connection(a):
                holding.set()
                release.wait(JOIN_TIMEOUT)

        def use_b() -> None:
            with registry.connection(b):
                done.append(time.monotonic())

        holder = start(hold_a)
        assert holding.wait(JOIN_TIMEOUT)
        waiter = start(use_b)
        wait_for_waiters(registry)  # blocked on the cap
        assert done == []
        release.set()
        join_all([holder, waiter])
        assert len(done) == 1


def test_concurrent_first_use_of_a_new_user_migrates_once(
    registry: PoolRegistry, root: Path
) -> None:
    """16 threads touching one new user's database at once: one migration run, all succeed."""
    path = user_db_path(root, "newcomer", "notes.db")
    barrier = threading.Barrier(16)
    errors: list[BaseException] = []

    def first_touch() -> None:
        try:
            barrier.wait(JOIN_TIMEOUT)
            with registry.connection(path) as db:
                db.execute("SELECT count(*) FROM notes").fetchone()
        except BaseException as exc:
            errors.append(exc)

    join_all([start(first_touch) for _ in range(16)])
    assert errors == []
    assert registry.stats().migration_runs == 1
    check = get_db(path)
    try:
        assert check.execute("SELECT count(*) FROM _migrations").fetchone() == (3,)
    finally:
        check.close()


def test_many_threads_many_files_small_cap_no_deadlock(root: Path) -> None:
    """8 threads x 60 random files with a cap of 3: everything finishes, nothing is left busy."""
    paths = [user_db_path(root, f"u{n}", "notes.db") for n in range(30)]
    with PoolRegistry(migrations=NOTES_MIGRATIONS, max_connections=3, timeout=20) as registry:
        errors: list[BaseException] = []
        barrier = threading.Barrier(8)

        def work(seed: int) -> None:
            rng = random.Random(seed)
            try:
                barrier.wait(JOIN_TIMEOUT)
                for _ in range(60):
                    with registry.connection(rng.choice(paths)) as db:
                        db.execute("INSERT INTO notes (title) VALUES ('x')")
                        db.commit()
            except BaseException as exc:
                errors.append(exc)

        join_all([start(lambda s=s: work(s)) for s in range(8)])
        assert errors == []
        stats = registry.stats()
        assert stats.busy == 0
        assert stats.open <= 3
        total = 0
        for path in paths:
            with registry.connection(path) as db:
                total += db.execute("SELECT count(*) FROM notes").fetchone()[0]
        assert total == 8 * 60
        assert registry.stats().migrations_applied == 3 * 30


def test_drop_database_closes_its_connections_and_removes_the_file(
    registry: PoolRegistry, root: Path
) -> None:
    """drop_database closes the file's connections, removes it; other users are untouched."""
    path = user_db_path(root, "leaving", "notes.db")
    keep = user_db_path(root, "staying", "notes.db")
    for target in (path, keep):
        with registry.connection(target) as db:
            db.execute("INSERT INTO notes (title) VALUES ('mine')")
            db.commit()
    assert Path(f"{path}-wal").exists()
    removed = registry.drop_database(path)
    assert str(path) in removed
    assert list(path.parent.iterdir()) == []
    with registry.connection(keep) as db:
        assert db.execute("SELECT count(*) FROM notes").fetchone() == (1,)
    path = user_db_path(root, "leaving", "notes.db")  # signing up again: a fresh database
    with registry.connection(path) as db:
        assert db.execute("SELECT count(*) FROM notes").fetchone() == (0,)


def test_drop_database_removes_what_a_killed_process_left_behind(
    registry: PoolRegistry, root: Path
) -> None:
    """After a SIGKILL left -wal, -shm and .migrate-lock beside the file, all four go."""
    path = user_db_path(root, "leaving", "notes.db")
    script = (
        "import os, signal, sqlite3, sys\n"
        "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "db.execute('PRAGMA journal_mode=WAL')\n"
        "db.execute('CREATE TABLE secrets (x)')\n"
        "db.execute(\"INSERT INTO secrets VALUES ('left in the wal')\")\n"
        "open(sys.argv[1] + '.migrate-lock', 'w').close()\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    child = subprocess.run([sys.executable, "-c", script, str(path)], timeout=JOIN_TIMEOUT)
    assert child.returncode == -signal.SIGKILL
    companions = [f"{path}-wal", f"{path}-shm", f"{path}.migrate-lock"]
    assert all(os.path.exists(name) for name in companions)
    removed = registry.drop_database(path)
    assert sorted(removed) == sorted([str(path), *companions])
    assert list(path.parent.iterdir()) == []
    path = user_db_path(root, "leaving", "notes.db")
    with registry.connection(path) as db:  # no stray WAL replayed into the new file
        assert db.execute("SELECT name FROM sqlite_master WHERE name = 'secrets'").fetchall() == []


def test_drop_database_waits_for_busy_connections_and_refuses_new_ones(
    registry: PoolRegistry, root: Path
) -> None:
    """A busy connection delays the drop; meanwhile new checkouts of that file are refused."""
    path = user_db_path(root, "leaving", "notes.db")
    holding, release = threading.Event(), threading.Event()
    dropped: list[list[str]] = []

    def hold() -> None:
        with registry.connection(path):
            holding.set()
            release.wait(JOIN_TIMEOUT)

    holder = start(hold)
    assert holding.wait(JOIN_TIMEOUT)
    dropper = start(lambda: dropped.append(registry.drop_database(path)))
    wait_for_waiters(registry)  # blocked until the busy connection comes back
    assert dropped == []
    assert path.exists()
    with pytest.raises(PoolClosedError, match="being deleted"), registry.connection(path):
        pass
    release.set()
    join_all([holder, dropper])
    assert str(path) in dropped[0]
    assert not path.exists()


def test_drop_database_gives_up_while_still_busy(registry: PoolRegistry, root: Path) -> None:
    """Past its timeout drop_database raises PoolTimeoutError and leaves the file in place."""
    path = user_db_path(root, "leaving", "notes.db")
    with registry.connection(path):
        with pytest.raises(PoolTimeoutError, match="left in place"):
            registry.drop_database(path, timeout=0.2)
        assert path.exists()
    registry.drop_database(path)
    assert not path.exists()


def test_evict_closes_a_file_and_the_next_use_reopens_it(
    registry: PoolRegistry, root: Path
) -> None:
    """evict() closes every connection to one file; the next checkout opens it again."""
    path = user_db_path(root, "restored", "notes.db")
    with registry.connection(path):
        pass
    registry.evict(path)
    assert registry.stats().open == 0
    assert not Path(f"{path}-wal").exists()  # the last close checkpointed and cleaned up
    with registry.connection(path) as db:
        assert db.execute("SELECT count(*) FROM notes").fetchone() == (0,)


def test_close_closes_everything_and_refuses_new_checkouts(root: Path) -> None:
    """After close(), no connection stays open and connection() raises PoolClosedError."""
    registry = PoolRegistry(max_connections=8)
    paths = [user_db_path(root, f"u{n}", "app.db") for n in range(5)]
    for path in paths:
        with registry.connection(path):
            pass
    with registry.connection(paths[0]):
        registry.close()
        assert registry.stats().open == 1  # the busy one closes when it comes back
    assert registry.stats().open == 0
    with pytest.raises(PoolClosedError, match="registry is closed"), registry.connection(paths[1]):
        pass
    assert all(not Path(f"{path}-wal").exists() for path in paths)


def test_a_leaked_registry_warns(root: Path) -> None:
    """A registry garbage-collected with open connections raises a ResourceWarning."""
    registry = PoolRegistry()
    with registry.connection(user_db_path(root, "u", "app.db")):
        pass
    # PT031 bent: the warning comes when the registry is finalized, by del or the collector.
    with pytest.warns(ResourceWarning):  # noqa: PT031
        del registry
        gc.collect()


def test_cloud_connect_settings_are_applied(registry: PoolRegistry, root: Path) -> None:
    """Registry connections use a 2 MiB page cache and no memory mapping."""
    with registry.connection(user_db_path(root, "u", "notes.db")) as db:
        assert db.execute("PRAGMA cache_size").fetchone()[0] == -2048
        assert db.execute("PRAGMA mmap_size").fetchone()[0] == 0


def test_migrations_may_depend_on_the_file(root: Path, tmp_path: Path) -> None:
    """A callable maps each path to its folder (or None for no migrations)."""
    other = tmp_path / "other_migrations"
    other.mkdir()
    (other / "001.sql").write_text("CREATE TABLE other (x);", encoding="utf-8")

    def folder_for(path: str) -> Path | None:
        return other if path.endswith("other.db") else None

    with PoolRegistry(migrations=folder_for) as registry:
        with registry.connection(user_db_path(root, "u", "other.db")) as db:
            assert db.execute("SELECT count(*) FROM other").fetchone() == (0,)
        with registry.connection(user_db_path(root, "u", "plain.db")) as db:
            tables = db.execute("SELECT name FROM sqlite_master").fetchall()
            assert tables == []


def test_old_import_paths_keep_working() -> None:
    """The registry and Settings are still importable from tenancy, the pool from pool."""
    import circuitforge_core.db as package
    from circuitforge_core.db import pool, settings, tenancy

    for name in ("PoolRegistry", "Settings", "user_db_path", "user_key_resolver", "use_db"):
        assert getattr(tenancy, name) is getattr(package, name)
    assert tenancy.RegistryStats is pool.RegistryStats
    assert tenancy.CLOUD_CONNECT_KWARGS is pool.CLOUD_CONNECT_KWARGS
    assert tenancy.DEFAULT_MAX_CONNECTIONS == pool.DEFAULT_MAX_CONNECTIONS
    assert tenancy.DEFAULT_MAX_PER_DATABASE == pool.DEFAULT_MAX_PER_DATABASE
    assert tenancy.Settings is settings.Settings
    assert pool.ConnectionPool is package.ConnectionPool
    for name in ("PoolStats", "PooledConnection", "DEFAULT_POOL_SIZE", "DEFAULT_POOL_TIMEOUT"):
        assert hasattr(pool, name)
