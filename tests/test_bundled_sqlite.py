"""CF_DB_SQLITE=bundled: the whole process on pysqlite3's SQLite, one copy, product code unchanged;
a clear refusal when it comes too late; the launcher; spawned children.

Each test runs a real child process: which SQLite a process holds is decided once, at import.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from circuitforge_core.db import Settings, SettingsError, bundled_sqlite
from circuitforge_core.db.sqlite_facts import has_wal_reset_bug

pysqlite3 = pytest.importorskip("pysqlite3.dbapi2", reason="needs the bundled-sqlite extra")
LAUNCHER = [sys.executable, "-m", "circuitforge_core.db.bundled_sqlite"]


def child_env(**extra: str) -> dict[str, str]:
    """This environment without the library's SQLite settings, plus ``extra``."""
    names = ("CF_DB_SQLITE", "CF_DB_ACCEPT_WAL_RESET_BUG")
    return {k: v for k, v in os.environ.items() if k not in names} | extra


def run(
    command: list[str], *, env: dict[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, capture_output=True, text=True, timeout=120, env=env, cwd=cwd, check=False
    )


def python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "-c", textwrap.dedent(code)], env=child_env(**env))


ONE_COPY = """\
import sys
import sqlite3, sqlite3.dbapi2, _sqlite3
import pysqlite3, pysqlite3.dbapi2, pysqlite3._sqlite3
assert sqlite3 is pysqlite3, sqlite3
assert sqlite3.dbapi2 is pysqlite3.dbapi2
assert _sqlite3 is pysqlite3._sqlite3
stdlib = [name for name, module in list(sys.modules.items())
          if "pysqlite3" not in (getattr(module, "__file__", None) or "pysqlite3")]
assert not [n for n in stdlib if n.split(".")[0] in ("sqlite3", "_sqlite3")], stdlib
try:
    with open("/proc/self/maps") as maps:  # no system libsqlite3 mapped into this process
        assert "libsqlite3" not in maps.read()
except FileNotFoundError:
    pass
print(sqlite3.__name__, sqlite3.sqlite_version)
"""


def test_the_switch_leaves_one_sqlite_in_the_process() -> None:
    """sqlite3, sqlite3.dbapi2 and _sqlite3 are pysqlite3's; the standard library's never loads."""
    result = python("import circuitforge_core.db\n" + ONE_COPY, CF_DB_SQLITE="bundled")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["pysqlite3", pysqlite3.sqlite_version]


def test_the_bundled_sqlite_is_past_the_wal_reset_bug(tmp_path: Path) -> None:
    """sqlite3.sqlite_version is the bundled one, and it is what get_db's connections run on."""
    result = python(
        f"""
        import logging
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
        import circuitforge_core.db as cfdb
        import sqlite3
        db = cfdb.get_db({str(tmp_path / "app.db")!r})
        print(sqlite3.sqlite_version, db.execute("SELECT sqlite_version()").fetchone()[0])
        """,
        CF_DB_SQLITE="bundled",
    )
    assert result.returncode == 0, result.stderr
    module_version, connection_version = result.stdout.split()
    assert module_version == connection_version == pysqlite3.sqlite_version
    assert not has_wal_reset_bug(module_version)
    assert f"INFO SQLite library {module_version}, from pysqlite3 " in result.stderr
    assert "(bundled, for the whole process)" in result.stderr
    assert "WARNING" not in result.stderr


PRODUCT_CODE = """\
import sqlite3  # a product module: sqlite3 first, as isort orders it

from circuitforge_core.db import ConnectionPool, get_db, transaction


def exercise(path):
    assert sqlite3.__name__ == "pysqlite3", sqlite3
    db = get_db(path)
    assert isinstance(db, sqlite3.Connection)
    db.row_factory = sqlite3.Row
    db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT UNIQUE, photo BLOB)")
    db.execute("INSERT INTO users (email, photo) VALUES ('a@x', zeroblob(4))")
    db.commit()
    try:
        with transaction(db):
            db.execute("INSERT INTO users (email) VALUES ('a@x')")
    except sqlite3.IntegrityError as exc:
        caught = type(exc).__name__
    row = db.execute("SELECT * FROM users").fetchone()
    with db.blobopen("users", "photo", row["id"]) as blob:
        blob.write(b"abcd")
    db.close()
    with ConnectionPool(path, row_factory=sqlite3.Row) as pool, pool.connection() as pooled:
        row = pooled.execute("SELECT email, photo FROM users").fetchone()
        with pooled.blobopen("users", "photo", 1, readonly=True) as blob:
            photo = blob.read()
    try:
        get_db(path + ".missing", readonly=True)
    except sqlite3.OperationalError as exc:  # OpenError is one, of the bundled module
        missing = type(exc).__name__
    return caught, row["email"], bytes(row["photo"]), photo, missing
"""


