"""Schema drift: does a live database hold what its applied migrations build?

Owns reading a database's schema into a model that formatting does not
affect, comparing two such models difference by difference, and
``schema_drift``: the live file against a scratch database built from exactly
the migration files recorded as applied, in the order they were applied.
Never writes the database it looks at. Does not run pending migrations,
print, or know about tenants (fanout.py runs it over many files).

What is compared: tables (columns with their declared type, NOT NULL,
default, primary-key position and generated kind, column order, foreign
keys, UNIQUE constraints, WITHOUT ROWID and STRICT, and the rest of the
definition such as CHECK constraints and collations), explicit indexes,
triggers and views. Whitespace, comments, the case of keywords and
identifiers, and identifier quoting do not count; string literals do.
Objects of known tools are ignored: SQLite's own ``sqlite_%`` tables, the
runner's ``_migrations``, Litestream's ``_litestream_%``, and anything that
matches the caller's ``ignore`` patterns, with their indexes and triggers.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import os
import re
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

from ..cipher import Key
from ..connect import get_db
from ..sqlite_facts import quote_identifier
from .folder import MigrationFile, MigrationsDir, read_migrations
from .locking import database_path
from .plan import short
from .records import recorded_in_order
from .statements import fold

#: Names of tables that tools, not migrations, put in a database (``fnmatch`` patterns,
#: matched without regard to case). ``sqlite_*`` covers sqlite_sequence and sqlite_stat1.
KNOWN_TOOL_TABLES = ("sqlite_*", "_migrations", "_litestream_*")

ObjectKind = Literal["table", "column", "foreign key", "index", "trigger", "view"]


# -- normalised SQL ------------------------------------------------------------------

_TOKEN = re.compile(
    r"""(?P<skip>\s+|--[^\n]*|/\*.*?(?:\*/|\Z))
      | (?P<string>'(?:[^']|'')*'?)
      | (?P<blob>[xX]'[^']*'?)
      | (?P<quoted>"(?:[^"]|"")*"?|`(?:[^`]|``)*`?|\[[^\]]*\]?)
      | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|0[xX][0-9a-fA-F]+)
      | (?P<word>[A-Za-z_\x80-\U0010ffff][\w$\x80-\U0010ffff]*)
      | (?P<operator>\|\||<<|>>|<=|>=|==|!=|<>|->>|->|\S)""",
    re.DOTALL | re.VERBOSE,
)


def _unquoted(token: str) -> str:
    if token[0] == "[":
        return token[1:-1] if token.endswith("]") else token[1:]
    quote = token[0]
    inner = token[1:-1] if len(token) > 1 and token.endswith(quote) else token[1:]
    return inner.replace(quote * 2, quote)


@functools.lru_cache(maxsize=4096)  # tenants share their schema text: tokenise it once
def sql_tokens(sql: str | None) -> tuple[str, ...]:
    """``sql`` as tokens that compare equal when only formatting differs.

    Words and identifiers, quoted or not, are folded to lower case the way
    SQLite compares names (ASCII only); string literals are kept as written.
    """
    if not sql:
        return ()
    tokens = []
    for match in _TOKEN.finditer(sql):
        kind = match.lastgroup
        text = match.group()
        if kind == "skip":
            continue
        if kind == "quoted":
            text = fold(_unquoted(text))
        elif kind in ("word", "blob"):
            text = fold(text)
        tokens.append(text)
    return tuple(tokens)


def _shown(sql: str | None) -> str:
    """SQL for a difference: on one line, bounded."""
    return short(sql or "", 200)


def _without_outer_parentheses(tokens: tuple[str, ...]) -> tuple[str, ...]:
    """``(0)`` and ``0`` are the same default."""
    while len(tokens) >= 2 and tokens[0] == "(" and tokens[-1] == ")":
        depth = 0
        for index, token in enumerate(tokens):
            depth += token == "("
            depth -= token == ")"
            if depth == 0 and index < len(tokens) - 1:
                return tokens  # "(a) + (b)": the first ")" closes early
        tokens = tokens[1:-1]
    return tokens


def _check_clauses(tokens: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
    """The ``CHECK (...)`` clauses of a normalised CREATE TABLE, in order."""
    clauses = []
    for index, token in enumerate(tokens):
        if token != "check" or index + 1 >= len(tokens) or tokens[index + 1] != "(":
            continue
        depth = 0
        for end in range(index + 1, len(tokens)):
            depth += tokens[end] == "("
            depth -= tokens[end] == ")"
            if depth == 0:
                clauses.append(tokens[index + 2 : end])
                break
    return tuple(clauses)


def _table_options(tokens: tuple[str, ...]) -> frozenset[str]:
    """``without rowid`` and ``strict``: what follows the column list's closing parenthesis."""
    depth = 0
    for index, token in enumerate(tokens):
        depth += token == "("
        depth -= token == ")"
        if token == ")" and depth == 0:
            tail = [t for t in tokens[index + 1 :] if t not in (",", ";")]
            options = set()
            if "strict" in tail:
                options.add("STRICT")
            if "rowid" in tail:
                options.add("WITHOUT ROWID")
            return frozenset(options)
    return frozenset()


