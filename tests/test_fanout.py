"""migrate_all / drift_all over many tenant files: discovery, jobs, canary, isolation, resume."""

from __future__ import annotations

import multiprocessing
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from circuitforge_core.db import (
    MigrationError,
    OpenError,
    PoolRegistry,
    UnsafePathError,
    get_db,
    run_migrations,
    transaction,
    user_db_path,
    user_key_resolver,
)
from circuitforge_core.db.fanout import (
    FanOutProgress,
    drift_all,
    find_tenant_databases,
    migrate_all,
)

V1 = {
    "001_notes.sql": "CREATE TABLE notes (id INTEGER PRIMARY KEY, title TEXT NOT NULL);",
    "002_tags.sql": (
        "CREATE TABLE tags (id INTEGER PRIMARY KEY, "
        "note_id INTEGER NOT NULL REFERENCES notes(id) ON DELETE CASCADE, tag TEXT);"
    ),
}
V2 = {
    **V1,
    "003_pinned.sql": (
        "ALTER TABLE notes ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0;\n"
        "CREATE INDEX notes_pinned ON notes (pinned);"
    ),
    # A rebuild: the hardest kind of file to run under live writers.
    "004_tags_rebuild.sql": (
        "CREATE TABLE tags_new (id INTEGER PRIMARY KEY, "
        "note_id INTEGER NOT NULL REFERENCES notes(id) ON DELETE CASCADE, tag TEXT NOT NULL "
        "DEFAULT '', weight INTEGER NOT NULL DEFAULT 1);\n"
        "INSERT INTO tags_new (id, note_id, tag) SELECT id, note_id, coalesce(tag, '') FROM tags;\n"
        "DROP TABLE tags;\n"
        "ALTER TABLE tags_new RENAME TO tags;"
    ),
}
PRODUCT = "kiwi.db"


def folder(base: Path, name: str, files: dict[str, str]) -> Path:
    path = base / name
    path.mkdir()
    for file_name, text in files.items():
        (path / file_name).write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def v1(tmp_path: Path) -> Path:
    return folder(tmp_path, "v1", V1)


@pytest.fixture
def v2(tmp_path: Path) -> Path:
    return folder(tmp_path, "v2", V2)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir(mode=0o700)
    return path


def make_tenants(root: Path, migrations: Path, count: int, product: str = PRODUCT) -> list[Path]:
    paths = []
    for number in range(count):
        path = user_db_path(root, f"user{number:03d}", product)
        db = get_db(path)
        try:
            run_migrations(db, migrations)
            db.execute("INSERT INTO notes (title) VALUES ('first')")
            db.execute("INSERT INTO tags (note_id, tag) VALUES (1, 'a')")
            db.commit()
        finally:
            db.close()
        paths.append(path)
    return paths


def applied_names(path: Path) -> list[str]:
    db = sqlite3.connect(path)
    try:
        return [row[0] for row in db.execute("SELECT name FROM _migrations ORDER BY name")]
    finally:
        db.close()


def tree(root: Path) -> set[str]:
    """Every path under root, without SQLite's companion files (they come and go)."""
    return {
        str(path.relative_to(root))
        for path in root.rglob("*")
        if not path.name.endswith(("-wal", "-shm", "-journal"))
    }


# -- finding tenants -------------------------------------------------------------------


def test_finds_each_users_file_by_the_product_sub_path(root: Path, v1: Path) -> None:
    """One tenant per user folder holding the file; other folders and names are not tenants."""
    make_tenants(root, v1, 3)
    (root / "user-without-file").mkdir()
    (root / ".snapshots").mkdir()
    (root / "stray.db").write_bytes(b"")
    user_db_path(root, "other", "other-product.db")
    found = find_tenant_databases(root, product_path=PRODUCT)
    assert [(t.tenant, Path(t.path).relative_to(root).as_posix(), t.problem) for t in found] == [
        ("user000", "user000/kiwi.db", None),
        ("user001", "user001/kiwi.db", None),
        ("user002", "user002/kiwi.db", None),
    ]


def test_nested_sub_paths_and_globs(root: Path, v1: Path) -> None:
    """'snipe/user.db' and a glob find the same files; companion files never match."""
    make_tenants(root, v1, 2, product="snipe/user.db")
    (root / "user000" / "snipe" / "user.db-wal").write_bytes(b"")
    by_path = find_tenant_databases(root, product_path="snipe/user.db")
    by_glob = find_tenant_databases(root, pattern="*/snipe/user.db*")
    assert [t.path for t in by_path] == [t.path for t in by_glob]
    assert [t.tenant for t in by_glob] == ["user000", "user001"]


