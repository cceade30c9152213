"""cf-db on real files: output, exit codes, JSON, bad input.

Commands run in this process through ``main(argv)`` with stdout and stderr
captured; a real process is started only where one is the point: the
installed entry point and ``python -m``, a terminal (pty) or a pipe, and a
lock held by another process.
"""

from __future__ import annotations

import argparse
import ast
import fcntl
import importlib
import io
import json
import os
import pty
import re
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest

from circuitforge_core.db import get_db, run_migrations
from circuitforge_core.db.cli import build_parser, main

Write = Callable[[str, "str | bytes"], Path]

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "notes" / "migrations"
DOCS = ROOT / "docs" / "cli.md"


class Outcome(Protocol):
    """What a cf-db run left behind, in process or as a child."""

    @property
    def returncode(self) -> int: ...
    @property
    def stdout(self) -> str: ...
    @property
    def stderr(self) -> str: ...


@dataclass(frozen=True)
class Result:
    """One in-process run of ``main(argv)``."""

    returncode: int
    stdout: str
    stderr: str


class CfDb(Protocol):
    def __call__(
        self, *args: object, env: dict[str, str] | None = None, stdin: str | None = None
    ) -> Result: ...


@pytest.fixture
def cf_db(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> CfDb:
    """Run ``main(ARGS)`` here, with extra environment variables or stdin for that run only."""

    def run(*args: object, env: dict[str, str] | None = None, stdin: str | None = None) -> Result:
        capsys.readouterr()  # drop what came before
        with monkeypatch.context() as scoped:
            for name, value in (env or {}).items():
                scoped.setenv(name, value)
            if stdin is not None:
                scoped.setattr(sys, "stdin", io.StringIO(stdin))
            code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


def cf_db_process(
    *args: object, command: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m circuitforge_core.db ARGS`` (or ``command ARGS``) as a child."""
    return subprocess.run(
        [*(command or [sys.executable, "-m", "circuitforge_core.db"]), *(str(a) for a in args)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def assert_error(result: Outcome, *fragments: str) -> None:
    """Exit 2, an `error: ...` line on stderr naming what is wrong, no traceback."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error: " in line]
    assert errors, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def parsed(result: Outcome) -> dict[str, object]:
    document = json.loads(result.stdout)
    assert isinstance(document, dict)
    return document


def command_parsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (subparsers,) = (
        action for action in parser._actions if isinstance(action, argparse._SubParsersAction)
    )
    return dict(subparsers.choices)


def applied_db(db_path: Path, migrations: Path) -> None:
    db = get_db(db_path)
    try:
        run_migrations(db, migrations)
    finally:
        db.close()


def migration_rows(db_path: Path) -> list[tuple[object, ...]]:
    db = sqlite3.connect(db_path)
    try:
        return db.execute("SELECT name, checksum FROM _migrations ORDER BY name").fetchall()
    finally:
        db.close()


# -- every command -------------------------------------------------------------------


def test_every_command_has_help(cf_db: CfDb) -> None:
    """`cf-db COMMAND --help` exits 0 with that command's usage."""
    for name in command_parsers():
        result = cf_db(name, "--help")
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"usage: cf-db {name}")


def test_docs_mention_every_command_and_option() -> None:
    """docs/cli.md has a section per command and names each of its options."""
    docs = DOCS.read_text(encoding="utf-8")
    for name, parser in command_parsers().items():
        assert f"\n## {name}\n" in docs, f"docs/cli.md has no section for {name}"
        for action in parser._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help", "-v", "--verbose"):
                    assert option in docs, f"docs/cli.md does not mention {name} {option}"
    for code in ("| 0 |", "| 1 |", "| 2 |"):
        assert code in docs


