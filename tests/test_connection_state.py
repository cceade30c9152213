"""Check-in puts back every setting a block changed on a pooled connection (connection_state.py).

Each test changes one kind of per-connection state inside a checkout, then
checks that the next checkout of the pool's only connection sees what a
fresh ``get_db`` gives (the oracle: the same path and settings opened anew),
or that the connection was closed when it cannot be put back. A property test
applies a random mix of the changes in one checkout. Plain and encrypted
(``key=``) pools alike.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from circuitforge_core.db import ConnectionPool, get_db
from circuitforge_core.db.pool import CLOUD_CONNECT_KWARGS

try:
    import sqlcipher3
except ImportError:  # pragma: no cover - the dev extra installs it
    sqlcipher3 = None

RAW_KEY = bytes(range(32))

#: Every pragma the oracle compares: get_db's own and the others a block can set.
PRAGMAS = (
    "foreign_keys",
    "busy_timeout",
    "synchronous",
    "journal_size_limit",
    "cache_size",
    "mmap_size",
    "temp_store",
    "query_only",
    "recursive_triggers",
    "defer_foreign_keys",
    "legacy_alter_table",
    "trusted_schema",
    "ignore_check_constraints",
    "writable_schema",
    "reverse_unordered_selects",
    "cell_size_check",
    "automatic_index",
    "secure_delete",
    "cache_spill",
    "count_changes",
    "full_column_names",
    "short_column_names",
    "empty_result_callbacks",
    "read_uncommitted",
    "max_page_count",
    "analysis_limit",
    "threads",
    "checkpoint_fullfsync",
    "fullfsync",
    "wal_autocheckpoint",
    "locking_mode",
    "journal_mode",
)
LIMITS = [getattr(sqlite3, name) for name in dir(sqlite3) if name.startswith("SQLITE_LIMIT_")]
CONFIGS = [getattr(sqlite3, name) for name in dir(sqlite3) if name.startswith("SQLITE_DBCONFIG_")]


@dataclass(frozen=True)
class Setup:
    """One pool under test: plain or encrypted, with get_db's defaults or cloud mode's."""

    key: bytes | None
    connect_kwargs: dict[str, Any]

    @property
    def encrypted(self) -> bool:
        return self.key is not None


SETUPS = {
    "plain": Setup(None, {}),
    "plain-cloud": Setup(None, dict(CLOUD_CONNECT_KWARGS)),
    "encrypted": Setup(RAW_KEY, {}),
}


@pytest.fixture(params=list(SETUPS))
def setup(request: pytest.FixtureRequest) -> Setup:
    chosen = SETUPS[request.param]
    if chosen.encrypted and sqlcipher3 is None:
        pytest.skip("sqlcipher3 is not installed")
    return chosen


class Harness:
    """A one-connection pool on a file with a ``notes`` table, and the fresh-get_db oracle."""

    def __init__(self, folder: Path, setup: Setup) -> None:
        self.folder = folder
        self.path = folder / "app.db"
        self.setup = setup
        self.calls: list[object] = []  # every callback a block installs records here
        self.pool = ConnectionPool(
            self.path, max_size=1, key=setup.key, connect_kwargs=setup.connect_kwargs
        )
        with self.pool.connection() as db:
            db.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, title TEXT)")
            db.execute("INSERT INTO notes (title) VALUES ('Bee')")
            db.commit()

    def fresh(self, *, rows: bool = True) -> dict[str, object]:
        """What a connection get_db just opened reports: what every checkout must see."""
        db = get_db(self.path, key=self.setup.key, **self.setup.connect_kwargs)
        try:
            return self.observe(db, rows=rows)
        finally:
            db.close()

    def observe(self, db: Any, *, rows: bool = True) -> dict[str, object]:
        """Everything a block could have changed, as the next block would meet it."""
        seen: dict[str, object] = {
            name: db.execute(f"PRAGMA {name}").fetchone() for name in PRAGMAS
        }
        seen["like is case-insensitive"] = db.execute("SELECT 'a' LIKE 'A'").fetchone()[0]
        seen["databases"] = sorted(
            row[1] for row in db.execute("PRAGMA database_list") if row[1] != "temp"
        )
        seen["temp objects"] = db.execute(
            "SELECT type, name FROM temp.sqlite_master ORDER BY name"
        ).fetchall()
        before = len(self.calls)
        try:  # the first note, through built-in functions, an aggregate and a collation
            seen["query"] = db.execute(
                "SELECT title, lower(title), title = 'BEE' COLLATE NOCASE, "
                "(SELECT count(*) FROM (SELECT 1 UNION ALL SELECT 2)), "
                "length(group_concat(title)) FROM notes WHERE id = 1"
            ).fetchall()
            # What the block wrote and did not commit is gone (a block that commits may
            # well leave rows: only the property test mixes changes that commit).
            seen["notes"] = db.execute("SELECT count(*) FROM notes").fetchone()[0] if rows else 0
        except db.Error as exc:
            seen["query"] = f"{type(exc).__name__}: {exc}"
        seen["callbacks ran"] = len(self.calls) > before
        seen["row_factory"] = db.row_factory
        seen["text_factory"] = db.text_factory
        seen["isolation_level"] = db.isolation_level
        seen["in_transaction"] = db.in_transaction
        seen["busy_timeout attribute"] = db.busy_timeout
        if not self.setup.encrypted:  # sqlcipher3 has none of these
            seen["autocommit"] = getattr(db, "autocommit", None)
            seen["limits"] = [db.getlimit(category) for category in LIMITS]
            if hasattr(db, "getconfig"):
                seen["configs"] = [db.getconfig(op) for op in CONFIGS]
        return seen

    def next_checkout(self, *, rows: bool = True) -> tuple[dict[str, object], bool]:
        """What the next checkout sees, and whether it is the connection used before."""
        with self.pool.connection() as db:
            return self.observe(db, rows=rows), db is self.last

    def change(self, apply: Callable[[Any, Harness], object]) -> None:
        """Apply one change inside a checkout (an error out of it is part of the test)."""
        with self.pool.connection() as db:
            self.last = db
            apply(db, self)


@pytest.fixture
def harness(tmp_path: Path, setup: Setup) -> Iterator[Harness]:
    made = Harness(tmp_path, setup)
    try:
        yield made
    finally:
        made.pool.close()


# -- the changes, each as a block would make it ------------------------------------------


def sql(*statements: str) -> Callable[[Any, Harness], None]:
    def apply(db: Any, harness: Harness) -> None:
        for statement in statements:
            db.execute(statement).fetchall()

    apply.__name__ = statements[0]
    return apply


def attach_another_file(db: Any, harness: Harness) -> None:
    other = harness.folder / "other.db"
    key = "" if harness.setup.encrypted else None  # a plain file beside an encrypted one
    clause = " KEY ''" if key is not None else ""
    db.execute(f"ATTACH DATABASE '{other}' AS other{clause}")
    db.execute("CREATE TABLE IF NOT EXISTS other.t (x)")  # never commits another change's rows


def authorizer_denying_everything(db: Any, harness: Harness) -> None:
    def deny(*args: object) -> int:
        harness.calls.append(args)
        return sqlite3.SQLITE_DENY

    db.set_authorizer(deny)


def progress_handler_interrupting(db: Any, harness: Harness) -> None:
    def interrupt() -> int:
        harness.calls.append("progress")
        return 1

    db.set_progress_handler(interrupt, 1)


def trace_callback(db: Any, harness: Harness) -> None:
    db.set_trace_callback(harness.calls.append)


def busy_timeout_attribute(db: Any, harness: Harness) -> None:
    db.busy_timeout = 0.0


def python_factories(db: Any, harness: Harness) -> None:
    db.row_factory = lambda cursor, row: ("changed", *row)
    db.text_factory = bytes
    db.isolation_level = None


#: Changes check-in undoes; the connection itself is kept.
RESTORED: dict[str, Callable[[Any, Harness], object]] = {
    "foreign_keys": sql("PRAGMA foreign_keys=OFF"),
    "busy_timeout": sql("PRAGMA busy_timeout=0"),
    "synchronous": sql("PRAGMA synchronous=OFF"),
    "journal_size_limit": sql("PRAGMA journal_size_limit=-1"),
    "cache_size": sql("PRAGMA cache_size=10"),
    "mmap_size": sql("PRAGMA mmap_size=1048576"),
    "temp_store": sql("PRAGMA temp_store=FILE"),
    "query_only": sql("PRAGMA query_only=ON"),
    "recursive_triggers": sql("PRAGMA recursive_triggers=ON"),
    "defer_foreign_keys": sql("PRAGMA defer_foreign_keys=ON"),
    "legacy_alter_table": sql("PRAGMA legacy_alter_table=ON"),
    "trusted_schema": sql("PRAGMA trusted_schema=OFF"),
    "ignore_check_constraints": sql("PRAGMA ignore_check_constraints=ON"),
    "writable_schema": sql("PRAGMA writable_schema=ON"),
    "case_sensitive_like": sql("PRAGMA case_sensitive_like=ON"),
    "wal_autocheckpoint": sql("PRAGMA wal_autocheckpoint=0"),
    "journal_mode": sql("PRAGMA journal_mode=DELETE"),
    "max_page_count": sql("PRAGMA max_page_count=1"),
    "other flags": sql(
        "PRAGMA reverse_unordered_selects=ON",
        "PRAGMA cell_size_check=ON",
        "PRAGMA automatic_index=OFF",
        "PRAGMA secure_delete=FAST",
        "PRAGMA count_changes=ON",
        "PRAGMA full_column_names=ON",
        "PRAGMA short_column_names=OFF",
        "PRAGMA empty_result_callbacks=ON",
        "PRAGMA read_uncommitted=ON",
        "PRAGMA cache_spill=OFF",
        "PRAGMA analysis_limit=100",
        "PRAGMA threads=2",
        "PRAGMA checkpoint_fullfsync=ON",
        "PRAGMA fullfsync=ON",
    ),
    "attach": attach_another_file,
    "attach in memory": sql("ATTACH DATABASE ':memory:' AS scratch"),
    "temp table shadowing a table": sql(
        "CREATE TEMP TABLE notes (id INTEGER PRIMARY KEY, title TEXT)",
        "INSERT INTO temp.notes (title) VALUES ('shadow')",
    ),
    "temp trigger": sql(
        "CREATE TEMP TRIGGER add_more AFTER INSERT ON main.notes "
        "BEGIN INSERT INTO notes (title) VALUES ('more'); END"
    ),
    "temp view and index": sql(
        "CREATE TEMP TABLE scratch (x)",
        "CREATE INDEX temp.scratch_x ON scratch (x)",
        "CREATE TEMP VIEW every_note AS SELECT * FROM main.notes",
    ),
    "authorizer": authorizer_denying_everything,
    "progress handler": progress_handler_interrupting,
    "trace callback": trace_callback,
    "busy_timeout attribute": busy_timeout_attribute,
    "row_factory, text_factory, isolation_level": python_factories,
    "uncommitted insert": sql("INSERT INTO notes (title) VALUES ('uncommitted')"),
}


def set_limit(db: Any, harness: Harness) -> None:
    db.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 2)


def set_config(db: Any, harness: Harness) -> None:
    db.setconfig(sqlite3.SQLITE_DBCONFIG_ENABLE_TRIGGER, False)
    db.setconfig(sqlite3.SQLITE_DBCONFIG_DQS_DML, False)


def autocommit_on(db: Any, harness: Harness) -> None:
    db.autocommit = True


def autocommit_off(db: Any, harness: Harness) -> None:
    db.autocommit = False
    db.execute("INSERT INTO notes (title) VALUES ('uncommitted')")


#: Restored too, on the standard library's connections only (sqlcipher3 has no such calls).
RESTORED_PLAIN_ONLY: dict[str, Callable[[Any, Harness], object]] = {"setlimit": set_limit}
if sys.version_info >= (3, 12):
    RESTORED_PLAIN_ONLY |= {
        "setconfig": set_config,
        "autocommit on": autocommit_on,
        "autocommit off": autocommit_off,
    }


def shadow_builtin_function(db: Any, harness: Harness) -> None:
    db.create_function("lower", 1, lambda text: "shadowed")


def shadow_builtin_aggregate(db: Any, harness: Harness) -> None:
    class Zero:
        def step(self, value: object) -> None:
            pass

        def finalize(self) -> int:
            return 0

    db.create_aggregate("count", 0, Zero)


def shadow_builtin_collation(db: Any, harness: Harness) -> None:
    db.create_collation("NOCASE", lambda a, b: 1)


def load_extensions(db: Any, harness: Harness) -> None:
    db.enable_load_extension(True)


def deserialize(db: Any, harness: Harness) -> None:
    other = sqlite3.connect(":memory:")
    try:
        other.execute("CREATE TABLE other (x)")
        data = other.serialize()
    finally:
        other.close()
    db.deserialize(data)


#: Changes check-in cannot undo: the connection is closed and the next checkout opens anew.
DISCARDED: dict[str, Callable[[Any, Harness], object]] = {
    "locking_mode": sql("PRAGMA locking_mode=EXCLUSIVE", "SELECT count(*) FROM notes"),
    "a pragma the pool does not know": sql("PRAGMA legacy_file_format=ON"),
    "built-in function replaced": shadow_builtin_function,
    "built-in aggregate replaced": shadow_builtin_aggregate,
    "built-in collation replaced": shadow_builtin_collation,
}
DISCARDED_PLAIN_ONLY: dict[str, Callable[[Any, Harness], object]] = {"deserialize": deserialize}
if hasattr(sqlite3.Connection, "enable_load_extension"):
    DISCARDED["extension loading"] = load_extensions


def driver_class(setup: Setup) -> type:
    """The driver's own connection class: sqlite3's (pysqlite3's on the bundled SQLite), or
    sqlcipher3's."""
    return sqlcipher3.Connection if setup.encrypted else sqlite3.Connection


def applicable(
    changes: dict[str, Callable[[Any, Harness], object]],
    plain_only: dict[str, Callable[[Any, Harness], object]],
    setup: Setup,
) -> dict[str, Callable[[Any, Harness], object]]:
    """``changes``, and those of ``plain_only`` whose method the driver has (pysqlite3, the
    bundled SQLite, has no setlimit or deserialize either)."""
    driver = driver_class(setup)
    return changes | {name: change for name, change in plain_only.items() if hasattr(driver, name)}


# -- one test per kind of setting ---------------------------------------------------------


@pytest.mark.parametrize("name", [*RESTORED, *RESTORED_PLAIN_ONLY])
def test_a_changed_setting_is_put_back_and_the_connection_kept(harness: Harness, name: str) -> None:
    """After a block changes it, the next checkout of the same connection sees get_db's value."""
    change = applicable(RESTORED, RESTORED_PLAIN_ONLY, harness.setup).get(name)
    if change is None:
        pytest.skip("this driver's connections have no such call")
    expected = harness.fresh()
    harness.change(change)
    seen, same_connection = harness.next_checkout()
    assert seen == expected
    assert same_connection, "the connection could have been kept"
    assert harness.pool.stats().closed == 0


@pytest.mark.parametrize("name", [*DISCARDED, *DISCARDED_PLAIN_ONLY])
def test_a_change_that_cannot_be_undone_discards_the_connection(
    harness: Harness, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """What check-in cannot put back closes the connection; the next checkout gets a fresh one."""
    change = applicable(DISCARDED, DISCARDED_PLAIN_ONLY, harness.setup).get(name)
    if change is None:
        pytest.skip("this driver's connections have no such call")
    expected = harness.fresh()
    with caplog.at_level(logging.INFO, logger="circuitforge_core.db"):
        harness.change(change)
    seen, same_connection = harness.next_checkout()
    assert seen == expected
    assert not same_connection
    assert harness.pool.stats().closed == 1
    assert any(str(harness.path) in record.getMessage() for record in caplog.records)


def test_foreign_keys_turned_off_in_one_request_are_on_in_the_next(harness: Harness) -> None:
    """The reported case: an orphan row is refused in the checkout after one that turned FKs off."""
    with harness.pool.connection() as db:
        db.execute("CREATE TABLE child (note_id INTEGER NOT NULL REFERENCES notes (id))")
        db.commit()
        db.execute("PRAGMA foreign_keys=OFF")
    with harness.pool.connection() as db:
        with pytest.raises(db.IntegrityError, match="FOREIGN KEY"):
            db.execute("INSERT INTO child (note_id) VALUES (404)")
        db.rollback()
        assert db.execute("SELECT count(*) FROM child").fetchone() == (0,)


def test_a_temp_table_never_shadows_the_real_one_in_the_next_checkout(harness: Harness) -> None:
    """Rows written to a temp table of the same name are gone; the next block reads main's."""
    harness.change(RESTORED["temp table shadowing a table"])
    with harness.pool.connection() as db:
        assert db.execute("SELECT title FROM notes").fetchall() == [("Bee",)]


def test_the_same_statement_run_again_in_a_later_checkout_is_noticed(harness: Harness) -> None:
    """A setting statement the connection has cached is seen again (the cache is re-prepared)."""
    for _ in range(3):
        harness.change(sql("PRAGMA foreign_keys=OFF", "PRAGMA foreign_keys=ON"))
        harness.change(sql("PRAGMA foreign_keys=OFF"))
        with harness.pool.connection() as db:
            assert db.execute("PRAGMA foreign_keys").fetchone() == (1,)


def test_a_function_under_a_new_name_stays_registered(harness: Harness) -> None:
    """Python cannot unregister an SQL function: one under a name of its own stays, kept as is."""
    harness.change(lambda db, h: db.create_function("shout", 1, str.upper))
    with harness.pool.connection() as db:
        assert db is harness.last
        assert db.execute("SELECT shout('hi')").fetchone() == ("HI",)


def test_a_user_authorizer_still_sees_every_statement(harness: Harness) -> None:
    """The pool's watch does not replace an authorizer the block installs; both see the SQL."""
    seen: list[tuple[object, ...]] = []

    def record(*args: object) -> int:
        seen.append(args)
        return sqlite3.SQLITE_OK

    with harness.pool.connection() as db:
        db.set_authorizer(record)
        db.execute("SELECT title FROM notes").fetchall()
        db.set_authorizer(None)
        db.execute("SELECT id FROM notes").fetchall()
    assert (sqlite3.SQLITE_READ, "notes", "title", "main", None) in seen
    assert not any(args[2] == "id" for args in seen)


def test_readonly_pools_get_query_only_back(tmp_path: Path, setup: Setup) -> None:
    """query_only is part of what get_db set for readonly=True: turning it off does not last."""
    path = tmp_path / "app.db"
    get_db(path, key=setup.key).close()
    kwargs = {**setup.connect_kwargs, "readonly": True}
    with ConnectionPool(path, max_size=1, key=setup.key, connect_kwargs=kwargs) as pool:
        with pool.connection() as db:
            db.execute("PRAGMA query_only=OFF")
        with pool.connection() as db:
            assert db.execute("PRAGMA query_only").fetchone() == (1,)
            with pytest.raises(db.OperationalError, match="readonly"):
                db.execute("CREATE TABLE t (x)")


@pytest.mark.parametrize(
    "names",
    [
        # found by the property test below: each of these once made check-in fail
        ("temp table shadowing a table", "query_only"),
        ("foreign_keys", "authorizer"),
        ("uncommitted insert", "progress handler"),
    ],
)
def test_changes_that_get_in_each_others_way_are_all_put_back(
    harness: Harness, names: tuple[str, ...]
) -> None:
    """A block's authorizer or query_only never stops check-in putting the rest back."""
    expected = harness.fresh()

    def apply_all(db: Any, harness: Harness) -> None:
        for name in names:
            RESTORED[name](db, harness)

    harness.change(apply_all)
    seen, same_connection = harness.next_checkout()
    assert seen == expected
    assert same_connection


# -- a random mix in one checkout ---------------------------------------------------------


@settings(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_any_mix_of_changes_leaves_the_next_checkout_as_get_db_made_it(
    tmp_path_factory: pytest.TempPathFactory, setup: Setup, data: st.DataObject
) -> None:
    """However many changes one block makes, in any order, the next checkout sees get_db's state."""
    everything = applicable(RESTORED, RESTORED_PLAIN_ONLY, setup) | applicable(
        DISCARDED, DISCARDED_PLAIN_ONLY, setup
    )
    names = data.draw(st.lists(st.sampled_from(sorted(everything)), max_size=8), label="changes")
    fail = data.draw(st.booleans(), label="the block raises at the end")
    harness = Harness(tmp_path_factory.mktemp("mix"), setup)
    try:
        expected = harness.fresh(rows=False)

        def apply_all(db: Any, harness: Harness) -> None:
            for name in names:
                try:
                    everything[name](db, harness)
                except (sqlite3.Error, getattr(db, "Error", sqlite3.Error)):
                    pass  # an earlier change may forbid a later one (query_only, an authorizer)
            if fail:
                raise RuntimeError("the block failed")

        with contextlib.suppress(RuntimeError):
            harness.change(apply_all)
        seen, same_connection = harness.next_checkout(rows=False)
        assert seen == expected
        if not set(names) & (DISCARDED.keys() | DISCARDED_PLAIN_ONLY.keys()):
            assert same_connection, "every change could be put back, so the connection is kept"
    finally:
        harness.pool.close()


def test_a_migration_that_leaves_what_cannot_be_undone_still_hands_out_a_connection(
    tmp_path: Path,
) -> None:
    """The first checkout migrates; if that connection cannot be reused, another is opened."""
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "001_notes.sql").write_text(
        "CREATE TABLE notes (id INTEGER PRIMARY KEY);\nPRAGMA legacy_file_format=ON;\n"
    )
    with ConnectionPool(tmp_path / "app.db", max_size=1, migrations=folder) as pool:
        with pool.connection() as db:
            assert db.execute("SELECT count(*) FROM notes").fetchone() == (0,)
        stats = pool.stats()
        assert (stats.opened, stats.closed, stats.migrations_applied) == (2, 1, 1)


def test_methods_a_driver_lacks_stay_missing(harness: Harness) -> None:
    """Watching Python's methods adds none: sqlcipher3 has no setlimit, sqlite3 no set_key."""
    driver = driver_class(harness.setup)
    with harness.pool.connection() as db:
        for name in ("setlimit", "deserialize", "set_busy_handler", "set_key"):
            assert hasattr(db, name) == hasattr(driver, name), name
        if harness.setup.encrypted:
            assert not hasattr(db, "setlimit")
            assert hasattr(db, "set_busy_handler")
        elif sqlite3.__name__ == "sqlite3":  # the standard library's (not pysqlite3's)
            assert not hasattr(db, "set_busy_handler")
            assert hasattr(db, "setlimit")
        assert db.create_function.__name__ == "create_function"
