"""lint_migrations: each convention finding, its severity and reason, on real files."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from circuitforge_core.db import get_db, run_migrations
from circuitforge_core.db.errors import MigrationSourceError
from circuitforge_core.db.migrations import LintFinding, LintReport, lint_migrations, lint_report

Write = Callable[[str, "str | bytes"], Path]

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "notes" / "migrations"


def codes(findings: list[LintFinding]) -> set[tuple[str, str, str]]:
    return {(f.file, f.code, f.severity) for f in findings}


def test_the_example_migrations_are_clean() -> None:
    """The example app's folder (triggers, FTS5, IF NOT EXISTS everywhere) has no finding."""
    assert lint_migrations(EXAMPLES) == []


def test_every_finding_says_why(write_migration: Write, migrations_dir: Path) -> None:
    """Each finding carries a non-empty reason, a message and a code."""
    write_migration("1_init.sql", "CREATE TABLE t (a);\nALTER TABLE t RENAME a TO b;\n")
    findings = lint_migrations(migrations_dir)
    assert findings
    assert all(f.why and f.message and f.code for f in findings)


# -- names ---------------------------------------------------------------------------


def test_name_order_differing_from_number_order_is_an_error(
    write_migration: Write, migrations_dir: Path
) -> None:
    """`10_x.sql` sorts before `9_y.sql`: an error on the file that runs too early."""
    write_migration("9_a.sql", "SELECT 1;")
    write_migration("10_b.sql", "SELECT 1;")
    findings = lint_migrations(migrations_dir)
    assert codes(findings) == {
        ("10_b.sql", "order", "error"),
        ("9_a.sql", "mixed-width", "warning"),
    }
    assert "10_b.sql runs before 9_a.sql" in findings[0].message


def test_mixed_width_in_the_right_order_is_a_warning(
    write_migration: Write, migrations_dir: Path
) -> None:
    """001, 002, then 1000: the order still holds, the widths do not."""
    write_migration("001_a.sql", "SELECT 1;")
    write_migration("002_b.sql", "SELECT 1;")
    write_migration("1000_c.sql", "SELECT 1;")
    assert codes(lint_migrations(migrations_dir)) == {("1000_c.sql", "mixed-width", "warning")}


def test_unpadded_numbers_warn_once(write_migration: Write, migrations_dir: Path) -> None:
    """1_a, 2_b: one not-padded warning for the folder, not one per file."""
    write_migration("1_a.sql", "SELECT 1;")
    write_migration("2_b.sql", "SELECT 1;")
    assert codes(lint_migrations(migrations_dir)) == {("1_a.sql", "not-padded", "warning")}


def test_duplicate_numbers_warn(write_migration: Write, migrations_dir: Path) -> None:
    """Two files numbered 2 (even written 2 and 002) are a warning naming both."""
    write_migration("001_a.sql", "SELECT 1;")
    write_migration("002_b.sql", "SELECT 1;")
    write_migration("002_c.sql", "SELECT 1;")
    (finding,) = lint_migrations(migrations_dir)
    assert (finding.file, finding.code, finding.severity) == (
        "002_c.sql",
        "duplicate-number",
        "warning",
    )
    assert "002_b.sql" in finding.message


def test_file_without_a_number_is_an_error(write_migration: Write, migrations_dir: Path) -> None:
    """`init.sql` has no place in the order."""
    write_migration("001_a.sql", "SELECT 1;")
    write_migration("init.sql", "SELECT 1;")
    assert codes(lint_migrations(migrations_dir)) == {("init.sql", "no-number", "error")}


def test_name_style_and_ignored_files_warn(write_migration: Write, migrations_dir: Path) -> None:
    """Upper case or dashes in the name, and `.SQL` files the runner never reads."""
    write_migration("001_Add-Tags.sql", "SELECT 1;")
    write_migration("002_b.SQL", "SELECT 1;")
    write_migration("notes.txt", "not a migration")
    assert codes(lint_migrations(migrations_dir)) == {
        ("001_Add-Tags.sql", "name-style", "warning"),
        ("002_b.SQL", "ignored-file", "warning"),
    }


# -- statements ----------------------------------------------------------------------


def test_rename_column_is_an_error_rename_table_is_not(
    write_migration: Write, migrations_dir: Path
) -> None:
    """RENAME COLUMN (with or without the COLUMN keyword) is found; RENAME TO is fine."""
    write_migration(
        "001_a.sql",
        "CREATE TABLE IF NOT EXISTS t (a, b);\n"
        "ALTER TABLE t RENAME COLUMN a TO x;\n"
        "ALTER TABLE main.t RENAME b TO y;\n"
        "ALTER TABLE t RENAME TO u;\n",
    )
    findings = lint_migrations(migrations_dir)
    assert [(f.code, f.line, f.severity) for f in findings] == [
        ("rename-column", 2, "error"),
        ("rename-column", 3, "error"),
    ]