def test_refuses_bad_roots_patterns_and_sub_paths(root: Path) -> None:
    """Each mistake gets a clear error before anything is touched."""
    with pytest.raises(OpenError, match="does not exist"):
        find_tenant_databases(root / "nope", product_path=PRODUCT)
    with pytest.raises(UnsafePathError):
        find_tenant_databases(root, pattern="../*/kiwi.db")
    with pytest.raises(UnsafePathError):
        find_tenant_databases(root, product_path="../kiwi.db")
    with pytest.raises(ValueError, match="exactly one"):
        find_tenant_databases(root)


def test_links_out_of_the_root_are_reported_not_followed(
    root: Path, tmp_path: Path, v1: Path, v2: Path
) -> None:
    """A user folder that is a link to elsewhere is skipped, with the reason, never migrated."""
    outside = tmp_path / "outside"
    outside.mkdir()
    make_tenants(outside, v1, 1)
    os.symlink(outside / "user000", root / "intruder")
    make_tenants(root, v1, 1)
    result = migrate_all(root, v2, product_path=PRODUCT)
    skipped = result.skipped
    assert [r.tenant for r in skipped] == ["intruder"]
    assert "symbolic link" in (skipped[0].error or "")
    assert applied_names(outside / "user000" / PRODUCT) == sorted(V1)
    by_glob = migrate_all(root, v2, pattern="*/kiwi.db")
    assert [r.tenant for r in by_glob.skipped] == ["intruder"]
    assert "outside the data root" in (by_glob.skipped[0].error or "")


# -- migrating -----------------------------------------------------------------------------


def test_migrates_every_tenant_and_a_rerun_is_a_no_op(root: Path, v1: Path, v2: Path) -> None:
    """All applied, ok; the rerun finds every tenant up to date."""
    paths = make_tenants(root, v1, 12)
    result = migrate_all(root, v2, product_path=PRODUCT, jobs=4)
    assert result.ok
    assert result.stopped is None
    assert result.counts() == {"applied": 12}
    assert all(r.applied == ("003_pinned.sql", "004_tags_rebuild.sql") for r in result.results)
    assert [r.tenant for r in result.results] == [f"user{n:03d}" for n in range(12)]
    assert all(applied_names(path) == sorted(V2) for path in paths)
    rerun = migrate_all(root, v2, product_path=PRODUCT, jobs=4)
    assert rerun.ok
    assert rerun.counts() == {"up to date": 12}


def test_a_failing_tenant_is_isolated_and_reported(root: Path, v1: Path, v2: Path) -> None:
    """A hand-drifted tenant fails atomically, named with file and line; the others go on."""
    paths = make_tenants(root, v1, 6)
    db = get_db(paths[2])
    db.execute("ALTER TABLE notes ADD COLUMN pinned")  # a hand fix
    db.commit()
    db.close()
    result = migrate_all(root, v2, product_path=PRODUCT, jobs=3)
    assert not result.ok
    assert result.counts() == {"applied": 5, "failed": 1}
    (failure,) = result.failures
    assert (failure.tenant, failure.migration, failure.line) == ("user002", "003_pinned.sql", 1)
    assert failure.path == str(paths[2])
    assert "already has a column pinned" in (failure.error or "")
    assert applied_names(paths[2]) == sorted(V1)  # nothing of the failed file
    resumed = migrate_all(root, v2, product_path=PRODUCT, jobs=3)
    assert resumed.counts() == {"up to date": 5, "failed": 1}


def test_a_failure_after_earlier_files_lists_what_went_in(
    root: Path, v1: Path, tmp_path: Path
) -> None:
    """applied names the files that committed before the failing one."""
    paths = make_tenants(root, v1, 2)
    bad = folder(
        tmp_path,
        "bad",
        {
            **V1,
            "003_ok.sql": "CREATE TABLE a (x);",
            "004_bad.sql": "\nINSERT INTO nowhere VALUES (1);",
        },
    )
    result = migrate_all(root, bad, product_path=PRODUCT, rehearse=False, jobs=1)
    assert [(r.status, r.applied, r.migration, r.line) for r in result.results] == [
        ("failed", ("003_ok.sql",), "004_bad.sql", 2)
    ] * 2
    assert applied_names(paths[0]) == [*sorted(V1), "003_ok.sql"]


