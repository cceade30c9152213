"""run_migrations and transaction() under real contention: processes, threads, a long holder."""

from __future__ import annotations

import logging
import multiprocessing
import random
import select
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from circuitforge_core.db import get_db, run_migrations, transaction

# Each file leaves one 'events' row, and most would fail outright if run twice
# (UNIQUE names, a duplicate column, an existing trigger), so a double
# application shows either as an error or as a second row.
RACE_MIGRATIONS = {
    "001_schema.sql": """
        CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
        CREATE TABLE events (id INTEGER PRIMARY KEY, kind TEXT NOT NULL);
        INSERT INTO events (kind) VALUES ('001');
    """,
    "002_seed.sql": """
        INSERT INTO items (name) VALUES ('alpha'), ('beta'), ('gamma');
        INSERT INTO events (kind) VALUES ('002');
    """,
    "003_column.sql": """
        ALTER TABLE items ADD COLUMN price REAL NOT NULL DEFAULT 0;
        INSERT INTO events (kind) VALUES ('003');
    """,
    "004_trigger.sql": """
        CREATE TRIGGER items_priced AFTER UPDATE OF price ON items BEGIN
            INSERT INTO events (kind) VALUES ('priced ' || new.name);
        END;
        UPDATE items SET price = 1 WHERE name = 'alpha';
        INSERT INTO events (kind) VALUES ('004');
    """,
    "005_outside.sql": """-- cf-db: no-transaction
        INSERT INTO events (kind) VALUES ('005');
    """,
    "006_bulk.sql": """
        WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200)
        INSERT INTO items (name) SELECT 'bulk ' || i FROM n;
        INSERT INTO events (kind) VALUES ('006');
    """,
}
ALL_NAMES = sorted(RACE_MIGRATIONS)
EXPECTED_EVENTS = ["001", "002", "003", "priced alpha", "004", "005", "006"]


@pytest.fixture
def race_migrations(migrations_dir: Path) -> Path:
    for name, text in RACE_MIGRATIONS.items():
        (migrations_dir / name).write_text(textwrap.dedent(text), encoding="utf-8")
    return migrations_dir


def assert_applied_exactly_once(
    db_path: Path, applied_lists: list[list[str]], already: int = 0
) -> None:
    """Every file recorded once, its effects present once, the callers' lists a partition.

    The first ``already`` files were applied before the race began.
    """
    claimed = sorted(name for applied in applied_lists for name in applied)
    assert claimed == ALL_NAMES[already:], f"callers' lists overlap or miss files: {applied_lists}"
    for applied in applied_lists:
        assert applied == sorted(applied)
    db = get_db(db_path)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        rows = db.execute("SELECT name, checksum FROM _migrations ORDER BY name").fetchall()
        assert [name for name, _ in rows] == ALL_NAMES
        assert all(checksum for _, checksum in rows)
        events = [kind for (kind,) in db.execute("SELECT kind FROM events ORDER BY id")]
        assert events == EXPECTED_EVENTS
        assert db.execute("SELECT count(*), sum(price) FROM items").fetchone() == (203, 1.0)
    finally:
        db.close()


# -- processes -------------------------------------------------------------------------


def _race_worker(db_paths: list[str], folder: str, barrier: Any, results: Any, worker: int) -> None:
    """One process: for each round, wait for the others, then open and migrate.

    Even rounds start all at once; odd rounds stagger the starts by a few
    milliseconds, so that late callers find a half-migrated file.
    """
    jitter = random.Random(worker)
    for round_no, db_path in enumerate(db_paths):
        try:
            barrier.wait(60)
        except threading.BrokenBarrierError:
            results.put((worker, round_no, "error", "barrier broken"))
            return
        if round_no % 2:
            time.sleep(jitter.uniform(0, 0.02))
        try:
            db = get_db(db_path)
            try:
                applied = run_migrations(db, folder)
            finally:
                db.close()
        except BaseException as exc:
            results.put((worker, round_no, "error", f"{type(exc).__name__}: {exc}"))
        else:
            results.put((worker, round_no, "ok", applied))