def test_the_cli_imports_only_public_names_of_the_library() -> None:
    """Every name cli/ takes from the library is in the __all__ of the module it comes from."""
    for path in sorted((ROOT / "src" / "circuitforge_core" / "db" / "cli").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level >= 2:  # out of cli/
                where = "circuitforge_core.db" + (f".{node.module}" if node.module else "")
                public = importlib.import_module(where).__all__
                for alias in node.names:
                    assert alias.name in public, f"{path.name} imports {alias.name} from {where}"


def test_main_returns_the_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    """main(argv) returns an int, also for --version and for usage errors."""
    assert main(["--version"]) == 0
    assert main([]) == 2
    assert main(["frobnicate"]) == 2
    assert main(["status"]) == 2
    captured = capsys.readouterr()
    assert "cf-db" in captured.out
    assert "error: no command given" in captured.err
    assert "invalid choice: 'frobnicate'" in captured.err


def test_the_entry_point_and_python_m_run_main(db_path: Path) -> None:
    """The installed `cf-db` script and `python -m circuitforge_core.db` behave as main()."""
    script = Path(sys.executable).with_name("cf-db")
    assert script.exists(), "the cf-db entry point is installed with the package"
    by_script = cf_db_process("status", db_path, EXAMPLES, command=[str(script)])
    by_module = cf_db_process("status", db_path, EXAMPLES)
    for result in (by_script, by_module):
        assert result.returncode == 1, result.stderr
        assert result.stdout.count("pending ") == 3
    assert by_script.stdout == by_module.stdout
    assert not db_path.parent.exists()
    assert_error(cf_db_process("frobnicate", command=[str(script)]), "invalid choice")
    assert_error(cf_db_process(), "no command given")


def test_usage_errors_exit_2(cf_db: CfDb, tmp_path: Path) -> None:
    """Unknown command, missing argument, bad option value: usage and `error:` on stderr."""
    assert_error(cf_db("frobnicate"), "invalid choice")
    assert_error(cf_db("migrate", tmp_path / "app.db"), "no migrations folder given")
    assert_error(cf_db("migrate", "--lock-timeout", "soon", "a.db", "m"), "not a number")
    assert_error(cf_db("migrate", "--lock-timeout", "-1", "a.db", "m"), "more than 0")
    assert_error(cf_db("status", "--frob", "a.db", "m"), "unrecognized arguments")
    assert_error(cf_db(), "no command given")
    assert_error(cf_db("migrate", "--plan-only", "a.db", tmp_path), "--plan-only goes with")
    assert not (tmp_path / "app.db").exists()


def test_errors_have_a_traceback_only_with_verbose(cf_db: CfDb, tmp_path: Path) -> None:
    """A file that is not a database: one clear line; -v (before or after) adds the traceback."""
    not_db = tmp_path / "app.db"
    not_db.write_text("hello, this is not a database\n" * 100)
    (tmp_path / "m").mkdir()
    result = cf_db("status", not_db, tmp_path / "m")
    assert_error(result, f"{not_db} is not a usable SQLite database")
    for args in (
        ("-v", "status", not_db, tmp_path / "m"),
        ("status", "-v", not_db, tmp_path / "m"),
    ):
        verbose = cf_db(*args)
        assert verbose.returncode == 2
        assert "Traceback" in verbose.stderr
        assert "error: " in verbose.stderr


# -- migrate -------------------------------------------------------------------------


def test_migrate_prints_one_line_per_file_with_its_duration(
    cf_db: CfDb, db_path: Path, migrations_dir: Path, write_migration: Write
) -> None:
    """Each applied file with its time, a total, then `nothing to apply` on the next run."""
    write_migration("001_a.sql", "CREATE TABLE IF NOT EXISTS a (x);")
    write_migration("002_b.sql", "CREATE TABLE IF NOT EXISTS b (x);")
    result = cf_db("migrate", db_path, migrations_dir)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert re.fullmatch(r"applied 001_a\.sql \(\d+\.\d ms\)", lines[0])
    assert re.fullmatch(r"applied 002_b\.sql \(\d+\.\d ms\)", lines[1])
    assert re.fullmatch(r"2 migrations applied in \d+\.\d+ m?s", lines[2])
    assert "\r" not in result.stderr
    again = cf_db("migrate", db_path, migrations_dir)
    assert (again.returncode, again.stdout) == (0, "nothing to apply\n")


def test_migrate_failure_names_the_file_and_keeps_earlier_ones(
    cf_db: CfDb, db_path: Path, migrations_dir: Path, write_migration: Write
) -> None:
    """A failing statement: exit 2, file and line named, files before it applied."""
    write_migration("001_a.sql", "CREATE TABLE IF NOT EXISTS a (x);")
    write_migration(
        "002_b.sql", "CREATE TABLE IF NOT EXISTS b (x);\n\nINSERT INTO nope VALUES (1);"
    )
    result = cf_db("migrate", db_path, migrations_dir)
    assert_error(result, "migration 002_b.sql, line 3", "no such table: nope")
    assert result.stdout.startswith("applied 001_a.sql")
    assert [name for name, _ in migration_rows(db_path)] == ["001_a.sql"]


def test_migrate_with_a_bad_folder_creates_no_database(
    cf_db: CfDb, db_path: Path, tmp_path: Path
) -> None:
    """A mistyped DIR, or a file that is not UTF-8: error, and no empty database left behind."""
    assert_error(cf_db("migrate", db_path, tmp_path / "nope"), "nope does not exist")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "001_a.sql").write_bytes(b"SELECT '\xff';")
    assert_error(cf_db("migrate", db_path, bad), "001_a.sql", "not valid UTF-8")
    assert not db_path.exists()
    assert not db_path.parent.exists()


_children: list[subprocess.Popen[bytes]] = []


@pytest.fixture(autouse=True)
def _no_child_left() -> Iterator[None]:
    """A child a failed test left running is killed and reaped, not leaked."""
    yield
    while _children:
        child = _children.pop()
        if child.poll() is None:
            child.kill()
        child.communicate(timeout=30)


def start_migrate_waiting_for_lock(
    db_path: Path,
    migrations_dir: Path,
    write_migration: Write,
    later: dict[str, str] | None = None,
    **popen: object,
) -> tuple[sqlite3.Connection, subprocess.Popen[bytes]]:
    """A migrate whose file 002 waits for a write lock the test holds (and ``later`` files)."""
    write_migration("001_a.sql", "CREATE TABLE IF NOT EXISTS a (x);")
    applied_db(db_path, migrations_dir)
    write_migration("002_slow.sql", "INSERT INTO a VALUES (1);")
    for name, text in (later or {}).items():
        write_migration(name, text)
    holder = sqlite3.connect(db_path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "circuitforge_core.db",
            "migrate",
            str(db_path),
            str(migrations_dir),
        ],
        **popen,  # type: ignore[call-overload]
    )
    _children.append(process)
    return holder, process


#: LiveLine's default: how long a step runs before the live line appears.
LIVE_LINE_DELAY = 0.25


def blocked_database(path: Path) -> sqlite3.Connection:
    """A database whose write lock the returned connection holds until it rolls back."""
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("CREATE TABLE t (x)")
    blocker.execute("BEGIN IMMEDIATE")
    return blocker


def slow_migration(other: Path) -> str:
    """A no-transaction file that runs until ``other``'s write lock is released."""
    return (
        "-- cf-db: no-transaction\n"
        f"ATTACH DATABASE '{other}' AS other;\n"
        "INSERT INTO other.t VALUES (1);\n"
        "DETACH DATABASE other;\n"
    )


def wait_until_locked_by(lock_file: Path, child: subprocess.Popen[bytes]) -> None:
    """Return once ``child`` holds the flock on ``lock_file`` (a no-transaction file runs)."""
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert child.poll() is None, "the migrate ended before it took the lock file"
            assert time.monotonic() < deadline, "the migrate never took the lock file"
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return
            fcntl.flock(fd, fcntl.LOCK_UN)
            time.sleep(0.005)
    finally:
        os.close(fd)


