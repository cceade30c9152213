"""split_sql: statement boundaries, start lines and heads, checked against SQLite itself."""

from __future__ import annotations

import itertools
import re
import sqlite3
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from circuitforge_core.db import MigrationError, get_db, run_migrations
from circuitforge_core.db.migrations import read_migrations
from circuitforge_core.db.sqlsplit import Statement, split_sql


def sqls(script: str) -> list[str]:
    return [statement.sql for statement in split_sql(script)]


# -- boundaries ------------------------------------------------------------------------


def test_trigger_body_with_case_end_is_one_statement() -> None:
    """A trigger's BEGIN...END body, CASE...END and `END;` look-alikes inside, stays whole."""
    trigger = (
        "CREATE TRIGGER tr AFTER INSERT ON t BEGIN\n"
        "  UPDATE t SET x = CASE WHEN new.x > 0 THEN 'END;' ELSE 'x' END;\n"
        "  -- END;\n"
        "  /* ; END; */\n"
        "  INSERT INTO log VALUES (CASE new.x WHEN 1 THEN 'one' END);\n"
        "END;"
    )
    script = f"CREATE TABLE t (x);\n{trigger}\nSELECT 1;"
    assert sqls(script) == ["CREATE TABLE t (x);", trigger, "SELECT 1;"]


def test_temporary_trigger_and_comment_between_keywords() -> None:
    """CREATE TEMP TRIGGER, with a comment between CREATE and TRIGGER, stays whole."""
    trigger = (
        "CREATE /* c; */ TEMP TRIGGER tr AFTER DELETE ON t BEGIN DELETE FROM u; SELECT 2; END;"
    )
    assert sqls(f"{trigger} SELECT 3;") == [trigger, "SELECT 3;"]


def test_begin_transaction_is_not_a_trigger_body() -> None:
    """A plain BEGIN; ends at its own ;, it opens no block."""
    assert sqls("BEGIN; INSERT INTO t VALUES (1); COMMIT;") == [
        "BEGIN;",
        "INSERT INTO t VALUES (1);",
        "COMMIT;",
    ]


def test_semicolons_inside_strings() -> None:
    """A ; inside a string literal, also next to escaped quotes and newlines, is not an end."""
    insert = "INSERT INTO t VALUES ('a;b', 'it''s; -- not a comment', 'x;\ny /* no */;');"
    assert sqls(f"{insert}\nSELECT ';';") == [insert, "SELECT ';';"]


@pytest.mark.parametrize("name", ['"a;b"', '"a"";b"', "[a;b]", "`a;b`", "`a``;b`"])
def test_semicolons_inside_quoted_identifiers(name: str) -> None:
    """A ; inside "...", [...] or `...` quoted identifiers is not an end."""
    create = f"CREATE TABLE {name} ({name} TEXT);"
    assert sqls(f"{create}SELECT 1;") == [create, "SELECT 1;"]


def test_semicolons_inside_comments() -> None:
    """Comments holding ; between statements are skipped, inside a statement they stay put."""
    script = (
        "-- first; comment\n"
        "/* block; comment\n spanning; lines */\n"
        "CREATE TABLE t (\n  x INTEGER -- trailing; comment\n  /* ; */, y\n);\n"
        "-- last; comment"
    )
    assert sqls(script) == [
        "CREATE TABLE t (\n  x INTEGER -- trailing; comment\n  /* ; */, y\n);",
    ]


def test_crlf_line_endings() -> None:
    """CRLF scripts split at the same places as LF ones and count the same lines."""
    lf = "CREATE TABLE t (x);\n-- note;\nINSERT INTO t VALUES ('a;\nb');\n\nSELECT 1;\n"
    crlf = lf.replace("\n", "\r\n")
    assert [s.sql.replace("\r\n", "\n") for s in split_sql(crlf)] == sqls(lf)
    assert [s.line for s in split_sql(crlf)] == [s.line for s in split_sql(lf)] == [1, 3, 6]


@pytest.mark.parametrize("script", ["", "   \n\t\r\n", "-- only a comment", "/* x; */\n-- y;\n"])
def test_empty_and_comment_only_scripts(script: str) -> None:
    """A script with nothing but whitespace and comments has no statements."""
    assert split_sql(script) == []