# -- the model -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ColumnModel:
    """One column as ``PRAGMA table_xinfo`` reports it, normalised."""

    name: str
    declared_type: str
    not_null: bool
    default: str | None
    primary_key: int  # position in the primary key, 0 when not part of it
    generated: int  # 0 plain, 1 hidden (virtual tables), 2 virtual, 3 stored

    def _key(self, aspect: str) -> object:
        if aspect == "type":
            return sql_tokens(self.declared_type)
        if aspect == "default":
            return _without_outer_parentheses(sql_tokens(self.default))
        return getattr(
            self, {"not null": "not_null", "primary key": "primary_key"}.get(aspect, aspect)
        )

    def describe(self) -> str:
        parts = [self.declared_type or "(no type)"]
        if self.primary_key:
            parts.append("PRIMARY KEY")
        if self.not_null:
            parts.append("NOT NULL")
        if self.default is not None:
            parts.append(f"DEFAULT {self.default}")
        if self.generated in (2, 3):
            parts.append("GENERATED " + ("VIRTUAL" if self.generated == 2 else "STORED"))
        return " ".join(parts)


@dataclass(frozen=True, slots=True)
class ForeignKeyModel:
    """One foreign key of a table: its columns, the parent and the actions."""

    columns: tuple[str, ...]
    parent: str
    parent_columns: tuple[str | None, ...]
    on_update: str
    on_delete: str
    match: str

    def describe(self) -> str:
        targets = ", ".join(column or "its primary key" for column in self.parent_columns)
        text = f"({', '.join(self.columns)}) REFERENCES {self.parent}({targets})"
        for action, value in (("ON UPDATE", self.on_update), ("ON DELETE", self.on_delete)):
            if value.upper() != "NO ACTION":
                text += f" {action} {value.upper()}"
        return text

    def _key(self) -> tuple[object, ...]:
        return (
            tuple(fold(c) for c in self.columns),
            fold(self.parent),
            tuple(None if c is None else fold(c) for c in self.parent_columns),
            self.on_update.upper(),
            self.on_delete.upper(),
            self.match.upper(),
        )


@dataclass(frozen=True, slots=True)
class TableModel:
    name: str
    sql: str
    virtual: bool
    columns: tuple[ColumnModel, ...]
    foreign_keys: tuple[ForeignKeyModel, ...]
    unique: frozenset[tuple[str, ...]]
    tokens: tuple[str, ...] = field(repr=False)

    @property
    def options(self) -> frozenset[str]:
        """``WITHOUT ROWID`` and ``STRICT``, those the table has."""
        return _table_options(self.tokens)


@dataclass(frozen=True, slots=True)
class ObjectModel:
    """An index, trigger or view: its table and its normalised definition."""

    kind: Literal["index", "trigger", "view"]
    name: str
    table: str
    sql: str
    tokens: tuple[str, ...] = field(repr=False)


@dataclass(frozen=True, slots=True)
class SchemaModel:
    """What a database's schema is, keyed by lower-cased name, tool objects left out."""

    tables: dict[str, TableModel]
    objects: dict[tuple[str, str], ObjectModel]  # (kind, lower-cased name)