@pytest.mark.slow
def test_migrate_shows_no_live_line_when_not_on_a_terminal(
    tmp_path: Path, db_path: Path, migrations_dir: Path, write_migration: Write
) -> None:
    """Piped stderr: no `\\r` redraws, though a file ran four times the live line's delay."""
    write_migration("001_a.sql", "CREATE TABLE IF NOT EXISTS a (x);")
    applied_db(db_path, migrations_dir)
    other = tmp_path / "other.db"
    blocker = blocked_database(other)
    write_migration("002_slow.sql", slow_migration(other))
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "circuitforge_core.db",
            "migrate",
            str(db_path),
            str(migrations_dir),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    _children.append(process)
    try:
        wait_until_locked_by(Path(f"{db_path}.migrate-lock"), process)
        # How long 002 runs. Not a wait for something to happen: the duration the child
        # prints below proves the file ran long enough for a live line to show.
        time.sleep(4 * LIVE_LINE_DELAY)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    ran = re.match(rb"applied 002_slow\.sql \((\d+\.\d\d) s\)\n", stdout)
    assert ran, stdout
    assert float(ran[1]) >= 3 * LIVE_LINE_DELAY
    assert b"\r" not in stderr
    assert b"applying" not in stderr


def read_all(fd: int, into: bytearray) -> None:
    """Read a pty master until the other side is closed."""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO once the child's side is closed
            return
        if not chunk:
            return
        into.extend(chunk)


@pytest.fixture
def terminal() -> Iterator[tuple[int, bytearray, threading.Thread]]:
    """A pseudo-terminal for a child's stderr: (child's fd, what it wrote, reader thread)."""
    master, slave = pty.openpty()
    output = bytearray()
    reader = threading.Thread(target=read_all, args=(master, output), daemon=True)
    try:
        yield slave, output, reader
    finally:
        if reader.ident is not None:  # started
            reader.join(timeout=30)
            assert not reader.is_alive()
        os.close(master)


@pytest.mark.slow
def test_migrate_shows_elapsed_time_on_a_terminal(
    tmp_path: Path,
    db_path: Path,
    migrations_dir: Path,
    write_migration: Write,
    terminal: tuple[int, bytearray, threading.Thread],
) -> None:
    """On a TTY: a redrawn line while waiting for the lock and while a file runs, then erased."""
    slave, output, reader = terminal
    other = tmp_path / "other.db"
    blocker = blocked_database(other)  # 003 writes here: it runs until this ends
    holder = None
    slow = slow_migration(other)
    try:
        holder, process = start_migrate_waiting_for_lock(
            db_path,
            migrations_dir,
            write_migration,
            {"003_slow.sql": slow},
            stdout=subprocess.PIPE,
            stderr=slave,
        )
        os.close(slave)
        reader.start()
        wait_for(output, b"\rwaiting for the write lock on ", times=3)
        holder.execute("ROLLBACK")  # 002 can run now
        # Two draws prove a redraw; 003 waits on its connection's 5 s busy timeout,
        # so ask no more than the ~0.35 s those take.
        wait_for(output, b"\rapplying 003_slow.sql ... ", times=2)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
        if holder is not None:
            if holder.in_transaction:
                holder.execute("ROLLBACK")
            holder.close()
    stdout, _ = process.communicate(timeout=60)
    reader.join(timeout=30)
    assert process.returncode == 0
    assert stdout.startswith(b"applied 002_slow.sql (")
    assert b"\napplied 003_slow.sql (" in stdout
    assert re.search(rb"\rapplying 003_slow\.sql \.\.\. \d+\.\d s\x1b\[K", output)
    assert output.endswith(b"\r\x1b[K")  # the line is erased before the result is printed


def wait_for(output: bytearray, text: bytes, *, times: int) -> None:
    deadline = time.monotonic() + 30
    while output.count(text) < times:
        assert time.monotonic() < deadline, bytes(output)
        time.sleep(0.05)


# -- migrate --dry-run ---------------------------------------------------------------


def test_dry_run_lists_pending_and_creates_nothing(cf_db: CfDb, db_path: Path) -> None:
    """On a database that does not exist: everything runs on a copy; no file is created."""
    result = cf_db("migrate", "--dry-run", db_path, EXAMPLES)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for line, (name, statements) in zip(
        lines,
        [
            ("001_initial", "1 statement"),
            ("002_add_tags", "2 statements"),
            ("003_add_search", "4 statements"),
        ],
        strict=False,
    ):
        how = rf"{statements}, one transaction; ran in [\d.]+ m?s on a copy"
        assert re.fullmatch(rf"would apply {name}\.sql \({how}\)", line), line
    assert lines[3:] == ["3 to apply; nothing was changed (dry run: every file ran on a copy)"]
    document = parsed(cf_db("migrate", "--dry-run", "--json", db_path, EXAMPLES))
    assert (document["ok"], document["executed"]) == (True, True)
    pending = document["pending"]
    assert [p["name"] for p in pending] == [  # type: ignore[attr-defined]
        "001_initial.sql",
        "002_add_tags.sql",
        "003_add_search.sql",
    ]
    assert all(p["seconds"] >= 0 and p["problem"] is None for p in pending)  # type: ignore[attr-defined]
    plan_only = cf_db("migrate", "--dry-run", "--plan-only", db_path, EXAMPLES)
    assert plan_only.stdout.splitlines()[0] == (
        "would apply 001_initial.sql (1 statement, one transaction)"
    )
    assert plan_only.stdout.splitlines()[-1] == "3 to apply; nothing was changed (dry run)"
    assert not db_path.parent.exists()


def test_dry_run_reports_what_the_run_would_refuse(
    cf_db: CfDb, db_path: Path, migrations_dir: Path, write_migration: Write
) -> None:
    """An edited applied file and a VACUUM outside a marker: exit 1, both named, nothing run."""
    write_migration("001_a.sql", "CREATE TABLE IF NOT EXISTS a (x);")
    applied_db(db_path, migrations_dir)
    write_migration("001_a.sql", "CREATE TABLE IF NOT EXISTS a (x, y);")
    write_migration("002_b.sql", "CREATE TABLE IF NOT EXISTS b (x);\nVACUUM;\n")
    write_migration("003_c.sql", "-- cf-db: no-transaction\nVACUUM;\n")
    before = migration_rows(db_path)
    result = cf_db("migrate", "--dry-run", db_path, migrations_dir)
    assert result.returncode == 1, result.stderr
    assert "refused: applied migration 001_a.sql was edited" in result.stdout
    assert "refused: migration 002_b.sql, line 2: `VACUUM;` cannot run inside" in result.stdout
    assert "blocked     003_c.sql (1 statement, no transaction; not run on a copy)" in result.stdout
    assert "note: not run on the copy, since the run stops at 002_b.sql: 003_c.sql" in result.stdout
    document = parsed(cf_db("migrate", "--dry-run", "--json", db_path, migrations_dir))
    assert document["ok"] is False
    problems = document["problems"]
    assert [(p["kind"], p["name"], p["line"]) for p in problems] == [  # type: ignore[attr-defined]
        ("modified", "001_a.sql", None),
        ("refused", "002_b.sql", 2),
    ]
    assert migration_rows(db_path) == before