def test_files_that_are_not_databases_are_skipped_and_never_created(
    root: Path, v1: Path, v2: Path
) -> None:
    """Garbage is skipped with the reason; an empty file is a new database; nothing is created."""
    make_tenants(root, v1, 2)
    garbage = user_db_path(root, "garbage", PRODUCT)
    garbage.write_bytes(b"this is not sqlite at all, it is a text file\n")
    empty = user_db_path(root, "fresh", PRODUCT)  # 0 bytes, as user_db_path leaves it
    (root / "no-file-yet").mkdir()
    before = tree(root)
    result = migrate_all(root, v2, product_path=PRODUCT)
    assert result.counts() == {"applied": 3, "skipped": 1}
    assert not result.ok
    (skip,) = result.skipped
    assert skip.tenant == "garbage"
    assert "is not an SQLite database" in (skip.error or "")
    assert "pass its key" in (skip.error or "")
    assert garbage.read_bytes().startswith(b"this is not sqlite")
    assert applied_names(empty) == sorted(V2)
    assert tree(root) == before


def test_a_tenant_deleted_during_the_run_is_not_recreated(root: Path, v1: Path, v2: Path) -> None:
    """An account deleted after discovery is skipped; its file does not come back."""
    paths = make_tenants(root, v1, 3)

    def delete_the_last(progress: FanOutProgress) -> None:
        if progress.done == 1:
            os.remove(paths[2])

    result = migrate_all(root, v2, product_path=PRODUCT, jobs=1, on_progress=delete_the_last)
    assert [r.status for r in result.results] == ["applied", "applied", "skipped"]
    assert "no longer exists" in (result.results[2].error or "")
    assert not paths[2].exists()


def test_rehearsal_stops_a_broken_folder_before_any_tenant(
    root: Path, v1: Path, tmp_path: Path
) -> None:
    """A folder that cannot build an empty database raises, and no tenant is touched."""
    paths = make_tenants(root, v1, 2)
    broken = folder(tmp_path, "broken", {**V1, "003_x.sql": "CREATE TABLE (;"})
    with pytest.raises(MigrationError, match="no tenant was touched") as caught:
        migrate_all(root, broken, product_path=PRODUCT)
    assert caught.value.name == "003_x.sql"
    assert all(applied_names(path) == sorted(V1) for path in paths)
    with pytest.raises(MigrationError, match="migrations folder"):
        migrate_all(root, tmp_path / "missing", product_path=PRODUCT)


def test_canary_stops_at_the_first_failure(root: Path, v1: Path, tmp_path: Path) -> None:
    """A file that breaks on some data stops the run inside the canary; the rest is untouched."""
    paths = make_tenants(root, v1, 8)
    db = get_db(paths[1])
    db.execute("INSERT INTO notes (title) VALUES ('first')")  # a duplicate title
    db.commit()
    db.close()
    unique = folder(
        tmp_path, "unique", {**V1, "003_unique.sql": "CREATE UNIQUE INDEX t ON notes (title);"}
    )
    result = migrate_all(root, unique, product_path=PRODUCT, canary=3, jobs=4)
    assert result.stopped == "canary failed at tenant user001"
    assert [r.status for r in result.results] == ["applied", "failed"]
    assert [t.tenant for t in result.not_attempted] == [f"user{n:03d}" for n in range(2, 8)]
    assert result.counts() == {"applied": 1, "failed": 1, "not attempted": 6}
    assert not result.ok
    assert all(applied_names(path) == sorted(V1) for path in paths[2:])


def test_canary_counts_only_tenants_that_had_work(root: Path, v1: Path, v2: Path) -> None:
    """On a rerun, already-migrated tenants pass through; the canary is the next N with work."""
    make_tenants(root, v1, 6)
    first = migrate_all(root, v2, pattern="user00[0-2]/kiwi.db")
    assert first.counts() == {"applied": 3}
    calls: list[tuple[int, str]] = []
    result = migrate_all(
        root,
        v2,
        product_path=PRODUCT,
        canary=2,
        jobs=2,
        on_progress=lambda p: calls.append((p.done, threading.current_thread().name)),
    )
    assert result.ok
    assert [r.status for r in result.results] == ["up to date"] * 3 + ["applied"] * 3
    # The canary (3 up to date + 2 applied) ran in the calling thread, one at a time.
    assert [name for _, name in calls[:5]] == [threading.current_thread().name] * 5