def _ignored(name: str, patterns: Sequence[str]) -> bool:
    lowered = fold(name)
    return any(fnmatch.fnmatchcase(lowered, fold(pattern)) for pattern in patterns)


def _shadow_tables(db: sqlite3.Connection, virtual: Iterable[str]) -> set[str]:
    """Tables a virtual table keeps its data in (FTS5's ``x_data`` and the like)."""
    try:
        return {
            fold(name)
            for name, kind in db.execute("SELECT name, type FROM pragma_table_list")
            if kind == "shadow"
        }
    except sqlite3.Error:  # SQLite before 3.37 has no table_list: go by name
        prefixes = tuple(fold(name) + "_" for name in virtual)
        if not prefixes:
            return set()
        return {
            fold(name)
            for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            if fold(name).startswith(prefixes)
        }


def read_schema(db: sqlite3.Connection, *, ignore: Sequence[str] = ()) -> SchemaModel:
    """The schema of ``db``'s main database as a ``SchemaModel``; reads nothing but the schema.

    Objects named like ``KNOWN_TOOL_TABLES`` or ``ignore`` (``fnmatch``
    patterns), and indexes and triggers on such tables, are left out.
    """
    patterns = (*KNOWN_TOOL_TABLES, *ignore)
    rows = db.execute(
        "SELECT type, name, tbl_name, sql FROM sqlite_master WHERE sql IS NOT NULL"
    ).fetchall()
    virtual = [name for kind, name, _, sql in rows if kind == "table" and _is_virtual(sql)]
    shadows = _shadow_tables(db, virtual)
    tables: dict[str, TableModel] = {}
    objects: dict[tuple[str, str], ObjectModel] = {}
    for kind, name, table, sql in rows:
        if _ignored(name, patterns) or _ignored(table, patterns):
            continue
        key = fold(name)
        if kind == "table":
            if key in shadows:
                continue
            tables[key] = _read_table(db, name, sql)
        elif kind in ("index", "trigger", "view"):
            objects[(kind, key)] = ObjectModel(kind, name, table, sql, sql_tokens(sql))
    return SchemaModel(tables, objects)


def _is_virtual(sql: str) -> bool:
    return sql_tokens(sql)[:3] == ("create", "virtual", "table")


def _read_table(db: sqlite3.Connection, name: str, sql: str) -> TableModel:
    quoted = quote_identifier(name)
    columns = tuple(
        ColumnModel(column, declared or "", bool(notnull), default, pk, hidden)
        for _cid, column, declared, notnull, default, pk, hidden in db.execute(
            f"PRAGMA table_xinfo({quoted})"
        )
    )
    grouped: dict[int, list[tuple[object, ...]]] = {}
    for row in db.execute(f"PRAGMA foreign_key_list({quoted})"):
        grouped.setdefault(row[0], []).append(row)
    foreign_keys = tuple(
        ForeignKeyModel(
            tuple(str(row[3]) for row in rows),
            str(rows[0][2]),
            tuple(None if row[4] is None else str(row[4]) for row in rows),
            str(rows[0][5]),
            str(rows[0][6]),
            str(rows[0][7]),
        )
        for _id, rows in sorted(grouped.items())
    )
    unique = set()
    for _seq, index, is_unique, origin, *_ in db.execute(f"PRAGMA index_list({quoted})"):
        if is_unique and origin == "u":
            info = db.execute(f"PRAGMA index_info({quote_identifier(index)})").fetchall()
            unique.add(tuple(fold(str(row[2])) for row in info))
    return TableModel(
        name, sql, _is_virtual(sql), columns, foreign_keys, frozenset(unique), sql_tokens(sql)
    )


# -- the comparison ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SchemaDifference:
    """One way the found schema differs from the expected one.

    ``kind`` and ``name`` say which object (a column is ``table.column``),
    ``aspect`` what differs (``missing``, ``unexpected``, ``type``, ``not null``,
    ``default``, ``primary key``, ``generated``, ``column order``, ``check``,
    ``unique``, ``options``, ``definition``, ``table``), ``expected`` and
    ``found`` the two sides (None for the side that has no such object).
    """

    kind: ObjectKind
    name: str
    aspect: str
    expected: str | None
    found: str | None

    def __str__(self) -> str:
        if self.aspect == "missing":
            return f"{self.kind} {self.name} is missing (the migrations make {self.expected})"
        if self.aspect == "unexpected":
            return f"{self.kind} {self.name} is not made by the migrations (found {self.found})"
        return (
            f"{self.kind} {self.name}: {self.aspect} differs: expected {self.expected}, "
            f"found {self.found}"
        )

    def as_dict(self) -> dict[str, str | None]:
        return {
            "kind": self.kind,
            "name": self.name,
            "aspect": self.aspect,
            "expected": self.expected,
            "found": self.found,
        }