def test_dry_run_finds_what_only_running_finds(
    cf_db: CfDb, db_path: Path, migrations_dir: Path, write_migration: Write
) -> None:
    """A misspelt table: the dry run fails it with file and line (exit 1), as migrate then does."""
    write_migration("001_a.sql", "CREATE TABLE IF NOT EXISTS notes (body TEXT);")
    write_migration(
        "002_b.sql", "INSERT INTO notes VALUES ('a');\n\nINSERT INTO nots VALUES ('b');"
    )
    write_migration("003_c.sql", "CREATE TABLE IF NOT EXISTS c (x);")
    result = cf_db("migrate", "--dry-run", db_path, migrations_dir)
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "failed: migration 002_b.sql, line 3: no such table: nots"
    assert re.fullmatch(r"would apply 001_a\.sql \(.*; ran in .* on a copy\)", lines[3])
    assert lines[4] == "blocked     003_c.sql (1 statement, one transaction; not run on a copy)"
    assert lines[-1] == "migrate would apply 1 file, then stop at 002_b.sql; nothing was changed"
    assert not db_path.parent.exists()
    document = parsed(cf_db("migrate", "--dry-run", "--json", db_path, migrations_dir))
    assert [(p["kind"], p["name"], p["line"]) for p in document["problems"]] == [  # type: ignore[attr-defined]
        ("failed", "002_b.sql", 3)
    ]
    real = cf_db("migrate", db_path, migrations_dir)
    assert_error(real, "migration 002_b.sql, line 3: no such table: nots")
    assert document["problems"][0]["message"] in real.stderr  # type: ignore[index]


def test_migrate_json_is_one_document_with_durations(
    cf_db: CfDb, db_path: Path, migrations_dir: Path, write_migration: Write
) -> None:
    """Applied files with their seconds; on failure the document, then the error (exit 2)."""
    write_migration("001_a.sql", "CREATE TABLE IF NOT EXISTS a (x);")
    result = cf_db("migrate", "--json", db_path, migrations_dir)
    assert result.returncode == 0, result.stderr
    document = parsed(result)
    assert document["database"] == str(db_path)
    assert [a["name"] for a in document["applied"]] == ["001_a.sql"]  # type: ignore[attr-defined]
    assert document["applied"][0]["seconds"] >= 0  # type: ignore[index]
    assert document["error"] is None
    again = parsed(cf_db("migrate", "--json", db_path, migrations_dir))
    assert again["applied"] == []
    write_migration("002_b.sql", "CREATE TABLE IF NOT EXISTS b (x);")
    write_migration("003_c.sql", "INSERT INTO nowhere VALUES (1);")
    failing = cf_db("migrate", "--json", db_path, migrations_dir)
    assert_error(failing, "migration 003_c.sql, line 1")
    document = parsed(failing)
    assert [a["name"] for a in document["applied"]] == ["002_b.sql"]  # type: ignore[attr-defined]
    assert document["error"]["name"] == "003_c.sql"  # type: ignore[index]
    assert document["error"]["line"] == 1  # type: ignore[index]
    help_text = cf_db("migrate", "--help").stdout
    assert "--json" in help_text


# -- status --------------------------------------------------------------------------


def test_status_of_a_missing_database_creates_nothing(cf_db: CfDb, db_path: Path) -> None:
    """Everything pending, exit 1, and the database and its folder still do not exist."""
    result = cf_db("status", db_path, EXAMPLES)
    assert result.returncode == 1
    assert "does not exist yet" in result.stdout
    assert result.stdout.count("pending ") == 3
    assert not db_path.parent.exists()


