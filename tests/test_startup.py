"""The start-up check and the lifespan: a bad database setup fails the start with one message
that names every problem, instead of a 500 on every request."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from circuitforge_core.db import (
    PoolRegistry,
    Settings,
    SettingsError,
    StartupError,
    check_startup,
    database_lifespan,
    get_db,
    run_migrations,
    user_db_path,
)

NOTES = Path(__file__).resolve().parent.parent / "examples" / "notes"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "root"
    folder.mkdir()
    return folder


def test_a_good_cloud_setup_passes_and_returns_the_settings(root: Path) -> None:
    """Environment parsed, root writable, the example's migrations acceptable."""
    settings = check_startup(
        environ={"CLOUD_MODE": "1", "CLOUD_DATA_ROOT": str(root)},
        migrations=NOTES / "migrations",
    )
    assert settings == Settings(cloud_mode=True, data_root=root)
    assert list(root.iterdir()) == []  # nothing was created


def test_a_good_local_setup_passes_without_creating_the_database(tmp_path: Path) -> None:
    """Local mode: the folder the database will be made in is checked; nothing is created."""
    database = tmp_path / "data" / "app.db"
    settings = check_startup(Settings(), migrations=NOTES / "migrations", local_db=database)
    assert settings == Settings()
    assert not database.exists()
    assert not database.parent.exists()


def test_every_problem_is_named_in_one_error(tmp_path: Path, write_migration) -> None:  # type: ignore[no-untyped-def]
    """A missing root and a migration the runner would refuse: one StartupError lists both,
    each naming the path or file and what to do."""
    write_migration("001_ok.sql", "CREATE TABLE t (x);")
    write_migration("002_bad.sql", "CREATE TABLE u (x);\nCOMMIT;\nCREATE TABLE v (x);")
    missing = tmp_path / "no-such-root"
    with pytest.raises(StartupError) as caught:
        check_startup(
            environ={"CLOUD_MODE": "1", "CLOUD_DATA_ROOT": str(missing)},
            migrations=tmp_path / "migrations",
        )
    problems = caught.value.problems
    assert len(problems) == 2, problems
    assert str(missing) in problems[0]
    assert "does not exist" in problems[0]
    assert "002_bad.sql" in problems[1]
    message = str(caught.value)
    assert "2 problems" in message
    assert all(problem in message for problem in problems)


def test_unparsable_settings_are_a_problem_too() -> None:
    """CLOUD_MODE on without CLOUD_DATA_ROOT: the settings error, in the start-up error."""
    with pytest.raises(StartupError, match="CLOUD_DATA_ROOT is not set"):
        check_startup(environ={"CLOUD_MODE": "yes"})
    with pytest.raises(StartupError, match="neither on nor off"):
        check_startup(environ={"CLOUD_MODE": "maybe"})


def test_a_root_that_is_a_file_or_unwritable_is_refused(tmp_path: Path) -> None:
    """A file where the root should be; a folder this user cannot write (not as root)."""
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    with pytest.raises(StartupError, match="is not a folder"):
        check_startup(Settings(cloud_mode=True, data_root=not_a_folder))
    if os.geteuid() == 0:
        return  # root may write anywhere: the mode check cannot fail
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(StartupError, match="cannot be written"):
        check_startup(Settings(cloud_mode=True, data_root=locked))


def test_an_edited_applied_migration_in_the_local_database_is_a_problem(
    tmp_path: Path, migrations_dir: Path, write_migration
) -> None:  # type: ignore[no-untyped-def]
    """Local mode checks the existing file against the folder: an edited applied file."""
    first = write_migration("001_first.sql", "CREATE TABLE t (x);")
    database = tmp_path / "app.db"
    db = get_db(database)
    run_migrations(db, migrations_dir)
    db.close()
    first.write_text("CREATE TABLE t (x, y);")
    with pytest.raises(StartupError, match=r"001_first\.sql"):
        check_startup(Settings(db_path=database), migrations=migrations_dir)


def test_a_missing_migrations_folder_is_a_problem(tmp_path: Path) -> None:
    with pytest.raises(StartupError, match="no-such-folder"):
        check_startup(Settings(), migrations=tmp_path / "no-such-folder")