_COLUMN_ASPECTS = ("type", "not null", "default", "primary key", "generated")


def compare_schemas(expected: SchemaModel, found: SchemaModel) -> list[SchemaDifference]:
    """Every difference between two schemas, tables first, each list in name order."""
    differences: list[SchemaDifference] = []
    for key in sorted(expected.tables.keys() | found.tables.keys()):
        want, have = expected.tables.get(key), found.tables.get(key)
        if have is None:
            assert want is not None
            differences.append(
                SchemaDifference("table", want.name, "missing", _shown(want.sql), None)
            )
        elif want is None:
            differences.append(
                SchemaDifference("table", have.name, "unexpected", None, _shown(have.sql))
            )
        else:
            differences.extend(_compare_tables(want, have))
    for kind_key in sorted(expected.objects.keys() | found.objects.keys()):
        want_object, have_object = expected.objects.get(kind_key), found.objects.get(kind_key)
        if have_object is None:
            assert want_object is not None
            differences.append(
                SchemaDifference(
                    want_object.kind, want_object.name, "missing", _shown(want_object.sql), None
                )
            )
        elif want_object is None:
            differences.append(
                SchemaDifference(
                    have_object.kind, have_object.name, "unexpected", None, _shown(have_object.sql)
                )
            )
        elif want_object.tokens != have_object.tokens:
            aspect = (
                "table"
                if sql_tokens(want_object.table) != sql_tokens(have_object.table)
                else "definition"
            )
            differences.append(
                SchemaDifference(
                    have_object.kind,
                    have_object.name,
                    aspect,
                    _shown(want_object.sql),
                    _shown(have_object.sql),
                )
            )
    return differences


def _compare_tables(want: TableModel, have: TableModel) -> list[SchemaDifference]:
    name = have.name
    if want.virtual or have.virtual:
        if want.tokens == have.tokens:
            return []
        return [SchemaDifference("table", name, "definition", _shown(want.sql), _shown(have.sql))]
    differences: list[SchemaDifference] = []
    want_columns = {fold(c.name): c for c in want.columns}
    have_columns = {fold(c.name): c for c in have.columns}
    for key, column in want_columns.items():
        if key not in have_columns:
            differences.append(
                SchemaDifference(
                    "column", f"{name}.{column.name}", "missing", column.describe(), None
                )
            )
    for key, column in have_columns.items():
        if key not in want_columns:
            differences.append(
                SchemaDifference(
                    "column", f"{name}.{column.name}", "unexpected", None, column.describe()
                )
            )
            continue
        wanted = want_columns[key]
        for aspect in _COLUMN_ASPECTS:
            if wanted._key(aspect) != column._key(aspect):
                differences.append(
                    SchemaDifference(
                        "column",
                        f"{name}.{column.name}",
                        aspect,
                        _column_aspect(wanted, aspect),
                        _column_aspect(column, aspect),
                    )
                )
    shared_want = [k for k in want_columns if k in have_columns]
    shared_have = [k for k in have_columns if k in want_columns]
    if shared_want != shared_have:
        differences.append(
            SchemaDifference(
                "table",
                name,
                "column order",
                ", ".join(want_columns[k].name for k in shared_want),
                ", ".join(have_columns[k].name for k in shared_have),
            )
        )
    differences.extend(_compare_foreign_keys(name, want.foreign_keys, have.foreign_keys))
    if want.unique != have.unique:
        differences.append(
            SchemaDifference("table", name, "unique", _uniques(want.unique), _uniques(have.unique))
        )
    want_options, have_options = want.options, have.options
    if want_options != have_options:
        differences.append(
            SchemaDifference(
                "table", name, "options", _options(want_options), _options(have_options)
            )
        )
    want_checks, have_checks = _check_clauses(want.tokens), _check_clauses(have.tokens)
    if want_checks != have_checks:
        differences.append(
            SchemaDifference("table", name, "check", _checks(want_checks), _checks(have_checks))
        )
    if not differences and want.tokens != have.tokens:
        # Same columns, keys, checks and options: the rest of the definition differs
        # (a collation, AUTOINCREMENT, ON CONFLICT clauses, ...).
        differences.append(
            SchemaDifference("table", name, "definition", _shown(want.sql), _shown(have.sql))
        )
    return differences