def test_status_states_in_json_and_exit_codes(
    cf_db: CfDb, db_path: Path, migrations_dir: Path, write_migration: Write
) -> None:
    """applied, modified, missing, pending with dates; exit 0 only when all are applied."""
    write_migration("001_a.sql", "CREATE TABLE IF NOT EXISTS a (x);")
    write_migration("002_b.sql", "CREATE TABLE IF NOT EXISTS b (x);")
    write_migration("003_c.sql", "CREATE TABLE IF NOT EXISTS c (x);")
    applied_db(db_path, migrations_dir)
    clean = cf_db("status", db_path, migrations_dir)
    assert clean.returncode == 0
    assert clean.stdout.splitlines()[-1] == "3 applied"
    write_migration("002_b.sql", "CREATE TABLE IF NOT EXISTS b (x, y);")
    (migrations_dir / "003_c.sql").unlink()
    write_migration("004_d.sql", "SELECT 1;")
    before = db_path.read_bytes()
    result = cf_db("status", "--json", db_path, migrations_dir)
    assert result.returncode == 1
    document = parsed(result)
    states = {m["name"]: m for m in document["migrations"]}  # type: ignore[attr-defined]
    assert {name: m["state"] for name, m in states.items()} == {
        "001_a.sql": "applied",
        "002_b.sql": "modified",
        "004_d.sql": "pending",
        "003_c.sql": "missing",
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", states["001_a.sql"]["applied_at"])
    assert states["004_d.sql"]["applied_at"] is None
    assert document["counts"] == {"applied": 1, "pending": 1, "modified": 1, "missing": 1}
    assert db_path.read_bytes() == before  # never writes


# -- new -----------------------------------------------------------------------------


def test_new_takes_the_next_number_and_the_folder_width(cf_db: CfDb, tmp_path: Path) -> None:
    """Empty folder: 001; after 0041 comes 0042; after 7_ comes 8_; the path is printed."""
    empty = tmp_path / "empty"
    empty.mkdir()
    result = cf_db("new", empty, "initial")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{empty / '001_initial.sql'}\n"
    text = (empty / "001_initial.sql").read_text()
    assert text.startswith("-- 001_initial.sql: runs in one transaction")
    four = tmp_path / "four"
    four.mkdir()
    (four / "0041_old.sql").write_text("SELECT 1;")
    (four / "0007_older.sql").write_text("SELECT 1;")
    (four / "README.md").write_text("not a migration")
    assert cf_db("new", four, "add_pins").stdout.strip().endswith("0042_add_pins.sql")
    one = tmp_path / "one"
    one.mkdir()
    (one / "7_x.sql").write_text("SELECT 1;")
    assert cf_db("new", one, "y").stdout.strip().endswith("8_y.sql")


def test_new_no_transaction_starts_with_the_marker(cf_db: CfDb, migrations_dir: Path) -> None:
    """--no-transaction: the marker is the first line, so the runner honours it."""
    result = cf_db("new", "--no-transaction", migrations_dir, "compact")
    assert result.returncode == 0
    lines = (migrations_dir / "001_compact.sql").read_text().splitlines()
    assert lines[0] == "-- cf-db: no-transaction"
    assert "outside a transaction" in lines[1]


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("Add_Tags", "not a safe migration name"),
        ("add tags", "not a safe migration name"),
        ("../escape", "not a safe migration name"),
        ("sub/dir", "not a safe migration name"),
        ("add_tags.sql", "not a safe migration name"),
        ("", "not a safe migration name"),
        ("x" * 101, "not a safe migration name"),
        ("add_tags", "already has a migration named add_tags: 002_add_tags.sql"),
    ],
)
def test_new_refuses_unsafe_or_colliding_names(
    cf_db: CfDb, migrations_dir: Path, name: str, why: str
) -> None:
    """Refused with a reason, and no file created."""
    (migrations_dir / "002_add_tags.sql").write_text("SELECT 1;")
    before = sorted(p.name for p in migrations_dir.parent.rglob("*"))
    assert_error(cf_db("new", migrations_dir, name), why)
    assert sorted(p.name for p in migrations_dir.parent.rglob("*")) == before


def test_new_refuses_a_number_that_outgrows_the_width(cf_db: CfDb, migrations_dir: Path) -> None:
    """After 9_x.sql, 10_y.sql would sort before 2_...: refused, saying why."""
    (migrations_dir / "9_x.sql").write_text("SELECT 1;")
    assert_error(cf_db("new", migrations_dir, "y"), "needs more digits than the 1")
    assert sorted(p.name for p in migrations_dir.iterdir()) == ["9_x.sql"]


def test_new_needs_an_existing_folder(cf_db: CfDb, tmp_path: Path) -> None:
    """A missing DIR is not created (a typo would start a second folder)."""
    assert_error(cf_db("new", tmp_path / "migrtions", "x"), "does not exist")
    assert not (tmp_path / "migrtions").exists()


# -- lint ----------------------------------------------------------------------------


def test_lint_of_the_example_folder_is_clean(cf_db: CfDb) -> None:
    """No finding, exit 0, a one-line summary."""
    result = cf_db("lint", EXAMPLES)
    assert (result.returncode, result.stdout) == (0, "3 files: 0 errors, 0 warnings\n")


def test_lint_errors_exit_1_with_reasons(
    cf_db: CfDb, migrations_dir: Path, write_migration: Write
) -> None:
    """Findings as file:line: severity: message [rule], each rule's why once; --json has all."""
    write_migration("001_a.sql", "CREATE TABLE a (x);\nCREATE TABLE b (x);\n")
    write_migration("002_b.sql", "ALTER TABLE a RENAME COLUMN x TO y;\n")
    write_migration("003_c.sql", b"SELECT '\xff';\n")
    result = cf_db("lint", migrations_dir)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[0] == (
        "001_a.sql:1: warning: `CREATE TABLE a (x);` has no IF NOT EXISTS [create-if-not-exists]"
    )
    assert lines[1].startswith("    why: Without IF NOT EXISTS")
    assert lines[2].startswith("001_a.sql:2: warning:")
    assert lines[3].startswith("002_b.sql:1: error:")  # the second finding of a rule: no why
    assert "003_c.sql:1: error: byte 8 (ff) on line 1 is not valid UTF-8" in result.stdout
    assert lines[-1] == "3 files: 2 errors, 2 warnings"
    document = parsed(cf_db("lint", "--json", migrations_dir))
    assert (document["files"], document["errors"], document["warnings"]) == (3, 2, 2)
    findings = document["findings"]
    assert all(f["why"] for f in findings)  # type: ignore[attr-defined]
    assert {f["code"] for f in findings} == {  # type: ignore[attr-defined]
        "create-if-not-exists",
        "rename-column",
        "invalid-utf8",
    }


def test_lint_warnings_pass_unless_strict(
    cf_db: CfDb, migrations_dir: Path, write_migration: Write
) -> None:
    """Warnings alone: exit 0; with --strict exit 1; --ignore removes them."""
    write_migration("001_a.sql", "CREATE TABLE a (x);\n")
    assert cf_db("lint", migrations_dir).returncode == 0
    assert cf_db("lint", "--strict", migrations_dir).returncode == 1
    ignored = cf_db("lint", "--strict", "--ignore", "create-if-not-exists", migrations_dir)
    assert (ignored.returncode, ignored.stdout) == (0, "1 file: 0 errors, 0 warnings\n")
    by_file = cf_db(
        "lint", "--strict", "--ignore", "001_a.sql:create-if-not-exists", migrations_dir
    )
    assert by_file.returncode == 0


def test_lint_of_a_missing_folder_is_an_error(cf_db: CfDb, tmp_path: Path) -> None:
    """Not a finding: exit 2 naming the folder."""
    assert_error(cf_db("lint", tmp_path / "nope"), "nope does not exist")
    (tmp_path / "file.sql").write_text("SELECT 1;")
    assert_error(cf_db("lint", tmp_path / "file.sql"), "is not a folder")


# -- verify --------------------------------------------------------------------------