def test_empty_statements_are_dropped() -> None:
    """;; and ; between comments are empty statements and yield nothing."""
    assert sqls(";;SELECT 1;; ;\n;-- x\n;SELECT 2;;") == ["SELECT 1;", "SELECT 2;"]
    assert split_sql(";;\n;") == []


def test_final_statement_without_semicolon() -> None:
    """The last statement may omit its ;, as executescript allows."""
    assert sqls("SELECT 1;\nSELECT 2") == ["SELECT 1;", "SELECT 2"]
    trigger = "CREATE TRIGGER tr AFTER INSERT ON t BEGIN SELECT 1; END"
    assert sqls(trigger) == [trigger]


def test_unterminated_block_comment_at_the_end_is_ignored() -> None:
    """An unterminated /* at the end is a comment to the end of the script, as in SQLite."""
    assert sqls("SELECT 1; /* never closed; SELECT 2;") == ["SELECT 1;"]


# -- start lines -----------------------------------------------------------------------


def test_lines_count_comments_strings_and_blank_lines() -> None:
    """Each statement's line is where its first token is, past multi-line comments and strings."""
    script = (
        "/* header\n"  # 1
        "   spans; lines */\n"  # 2
        "CREATE TABLE a (x);\n"  # 3
        "INSERT INTO a VALUES ('multi\n"  # 4
        "line;\n"  # 5
        "string');  -- tail;\n"  # 6
        "\n"  # 7
        "  ;;\n"  # 8
        "  SELECT 1; SELECT\n"  # 9
        "2;\n"  # 10
        "CREATE TRIGGER tr AFTER INSERT ON a BEGIN\n"  # 11
        "  SELECT 1;\n"  # 12
        "END; SELECT 3;"  # 13
    )
    assert [(s.line, s.sql.split()[0]) for s in split_sql(script)] == [
        (3, "CREATE"),
        (4, "INSERT"),
        (9, "SELECT"),
        (9, "SELECT"),
        (11, "CREATE"),
        (13, "SELECT"),
    ]


def test_bom_and_crlf_are_normalised_by_the_runner(tmp_path: Path) -> None:
    """read_migrations drops a BOM and CRLF, so statements and lines come out right."""
    (tmp_path / "001_bom.sql").write_bytes(
        b"\xef\xbb\xbf-- header\r\nCREATE TABLE a (x);\r\n\r\nINSERT INTO a VALUES ('1;\r\n2');\r\n"
    )
    (file,) = read_migrations(tmp_path)
    assert [(s.line, s.sql) for s in split_sql(file.text)] == [
        (2, "CREATE TABLE a (x);"),
        (4, "INSERT INTO a VALUES ('1;\n2');"),
    ]


def test_nul_byte_in_a_migration_is_a_clear_error(tmp_path: Path) -> None:
    """A NUL byte in a migration raises MigrationError naming the file, not a bare ValueError."""
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "001_nul.sql").write_bytes(b"CREATE TABLE t (x);\nINSERT INTO t VALUES ('a\x00b');\n")
    db = get_db(tmp_path / "app.db")
    try:
        with pytest.raises(MigrationError, match=r"001_nul\.sql"):
            run_migrations(db, folder)
    finally:
        db.close()


# -- heads -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "head"),
    [
        ("pragma foreign_keys = off;", ("PRAGMA", "FOREIGN_KEYS", "=", "OFF", ";")),
        (
            "PRAGMA /* why; */ foreign_keys -- because\n= /* x */ OFF",
            ("PRAGMA", "FOREIGN_KEYS", "=", "OFF"),
        ),
        ("PRAGMA main.journal_mode=WAL;", ("PRAGMA", "MAIN", ".", "JOURNAL_MODE", "=")),
        ("PRAGMA\r\n\tuser_version = -1;", ("PRAGMA", "USER_VERSION", "=", "-1", ";")),
        ("VACUUM", ("VACUUM",)),
        ('CREATE TABLE "Mixed;Case" ([a b] TEXT)', ("CREATE", "TABLE", '"Mixed;Case"', "(")),
        ("INSERT INTO `x` VALUES ('It''s')", ("INSERT", "INTO", "`x`", "VALUES", "(")),
        ("SELECT 'a', _b", ("SELECT", "'a'", ",", "_B")),
    ],
)
def test_head_skips_comments_and_upper_cases_words(sql: str, head: tuple[str, ...]) -> None:
    """head() skips comments and whitespace between tokens, upper-cases words, keeps quotes."""
    assert Statement(sql, 1).head(len(head) + 1)[: len(head)] == head
    assert Statement(sql, 1).head(2) == head[:2]