def test_max_failures_stops_handing_out_work(root: Path, v1: Path, tmp_path: Path) -> None:
    """After the limit, no tenant is started; those running finish."""
    make_tenants(root, v1, 10)
    failing = folder(
        tmp_path, "failing", {**V1, "003_bad.sql": "INSERT INTO notes (id, title) VALUES (1, 'x');"}
    )
    result = migrate_all(root, failing, product_path=PRODUCT, jobs=1, max_failures=2)
    assert result.stopped == "2 tenants failed (the limit)"
    assert result.counts() == {"failed": 2, "not attempted": 8}
    threaded = migrate_all(root, failing, product_path=PRODUCT, jobs=2, max_failures=2)
    assert threaded.count("failed") >= 2
    assert len(threaded.not_attempted) >= 10 - 2 * 2 - 2  # at most 2 * jobs were in flight
    for bad in ({"jobs": 0}, {"canary": -1}, {"max_failures": 0}):
        with pytest.raises(ValueError):
            migrate_all(root, failing, product_path=PRODUCT, **bad)  # type: ignore[arg-type]


def test_progress_reports_count_rate_and_eta(root: Path, v1: Path, v2: Path) -> None:
    """One call per tenant, in the calling thread, counting up to the total; ETA reaches 0."""
    make_tenants(root, v1, 5)
    seen: list[FanOutProgress] = []
    migrate_all(root, v2, product_path=PRODUCT, jobs=2, on_progress=seen.append)
    assert [p.done for p in seen] == [1, 2, 3, 4, 5]
    assert all(p.total == 5 and p.failed == 0 and p.rate > 0 for p in seen)
    assert seen[-1].eta == 0
    assert sorted(p.last.tenant for p in seen) == [f"user{n:03d}" for n in range(5)]


def test_an_exception_in_the_callback_stops_cleanly(root: Path, v1: Path, v2: Path) -> None:
    """The caller's error propagates; tenants already running finish whole, the rest are left."""
    paths = make_tenants(root, v1, 20)

    def stop(progress: FanOutProgress) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        migrate_all(root, v2, product_path=PRODUCT, jobs=2, on_progress=stop)
    states = [applied_names(path) for path in paths]
    assert all(state in (sorted(V1), sorted(V2)) for state in states)
    assert states.count(sorted(V2)) <= 4  # no more than the tenants in flight


def test_encrypted_tenants_with_their_keys(root: Path, v1: Path, v2: Path) -> None:
    """user_key_resolver opens each user's file with its own key; without keys they are skipped."""
    pytest.importorskip("sqlcipher3")
    secret = "s" * 32
    resolve = user_key_resolver(root, secret)
    for user in ("ann", "bob"):
        path = user_db_path(root, user, PRODUCT)
        db = get_db(path, key=resolve(str(path)))
        run_migrations(db, v1)
        db.close()
    unkeyed = migrate_all(root, v2, product_path=PRODUCT)
    assert unkeyed.counts() == {"skipped": 2}
    keyed = migrate_all(root, v2, product_path=PRODUCT, key=resolve)
    assert keyed.ok
    assert keyed.counts() == {"applied": 2}
    drift = drift_all(root, v2, product_path=PRODUCT, key=resolve)
    assert drift.ok


# -- drift over every tenant ---------------------------------------------------------------


def test_drift_all_names_each_drifted_tenant(root: Path, v1: Path, v2: Path) -> None:
    """Clean tenants, a hand-fixed one with its differences, a garbage file skipped."""
    paths = make_tenants(root, v2, 4)
    db = get_db(paths[3])
    db.execute("CREATE INDEX by_hand ON notes (title)")
    db.commit()
    db.close()
    result = drift_all(root, v2, product_path=PRODUCT, jobs=2)
    assert result.counts() == {"clean": 3, "drift": 1}
    assert not result.ok
    drifted = result.results[3]
    assert drifted.drift is not None
    assert [str(d) for d in drifted.drift.differences] == [
        "index by_hand is not made by the migrations (found CREATE INDEX by_hand ON notes (title))"
    ]
    document = result.as_dict()
    assert document["ok"] is False
    assert document["tenants"][3]["differences"][0]["name"] == "by_hand"  # type: ignore[index]


# -- beside a running service ----------------------------------------------------------------