def test_verify_compares_checksums(
    cf_db: CfDb, db_path: Path, migrations_dir: Path, write_migration: Write
) -> None:
    """All match: exit 0; an edited or deleted applied file: exit 1, in text and JSON."""
    write_migration("001_a.sql", "CREATE TABLE IF NOT EXISTS a (x);")
    write_migration("002_b.sql", "CREATE TABLE IF NOT EXISTS b (x);")
    applied_db(db_path, migrations_dir)
    write_migration("003_c.sql", "SELECT 1;")
    clean = cf_db("verify", db_path, migrations_dir)
    assert clean.returncode == 0, clean.stderr
    assert clean.stdout.splitlines()[-1] == "2 ok, 1 pending"
    write_migration("001_a.sql", "CREATE TABLE IF NOT EXISTS a (x, y);")
    (migrations_dir / "002_b.sql").unlink()
    result = cf_db("verify", db_path, migrations_dir)
    assert result.returncode == 1
    assert re.search(r"modified +001_a\.sql +recorded sha256 [0-9a-f]{12}", result.stdout)
    assert re.search(r"missing +002_b\.sql +applied .*file gone", result.stdout)
    document = parsed(cf_db("verify", "--json", db_path, migrations_dir))
    assert document["ok"] is False
    entries = {m["name"]: m for m in document["migrations"]}  # type: ignore[attr-defined]
    assert entries["001_a.sql"]["state"] == "modified"
    assert entries["001_a.sql"]["recorded_checksum"] != entries["001_a.sql"]["file_checksum"]
    assert entries["002_b.sql"]["file_checksum"] is None


def test_verify_needs_an_existing_database(cf_db: CfDb, db_path: Path) -> None:
    """Nothing to verify: exit 2, and no database is created."""
    assert_error(cf_db("verify", db_path, EXAMPLES), "does not exist; nothing to verify")
    assert not db_path.parent.exists()


# -- check ---------------------------------------------------------------------------


def test_check_reports_ok_and_dangling_foreign_keys(cf_db: CfDb, tmp_path: Path) -> None:
    """A sound file: exit 0; rows pointing at nothing: exit 1, readable and in JSON."""
    path = tmp_path / "app.db"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE notes (id INTEGER PRIMARY KEY);\n"
        "CREATE TABLE tags (note_id INTEGER REFERENCES notes(id), tag TEXT);\n"
        "INSERT INTO notes VALUES (1);\n"
        "INSERT INTO tags VALUES (1, 'ok');\n"
    )
    db.close()
    ok = cf_db("check", path)
    assert (ok.returncode, ok.stdout) == (0, "integrity_check: ok\nforeign_key_check: ok\n")
    assert cf_db("check", "--quick", path).stdout.startswith("quick_check: ok")
    db = sqlite3.connect(path)
    db.executescript("INSERT INTO tags VALUES (2, 'a'), (3, 'b');")
    db.close()
    result = cf_db("check", path)
    assert result.returncode == 1
    assert "foreign_key_check: 2 row(s) point at nothing" in result.stdout
    assert "tags(note_id) -> notes(id): 2 row(s), rowid 2, 3" in result.stdout
    document = parsed(cf_db("check", "--json", path))
    assert document["ok"] is False
    assert document["foreign_keys"] == [
        {
            "table": "tags",
            "columns": ["note_id"],
            "parent": "notes",
            "parent_columns": ["id"],
            "count": 2,
            "rowids": [2, 3],
        }
    ]


def make_damaged(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    db.execute("CREATE INDEX t_v ON t (v)")
    db.executemany("INSERT INTO t (v) VALUES (?)", [(f"value {i}" * 4,) for i in range(5000)])
    db.commit()
    db.close()
    with open(path, "r+b") as handle:
        handle.seek(4096 * 10 + 200)
        handle.write(b"\x07garbage" * 60)


def test_check_of_a_damaged_or_wrong_file(cf_db: CfDb, tmp_path: Path) -> None:
    """Corruption: exit 1 with SQLite's messages; not a database, a folder, missing: exit 2."""
    damaged = tmp_path / "damaged.db"
    make_damaged(damaged)
    result = cf_db("check", damaged)
    assert result.returncode == 1
    assert re.match(r"integrity_check: \d+ problem\(s\)\n    ", result.stdout)
    assert "restore it from a backup" in result.stdout
    document = parsed(cf_db("check", "--json", "--quick", damaged))
    assert document["check"] == "quick_check"
    assert document["integrity"]
    (tmp_path / "text.db").write_text("hello\n" * 1000)
    assert_error(cf_db("check", tmp_path / "text.db"), "text.db is not a usable SQLite database")
    assert_error(cf_db("check", tmp_path), "is a folder")
    assert_error(cf_db("check", tmp_path / "nope.db"), "nope.db does not exist")
    assert not (tmp_path / "nope.db").exists()


# -- backup --------------------------------------------------------------------------


def make_database(path: Path, rows: int, blob: int) -> None:
    db = get_db(path)
    try:
        db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, payload BLOB)")
        db.execute(
            "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < ?) "
            "INSERT INTO t SELECT i, randomblob(?) FROM c",
            (rows, blob),
        )
        db.commit()
    finally:
        db.close()


def count(path: Path, sql: str = "SELECT count(*) FROM t") -> object:
    db = sqlite3.connect(path)
    try:
        return db.execute(sql).fetchone()[0]
    finally:
        db.close()


def test_backup_to_a_file_and_into_a_folder(cf_db: CfDb, tmp_path: Path) -> None:
    """The copy opens with every row; a folder DEST keeps DB's name; one summary line."""
    source = tmp_path / "app.db"
    make_database(source, rows=100, blob=100)
    result = cf_db("backup", source, tmp_path / "copy.db")
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(
        rf"backed up {re.escape(str(source))} to {re.escape(str(tmp_path / 'copy.db'))}: "
        r"\d+\.\d KiB in \d+\.\d+ m?s, integrity_check ok\n",
        result.stdout,
    )
    assert count(tmp_path / "copy.db") == 100
    (tmp_path / "backups").mkdir()
    quick = cf_db("backup", "--quick", source, tmp_path / "backups")
    assert quick.returncode == 0, quick.stderr
    assert quick.stdout.endswith("quick_check ok\n")
    assert count(tmp_path / "backups" / "app.db") == 100