@pytest.mark.slow
@pytest.mark.parametrize("workers", [4, 6])
def test_processes_racing_on_a_new_file_apply_each_migration_once(
    tmp_path: Path, race_migrations: Path, workers: int
) -> None:
    """Processes lined up on brand-new files, round after round: none fails, each file runs once."""
    rounds = 40
    db_paths = [tmp_path / f"round{n}" / "app.db" for n in range(rounds)]
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(workers)
    results = context.Queue()
    processes = [
        context.Process(
            target=_race_worker,
            args=([str(p) for p in db_paths], str(race_migrations), barrier, results, worker),
        )
        for worker in range(workers)
    ]
    for process in processes:
        process.start()
    outcomes: dict[int, list[list[str]]] = {n: [] for n in range(rounds)}
    failures = []
    try:
        for _ in range(workers * rounds):
            worker, round_no, status, detail = results.get(timeout=120)
            if status == "ok":
                outcomes[round_no].append(detail)
            else:
                failures.append((worker, round_no, detail))
    finally:
        for process in processes:
            process.join(30)
        alive = [process for process in processes if process.is_alive()]
        for process in alive:
            process.kill()
            process.join(5)
        results.close()
        results.join_thread()
    assert not alive, "worker processes hung"
    assert failures == []
    assert [process.exitcode for process in processes] == [0] * workers
    for round_no, db_path in enumerate(db_paths):
        assert len(outcomes[round_no]) == workers
        assert_applied_exactly_once(db_path, outcomes[round_no])


# -- threads ---------------------------------------------------------------------------


def _thread_round(db_path: Path, folder: Path, threads_count: int) -> list[list[str]]:
    """Line threads up, each opening its own connection and migrating; their applied lists."""
    barrier = threading.Barrier(threads_count)
    applied_lists: list[list[str]] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            barrier.wait(30)
            db = get_db(db_path)
            try:
                applied_lists.append(run_migrations(db, folder))
            finally:
                db.close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads), "a thread hung"
    assert errors == []
    assert len(applied_lists) == threads_count
    return applied_lists


@pytest.mark.slow
def test_threads_racing_on_a_new_file_apply_each_migration_once(
    tmp_path: Path, race_migrations: Path
) -> None:
    """Sixteen threads, each with its own connection, on brand-new files: each file runs once."""
    for round_no in range(20):
        db_path = tmp_path / f"round{round_no}" / "app.db"
        applied_lists = _thread_round(db_path, race_migrations, 16)
        assert_applied_exactly_once(db_path, applied_lists)


def test_threads_racing_to_adopt_an_old_runner_table(tmp_path: Path, race_migrations: Path) -> None:
    """Threads meeting a table of the old runner add its columns once and apply the rest once."""
    for round_no in range(8):
        db_path = tmp_path / f"round{round_no}" / "app.db"
        db_path.parent.mkdir()
        old = sqlite3.connect(db_path, isolation_level=None)
        try:
            # What the old per-file executescript runner left behind.
            old.execute(
                "CREATE TABLE _migrations "
                "(name TEXT PRIMARY KEY, applied_at TEXT DEFAULT CURRENT_TIMESTAMP)"
            )
            for name in ALL_NAMES[:3]:
                old.executescript((race_migrations / name).read_text(encoding="utf-8"))
                old.execute("INSERT INTO _migrations (name) VALUES (?)", (name,))
        finally:
            old.close()
        applied_lists = _thread_round(db_path, race_migrations, 16)
        assert_applied_exactly_once(db_path, applied_lists, already=3)


# -- a long migration holding the lock -------------------------------------------------

# The holder's migration stops inside its transaction (write lock held) at held(),
# says so, and goes on when the test writes a line to its stdin.
HOLDER_SCRIPT = """
import sys
from circuitforge_core.db import get_db, run_migrations

def held():
    print("holding", flush=True)
    sys.stdin.readline()
    return 1

db = get_db(sys.argv[1])
db.create_function("held", 0, held)
try:
    run_migrations(db, sys.argv[2])
finally:
    db.close()
"""

LONG_MIGRATION = "CREATE TABLE slow (n INTEGER);\nINSERT INTO slow VALUES (held());\n"


class _Seen(logging.Handler):
    """Sets ``event`` when a record whose message contains ``text`` is logged."""

    def __init__(self, text: str) -> None:
        super().__init__(logging.INFO)
        self.text = text
        self.event = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.event.set()


