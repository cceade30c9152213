"""Lint a migrations folder: the conventions, checked before a file ships.

Owns the convention checks and the reason each one matters. Does not run
migrations against a real database, print, or parse arguments (the CLI does).

The folder is listed and each file read exactly as the runner does it
(folder.py), and the rules that make the runner refuse a file (statements
that cannot run in a transaction, stray ``BEGIN``/``COMMIT``) are the
planner's own (plan.py), every refusal reported instead of the first, so
lint and the runner cannot disagree: a file lint passes is a file the runner
plans. Whether SQLite can parse a statement is asked of SQLite: the files are
replayed in order into a scratch in-memory database, each statement executed
so that later statements see the tables earlier ones created. Once one
statement fails, the rest are only compiled (``EXPLAIN``), and only syntax
errors are reported for them, since a missing table is then expected. On
Python 3.12+ the replay also refuses double-quoted string literals, to find
statements that rely on them.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from typing import Literal

from ..errors import MigrationSourceError
from ..sqlsplit import Statement, split_sql
from .folder import (
    BOM,
    NO_TRANSACTION_MARKER,
    MigrationFile,
    MigrationsDir,
    is_no_transaction_marker,
    list_folder,
    normalised,
    read_bytes,
    shown_name,
)
from .plan import (
    PROCESS_PRAGMAS,
    TRANSACTION_KEYWORDS,
    FilePlan,
    examine,
    is_foreign_keys_pragma,
    needs_no_transaction,
    short,
)
from .statements import pragma_setting

Severity = Literal["error", "warning"]

#: Seconds one statement may run while the folder is replayed; a migration that
#: generates millions of rows is cut short there rather than slowing lint down.
REPLAY_STATEMENT_BUDGET = 2.0

_NUMBERED = re.compile(r"(\d+)(.*)\Z", re.DOTALL)
_GOOD_NAME_PART = re.compile(r"_[a-z0-9_]+\Z")
_SYNTAX_ERRORS = ("syntax error", "incomplete input", "unrecognized token")
# Connection settings that refuse "double-quoted" string literals (Python 3.12+).
_DQS_SETTINGS = tuple(
    getattr(sqlite3, name)
    for name in ("SQLITE_DBCONFIG_DQS_DML", "SQLITE_DBCONFIG_DQS_DDL")
    if hasattr(sqlite3, name)
)
# Statements the replay compiles but never executes: they would touch other
# files (ATTACH, VACUUM INTO) or the replay's own transaction state.
_COMPILE_ONLY = frozenset(
    ("ATTACH", "DETACH", "VACUUM", "BEGIN", "COMMIT", "END", "ROLLBACK", "SAVEPOINT", "RELEASE")
)
# Pragmas that change the whole process, lint's included, as soon as SQLite compiles
# them: the replay never even compiles them.
_NEVER_REPLAYED = PROCESS_PRAGMAS | {"soft_heap_limit"}


@dataclass(frozen=True, slots=True)
class LintFinding:
    """One thing ``lint_migrations`` found.

    ``file`` is the file name inside the folder, ``line`` the 1-based line of
    the statement concerned (None when the finding is about the name or the
    whole file), ``code`` a stable short name of the rule (what
    ``ignore=`` takes), ``message`` what is wrong there and ``why`` why it
    matters. ``severity`` is ``"error"`` when the runner would refuse or fail
    the file, run files out of their numbered order, or break running code;
    ``"warning"`` when it works today but is risky or worth a look.
    """

    severity: Severity
    file: str
    line: int | None
    code: str
    message: str
    why: str


_WHY = {
    "order": "Files run in file-name order and names compare character by character, so "
    "`10_x.sql` runs before `9_y.sql`. A fresh database then gets its migrations in the wrong "
    "order. Rename files that are not applied anywhere yet; an applied file keeps its name (the "
    "name is what _migrations records).",
    "mixed-width": "The order is still right, but with numbers of different widths it breaks as "
    "soon as a number gains a digit. Use one width (zero-padded, e.g. 001) for new files.",
    "not-padded": "Files run in file-name order: the file after 9_x.sql would be numbered 10 and "
    "run before 2_x.sql. Zero-padded numbers (001, 002, ...) keep name order and number order "
    "the same. Rename files only while they are not applied anywhere.",
    "duplicate-number": "The runner applies both, in name order, so it works; but two files "
    "with one number usually come from two branches that were developed without seeing each "
    "other, and each may assume a schema the other changes. Check they are independent, and "
    "renumber the one not yet applied anywhere.",
    "no-number": "Files run in file-name order; without a leading number this file's place "
    "among the others is an accident of its name, and it sorts after every numbered file.",
    "name-style": "The file name is the migration's identity in _migrations forever. Names made "
    "of a number, `_`, and lower-case letters, digits and `_` sort predictably and mean the "
    "same file on case-insensitive file systems.",
    "ignored-file": "The runner reads only files ending exactly in `.sql`; this one is never "
    "applied.",
    "invalid-utf8": "The runner refuses the whole folder until the file is valid UTF-8, so no "
    "migration can run.",
    "nul-byte": "SQLite cannot take a NUL character in SQL text, so the runner refuses the "
    "whole folder until it is removed. Write char(0) or X'00' where a value needs one.",
    "syntax": "SQLite cannot parse this statement, so the file fails when it is applied and "
    "every later migration stays pending.",
    "replay-failed": "Replayed in order on an empty database, this statement fails, so a new "
    "user's database cannot be created from these files. (It may pass on databases that "
    "already hold objects the earlier files do not create.)",
    "rename-column": "Products run several versions side by side during a deploy; a process "
    "still running the previous version uses the old column name and fails. Add the new "
    "column, copy the values, move the code over, and drop the old column in a later release.",
    "create-if-not-exists": "Without IF NOT EXISTS the file fails on a database that already "
    "holds the object (created by an old app version at startup, or while repairing a database "
    "by hand), and every later migration stays pending behind it.",
    "transaction-control": "The runner wraps each file in one transaction; a COMMIT, ROLLBACK "
    "or BEGIN inside it would split the file's atomicity, so the runner refuses the file. "
    "SAVEPOINT, RELEASE and ROLLBACK TO are fine.",
    "wrapping-transaction": "The runner already wraps the file in one transaction and drops a "
    "BEGIN ... COMMIT pair around the whole file; the pair is redundant.",
    "needs-no-transaction": "SQLite refuses or silently ignores this statement inside a "
    "transaction, so the runner refuses the file. Put it in a file of its own whose first line "
    f"is `{NO_TRANSACTION_MARKER}`.",
    "needless-no-transaction": f"`{NO_TRANSACTION_MARKER}` makes the file run statement by "
    "statement without a transaction: if one statement fails, the ones before it stay applied. "
    "Nothing in this file needs that; remove the line to get an atomic file.",
    "double-quoted-string": "In SQLite a double-quoted word that names no column silently "
    "becomes a string, so a misspelt column name stores or compares the text instead of "
    "failing (https://sqlite.org/quirks.html#dblquote). Write strings in single quotes and "
    "use double quotes only for names. (Checked on Python 3.12 and later only.)",
    "migrations-table": "_migrations records which migrations are applied; a file that drops, "
    "renames or alters it would make every migration run again (or fail), so the runner "
    "refuses the file before anything runs. The runner owns that table.",
    "process-pragma": "This pragma changes the whole process, not just the migration's "
    "connection, and cannot be put back when the file ends, so the runner refuses the file. "
    "Set it in the application at start-up if it is needed.",
    "empty": "An empty file is recorded as applied; the change you add to it later then counts "
    "as an edit of an applied migration, which the runner refuses.",
    "refused": "The runner refuses this file, so no migration after it can run.",
}


@dataclass(frozen=True, slots=True)
class LintReport:
    """What ``lint_report`` found: the migration files it read, and the findings.

    ``files`` are the names of the folder's ``.sql`` files in filename order;
    ``findings`` as ``lint_migrations`` returns them.
    """

    files: tuple[str, ...]
    findings: tuple[LintFinding, ...]

    @property
    def errors(self) -> int:
        return sum(1 for finding in self.findings if finding.severity == "error")

    @property
    def warnings(self) -> int:
        return len(self.findings) - self.errors

    def failed(self, *, strict: bool = False) -> bool:
        """An error was found (or, when ``strict``, any finding at all)."""
        return self.errors > 0 or (strict and self.warnings > 0)


def lint_migrations(
    migrations_dir: MigrationsDir, *, ignore: Collection[str] = ()
) -> list[LintFinding]:
    """The findings for the folder's migration files, by file name then line.

    ``ignore`` holds rule codes to leave out everywhere (``"rename-column"``)
    or for one file (``"004_rename.sql:rename-column"``), for findings in files
    that are already applied and can no longer change. Raises
    ``MigrationSourceError`` when the folder cannot be listed.
    """
    return list(lint_report(migrations_dir, ignore=ignore).findings)


def lint_report(migrations_dir: MigrationsDir, *, ignore: Collection[str] = ()) -> LintReport:
    """``lint_migrations``, with the names of the files it read and the counts by severity."""
    listing = list_folder(migrations_dir)
    findings: list[LintFinding] = []
    add = _collector(findings)
    for entry in listing.others:
        name = shown_name(entry.name)  # printable even when the name is not UTF-8
        if name.lower().endswith(".sql"):
            add("warning", name, None, "ignored-file", f"{name} does not end in `.sql` exactly")
    _check_names([entry.name for entry in listing.migrations], add)
    replay = _Replay()
    try:
        for entry in listing.migrations:
            file = _read(entry, listing.folder, add)
            if file is None:
                replay.stop()
                continue
            statements = split_sql(file.text)  # once, for the checks and the replay
            _check_file(file, statements, add)
            replay.run(file, statements, add)
    finally:
        replay.close()
    ignored = set(ignore)
    kept = [
        finding
        for finding in findings
        if finding.code not in ignored and f"{finding.file}:{finding.code}" not in ignored
    ]
    return LintReport(
        tuple(entry.name for entry in listing.migrations),
        tuple(sorted(kept, key=lambda f: (f.file, f.line or 0))),
    )


Add = Callable[[Severity, str, int | None, str, str], None]


def _collector(findings: list[LintFinding]) -> Add:
    def add(severity: Severity, file: str, line: int | None, code: str, message: str) -> None:
        findings.append(LintFinding(severity, file, line, code, message, _WHY[code]))

    return add


# -- names ---------------------------------------------------------------------------


def _check_names(names: list[str], add: Add) -> None:
    """Numbers present, one width, unique, and name order equal to number order."""
    numbered: list[tuple[str, str]] = []  # (file name, digits), in name order
    for name in names:
        match = _NUMBERED.match(name.removesuffix(".sql"))
        if match is None:
            add("error", name, None, "no-number", f"{name} does not start with a number")
            continue
        digits, rest = match.groups()
        numbered.append((name, digits))
        if not _GOOD_NAME_PART.match(rest):
            add(
                "warning",
                name,
                None,
                "name-style",
                f"{name} is not named NNN_name.sql with a lower-case [a-z0-9_] name",
            )
    _check_order(numbered, add)
    _check_widths(numbered, add)
    _check_duplicates(numbered, add)


def _check_order(numbered: list[tuple[str, str]], add: Add) -> None:
    for index, (name, digits) in enumerate(numbered):
        later_but_smaller = next(
            (other for other, d in numbered[index + 1 :] if int(d) < int(digits)), None
        )
        if later_but_smaller is not None:
            add(
                "error",
                name,
                None,
                "order",
                f"{name} runs before {later_but_smaller} although its number is higher",
            )


def _check_widths(numbered: list[tuple[str, str]], add: Add) -> None:
    widths = Counter(len(digits) for _, digits in numbered)
    if len(widths) > 1:
        usual = max(widths, key=lambda width: (widths[width], width))
        for name, digits in numbered:
            if len(digits) != usual:
                add(
                    "warning",
                    name,
                    None,
                    "mixed-width",
                    f"{name}: its number has {len(digits)} digits, most files use {usual}",
                )
    elif widths:
        (width,) = widths
        if width < 3 and not any(digits.startswith("0") for _, digits in numbered):
            first = numbered[0][0]
            add(
                "warning",
                first,
                None,
                "not-padded",
                f"numbers are not zero-padded ({first} ...): use 3 digits, 001_name.sql",
            )


def _check_duplicates(numbered: list[tuple[str, str]], add: Add) -> None:
    first_with: dict[int, str] = {}
    for name, digits in numbered:
        number = int(digits)
        if number in first_with:
            add(
                "warning",
                name,
                None,
                "duplicate-number",
                f"{name} has the same number as {first_with[number]}",
            )
        else:
            first_with[number] = name


# -- one file ------------------------------------------------------------------------


def _read(entry: Traversable, folder: Traversable, add: Add) -> MigrationFile | None:
    """The file as the runner reads it, or None (and a finding) when it cannot be decoded."""
    raw = read_bytes(entry, folder)
    try:
        return normalised(entry.name, raw, folder)
    except MigrationSourceError as exc:
        cause = exc.__cause__
        if isinstance(cause, UnicodeDecodeError):
            # Positions in the file as it is on disk, BOM included.
            offset = cause.start + (len(BOM) if raw.startswith(BOM) else 0)
            line = raw[:offset].count(b"\n") + 1
            add(
                "error",
                entry.name,
                line,
                "invalid-utf8",
                f"byte {offset} ({raw[offset : offset + 1].hex()}) on line {line} is not valid "
                f"UTF-8; save the file as UTF-8",
            )
        elif b"\0" in raw:
            offset = raw.index(b"\0")
            line = raw[:offset].count(b"\n") + 1
            add("error", entry.name, line, "nul-byte", f"byte {offset} on line {line} is a NUL")
        else:
            raise
        return None


def _check_file(file: MigrationFile, statements: list[Statement], add: Add) -> None:
    if not statements:
        add("warning", file.name, None, "empty", f"{file.name} holds no statement")
        return
    for statement in statements:
        _check_rename_column(file, statement, add)
        _check_create(file, statement, add)
    plan = examine(file)
    if file.no_transaction:
        _check_marker_needed(file, statements, add)
    else:
        _check_transactional(plan, add)
    _check_file_wide(plan, add)


def _check_rename_column(file: MigrationFile, statement: Statement, add: Add) -> None:
    head = statement.head(8)
    if head[:2] != ("ALTER", "TABLE") or "RENAME" not in head:
        return
    after = head[head.index("RENAME") + 1 :]
    if after[:1] == ("TO",) or not after:  # RENAME TO renames the table
        return
    add(
        "error",
        file.name,
        statement.line,
        "rename-column",
        f"`{short(statement.sql)}` renames a column",
    )


_CREATE_KINDS = {"TABLE", "INDEX", "VIEW", "TRIGGER"}


def _check_create(file: MigrationFile, statement: Statement, add: Add) -> None:
    head = statement.head(8)
    if head[:1] != ("CREATE",):
        return
    position = 1
    for optional in ("TEMP", "TEMPORARY", "UNIQUE", "VIRTUAL"):
        if position < len(head) and head[position] == optional:
            position += 1
    if position >= len(head) or head[position] not in _CREATE_KINDS:
        return
    if head[position + 1 : position + 4] == ("IF", "NOT", "EXISTS"):
        return
    add(
        "warning",
        file.name,
        statement.line,
        "create-if-not-exists",
        f"`{short(statement.sql, 60)}` has no IF NOT EXISTS",
    )


def _check_transactional(plan: FilePlan, add: Add) -> None:
    """The runner's planner's refusals, every one instead of the first, and a redundant wrapper."""
    file = plan.file
    misplaced_marker = _marker_below_first_line(file.text)
    for refusal in plan.refusals:
        if refusal.rule == "needs-no-transaction":
            hint = (
                f"; the `{NO_TRANSACTION_MARKER}` line must be the very first line"
                if misplaced_marker
                else ""
            )
            message = f"`{short(refusal.statement.sql)}` cannot run inside a transaction{hint}"
            add("error", file.name, refusal.statement.line, refusal.rule, message)
    if plan.wrapper is not None:
        add(
            "warning",
            file.name,
            plan.wrapper.line,
            "wrapping-transaction",
            "the whole file is wrapped in BEGIN ... COMMIT",
        )
    for refusal in plan.refusals:
        if refusal.rule == "transaction-control":
            message = (
                f"`{short(refusal.statement.sql)}` inside a file the runner wraps in a transaction"
            )
            add("error", file.name, refusal.statement.line, refusal.rule, message)


_FILE_WIDE_MESSAGES = {
    "migrations-table": "drops or alters the runner's _migrations table",
    "process-pragma": "changes a setting of the whole process",
}


def _check_file_wide(plan: FilePlan, add: Add) -> None:
    """The planner's rules for every file, with a transaction or without."""
    file = plan.file
    for refusal in plan.refusals:
        where = f"`{short(refusal.statement.sql)}`"
        if refusal.rule in _FILE_WIDE_MESSAGES:
            message = f"{where} {_FILE_WIDE_MESSAGES[refusal.rule]}"
            add("error", file.name, refusal.statement.line, refusal.rule, message)
        elif refusal.rule not in _WHY:
            # A planner rule lint has no words for yet: the runner's own message.
            add("error", file.name, refusal.statement.line, "refused", str(refusal.error(file)))