def test_backup_refusals_leave_everything_as_it_was(cf_db: CfDb, tmp_path: Path) -> None:
    """Onto itself, over a non-database, into a missing folder, from a missing DB: exit 2."""
    source = tmp_path / "app.db"
    make_database(source, rows=10, blob=10)
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    assert_error(cf_db("backup", source, source), "onto itself")
    assert_error(cf_db("backup", source, tmp_path), "onto itself")
    assert_error(cf_db("backup", source, notes), "not an SQLite database; refusing to overwrite")
    assert_error(cf_db("backup", source, tmp_path / "no" / "c.db"), "folder", "does not exist")
    assert_error(cf_db("backup", tmp_path / "nope.db", tmp_path / "c.db"), "nope.db does not exist")
    assert notes.read_text() == "keep me"
    assert count(source) == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.db", "notes.txt"]


def test_backup_of_a_damaged_database_exits_1_and_writes_nothing(
    cf_db: CfDb, tmp_path: Path
) -> None:
    """The copy fails integrity_check: the problems on stderr, exit 1, no DEST."""
    damaged = tmp_path / "damaged.db"
    make_damaged(damaged)
    result = cf_db("backup", damaged, tmp_path / "copy.db")
    assert result.returncode == 1
    assert "error: the copy of the database fails integrity_check" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "copy.db").exists()
    assert not [p for p in tmp_path.iterdir() if "cf-db-backup" in p.name]


WRITER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
n = db.execute("SELECT max(id) FROM t").fetchone()[0]
while True:
    n += 1
    db.execute("INSERT INTO t (id, payload) VALUES (?, randomblob(300))", (n,))