def _column_aspect(column: ColumnModel, aspect: str) -> str:
    if aspect == "type":
        return column.declared_type or "(no type)"
    if aspect == "not null":
        return "NOT NULL" if column.not_null else "nullable"
    if aspect == "default":
        return "no default" if column.default is None else column.default
    if aspect == "primary key":
        return (
            f"primary key column {column.primary_key}"
            if column.primary_key
            else "not in the primary key"
        )
    return {0: "not generated", 1: "hidden", 2: "GENERATED VIRTUAL", 3: "GENERATED STORED"}.get(
        column.generated, str(column.generated)
    )


def _compare_foreign_keys(
    table: str, want: tuple[ForeignKeyModel, ...], have: tuple[ForeignKeyModel, ...]
) -> list[SchemaDifference]:
    want_keys = {fk._key(): fk for fk in want}
    have_keys = {fk._key(): fk for fk in have}
    missing = [fk for key, fk in want_keys.items() if key not in have_keys]
    extra = [fk for key, fk in have_keys.items() if key not in want_keys]
    differences = []
    extra_by_columns = {fk._key()[0]: fk for fk in extra}
    for fk in missing:
        columns = fk._key()[0]
        label = f"{table}({', '.join(fk.columns)})"
        other = extra_by_columns.pop(columns, None)
        if other is not None:
            differences.append(
                SchemaDifference(
                    "foreign key", label, "definition", fk.describe(), other.describe()
                )
            )
        else:
            differences.append(
                SchemaDifference("foreign key", label, "missing", fk.describe(), None)
            )
    for fk in extra_by_columns.values():
        label = f"{table}({', '.join(fk.columns)})"
        differences.append(
            SchemaDifference("foreign key", label, "unexpected", None, fk.describe())
        )
    return differences


def _uniques(groups: frozenset[tuple[str, ...]]) -> str:
    return ", ".join(f"UNIQUE ({', '.join(g)})" for g in sorted(groups)) or "no UNIQUE constraint"


def _options(options: frozenset[str]) -> str:
    return ", ".join(sorted(options)) or "none"


def _checks(clauses: tuple[tuple[str, ...], ...]) -> str:
    return "; ".join(f"CHECK ({_rendered(c)})" for c in clauses) or "no CHECK constraint"


def _rendered(tokens: tuple[str, ...]) -> str:
    """Normalised tokens as readable SQL: no space inside parentheses or before commas."""
    text = ""
    for token in tokens:
        if text and not text.endswith("(") and token not in (")", ",", "("):
            text += " "
        elif token == "(" and text and text[-1].isalnum():
            pass  # a call: length(title)
        elif token == "(" and text:
            text += " "
        text += token
    return text


# -- the live file against its migrations --------------------------------------------


@dataclass(frozen=True, slots=True)
class SchemaDrift:
    """What ``schema_drift`` found.

    ``applied`` lists the migrations recorded in the database, in the order
    they were applied: the scratch database was built from exactly these.
    ``problems`` say why that build may not match the history (a recorded
    file is missing from the folder, or was edited since it was applied).
    ``clean`` holds when there is no difference and no problem.
    """

    database: str | None
    applied: tuple[str, ...]
    differences: tuple[SchemaDifference, ...]
    problems: tuple[str, ...]

    @property
    def clean(self) -> bool:
        return not self.differences and not self.problems

    def as_dict(self) -> dict[str, object]:
        return {
            "database": self.database,
            "clean": self.clean,
            "applied": list(self.applied),
            "differences": [d.as_dict() for d in self.differences],
            "problems": list(self.problems),
        }