def test_head_of_a_short_statement_is_short() -> None:
    """head() returns fewer tokens when the statement has fewer."""
    assert Statement("COMMIT", 1).head(6) == ("COMMIT",)
    assert Statement("END /* c */ ;", 1).head(6) == ("END", ";")


# -- agreement with SQLite (property) ---------------------------------------------------

_GAP_RE = re.compile(r"(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/|;)*", re.DOTALL)

_TEXT_CHUNKS = [";", "'", '"', "`", "--", "/*", "*/", "\n", " ", "END", "END;", "CASE", "BEGIN"]
_TEXT_CHUNKS += ["a", "Z", "\t", "é", "[", "]", "*", "/", "-"]
_NAME_CHUNKS = [c for c in _TEXT_CHUNKS if c != "\n"]

whitespace = st.sampled_from(["", " ", "\n", "\t", "  \n  ", "\n\n"])


def _joined(chunks: list[str]) -> st.SearchStrategy[str]:
    return st.lists(st.sampled_from(chunks), max_size=6).map("".join)


def _block_comment_body(text: str) -> str:
    while "*/" in text:
        text = text.replace("*/", "*_/")
    return text


comment = st.one_of(
    _joined(_NAME_CHUNKS).map(lambda text: f"--{text}\n"),
    _joined(_TEXT_CHUNKS).map(lambda text: f"/*{_block_comment_body(text)}*/"),
)
filler = st.lists(st.one_of(whitespace, comment, st.just(";")), max_size=3).map(" ".join)
# Inside a trigger body an empty statement is a syntax error.
body_filler = st.lists(st.one_of(whitespace, comment), max_size=2).map(" ".join)


def _quoted(style: str, text: str) -> str:
    if style == '"':
        return '"' + text.replace('"', '""') + '"'
    if style == "`":
        return "`" + text.replace("`", "``") + "`"
    return "[" + text.replace("]", "") + "]"


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@st.composite
def scripts(draw: st.DrawFn) -> str:
    """A valid script whose statements are all different from one another.

    Distinct statements let the oracle drop the repeated trace lines Python
    emits while a trigger body runs (it reports the outer statement again).
    """
    parts = [draw(filler), "CREATE TABLE log (id INTEGER, note TEXT);"]
    tables: list[tuple[str, str]] = []  # (quoted name, quoted text column)
    next_id = 0
    for step in range(draw(st.integers(1, 8))):
        parts.append(draw(filler))
        kind = draw(st.sampled_from(["table", "insert", "insert", "trigger", "transaction"]))
        if kind == "table" or not tables:
            name = _quoted(draw(st.sampled_from('"`[')), f"t{step}" + draw(_joined(_NAME_CHUNKS)))
            column = _quoted(draw(st.sampled_from('"`[')), "c" + draw(_joined(_NAME_CHUNKS)))
            column_comment = draw(st.one_of(st.just(""), comment))
            parts.append(
                f"CREATE{draw(whitespace) or ' '}TABLE {name}{draw(whitespace)}"
                f"(id INTEGER PRIMARY KEY, {column} TEXT{column_comment});"
            )
            tables.append((name, column))
            continue
        name, column = draw(st.sampled_from(tables))
        if kind == "trigger":
            temp = draw(st.sampled_from(["", " TEMP"]))
            even, note = (_literal(draw(_joined(_TEXT_CHUNKS))) for _ in range(2))
            parts.append(
                f"CREATE{temp} TRIGGER tr{step}{draw(whitespace)} AFTER INSERT ON {name} BEGIN"
                f"{draw(body_filler)} INSERT INTO log VALUES (new.id, CASE WHEN new.id % 2 = 0 "
                f"THEN {even} ELSE new.{column} END);{draw(body_filler)}"
                f"UPDATE log SET note = note || {note} WHERE id = new.id;{draw(body_filler)} END;"
            )
            continue
        inserts = []
        for _ in range(draw(st.integers(1, 2))):
            next_id += 1
            inserts.append(
                f"INSERT INTO {name}{draw(whitespace)}VALUES ({next_id}, "
                f"{_literal(draw(_joined(_TEXT_CHUNKS)))});"
            )
        if kind == "transaction":
            inserts = ["BEGIN;", *inserts, "COMMIT;"]
        parts.append(draw(filler).join(inserts))
    script = "".join(f"{part}{draw(whitespace)}" for part in parts)
    if draw(st.booleans()):  # the last statement without its ;
        script = script.rstrip()
        while script.endswith(";") and not script.endswith("END;"):
            script = script[:-1].rstrip()
        if script.endswith("END;"):
            script = script[:-1]
        script += draw(st.sampled_from(["", " ", "\n", " -- tail;", "\n/* tail; */"]))
    else:
        script += draw(filler)
    if draw(st.booleans()):
        script = script.replace("\n", "\r\n")
    return script