"""


def test_backup_while_another_process_writes(cf_db: CfDb, tmp_path: Path) -> None:
    """A 40 MB database under continuous writes: the copy opens, passes integrity_check,
    and holds every row committed before the backup began."""
    source = tmp_path / "app.db"
    make_database(source, rows=10_000, blob=4000)
    first = int(count(source, "SELECT max(id) FROM t"))  # type: ignore[call-overload]
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(source)])
    try:
        deadline = time.monotonic() + 30
        while count(source, "SELECT max(id) FROM t") < first + 50:  # type: ignore[operator]
            assert writer.poll() is None
            assert time.monotonic() < deadline
            time.sleep(0.01)
        before = int(count(source, "SELECT max(id) FROM t"))  # type: ignore[call-overload]
        result = cf_db("backup", source, tmp_path / "copy.db")
        assert result.returncode == 0, result.stderr
        assert writer.poll() is None, "the writer stopped"
        assert count(source, "SELECT max(id) FROM t") > before  # type: ignore[operator]
    finally:
        writer.kill()
        writer.wait(timeout=30)
    copy = tmp_path / "copy.db"
    assert count(copy, "PRAGMA integrity_check") == "ok"
    assert count(copy, f"SELECT count(*) FROM t WHERE id <= {before}") == before


def test_backup_shows_progress_on_a_terminal(
    tmp_path: Path, terminal: tuple[int, bytearray, threading.Thread]
) -> None:
    """A file of several steps: `backing up app.db  NN%` redrawn on the TTY, then erased."""
    source = tmp_path / "app.db"
    make_database(source, rows=3000, blob=4000)
    slave, output, reader = terminal
    process = subprocess.Popen(
        [sys.executable, "-m", "circuitforge_core.db", "backup", str(source), str(tmp_path / "c")],
        stdout=subprocess.PIPE,
        stderr=slave,
    )
    _children.append(process)
    os.close(slave)
    reader.start()
    stdout, _ = process.communicate(timeout=60)
    reader.join(timeout=30)
    assert process.returncode == 0
    assert stdout.startswith(b"backed up ")
    percents = [int(p) for p in re.findall(rb"\rbacking up app\.db +(\d+)%", output)]
    assert len(percents) >= 2
    assert percents == sorted(percents)
    assert output.endswith(b"\r\x1b[K")


# -- backup and check of encrypted databases -----------------------------------------

SECRET_ROW = "KNOWN-PLAINTEXT-c41e9a"
RAW_KEY_TEXT = "x'" + bytes(range(32)).hex() + "'"


def make_encrypted(path: Path, key: str, rows: int = 300) -> None:
    db = get_db(path, key=key)
    try:
        db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT)")
        db.executemany(
            "INSERT INTO t (body) VALUES (?)", [(f"{SECRET_ROW} {i}",) for i in range(rows)]
        )
        db.commit()
    finally:
        db.close()


def encrypted_rows(path: Path, key: str) -> list[tuple[object, ...]]:
    db = get_db(path, key=key, readonly=True)
    try:
        return db.execute("SELECT id, body FROM t ORDER BY id").fetchall()
    finally:
        db.close()


def test_backup_and_check_of_an_encrypted_database(cf_db: CfDb, tmp_path: Path) -> None:
    """--key-env / --key-file / stdin: an encrypted copy with every row, no plaintext; check ok."""
    pytest.importorskip("sqlcipher3")
    source = tmp_path / "app.db"
    make_encrypted(source, RAW_KEY_TEXT)
    copy = tmp_path / "copy.db"
    result = cf_db(
        "backup", source, copy, "--key-env", "APP_DB_KEY", env={"APP_DB_KEY": RAW_KEY_TEXT}
    )
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(
        rf"backed up {re.escape(str(source))} to {re.escape(str(copy))}: \d+\.\d KiB in "
        r"\d+\.\d+ m?s, integrity_check ok, encrypted with the same key\n",
        result.stdout,
    )
    assert SECRET_ROW.encode() not in copy.read_bytes()
    assert encrypted_rows(copy, RAW_KEY_TEXT) == encrypted_rows(source, RAW_KEY_TEXT)
    assert len(encrypted_rows(copy, RAW_KEY_TEXT)) == 300
    with pytest.raises(sqlite3.DatabaseError, match="file is not a database"):
        count(copy, "SELECT count(*) FROM t")
    key_file = tmp_path / "app.key"
    key_file.write_text(RAW_KEY_TEXT + "\n", encoding="utf-8")
    again = cf_db("backup", "--quick", source, copy, "--key-file", key_file)
    assert again.returncode == 0, again.stderr  # replaces the older encrypted backup
    assert again.stdout.endswith("quick_check ok, encrypted with the same key\n")
    ok = cf_db("check", copy, "--key-file", "-", stdin=RAW_KEY_TEXT + "\n")
    assert (ok.returncode, ok.stdout) == (0, "integrity_check: ok\nforeign_key_check: ok\n")
    document = parsed(cf_db("check", "--json", source, "--key-file", key_file))
    assert (document["ok"], document["integrity"]) == (True, [])


def test_wrong_or_missing_key_for_backup_and_check_exits_2(cf_db: CfDb, tmp_path: Path) -> None:
    """A wrong key names DB and says the key is wrong; no key says to give one; DEST unwritten."""
    pytest.importorskip("sqlcipher3")
    source = tmp_path / "app.db"
    make_encrypted(source, RAW_KEY_TEXT)
    copy = tmp_path / "copy.db"
    wrong = {"WRONG_KEY": "not the key"}
    assert_error(
        cf_db("backup", source, copy, "--key-env", "WRONG_KEY", env=wrong),
        f"{source}: cannot decrypt the database: the key is wrong",
    )
    assert_error(cf_db("backup", source, copy), f"{source} is not a usable", "give its key")
    assert_error(
        cf_db("backup", source, copy, "--key-env", "CF_TEST_UNSET_KEY"),
        "CF_TEST_UNSET_KEY is not set",
    )
    assert_error(
        cf_db("check", source, "--key-env", "WRONG_KEY", env=wrong),
        f"{source}: cannot decrypt the database: the key is wrong",
    )
    assert_error(cf_db("check", source), f"{source} is not a usable", "give its key")
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("app.db")) == []


def test_check_of_a_damaged_encrypted_database_exits_1(cf_db: CfDb, tmp_path: Path) -> None:
    """A page that fails its HMAC: exit 1 with the damage listed, not a key error."""
    pytest.importorskip("sqlcipher3")
    damaged = tmp_path / "damaged.db"
    make_encrypted(damaged, RAW_KEY_TEXT, rows=5000)
    with open(damaged, "r+b") as handle:
        handle.seek(4096 * 10 + 200)
        handle.write(b"\x07garbage" * 60)
    env = {"APP_DB_KEY": RAW_KEY_TEXT}
    result = cf_db("check", "--quick", damaged, "--key-env", "APP_DB_KEY", env=env)
    assert result.returncode == 1, result.stderr
    assert re.match(r"quick_check: \d+ problem\(s\)\n    ", result.stdout)
    assert "restore it from a backup" in result.stdout
    backup = cf_db("backup", damaged, tmp_path / "copy.db", "--key-env", "APP_DB_KEY", env=env)
    assert backup.returncode == 1
    assert "error: the copy of the database fails integrity_check" in backup.stderr
    assert not (tmp_path / "copy.db").exists()


# -- -q/--quiet and the library's warnings -------------------------------------------------

# cf-db in a child whose SQLite reports an affected version, whatever this machine links.
CF_DB_ON_AFFECTED_SQLITE = """
import sys
import circuitforge_core.db
import sqlite3
sqlite3.sqlite_version = "3.40.1"
from circuitforge_core.db.cli import main
sys.exit(main(sys.argv[1:]))
"""


def cf_db_on_affected_sqlite(*args: object, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "CF_DB_ACCEPT_WAL_RESET_BUG"}
    return subprocess.run(
        [sys.executable, "-c", CF_DB_ON_AFFECTED_SQLITE, *(str(a) for a in args)],
        capture_output=True,
        text=True,
        timeout=120,
        env=environ | env,
        check=False,
    )


def test_a_run_warns_once_and_says_how_to_hide_it(db_path: Path, migrations_dir: Path) -> None:
    """One WAL-reset warning per run, followed by how -q hides it; the output is unchanged."""
    (migrations_dir / "001_a.sql").write_text("CREATE TABLE a (x);", encoding="utf-8")
    result = cf_db_on_affected_sqlite("migrate", db_path, migrations_dir)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines[0].startswith("WARNING: SQLite 3.40.1 (")
    assert sum("WAL-reset bug" in line for line in lines) == 1
    silence = lines.index(
        "  To accept the risk and silence this warning, set CF_DB_ACCEPT_WAL_RESET_BUG=1."
    )
    assert lines[silence + 1] == "  (cf-db -q hides this and every other warning.)"
    assert "001_a.sql" in result.stdout


@pytest.mark.parametrize("where", ["before", "after"])
def test_quiet_hides_warnings_but_not_output_or_errors(
    where: str, db_path: Path, migrations_dir: Path
) -> None:
    """-q/--quiet, before or after the command name: no warnings, same output, errors shown."""
    (migrations_dir / "001_a.sql").write_text("CREATE TABLE a (x);", encoding="utf-8")
    flag = "-q" if where == "before" else "--quiet"
    command = [flag, "status"] if where == "before" else ["status", flag]
    status = cf_db_on_affected_sqlite(*command, db_path, migrations_dir)
    assert status.returncode == 1  # a migration is pending
    assert status.stderr == ""
    assert "001_a.sql" in status.stdout
    failed = cf_db_on_affected_sqlite(*command, db_path, db_path.parent / "missing")
    assert failed.returncode == 2
    assert failed.stderr.startswith("error: ")
    assert "WARNING" not in failed.stderr


def test_quiet_and_verbose_cannot_be_combined(cf_db: CfDb, db_path: Path) -> None:
    """-q -v is refused with an error, exit 2."""
    assert_error(cf_db("-q", "check", db_path, "-v"), "-q/--quiet and -v/--verbose")


def test_accepting_the_risk_silences_the_cli_too(db_path: Path, migrations_dir: Path) -> None:
    """CF_DB_ACCEPT_WAL_RESET_BUG=1 silences that warning without hiding the others."""
    result = cf_db_on_affected_sqlite(
        "status", db_path, migrations_dir, CF_DB_ACCEPT_WAL_RESET_BUG="1"
    )
    assert "WAL-reset" not in result.stderr