def _marker_below_first_line(text: str) -> bool:
    lines = text.split("\n")[1:]
    return any(is_no_transaction_marker(line) for line in lines)


def _check_marker_needed(file: MigrationFile, statements: list[Statement], add: Add) -> None:
    """A no-transaction file should hold something that needs it (or manages its own)."""
    for statement in statements:
        head = statement.head(6)
        if (
            needs_no_transaction(head)
            or is_foreign_keys_pragma(head)
            or head[0] in TRANSACTION_KEYWORDS
        ):
            return
    add(
        "warning",
        file.name,
        1,
        "needless-no-transaction",
        "no statement in this file needs to run outside a transaction",
    )


# -- replay --------------------------------------------------------------------------


class _Replay:
    """An in-memory database the files are replayed into, in order.

    Foreign keys stay off (SQLite's default): the runner checks them itself,
    and seed rows of an empty database would only produce noise. Where Python
    can switch them off (3.12+), double-quoted string literals are refused, so
    that a statement relying on them is found (and then run with them allowed).
    """

    def __init__(self) -> None:
        self._db = sqlite3.connect(":memory:", isolation_level=None)
        self._executing = True
        self._deadline = 0.0
        self._db.set_progress_handler(self._over_budget, 10_000)
        self._strict_quotes = bool(_DQS_SETTINGS) and hasattr(self._db, "setconfig")
        self._allow_double_quoted_strings(False)

    def _over_budget(self) -> int:
        return int(time.monotonic() > self._deadline)

    def _allow_double_quoted_strings(self, allow: bool) -> None:
        if self._strict_quotes:
            for setting in _DQS_SETTINGS:
                self._db.setconfig(setting, allow)  # type: ignore[attr-defined,unused-ignore]

    def stop(self) -> None:
        """From now on only compile: the schema no longer follows the files."""
        self._executing = False

    def close(self) -> None:
        self._db.close()

    def run(self, file: MigrationFile, statements: list[Statement], add: Add) -> None:
        for statement in statements:
            keyword = statement.head(1)[0]
            pragma = pragma_setting(statement) if keyword == "PRAGMA" else None
            if pragma is not None and pragma[0] in _NEVER_REPLAYED:
                continue
            execute = self._executing and keyword not in _COMPILE_ONLY
            sql = statement.sql if execute or keyword == "EXPLAIN" else "EXPLAIN " + statement.sql
            try:
                self._execute(sql)
            except (sqlite3.Error, sqlite3.Warning) as exc:  # Warning: "one statement at a time"
                if execute and self._runs_with_double_quoted_strings(sql):
                    add(
                        "warning",
                        file.name,
                        statement.line,
                        "double-quoted-string",
                        f"`{short(statement.sql)}` needs a double-quoted string literal "
                        f"(SQLite without them says: {exc})",
                    )
                    continue
                self._judge_failure(file, statement, str(exc), execute, add)
                self.stop()

    def _execute(self, sql: str) -> None:
        self._deadline = time.monotonic() + REPLAY_STATEMENT_BUDGET
        self._db.execute(sql).fetchall()

    def _runs_with_double_quoted_strings(self, sql: str) -> bool:
        if not self._strict_quotes:
            return False
        self._allow_double_quoted_strings(True)
        try:
            self._execute(sql)
        except (sqlite3.Error, sqlite3.Warning):
            return False
        finally:
            self._allow_double_quoted_strings(False)
        return True

    @staticmethod
    def _judge_failure(
        file: MigrationFile, statement: Statement, message: str, executed: bool, add: Add
    ) -> None:
        if any(marker in message for marker in _SYNTAX_ERRORS):
            add("error", file.name, statement.line, "syntax", f"SQLite says: {message}")
        elif message == "interrupted":
            pass  # over the time budget: not a finding, but the schema is now unknown
        elif executed:
            add(
                "warning",
                file.name,
                statement.line,
                "replay-failed",
                f"`{short(statement.sql)}` fails on a fresh database: {message}",
            )