def _normalised(sql: str) -> str:
    return sql[_GAP_RE.match(sql).end() :].rstrip()  # type: ignore[union-attr]


def _state(db: sqlite3.Connection) -> tuple[list[tuple[object, ...]], dict[str, list[object]]]:
    schema = db.execute(
        "SELECT type, name, tbl_name, sql FROM sqlite_master UNION ALL "
        "SELECT type, name, tbl_name, sql FROM sqlite_temp_master ORDER BY 1, 2"
    ).fetchall()
    contents = {
        name: db.execute(f'SELECT * FROM "{name.replace(chr(34), chr(34) * 2)}"').fetchall()
        for (kind, name, _, _) in schema
        if kind == "table"
    }
    return schema, contents


def _oracle(script: str) -> tuple[list[str], object]:
    """Statements SQLite prepared from the script, and the database it left."""
    db = sqlite3.connect(":memory:", isolation_level=None)
    try:
        traced: list[str] = []
        db.set_trace_callback(traced.append)
        db.executescript(script)
        db.set_trace_callback(None)
        statements: list[str] = []
        for line in traced:
            if line.startswith("-- TRIGGER"):
                continue
            text = _normalised(line)
            if not statements or statements[-1] != text:
                statements.append(text)
        return statements, _state(db)
    finally:
        db.close()


def _one_by_one(script: str) -> tuple[list[str], object]:
    db = sqlite3.connect(":memory:", isolation_level=None)
    try:
        statements = split_sql(script)
        for statement in statements:
            db.execute(statement.sql).close()
        return [_normalised(s.sql) for s in statements], _state(db)
    finally:
        db.close()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scripts())
def test_split_agrees_with_sqlite(script: str) -> None:
    """On generated scripts, split_sql finds SQLite's statements, and running them gives its db."""
    expected, expected_state = _oracle(script)
    statements = split_sql(script)
    got, got_state = _one_by_one(script)
    assert all(a != b for a, b in itertools.pairwise(got)), "generator repeated a statement"
    assert got == expected
    assert got_state == expected_state
    # The statements are the script's own text, in order, with only gaps between them,
    # and each one's line is the line its first character is on.
    pos = 0
    for statement in statements:
        # Where the gap ends, the statement begins (not merely somewhere after: its text
        # may also appear inside a comment of the gap, as in "--BEGIN;\nBEGIN;").
        start = _GAP_RE.match(script, pos).end()  # type: ignore[union-attr]
        assert script.startswith(statement.sql, start)
        assert statement.line == script.count("\n", 0, start) + 1
        pos = start + len(statement.sql)
    assert _GAP_RE.match(script, pos).end() == len(script)  # type: ignore[union-attr]