def schema_drift(
    db: sqlite3.Connection | str | os.PathLike[str],
    migrations_dir: MigrationsDir,
    *,
    ignore: Sequence[str] = (),
    key: Key | None = None,
) -> SchemaDrift:
    """Compare ``db`` with what its applied migrations build; never writes ``db``.

    The files recorded in ``_migrations`` are applied, in the order they were
    recorded, to an empty in-memory database, and the two schemas compared
    (see the module docstring for what counts). Pending files are not
    applied: drift is about what already ran. ``ignore`` adds ``fnmatch``
    patterns of tables a product's own tools create. ``db`` may be the path
    of a database file, opened read-only (with ``key`` if it is encrypted);
    it must exist. Builds of the same history are reused, so checking many
    files with one history costs one build.
    """
    return drift_from(db, read_migrations(migrations_dir), migrations_dir, ignore=ignore, key=key)


def drift_from(
    db: sqlite3.Connection | str | os.PathLike[str],
    migration_files: Sequence[MigrationFile],
    migrations_dir: MigrationsDir,
    *,
    ignore: Sequence[str] = (),
    key: Key | None = None,
) -> SchemaDrift:
    """``schema_drift`` with the folder's files already read (``migrations_dir`` names it)."""
    files = {file.name: file for file in migration_files}
    with _reading(db, key) as connection:
        history = recorded_in_order(connection)
        found = read_schema(connection, ignore=ignore)
        where = database_path(connection)
    problems = []
    build: list[tuple[str, str]] = []
    for name, checksum in history:
        file = files.get(name)
        if file is None:
            problems.append(
                f"migration {name} is recorded as applied but its file is missing from "
                f"{migrations_dir}; the expected schema was built without it."
            )
            continue
        if checksum is not None and checksum != file.checksum:
            problems.append(
                f"migration {name} was edited after it was applied; the expected schema was "
                f"built from the edited file."
            )
        build.append((name, file.text))
    expected, build_problem = build_schema(tuple(build), ignore=tuple(ignore))
    if build_problem is not None:
        problems.append(build_problem)
    return SchemaDrift(
        where,
        tuple(name for name, _ in history),
        tuple(compare_schemas(expected, found)),
        tuple(problems),
    )


@contextlib.contextmanager
def _reading(
    db: sqlite3.Connection | str | os.PathLike[str], key: Key | None
) -> Iterator[sqlite3.Connection]:
    """The connection to read: ``db`` itself, or its file opened read-only and closed after."""
    if not isinstance(db, str | os.PathLike):
        if key is not None:
            raise TypeError("schema_drift: key= goes with a database path, not a connection")
        yield db
        return
    connection = get_db(db, readonly=True, key=key)  # OpenError (missing) if it does not exist
    try:
        yield connection
    finally:
        connection.close()


# (names and texts applied, in order; ignore patterns) -> the schema they build.
_built: dict[
    tuple[tuple[tuple[str, str], ...], tuple[str, ...]], tuple[SchemaModel, str | None]
] = {}
_built_guard = threading.Lock()
_BUILT_KEPT = 64


def build_schema(
    build: tuple[tuple[str, str], ...], *, ignore: tuple[str, ...] = ()
) -> tuple[SchemaModel, str | None]:
    """The schema ``(name, text)`` files build, in order, on an empty in-memory database.

    Also why the build stopped early, if it did (a file SQLite refuses). The
    result of one sequence of files is remembered, so a history shared by
    many tenants is built once.
    """
    key = (build, ignore)
    with _built_guard:
        cached = _built.get(key)
    if cached is not None:
        return cached
    scratch = sqlite3.connect(":memory:", isolation_level=None)
    problem = None
    try:
        scratch.execute("PRAGMA foreign_keys=ON")  # as get_db has it
        for name, text in build:
            try:
                scratch.executescript(text)
            except sqlite3.Error as exc:
                problem = (
                    f"migration {name} failed on a scratch database ({exc}); the expected schema "
                    f"stops before it."
                )
                break
        result = (read_schema(scratch, ignore=ignore), problem)
    finally:
        scratch.close()
    with _built_guard:
        if len(_built) >= _BUILT_KEPT:
            _built.pop(next(iter(_built)))
        _built[key] = result
    return result