def test_create_without_if_not_exists_warns_for_each_kind(
    write_migration: Write, migrations_dir: Path
) -> None:
    """TABLE, UNIQUE INDEX, VIEW, TRIGGER, VIRTUAL TABLE, TEMP TABLE; guarded ones pass."""
    write_migration(
        "001_a.sql",
        "CREATE TABLE t (a);\n"
        "CREATE UNIQUE INDEX ta ON t (a);\n"
        "CREATE VIEW v AS SELECT a FROM t;\n"
        "CREATE TRIGGER tr AFTER INSERT ON t BEGIN SELECT 1; END;\n"
        "CREATE VIRTUAL TABLE f USING fts5(a);\n"
        "CREATE TEMP TABLE tmp (a);\n"
        "CREATE TABLE IF NOT EXISTS ok (a);\n"
        "CREATE INDEX IF NOT EXISTS ok_a ON ok (a);\n",
    )
    findings = lint_migrations(migrations_dir)
    assert [(f.code, f.line) for f in findings] == [
        ("create-if-not-exists", line) for line in range(1, 7)
    ]
    assert "CREATE UNIQUE INDEX ta" in findings[1].message


def test_stray_transaction_control_is_an_error_wrapping_pair_a_warning(
    write_migration: Write, migrations_dir: Path
) -> None:
    """BEGIN/COMMIT around the whole file is redundant; a COMMIT in the middle is refused."""
    write_migration(
        "001_wrapped.sql",
        "PRAGMA foreign_keys=OFF;\nBEGIN TRANSACTION;\n"
        "CREATE TABLE IF NOT EXISTS a (x);\nCOMMIT;\n",
    )
    write_migration(
        "002_split.sql",
        "CREATE TABLE IF NOT EXISTS b (x);\nCOMMIT;\nCREATE TABLE IF NOT EXISTS c (x);\n"
        "SAVEPOINT s;\nROLLBACK TO s;\nRELEASE s;\n",
    )
    findings = lint_migrations(migrations_dir)
    assert [(f.file, f.code, f.severity, f.line) for f in findings] == [
        ("001_wrapped.sql", "wrapping-transaction", "warning", 2),
        ("002_split.sql", "transaction-control", "error", 2),
    ]


def test_statements_that_need_no_transaction(write_migration: Write, migrations_dir: Path) -> None:
    """VACUUM and journal_mode= are errors without the marker, fine with it."""
    write_migration("001_a.sql", "VACUUM;\nPRAGMA journal_mode=WAL;\nPRAGMA journal_mode;\n")
    write_migration("002_b.sql", "-- cf-db: no-transaction\nVACUUM;\n")
    findings = lint_migrations(migrations_dir)
    assert [(f.file, f.code, f.severity, f.line) for f in findings] == [
        ("001_a.sql", "needs-no-transaction", "error", 1),
        ("001_a.sql", "needs-no-transaction", "error", 2),
    ]


def test_marker_below_the_first_line_is_pointed_out(
    write_migration: Write, migrations_dir: Path
) -> None:
    """A marker on line 2 does nothing; the finding says it must be the first line."""
    write_migration("001_a.sql", "-- compacts the file\n-- cf-db: no-transaction\nVACUUM;\n")
    (finding,) = lint_migrations(migrations_dir)
    assert finding.code == "needs-no-transaction"
    assert "very first line" in finding.message


def test_needless_marker_warns(write_migration: Write, migrations_dir: Path) -> None:
    """A no-transaction file with nothing that needs it gives up atomicity for nothing."""
    write_migration("001_a.sql", "-- cf-db: no-transaction\nCREATE TABLE IF NOT EXISTS t (a);\n")
    assert codes(lint_migrations(migrations_dir)) == {
        ("001_a.sql", "needless-no-transaction", "warning")
    }


def test_empty_file_warns(write_migration: Write, migrations_dir: Path) -> None:
    """Comments only: recorded as applied, so the change added later counts as an edit."""
    write_migration("001_a.sql", "-- to do\n")
    assert codes(lint_migrations(migrations_dir)) == {("001_a.sql", "empty", "warning")}


# -- what SQLite says ----------------------------------------------------------------


