"""cf-db migrate --all, diff (also --all), repair, baseline, and defaults from env/pyproject."""

from __future__ import annotations

import io
import json
import os
import pty
import re
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from circuitforge_core.db import get_db, run_migrations, user_db_path
from circuitforge_core.db.cli import main
from circuitforge_core.db.cli.output import working

V1 = {"001_notes.sql": "CREATE TABLE notes (id INTEGER PRIMARY KEY, title TEXT NOT NULL);"}
V2 = {**V1, "002_pinned.sql": "ALTER TABLE notes ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0;"}


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def cf_db(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Callable[..., Result]:
    """Run ``main(ARGS)`` in this process, with extra environment variables for that run."""

    def run(*args: object, env: dict[str, str] | None = None) -> Result:
        capsys.readouterr()
        with monkeypatch.context() as scoped:
            for name, value in (env or {}).items():
                scoped.setenv(name, value)
            code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


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
def root(tmp_path: Path, v1: Path) -> Path:
    """A data root with three migrated tenants."""
    path = tmp_path / "data"
    path.mkdir()
    for user in ("ann", "bob", "cid"):
        run_migrations(user_db_path(path, user, "kiwi.db"), v1)
    return path


# -- migrate --all ---------------------------------------------------------------------


def test_migrate_all_prints_a_line_a_tenant_and_a_summary(cf_db, root: Path, v2: Path) -> None:
    """Piped output: one line a tenant, then the counts; exit 0; the rerun is a no-op."""
    result = cf_db("migrate", "--all", root, v2, "--product-path", "kiwi.db")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert sorted(line.split()[:3] for line in lines[:3]) == [  # in the order they finish
        ["applied", "ann", "002_pinned.sql"],
        ["applied", "bob", "002_pinned.sql"],
        ["applied", "cid", "002_pinned.sql"],
    ]
    assert re.fullmatch(
        r"3 tenants: 3 applied in \d+\.\d ms|3 tenants: 3 applied in [\d.]+ s", lines[3]
    )
    again = cf_db("migrate", "--all", root, v2, "--product-path", "kiwi.db", "--jobs", "1")
    assert again.returncode == 0
    assert again.stdout.splitlines()[0] == "up to date  ann  nothing to apply"


def test_migrate_all_reports_failures_and_skips_with_exit_1(cf_db, root: Path, v2: Path) -> None:
    """A drifted tenant and a file that is no database: named, the rest migrated, exit 1."""
    db = get_db(root / "bob" / "kiwi.db")
    db.execute("ALTER TABLE notes ADD COLUMN pinned")
    db.commit()
    db.close()
    (root / "dan").mkdir()
    (root / "dan" / "kiwi.db").write_bytes(b"not a database at all")
    result = cf_db("migrate", "--all", root, v2, "--pattern", "*/kiwi.db")
    assert result.returncode == 1
    assert "failed      bob  migration 002_pinned.sql, line 1: table notes in " in result.stdout
    assert "already has a column pinned" in result.stdout
    assert "skipped     dan  " in result.stdout
    assert "is not an SQLite database" in result.stdout
    assert "4 tenants: 2 applied, 1 failed, 1 skipped in" in result.stdout
    assert "each failed tenant is as it was before the failing file" in result.stdout


def test_migrate_all_canary_and_json(cf_db, root: Path, tmp_path: Path) -> None:
    """--canary stops at the first failure (exit 1, the rest listed); --json is one document."""
    db = get_db(root / "ann" / "kiwi.db")
    db.execute("INSERT INTO notes (title) VALUES ('x'), ('x')")
    db.commit()
    db.close()
    unique = folder(
        tmp_path, "unique", {**V1, "002_u.sql": "CREATE UNIQUE INDEX u ON notes (title);"}
    )
    result = cf_db("migrate", "--all", root, unique, "--product-path", "kiwi.db", "--canary", "2")
    assert result.returncode == 1
    assert "stopped: canary failed at tenant ann; 2 tenants left as they were" in result.stdout
    document = json.loads(
        cf_db(
            "migrate", "--all", root, unique, "--product-path", "kiwi.db", "--canary", "2", "--json"
        ).stdout
    )
    assert document["ok"] is False
    assert document["counts"] == {"failed": 1, "not attempted": 2}
    assert document["tenants"][0]["migration"] == "002_u.sql"
    assert document["root"] == str(root)


def test_migrate_all_needs_to_know_the_tenant_files(cf_db, root: Path, v2: Path) -> None:
    """Neither --product-path nor --pattern nor a default: an error saying where to give one."""
    result = cf_db("migrate", "--all", root, v2)
    assert result.returncode == 2
    assert "no tenant files named (--product-path or --pattern)" in result.stderr
    assert "$CF_DB_PRODUCT_PATH" in result.stderr
    gone = cf_db("migrate", "--all", root / "nope", v2, "--product-path", "kiwi.db")
    assert gone.returncode == 2
    assert "the data root" in gone.stderr


def test_migrate_all_shows_count_rate_and_eta_on_a_terminal(root: Path, v2: Path) -> None:
    """stderr a TTY: a status line redrawn in place, erased at the end; stdout keeps the report."""
    master, slave = pty.openpty()
    output = bytearray()

    def read() -> None:
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                return
            if not chunk:
                return
            output.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "circuitforge_core.db",
            "migrate",
            "--all",
            str(root),
            str(v2),
            "--product-path",
            "kiwi.db",
        ],
        stdout=subprocess.PIPE,
        stderr=slave,
    )
    os.close(slave)
    reader.start()
    stdout, _ = process.communicate(timeout=120)
    reader.join(timeout=30)
    os.close(master)
    assert not reader.is_alive()
    assert process.returncode == 0
    assert re.search(rb"\rmigrated \d/3 tenants \(\d+%\), [\d,]+/s, ETA ", output), bytes(output)
    assert output.endswith(b"\r\x1b[K")
    assert stdout.decode().splitlines()[-1].startswith("3 tenants: 3 applied in ")
    assert b"applied     ann" not in stdout  # on a terminal only problems get a line