def _service(paths: list[str], stop: Any, ready: Any, written: Any, results: Any) -> None:
    """A product's process: pooled connections, one INSERT transaction per request, round robin.

    Stops by itself after 120 s. Sends back what it committed per file and every error.
    """
    counts = dict.fromkeys(paths, 0)
    errors: list[str] = []
    deadline = time.monotonic() + 120
    with PoolRegistry(max_per_database=1) as registry:
        rounds = 0
        while not stop.is_set() and time.monotonic() < deadline:
            for path in paths:
                try:
                    with registry.connection(path) as db, transaction(db):
                        db.execute("INSERT INTO notes (title) VALUES ('from the service')")
                        db.execute(
                            "INSERT INTO tags (note_id, tag) VALUES (last_insert_rowid(), 'live')"
                        )
                    counts[path] += 1
                    with written.get_lock():
                        written.value += 1
                except Exception as exc:
                    errors.append(f"{path}: {type(exc).__name__}: {exc}")
            rounds += 1
            if rounds == 1:
                ready.set()
    results.put((counts, errors))


def wait_for(predicate: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def test_migrating_beside_a_process_writing_every_tenant(root: Path, v1: Path, v2: Path) -> None:
    """A real service process keeps writing every tenant; no write fails or is lost."""
    paths = [str(p) for p in make_tenants(root, v1, 16)]
    context = multiprocessing.get_context("spawn")
    stop, ready = context.Event(), context.Event()
    written = context.Value("i", 0)
    results = context.Queue()
    service = context.Process(target=_service, args=(paths, stop, ready, written, results))
    service.start()
    try:
        assert ready.wait(60), "the service did not start"
        result = migrate_all(root, v2, product_path=PRODUCT, jobs=4)
        after_migration = written.value
        wait_for(lambda: written.value >= after_migration + 2 * len(paths))  # writes go on
        stop.set()
        counts, errors = results.get(timeout=60)
        service.join(30)
    finally:
        stop.set()
        if service.is_alive():
            service.kill()
            service.join(5)
    assert service.exitcode == 0
    assert errors == []
    assert result.ok, result.failures
    assert result.counts() == {"applied": 16}
    for path in paths:
        db = get_db(path)
        try:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            (notes,) = db.execute("SELECT count(*) FROM notes").fetchone()
            (live_tags,) = db.execute("SELECT count(*) FROM tags WHERE tag = 'live'").fetchone()
            assert notes == 1 + counts[path]  # the seed row and every committed write
            assert live_tags == counts[path]
            assert db.execute("PRAGMA foreign_key_check").fetchall() == []
        finally:
            db.close()
    assert drift_all(root, v2, product_path=PRODUCT).ok


def test_racing_the_service_that_migrates_on_first_checkout(root: Path, v1: Path, v2: Path) -> None:
    """Threads checking out tenants through a registry with the new folder race migrate_all:
    each file is applied exactly once, by one of them, and nobody fails."""
    paths = make_tenants(root, v1, 24)
    registry = PoolRegistry(migrations=v2)
    errors: queue.Queue[BaseException] = queue.Queue()
    start = threading.Barrier(3)

    def service() -> None:
        try:
            start.wait(30)
            for path in paths:
                with registry.connection(path) as db:
                    db.execute("SELECT count(*) FROM notes").fetchone()
        except BaseException as exc:
            errors.put(exc)

    threads = [threading.Thread(target=service) for _ in range(2)]
    for thread in threads:
        thread.start()
    start.wait(30)
    result = migrate_all(root, v2, product_path=PRODUCT, jobs=4)
    for thread in threads:
        thread.join(60)
    registry.close()
    assert not any(thread.is_alive() for thread in threads)
    assert errors.empty()
    assert result.ok, result.failures
    assert set(result.counts()) <= {"applied", "up to date"}
    for path in paths:
        db = sqlite3.connect(path)
        names = [row[0] for row in db.execute("SELECT name FROM _migrations")]
        db.close()
        assert sorted(names) == sorted(V2)  # one row each: the primary key says once


@pytest.fixture(autouse=True)
def _no_leaked_threads() -> Iterator[None]:
    before = {t.name for t in threading.enumerate()}
    yield
    leaked = [
        t
        for t in threading.enumerate()
        if t.name.startswith("cf-db-fan-out") and t.name not in before
    ]
    for thread in leaked:
        thread.join(10)
    assert not [t for t in leaked if t.is_alive()]