def test_invalid_utf8_names_the_line(write_migration: Write, migrations_dir: Path) -> None:
    """The actual bad bytes: an error with the byte offset and line; other files still linted."""
    write_migration("001_a.sql", b"\xef\xbb\xbfSELECT 1;\nSELECT 'caf\xe9';\n")
    write_migration("002_b.sql", "CREATE TABLE t (a);\n")
    findings = lint_migrations(migrations_dir)
    assert [(f.file, f.code, f.severity, f.line) for f in findings] == [
        ("001_a.sql", "invalid-utf8", "error", 2),
        ("002_b.sql", "create-if-not-exists", "warning", 1),
    ]
    assert "byte 24 (e9)" in findings[0].message  # 0-based, BOM included


def test_nul_byte_names_the_line(write_migration: Write, migrations_dir: Path) -> None:
    """A NUL in the text (which SQLite cannot take) is an error with its line."""
    write_migration("001_a.sql", b"SELECT 1;\nSELECT 'a\x00b';\n")
    findings = lint_migrations(migrations_dir)
    assert [(f.code, f.severity, f.line) for f in findings] == [("nul-byte", "error", 2)]


def test_syntax_errors_are_found_by_sqlite(write_migration: Write, migrations_dir: Path) -> None:
    """A trailing comma, an unfinished statement: SQLite's own message, with the line."""
    write_migration("001_a.sql", "CREATE TABLE IF NOT EXISTS t (\n  a,\n);\n")
    write_migration("002_b.sql", "SELECT 1;\n\nCREATE TABLE IF NOT EXISTS u (a")
    findings = lint_migrations(migrations_dir)
    assert [(f.file, f.code, f.severity, f.line) for f in findings] == [
        ("001_a.sql", "syntax", "error", 1),
        ("002_b.sql", "syntax", "error", 3),
    ]
    assert "syntax error" in findings[0].message
    assert "incomplete input" in findings[1].message


def test_replay_sees_tables_from_earlier_files(
    write_migration: Write, migrations_dir: Path
) -> None:
    """Statements using what earlier files created pass; a missing table fails the replay."""
    write_migration("001_a.sql", "CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY);\n")
    write_migration(
        "002_b.sql",
        "CREATE INDEX IF NOT EXISTS notes_id ON notes (id);\nINSERT INTO notes VALUES (1);\n",
    )
    write_migration("003_c.sql", "INSERT INTO nowhere VALUES (1);\n")
    write_migration("004_d.sql", "INSERT INTO alsonowhere VALUES (1);\nSELEC 1;\n")
    findings = lint_migrations(migrations_dir)
    assert [(f.file, f.code, f.severity, f.line) for f in findings] == [
        ("003_c.sql", "replay-failed", "warning", 1),
        # after a failure only syntax is judged: the missing table is expected by then
        ("004_d.sql", "syntax", "error", 2),
    ]
    assert "no such table: nowhere" in findings[0].message


def test_replay_never_touches_other_files(
    write_migration: Write, migrations_dir: Path, chdir_tmp: Path
) -> None:
    """ATTACH and VACUUM INTO are compiled, never run: lint creates no file."""
    write_migration(
        "001_a.sql",
        "-- cf-db: no-transaction\nATTACH DATABASE 'other.db' AS other;\nVACUUM INTO 'copy.db';\n",
    )
    before = set(chdir_tmp.rglob("*"))
    assert lint_migrations(migrations_dir) == []
    assert set(chdir_tmp.rglob("*")) == before


def test_a_file_lint_passes_is_a_file_the_runner_applies(
    write_migration: Write, migrations_dir: Path, db_path: Path
) -> None:
    """Lint and the runner agree: the clean folder applies without a refusal."""
    write_migration(
        "001_a.sql",
        "PRAGMA foreign_keys=OFF;\nBEGIN;\nCREATE TABLE IF NOT EXISTS t (a);\nCOMMIT;\n",
    )
    write_migration("002_b.sql", "-- cf-db: no-transaction\nVACUUM;\n")
    findings = lint_migrations(migrations_dir)
    assert all(f.severity == "warning" for f in findings)
    db = get_db(db_path)
    try:
        assert run_migrations(db, migrations_dir) == ["001_a.sql", "002_b.sql"]
    finally:
        db.close()


# -- options and bad input -----------------------------------------------------------