# -- diff ------------------------------------------------------------------------------------


def test_diff_names_each_difference_and_exits_1(cf_db, root: Path, v1: Path) -> None:
    """Clean: exit 0. A hand-made index and a dropped column's table: named, exit 1; --json."""
    ann = root / "ann" / "kiwi.db"
    clean = cf_db("diff", ann, v1)
    assert clean.returncode == 0
    assert clean.stdout == "clean: the schema is what its 1 applied migration build\n"
    db = get_db(ann)
    db.execute("CREATE INDEX by_hand ON notes (title)")
    db.commit()
    db.close()
    result = cf_db("diff", ann, v1)
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        "index by_hand is not made by the migrations (found CREATE INDEX by_hand ON notes (title))",
        "1 difference from what its 1 applied migration build",
    ]
    document = json.loads(cf_db("diff", "--json", ann, v1).stdout)
    assert document["clean"] is False
    assert document["differences"][0]["kind"] == "index"
    assert cf_db("diff", "--ignore", "nothing", ann, v1).returncode == 1
    assert cf_db("diff", ann.parent / "missing.db", v1).returncode == 2


def test_diff_all_over_the_tenants(cf_db, root: Path, v1: Path) -> None:
    """Every tenant compared; the drifted one named with its difference; exit 1."""
    db = get_db(root / "cid" / "kiwi.db")
    db.execute("CREATE TABLE scratch (x)")
    db.commit()
    db.close()
    result = cf_db("diff", "--all", root, v1, "--product-path", "kiwi.db")
    assert result.returncode == 1
    assert "drift       cid  1 difference(s): table scratch is not made by the migrations" in (
        result.stdout
    )
    assert "3 tenants: 2 clean, 1 drift in" in result.stdout
    assert (
        cf_db(
            "diff", "--all", root, v1, "--product-path", "kiwi.db", "--ignore", "scratch"
        ).returncode
        == 0
    )