def test_a_server_secret_without_the_driver_is_a_problem(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CF_SERVER_SECRET set but sqlcipher3 cannot be imported: said at start."""
    monkeypatch.setitem(sys.modules, "sqlcipher3", None)  # `import sqlcipher3` now fails
    with pytest.raises(StartupError, match="sqlcipher3"):
        check_startup(Settings(cloud_mode=True, data_root=root, server_secret="s" * 32))


def test_cloud_mode_without_a_root_fails_when_the_settings_are_made() -> None:
    """The path that used to reach a request as a raw TypeError now fails at construction,
    and user_db_path refuses a None root by name."""
    with pytest.raises(SettingsError, match="no data root"):
        Settings(cloud_mode=True)
    with pytest.raises(SettingsError, match="relative path"):
        Settings(data_root=Path("relative/root"))
    with pytest.raises(SettingsError, match="CLOUD_DATA_ROOT"):
        user_db_path(None, "alice", "app.db")  # type: ignore[arg-type]


# -- the lifespan ---------------------------------------------------------------------------


def test_the_lifespan_migrates_the_local_database_before_serving(tmp_path: Path) -> None:
    """Local mode: the registry's migrations are applied at start, off the loop; the
    registry is closed at shutdown."""
    database = tmp_path / "local.db"
    registry = PoolRegistry(migrations=NOTES / "migrations", connect_kwargs={})
    lifespan = database_lifespan(registry, settings=Settings(), local_db=database)

    async def main() -> None:
        async with lifespan(None):
            assert database.exists()
            assert registry.stats().migrations_applied == 3
        assert registry.closed

    asyncio.run(main())
    db = get_db(database)
    try:
        names = [row[0] for row in db.execute("SELECT name FROM _migrations ORDER BY name")]
    finally:
        db.close()
    assert names == ["001_initial.sql", "002_add_tags.sql", "003_add_search.sql"]


def test_the_lifespan_applies_its_own_folder_when_the_registry_has_none(
    tmp_path: Path, migrations_dir: Path, write_migration
) -> None:  # type: ignore[no-untyped-def]
    write_migration("001_t.sql", "CREATE TABLE t (x);")
    database = tmp_path / "local.db"
    registry = PoolRegistry(connect_kwargs={})
    lifespan = database_lifespan(
        registry, settings=Settings(db_path=database), migrations=migrations_dir
    )

    async def main() -> None:
        async with lifespan(None):
            pass

    asyncio.run(main())
    db = get_db(database)
    try:
        assert db.execute("SELECT count(*) FROM t").fetchone() == (0,)
    finally:
        db.close()


def test_the_lifespan_refuses_to_start_on_a_bad_setup(tmp_path: Path) -> None:
    """The StartupError comes out of the lifespan, before anything serves."""
    registry = PoolRegistry(migrations=NOTES / "migrations")
    settings = Settings(cloud_mode=True, data_root=tmp_path / "missing")
    lifespan = database_lifespan(registry, settings=settings)

    async def main() -> None:
        async with lifespan(None):
            pytest.fail("the app must not serve")  # pragma: no cover

    with pytest.raises(StartupError, match="does not exist"):
        asyncio.run(main())
    registry.close()


def test_uvicorn_exits_at_start_with_the_message(tmp_path: Path) -> None:
    """The notes example under a real uvicorn with CLOUD_DATA_ROOT pointing nowhere: the
    server stops at start-up with the StartupError in its log, and never listens."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    env = {k: v for k, v in os.environ.items() if k not in ("CLOUD_MODE", "CLOUD_DATA_ROOT")} | {
        "CLOUD_MODE": "1",
        "CLOUD_DATA_ROOT": str(tmp_path / "missing"),
    }
    # The example imports sqlite3 before circuitforge_core.db: on the bundled SQLite
    # (make test-bundled-sqlite) it is served through the launcher, as its docstring says.
    bundled = os.environ.get("CF_DB_SQLITE") == "bundled"
    command = [
        sys.executable,
        *(["-m", "circuitforge_core.db.bundled_sqlite"] if bundled else []),
        "-m",
        "uvicorn",
        "--factory",
        "--app-dir",
        str(NOTES),
        "app:create_app",
        "--fd",
        str(listener.fileno()),
    ]
    with listener:
        done = subprocess.run(
            command,
            env=env,
            pass_fds=(listener.fileno(),),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode != 0
    assert "StartupError" in done.stderr
    assert str(tmp_path / "missing") in done.stderr
    assert "Application startup failed" in done.stderr
