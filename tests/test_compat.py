"""Drop-in compatibility with the first circuitforge_core.db that products import today."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import circuitforge_core.db as package
from circuitforge_core.db import EncryptionUnavailableError, get_connection
from circuitforge_core.db.base import get_connection as base_get_connection
from circuitforge_core.db.migrations import run_migrations as old_path_run_migrations

PRODUCT_CODE = textwrap.dedent(
    """
    import sqlite3, sys
    from pathlib import Path
    from circuitforge_core.db import get_connection, run_migrations
    from circuitforge_core.db.base import get_connection as base_get_connection
    from circuitforge_core.db.migrations import run_migrations as old_run
    import circuitforge_core.db, circuitforge_core.sync

    assert circuitforge_core.db.__file__.startswith(sys.argv[1]), circuitforge_core.db.__file__
    assert get_connection is base_get_connection and run_migrations is old_run
    conn = get_connection(Path(sys.argv[2]))
    run_migrations(conn, Path(sys.argv[3]))
    conn.execute("INSERT INTO items (name) VALUES ('new')")
    conn.commit()
    print(sorted(r[0] for r in conn.execute("SELECT name FROM _migrations")))
    print(conn.execute("SELECT count(*) FROM items").fetchone()[0])
    conn.close()
    """
)


def test_old_import_paths_are_the_same_functions() -> None:
    """The three import paths products use reach the new implementation."""
    assert get_connection is base_get_connection
    assert old_path_run_migrations is package.run_migrations


def test_old_module_paths_of_migrations_lint_verify_and_the_cli() -> None:
    """Modules that moved keep their old public import paths, reaching the same objects."""
    import circuitforge_core.db.cli as cli
    import circuitforge_core.db.lint as old_lint
    import circuitforge_core.db.maintenance as maintenance
    import circuitforge_core.db.migrations as migrations

    assert old_lint.lint_migrations is package.lint_migrations
    assert old_lint.LintFinding is package.LintFinding
    assert maintenance.verify_migrations is package.verify_migrations
    assert maintenance.ChecksumCheck is package.ChecksumCheck
    assert callable(cli.main)
    assert cli.main(["--version"]) == 0
    for name in (
        "DEFAULT_LOCK_TIMEOUT",
        "NO_TRANSACTION_MARKER",
        "MigrationFile",
        "MigrationStatus",
        "MigrationsDir",
        "State",
        "migration_status",
        "read_migrations",
        "run_migrations",
    ):
        assert hasattr(migrations, name), name


def test_get_connection_signature_and_timeout(tmp_path: Path) -> None:
    """get_connection(db_path, key='') opens a hardened connection with the old 30 s wait."""
    db = get_connection(tmp_path / "app.db")
    try:
        assert isinstance(db, sqlite3.Connection)
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA busy_timeout").fetchone()[0] == 30000
    finally:
        db.close()


def test_open_failures_are_still_sqlite3_errors(tmp_path: Path) -> None:
    """An unopenable path or a non-database file is caught by `except sqlite3.OperationalError`.

    The old factory let SQLite's own errors out; products degrade gracefully
    on them (snipe's API does), so OpenError must stay one of them.
    """
    folder = tmp_path / "a-folder.db"
    folder.mkdir()
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not an SQLite database, just bytes" * 100)
    for path in (folder, garbage):
        with pytest.raises(sqlite3.OperationalError) as caught:
            get_connection(path)
        assert isinstance(caught.value, package.OpenError)
        assert isinstance(caught.value, sqlite3.DatabaseError)
        assert str(path) in str(caught.value)


def test_key_never_means_silent_plaintext(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A key that cannot be honoured raises and leaves no plaintext file behind."""
    monkeypatch.setitem(sys.modules, "sqlcipher3", None)  # as if the extra were not installed
    path = tmp_path / "secret.db"
    with pytest.raises(EncryptionUnavailableError, match=r"secret\.db"):
        get_connection(path, key="hunter2")
    assert not path.exists()


def test_folder_copied_into_an_old_install_works(tmp_path: Path) -> None:
    """circuitforge_core/db copied alone over an old install serves an old product's database."""
    site = tmp_path / "site"
    old_package = site / "circuitforge_core"
    (old_package / "sync").mkdir(parents=True)
    (old_package / "__init__.py").write_text('"""An older circuitforge_core."""\n')
    (old_package / "sync" / "__init__.py").write_text(
        "from circuitforge_core.db import *  # noqa\n"
    )
    shutil.copytree(
        Path(package.__file__).parent,
        old_package / "db",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    (migrations / "001_initial.sql").write_text("CREATE TABLE items (name TEXT);")
    (migrations / "002_add_column.sql").write_text("ALTER TABLE items ADD COLUMN qty INTEGER;")
    db_path = tmp_path / "product.db"
    old = sqlite3.connect(db_path)  # what the old module left behind
    old.executescript(
        "CREATE TABLE _migrations "
        "(name TEXT PRIMARY KEY, applied_at TEXT DEFAULT CURRENT_TIMESTAMP);"
        "CREATE TABLE items (name TEXT); INSERT INTO items VALUES ('old');"
        "INSERT INTO _migrations (name) VALUES ('001_initial.sql');"
    )
    old.close()
    script = tmp_path / "product.py"
    script.write_text(f"import sys; sys.path.insert(0, {str(site)!r})\n" + PRODUCT_CODE)
    # -I -S: no site-packages, so only the copied folder can provide the package (and no
    # pysqlite3: these children run on the standard library's SQLite whatever CF_DB_SQLITE says).
    no_switch = {k: v for k, v in os.environ.items() if k != "CF_DB_SQLITE"}
    result = subprocess.run(
        [sys.executable, "-I", "-S", str(script), str(site), str(db_path), str(migrations)],
        capture_output=True,
        text=True,
        timeout=60,
        env=no_switch,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["['001_initial.sql', '002_add_column.sql']", "2"]
    cli = subprocess.run(
        [
            sys.executable,
            "-I",
            "-S",
            "-c",
            f"import sys, runpy; sys.path.insert(0, {str(site)!r}); "
            f"sys.argv = ['cf-db', 'status', {str(db_path)!r}, {str(migrations)!r}]; "
            "runpy.run_module('circuitforge_core.db', run_name='__main__')",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=no_switch,
        check=False,
    )
    assert cli.returncode == 0, cli.stderr
    assert "002_add_column.sql" in cli.stdout