def test_ignore_by_code_and_by_file(write_migration: Write, migrations_dir: Path) -> None:
    """`ignore` takes a code everywhere or FILE:CODE for one file."""
    write_migration("001_a.sql", "CREATE TABLE a (x);\n")
    write_migration("002_b.sql", "CREATE TABLE b (x);\n")
    assert lint_migrations(migrations_dir, ignore=["create-if-not-exists"]) == []
    (kept,) = lint_migrations(migrations_dir, ignore=["001_a.sql:create-if-not-exists"])
    assert kept.file == "002_b.sql"


def test_the_report_counts_files_and_findings(write_migration: Write, migrations_dir: Path) -> None:
    """lint_report: the .sql files read, the counts, failed() with and without strict."""
    write_migration("001_a.sql", "CREATE TABLE a (x);\n")
    write_migration("002_b.sql", "ALTER TABLE a RENAME COLUMN x TO y;\n")
    write_migration("notes.txt", "not a migration")
    report = lint_report(migrations_dir)
    assert isinstance(report, LintReport)
    assert report.files == ("001_a.sql", "002_b.sql")
    assert list(report.findings) == lint_migrations(migrations_dir)
    assert (report.errors, report.warnings) == (1, 1)
    assert report.failed()
    assert report.failed(strict=True)
    only_warnings = lint_report(migrations_dir, ignore=["rename-column"])
    assert (only_warnings.errors, only_warnings.warnings) == (0, 1)
    assert not only_warnings.failed()
    assert only_warnings.failed(strict=True)


def test_a_missing_folder_raises_naming_it(tmp_path: Path) -> None:
    """Not a finding: the folder itself is wrong."""
    with pytest.raises(MigrationSourceError, match="does not exist"):
        lint_migrations(tmp_path / "nope")


def test_a_long_statement_is_cut_short(
    write_migration: Write, migrations_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A migration generating many rows stops at the replay budget, without a finding."""
    monkeypatch.setattr("circuitforge_core.db.migrations.lint.REPLAY_STATEMENT_BUDGET", 0.05)
    write_migration(
        "001_a.sql",
        "CREATE TABLE IF NOT EXISTS t (a);\n"
        "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 100000000)\n"
        "INSERT INTO t SELECT i FROM c;\n"
        "SELEC 1;\n",
    )
    findings = lint_migrations(migrations_dir)
    assert [(f.code, f.line) for f in findings] == [("syntax", 4)]


DQS = (
    "CREATE TABLE IF NOT EXISTS t (a TEXT, b TEXT);\n"
    'INSERT INTO t (a) VALUES ("hello");\n'
    "SELECT \"a\" FROM t WHERE b = 'x';\n"
    "INSERT INTO t (a) VALUES ('fine');\n"
)


@pytest.mark.skipif(
    not hasattr(sqlite3, "SQLITE_DBCONFIG_DQS_DML"), reason="Python 3.12+ can refuse them"
)
def test_double_quoted_string_literals_warn(write_migration: Write, migrations_dir: Path) -> None:
    """A "string" that names no column is found; "a" naming a column is not; replay goes on."""
    write_migration("001_a.sql", DQS)
    write_migration("002_b.sql", "INSERT INTO nowhere VALUES (1);\n")
    findings = lint_migrations(migrations_dir)
    assert [(f.file, f.code, f.severity, f.line) for f in findings] == [
        ("001_a.sql", "double-quoted-string", "warning", 2),
        ("002_b.sql", "replay-failed", "warning", 1),
    ]
    assert "no such column: hello" in findings[0].message


@pytest.mark.skipif(
    hasattr(sqlite3, "SQLITE_DBCONFIG_DQS_DML"), reason="on 3.11 the check cannot run"
)
def test_double_quoted_strings_are_not_judged_on_python_3_11(
    write_migration: Write, migrations_dir: Path
) -> None:
    """Without setconfig the replay accepts them, as SQLite does, and says nothing."""
    write_migration("001_a.sql", DQS)
    assert lint_migrations(migrations_dir) == []


@pytest.mark.parametrize("pragma", ["soft_heap_limit=123456789", "hard_heap_limit=987654321"])
def test_the_replay_never_changes_the_whole_process(
    write_migration: Write, migrations_dir: Path, pragma: str
) -> None:
    """A heap-limit pragma in a file takes effect when SQLite compiles it: lint never does."""
    name = pragma.split("=")[0]
    probe = sqlite3.connect(":memory:")
    try:
        before = probe.execute(f"PRAGMA {name}").fetchone()
        write_migration("001_limit.sql", f"CREATE TABLE IF NOT EXISTS a (x);\nPRAGMA {pragma};\n")
        lint_report(migrations_dir)
        assert probe.execute(f"PRAGMA {name}").fetchone() == before
    finally:
        probe.close()