# -- repair and baseline ------------------------------------------------------------------


def test_repair_lets_migrate_go_on_after_a_reviewed_edit(cf_db, tmp_path: Path, v1: Path) -> None:
    """migrate refuses the edited file; repair accepts it; migrate then applies the next one."""
    database = tmp_path / "app.db"
    assert cf_db("migrate", database, v1).returncode == 0
    (v1 / "001_notes.sql").write_text("-- reviewed\n" + V1["001_notes.sql"])
    (v1 / "002_tags.sql").write_text("CREATE TABLE tags (x);")
    assert cf_db("migrate", database, v1).returncode == 2
    result = cf_db("repair", database, v1, "001_notes.sql")
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(
        rf"accepted 001_notes\.sql as applied in {re.escape(str(database))}: checksum "
        r"[0-9a-f]{12} -> [0-9a-f]{12}; nothing was run\n",
        result.stdout,
    )
    assert cf_db("migrate", database, v1).stdout.startswith("applied 002_tags.sql")
    assert (
        "already has its file's checksum" in cf_db("repair", database, v1, "001_notes.sql").stdout
    )
    (v1 / "002_tags.sql").write_text("CREATE TABLE tags (x, y);")
    drifted = cf_db("repair", database, v1, "002_tags.sql")
    assert drifted.returncode == 1
    assert "    column tags.y is missing" in drifted.stdout


def test_baseline_marks_then_migrate_applies_the_rest(cf_db, tmp_path: Path, v2: Path) -> None:
    """A database made by hand: baselined to 001; migrate applies 002; a mismatch is refused."""
    database = tmp_path / "restored.db"
    db = sqlite3.connect(database)
    db.execute(V1["001_notes.sql"])
    db.close()
    result = cf_db("baseline", database, v2, "--up-to", "001_notes.sql")
    assert result.returncode == 0, result.stderr
    assert result.stdout == (f"marked 001_notes.sql as applied in {database} without running it\n")
    assert cf_db("migrate", database, v2).stdout.startswith("applied 002_pinned.sql")
    other = tmp_path / "other.db"
    sqlite3.connect(other).close()
    refused = cf_db("baseline", other, v2, "--up-to", "002_pinned.sql")
    assert refused.returncode == 2
    assert "table notes is missing" in refused.stderr
    forced = cf_db("baseline", other, v2, "--up-to", "002_pinned.sql", "--no-check")
    assert forced.returncode == 0


# -- defaults ---------------------------------------------------------------------------------


def test_defaults_from_the_environment(cf_db, root: Path, v2: Path, tmp_path: Path) -> None:
    """CF_DB_PATH, CF_DB_MIGRATIONS, CLOUD_DATA_ROOT, CF_DB_PRODUCT_PATH fill what is left out."""
    env = {
        "CF_DB_PATH": str(tmp_path / "local.db"),
        "CF_DB_MIGRATIONS": str(v2),
        "CLOUD_DATA_ROOT": str(root),
        "CF_DB_PRODUCT_PATH": "kiwi.db",
    }
    assert cf_db("migrate", env=env).stdout.startswith("applied 001_notes.sql")
    assert cf_db("status", env=env).returncode == 0
    everyone = cf_db("migrate", "--all", env=env)
    assert everyone.returncode == 0, everyone.stderr
    assert "3 tenants: 3 applied" in everyone.stdout
    assert cf_db("diff", "--all", env=env).returncode == 0