def test_caller_waits_past_busy_timeout_for_a_long_migration(
    db_path: Path,
    migrations_dir: Path,
    write_migration: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A second caller waits for another process's long migration, then has nothing to apply."""
    write_migration("001_first.sql", "CREATE TABLE first (x);")
    setup = get_db(db_path)
    run_migrations(setup, migrations_dir)
    setup.close()
    write_migration("002_long.sql", LONG_MIGRATION)
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER_SCRIPT, str(db_path), str(migrations_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    seen = _Seen("waiting for another connection")
    logger = logging.getLogger("circuitforge_core.db")
    logger.addHandler(seen)
    result: list[object] = []
    caller: threading.Thread | None = None
    try:
        assert child.stdout is not None
        assert child.stdin is not None
        ready, _, _ = select.select([child.stdout], [], [], 60)
        assert ready, "the holder never reached the middle of its migration"
        assert child.stdout.readline() == b"holding\n", child.stderr.read()  # type: ignore[union-attr]
        db = get_db(db_path, busy_timeout=0.5)
        try:

            def call() -> None:
                started = time.monotonic()
                try:
                    result.append(run_migrations(db, migrations_dir))
                except BaseException as exc:
                    result.append(exc)
                finally:
                    result.append(time.monotonic() - started)
                    seen.event.set()  # a caller that gives up must not leave the test waiting

            with caplog.at_level(logging.INFO, logger="circuitforge_core.db"):
                caller = threading.Thread(target=call)
                caller.start()
                # Logged once its busy timeout has run out and it goes on waiting.
                assert seen.event.wait(60), "the caller never waited for the lock"
                assert caller.is_alive(), f"the caller stopped waiting: {result}"
                child.stdin.write(b"go\n")
                child.stdin.flush()
                caller.join(60)
            assert not caller.is_alive(), "the caller hung after the holder committed"
            applied, waited = result
            assert applied == []
            assert isinstance(waited, float)
            assert waited > 0.5, "the caller should have waited longer than its busy timeout"
            assert db.execute("SELECT n FROM slow").fetchall() == [(1,)]
            assert [r[0] for r in db.execute("SELECT name FROM _migrations ORDER BY name")] == [
                "001_first.sql",
                "002_long.sql",
            ]
        finally:
            db.close()
        _, stderr = child.communicate(timeout=60)
    finally:
        logger.removeHandler(seen)
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert child.returncode == 0, stderr.decode()


# -- read-modify-write through transaction() --------------------------------------------


def _hammer(db_path: Path, threads_count: int, per_thread: int, step: Any) -> list[str]:
    """Run ``step(db)`` per_thread times in each of threads_count threads; the errors seen."""
    barrier = threading.Barrier(threads_count)
    errors: list[str] = []

    def work() -> None:
        db = get_db(db_path)
        try:
            barrier.wait(10)
            for _ in range(per_thread):
                try:
                    step(db)
                except sqlite3.OperationalError as exc:
                    errors.append(str(exc))
        finally:
            db.close()

    threads = [threading.Thread(target=work) for _ in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads), "a thread hung"
    return errors


def _counter(db_path: Path) -> int:
    db = get_db(db_path)
    try:
        return int(db.execute("SELECT n FROM counter").fetchone()[0])
    finally:
        db.close()


def test_transaction_loses_no_update_where_deferred_begin_fails(db_path: Path) -> None:
    """Eight threads incrementing through transaction(): no error, no lost update; BEGIN fails."""
    setup = get_db(db_path)
    setup.execute("CREATE TABLE counter (n INTEGER NOT NULL)")
    setup.execute("INSERT INTO counter VALUES (0)")
    setup.commit()
    setup.close()

    def increment(db: sqlite3.Connection) -> None:
        with transaction(db):
            (n,) = db.execute("SELECT n FROM counter").fetchone()
            db.execute("UPDATE counter SET n = ?", (n + 1,))

    assert _hammer(db_path, 8, 150, increment) == []
    assert _counter(db_path) == 8 * 150

    def deferred_increment(db: sqlite3.Connection) -> None:
        # What products did before: a deferred BEGIN that reads, then writes.
        db.commit()
        saved, db.isolation_level = db.isolation_level, None
        try:
            db.execute("BEGIN")
            try:
                (n,) = db.execute("SELECT n FROM counter").fetchone()
                db.execute("UPDATE counter SET n = ?", (n + 1,))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        finally:
            db.isolation_level = saved

    # Whether the threads collide depends on the scheduler; the next test makes them collide.
    errors = _hammer(db_path, 8, 150, deferred_increment)
    assert set(errors) <= {"database is locked"}
    assert _counter(db_path) == 8 * 150 + 8 * 150 - len(errors)


def test_a_deferred_read_then_write_fails_at_once_after_another_commit(db_path: Path) -> None:
    """BEGIN, read, another writer commits, write: 'database is locked' at once, busy timeout
    or not. transaction() starts with the write lock, so it never meets this."""
    reader = get_db(db_path, busy_timeout=30)
    writer = get_db(db_path)
    try:
        reader.execute("CREATE TABLE counter (n INTEGER NOT NULL)")
        reader.execute("INSERT INTO counter VALUES (0)")
        reader.commit()
        reader.isolation_level = None
        reader.execute("BEGIN")
        (n,) = reader.execute("SELECT n FROM counter").fetchone()  # its snapshot
        with transaction(writer):
            writer.execute("UPDATE counter SET n = n + 1")
        started = time.monotonic()
        with pytest.raises(sqlite3.OperationalError, match="database is locked"):
            reader.execute("UPDATE counter SET n = ?", (n + 1,))
        assert time.monotonic() - started < 30, "it failed at once, not after the busy timeout"
        reader.execute("ROLLBACK")
        assert reader.execute("SELECT n FROM counter").fetchone() == (1,)
    finally:
        reader.close()
        writer.close()