def test_product_code_keeps_working_on_the_bundled_sqlite(tmp_path: Path) -> None:
    """sqlite3.Row, sqlite3.IntegrityError, sqlite3.OperationalError (OpenError) and blobopen
    work with plain and pooled connections."""
    (tmp_path / "product.py").write_text(PRODUCT_CODE, encoding="utf-8")
    script = tmp_path / "main.py"
    script.write_text(
        f"import product\nprint(*product.exercise({str(tmp_path / 'app.db')!r}))\n",
        encoding="utf-8",
    )
    result = run([*LAUNCHER, str(script)], env=child_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["IntegrityError", "a@x", "b'abcd'", "b'abcd'", "OpenError"]


def test_switching_after_the_standard_sqlite3_was_imported_fails_clearly() -> None:
    """sqlite3 imported first: SQLiteLibraryError says why and what to do; nothing runs."""
    result = python("import sqlite3\nimport circuitforge_core.db\n", CF_DB_SQLITE="bundled")
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("circuitforge_core.db.errors.SQLiteLibraryError: CF_DB_SQLITE=bundled")
    assert "sqlite3 (" in last
    assert "was imported before circuitforge_core.db" in last
    assert "two SQLite copies" in last
    assert "python -m circuitforge_core.db.bundled_sqlite -m MODULE" in last


def test_a_missing_pysqlite3_is_named_with_the_extra() -> None:
    """Without pysqlite3 the switch refuses, naming the extra to install."""
    result = python(
        """
        import sys
        sys.modules["pysqlite3"] = None  # as if it were not installed
        import circuitforge_core.db
        """,
        CF_DB_SQLITE="bundled",
    )
    assert result.returncode == 1
    assert "pysqlite3 cannot be imported" in result.stderr
    assert "pip install 'circuitforge-core[bundled-sqlite]'" in result.stderr
    assert "sqlite3" not in result.stdout


def test_without_the_setting_the_standard_library_is_used() -> None:
    """CF_DB_SQLITE unset or stdlib: sqlite3 is the standard library's, pysqlite3 never loads."""
    code = """
        import sys, circuitforge_core.db, sqlite3
        print(sqlite3.__name__, "pysqlite3" in sys.modules)
        """
    assert python(code).stdout.split() == ["sqlite3", "False"]
    assert python(code, CF_DB_SQLITE="stdlib").stdout.split() == ["sqlite3", "False"]


# -- the launcher ------------------------------------------------------------------------


def test_the_launcher_switches_before_the_program_imports_anything(tmp_path: Path) -> None:
    """A script that imports sqlite3 first runs on the bundled SQLite, with its args and exit."""
    script = tmp_path / "tool.py"
    script.write_text(
        "import sqlite3, sys\n"
        "import circuitforge_core.db\n"
        + ONE_COPY
        + "print(sys.argv[1:], __name__)\n"
        + "sys.exit(3)\n",
        encoding="utf-8",
    )
    result = run([*LAUNCHER, str(script), "a", "--b"], env=child_env())
    assert result.returncode == 3, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"pysqlite3 {pysqlite3.sqlite_version}"
    assert lines[1] == "['a', '--b'] __main__"


def test_the_launcher_runs_modules_and_code(tmp_path: Path) -> None:
    """-m MODULE (from the current folder, as python -m) and -c CODE both run switched."""
    (tmp_path / "job.py").write_text(
        "import sqlite3, sys\nprint(sqlite3.__name__, sys.argv[1:], __name__)\n", encoding="utf-8"
    )
    by_module = run([*LAUNCHER, "-m", "job", "x"], env=child_env(), cwd=tmp_path)
    assert by_module.stdout.split() == ["pysqlite3", "['x']", "__main__"], by_module.stderr
    by_code = run([*LAUNCHER, "-c", "import sqlite3; print(sqlite3.__name__)"], env=child_env())
    assert by_code.stdout == "pysqlite3\n", by_code.stderr


def test_the_launcher_keeps_the_interpreter_options_when_it_restarts() -> None:
    """python -X dev -m ...bundled_sqlite: the restarted interpreter is in dev mode too."""
    code = "import sys, sqlite3; print(sys.flags.dev_mode, sqlite3.__name__)"
    result = run([sys.executable, "-X", "dev", *LAUNCHER[1:], "-c", code], env=child_env())
    assert result.stdout.split() == ["True", "pysqlite3"], result.stderr


def test_the_launcher_refuses_what_it_cannot_run(tmp_path: Path) -> None:
    """No program, -m without a module, a missing script: usage on stderr, exit 2."""
    for args in ([], ["-m"], [str(tmp_path / "missing.py")]):
        result = run([*LAUNCHER, *args], env=child_env())
        assert result.returncode == 2, (args, result.stderr)
        assert "usage: python -m circuitforge_core.db.bundled_sqlite" in result.stderr


def test_processes_the_program_starts_switch_too(tmp_path: Path) -> None:
    """A subprocess inherits CF_DB_SQLITE=bundled; a spawned worker switches before its
    target's module (which imports sqlite3 at its top) is imported."""
    (tmp_path / "worker.py").write_text(
        "import sqlite3\n\n\ndef report(queue):\n"
        "    import circuitforge_core.db\n"
        "    queue.put((sqlite3.__name__, sqlite3.sqlite_version))\n",
        encoding="utf-8",
    )
    script = tmp_path / "server.py"
    script.write_text(
        textwrap.dedent(
            """
            import multiprocessing, subprocess, sys
            import worker

            if __name__ == "__main__":
                child = subprocess.run(
                    [sys.executable, "-c",
                     "import circuitforge_core.db, sqlite3; print(sqlite3.__name__)"],
                    capture_output=True, text=True, check=True, timeout=60,
                )
                print("subprocess", child.stdout.strip())
                context = multiprocessing.get_context("spawn")
                queue = context.Queue()
                process = context.Process(target=worker.report, args=(queue,))
                process.start()
                print("spawned", *queue.get(timeout=60))
                process.join(timeout=60)
                print("exit", process.exitcode)
            """
        ),
        encoding="utf-8",
    )
    result = run([*LAUNCHER, str(script)], env=child_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "subprocess pysqlite3",
        f"spawned pysqlite3 {pysqlite3.sqlite_version}",
        "exit 0",
    ]


# -- this run, and the setting -----------------------------------------------------------


def test_this_test_run_is_on_the_library_it_asked_for() -> None:
    """make test-bundled-sqlite really runs the suite on pysqlite3; make test on the stdlib."""
    import sqlite3

    asked = Settings.from_env().sqlite_library
    assert bundled_sqlite.active() == (asked == "bundled")
    assert sqlite3.__name__ == ("pysqlite3" if asked == "bundled" else "sqlite3")


def test_settings_read_the_sqlite_library() -> None:
    """sqlite_library is stdlib by default, bundled on request; anything else is refused."""
    assert Settings.from_env({}).sqlite_library == "stdlib"
    assert Settings.from_env({"CF_DB_SQLITE": " Bundled "}).sqlite_library == "bundled"
    with pytest.raises(SettingsError, match="CF_DB_SQLITE='pysqlite3' is not a SQLite library"):
        Settings.from_env({"CF_DB_SQLITE": "pysqlite3"})


def test_which_modules_report_extended_result_codes() -> None:
    """The standard library's sqlite3 gives extended codes; pysqlite3 and sqlcipher3 do not
    (so advice that needs one, such as a full -shm, is worded for the primary code there)."""
    import sqlite3

    from circuitforge_core.db.sqlite_facts import reports_extended_codes

    assert reports_extended_codes(sqlite3.IntegrityError()) == (sqlite3.__name__ == "sqlite3")
    assert reports_extended_codes(pysqlite3.IntegrityError()) is False
    sqlcipher3 = pytest.importorskip("sqlcipher3.dbapi2")
    assert reports_extended_codes(sqlcipher3.IntegrityError()) is False