def test_defaults_from_pyproject(cf_db, chdir_tmp: Path, v2: Path) -> None:
    """[tool.cf-db] in the working folder's (or a parent's) pyproject.toml, paths relative to it."""
    (chdir_tmp / "pyproject.toml").write_text(
        '[project]\nname = "kiwi"\n\n[tool.cf-db]\ndatabase = "data/app.db"\nmigrations = "v2"\n',
        encoding="utf-8",
    )
    sub = chdir_tmp / "app"
    sub.mkdir()
    os.chdir(sub)
    result = cf_db("migrate")
    assert result.returncode == 0, result.stderr
    assert (chdir_tmp / "data" / "app.db").exists()
    assert cf_db("status").returncode == 0
    assert cf_db("diff").returncode == 0
    other = chdir_tmp / "other.db"
    assert cf_db("migrate", other).returncode == 0  # the command line wins
    assert other.exists()
    env_wins = cf_db("status", env={"CF_DB_PATH": str(chdir_tmp / "nope.db")})
    assert "does not exist yet" in env_wins.stdout


def test_bad_or_missing_defaults_say_what_to_do(cf_db, chdir_tmp: Path) -> None:
    """Nothing configured, an unknown key, a value of the wrong type: exit 2, one clear line."""
    missing = cf_db("status")
    assert missing.returncode == 2
    assert "no database given: pass it on the command line, set $CF_DB_PATH, or set database" in (
        missing.stderr
    )
    (chdir_tmp / "pyproject.toml").write_text('[tool.cf-db]\ndatabse = "x.db"\n', encoding="utf-8")
    typo = cf_db("status")
    assert "[tool.cf-db] has unknown key databse" in typo.stderr
    (chdir_tmp / "pyproject.toml").write_text("[tool.cf-db]\ndatabase = 3\n", encoding="utf-8")
    assert "must be a non-empty string" in cf_db("status").stderr


def test_long_steps_show_the_elapsed_time_on_a_terminal() -> None:
    """working(): nothing on a pipe; on a terminal a redrawn line, erased at the end."""

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    shown = threading.Event()

    class Watched(Terminal):
        def write(self, text: str) -> int:
            if " ... " in text:
                shown.set()
            return super().write(text)

    stream = Watched()
    with working("checking big.db", stream):
        assert shown.wait(30)
    assert re.match(r"\rchecking big\.db \.\.\. \d+\.\d s\x1b\[K", stream.getvalue())
    assert stream.getvalue().endswith("\r\x1b[K")
    piped = io.StringIO()
    with working("checking big.db", piped):
        pass
    assert piped.getvalue() == ""


def test_migrate_all_with_each_users_own_key(cf_db, tmp_path: Path, v1: Path, v2: Path) -> None:
    """--user-keys: keys derived from CF_SERVER_SECRET, as the service opens them."""
    pytest.importorskip("sqlcipher3")
    from circuitforge_core.db import user_key_resolver

    root = tmp_path / "secret-data"
    root.mkdir()
    secret = "s" * 40
    resolve = user_key_resolver(root, secret)
    for user in ("ann", "bob"):
        path = user_db_path(root, user, "kiwi.db")
        run_migrations(path, v1, key=resolve(str(path)))
    plain = cf_db("migrate", "--all", root, v2, "--product-path", "kiwi.db")
    assert plain.returncode == 1
    assert [line.split()[0] for line in plain.stdout.splitlines()[:2]] == ["skipped"] * 2
    no_secret = cf_db("migrate", "--all", root, v2, "--product-path", "kiwi.db", "--user-keys")
    assert no_secret.returncode == 2
    assert "CF_SERVER_SECRET, which is not set" in no_secret.stderr
    keyed = cf_db(
        "migrate",
        "--all",
        root,
        v2,
        "--product-path",
        "kiwi.db",
        "--user-keys",
        env={"CF_SERVER_SECRET": secret},
    )
    assert keyed.returncode == 0, keyed.stdout + keyed.stderr
    assert "2 tenants: 2 applied" in keyed.stdout
    diff = cf_db(
        "diff",
        "--all",
        root,
        v2,
        "--product-path",
        "kiwi.db",
        "--user-keys",
        env={"CF_SERVER_SECRET": secret},
    )
    assert diff.returncode == 0
