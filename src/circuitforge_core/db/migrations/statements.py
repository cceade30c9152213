"""What the planner reads inside a statement beyond its first keywords: names and columns.

Owns a small tokenizer for one statement (strings, quoted identifiers and
comments kept apart, as SQLite reads them) and what it recognises with it:
the table an ``ALTER TABLE`` or ``DROP TABLE`` names (quoted or not, with
its schema), the column and definition an ``ALTER TABLE ... ADD COLUMN``
adds, whether a statement may create a ``TEMP`` object, and the setting a
``PRAGMA`` changes. Names compare the way SQLite compares them: ASCII letters
without regard to case. Runs nothing; where a statement is not what these
functions look for they return None, and SQLite judges it when it runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..sqlsplit import Statement

_TOKEN = re.compile(
    r"""(?P<space>\s+|--[^\n]*|/\*.*?(?:\*/|\Z))
      | (?P<blob>[xX]'[^']*'?)
      | (?P<string>'(?:[^']|'')*'?)
      | (?P<quoted>"(?:[^"]|"")*"?|`(?:[^`]|``)*`?|\[[^\]]*\]?)
      | (?P<number>\d[\w.]*|\.\d[\w.]*)
      | (?P<word>[A-Za-z_\x80-\U0010ffff][\w$\x80-\U0010ffff]*)
      | (?P<variable>[?:@$][\w$]*)
      | (?P<operator>\|\||<<|>>|<=|>=|==|!=|<>|->>|->|.)""",
    re.DOTALL | re.VERBOSE,
)


@dataclass(frozen=True, slots=True)
class Token:
    """One token of a statement: its kind (a group name of ``_TOKEN``), text and span."""

    kind: str
    text: str
    start: int
    end: int

    @property
    def keyword(self) -> str:
        """The word upper-cased, for comparing with keywords; '' for anything else."""
        return self.text.upper() if self.kind == "word" else ""

    @property
    def is_name(self) -> bool:
        """Whether SQLite could read this token as a name (a word, quoted, or a string)."""
        return self.kind in ("word", "quoted", "string")

    @property
    def name(self) -> str:
        """The name this token spells, quotes removed and doubled quotes undone."""
        text = self.text
        if self.kind == "string" or (self.kind == "quoted" and text[0] in '"`'):
            quote = text[0]
            inner = text[1:-1] if len(text) > 1 and text.endswith(quote) else text[1:]
            return inner.replace(quote * 2, quote)
        if self.kind == "quoted":  # [name]
            return text[1:].removesuffix("]")
        return text


def tokens(sql: str, limit: int | None = None) -> list[Token]:
    """The tokens of ``sql`` (the first ``limit`` of them), without whitespace and comments."""
    found: list[Token] = []
    for match in _TOKEN.finditer(sql):
        kind = match.lastgroup
        if kind is not None and kind != "space":
            found.append(Token(kind, match.group(), match.start(), match.end()))
            if limit is not None and len(found) >= limit:
                break
    return found


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def fold(name: str) -> str:
    """``name`` as SQLite compares names: ASCII letters without case, anything else as it is."""
    return name.translate(_ASCII_LOWER)


def shown(schema: str | None, name: str) -> str:
    """``schema.name`` or ``name``, for messages."""
    return name if schema is None else f"{schema}.{name}"


# -- the table a statement names -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class TableRef:
    """A table as a statement names it: its schema (None when not given) and name."""

    schema: str | None
    name: str

    def __str__(self) -> str:
        return shown(self.schema, self.name)

    def is_main(self, name: str) -> bool:
        """Whether this names the table ``name`` of the main database (or no schema given)."""
        return fold(self.name) == fold(name) and (
            self.schema is None or fold(self.schema) == "main"
        )


def _table_at(toks: list[Token], index: int) -> tuple[TableRef, int] | None:
    """The ``[schema.]name`` starting at ``toks[index]``, and the index after it."""
    if index >= len(toks) or not toks[index].is_name:
        return None
    if index + 2 < len(toks) and toks[index + 1].text == "." and toks[index + 2].is_name:
        return TableRef(toks[index].name, toks[index + 2].name), index + 3
    return TableRef(None, toks[index].name), index + 1


def altered_or_dropped_table(statement: Statement) -> tuple[str, TableRef] | None:
    """For ``ALTER TABLE t ...`` and ``DROP TABLE [IF EXISTS] t``: the verb and the table."""
    toks = tokens(statement.sql, 7)
    verb = toks[0].keyword if toks else ""
    if verb not in ("ALTER", "DROP") or len(toks) < 2 or toks[1].keyword != "TABLE":
        return None
    index = 2
    if verb == "DROP" and [t.keyword for t in toks[2:4]] == ["IF", "EXISTS"]:
        index = 4
    found = _table_at(toks, index)
    return None if found is None else (verb, found[0])


# -- ALTER TABLE ... ADD COLUMN -------------------------------------------------------

#: Words that end a column's type name and start its constraints.
_CONSTRAINT_WORDS = frozenset(
    {
        "CONSTRAINT",
        "PRIMARY",
        "NOT",
        "NULL",
        "UNIQUE",
        "CHECK",
        "DEFAULT",
        "COLLATE",
        "REFERENCES",
        "GENERATED",
        "AS",
    }
)


@dataclass(frozen=True, slots=True)
class ColumnDefinition:
    """What a column is, in the terms ``pragma_table_xinfo`` reports and we compare.

    ``type`` is the declared type (``""`` for none), ``default`` the default
    expression's text (None for none), ``generated`` whether its value is
    computed (``GENERATED ALWAYS AS``).
    """

    type: str
    not_null: bool
    default: str | None
    generated: bool = False

    def __str__(self) -> str:
        parts = [self.type or "(no type)"]
        if self.not_null:
            parts.append("NOT NULL")
        if self.default is not None:
            parts.append(f"DEFAULT {self.default}")
        if self.generated:
            parts.append("GENERATED")
        return " ".join(parts)


@dataclass(frozen=True, slots=True)
class AddColumn:
    """An ``ALTER TABLE [schema.]table ADD [COLUMN] column ...`` statement, read."""

    table: TableRef
    column: str
    definition: ColumnDefinition


def added_column(statement: Statement) -> AddColumn | None:
    """The table, column and definition an ``ADD COLUMN`` statement adds; None for others."""
    head = tokens(statement.sql, 7)
    if [t.keyword for t in head[:2]] != ["ALTER", "TABLE"] or "ADD" not in {
        t.keyword for t in head
    }:
        return None
    toks = tokens(statement.sql)
    found = _table_at(toks, 2)
    if found is None:
        return None
    table, index = found
    if index >= len(toks) or toks[index].keyword != "ADD":
        return None
    index += 1
    if index < len(toks) and toks[index].keyword == "COLUMN":
        index += 1
    if index >= len(toks) or not toks[index].is_name:
        return None
    column = toks[index].name
    rest = toks[index + 1 :]
    while rest and rest[-1].text == ";":
        rest = rest[:-1]
    return AddColumn(table, column, _definition(statement.sql, rest))


def _definition(sql: str, toks: list[Token]) -> ColumnDefinition:
    """The type, NOT NULL, DEFAULT and generation of a column definition's tokens."""
    index = 0
    while (
        index < len(toks) and toks[index].is_name and toks[index].keyword not in _CONSTRAINT_WORDS
    ):
        index += 1
    if index and index < len(toks) and toks[index].text == "(":
        index = _after_group(toks, index)
    type_text = sql[toks[0].start : toks[index - 1].end] if index else ""
    not_null = False
    default: str | None = None
    generated = False
    while index < len(toks):
        token = toks[index]
        if token.text == "(":
            index = _after_group(toks, index)
            continue
        word = token.keyword
        if word == "NOT" and index + 1 < len(toks) and toks[index + 1].keyword == "NULL":
            not_null = True
        elif word in ("GENERATED", "AS"):
            generated = True
        elif word == "DEFAULT" and index + 1 < len(toks):
            default, index = _default(sql, toks, index + 1)
            continue
        index += 1
    return ColumnDefinition(normalised_type(type_text), not_null, default, generated)


def _after_group(toks: list[Token], index: int) -> int:
    """The index just past the parenthesised group that opens at ``toks[index]``."""
    depth = 0
    while index < len(toks):
        if toks[index].text == "(":
            depth += 1
        elif toks[index].text == ")":
            depth -= 1
            if depth == 0:
                return index + 1
        index += 1
    return index


def _default(sql: str, toks: list[Token], index: int) -> tuple[str, int]:
    """The text of the default expression starting at ``toks[index]``, as SQLite keeps it.

    SQLite keeps ``DEFAULT (expr)`` as the text inside the parentheses and
    ``DEFAULT -1`` with its sign.
    """
    token = toks[index]
    if token.text == "(":
        end = _after_group(toks, index)
        inner = sql[token.end : toks[end - 1].start] if end - 1 > index else ""
        return inner.strip(), end
    if token.text in ("-", "+") and index + 1 < len(toks):
        return sql[token.start : toks[index + 1].end], index + 2
    return token.text, index + 1


# -- comparing definitions -----------------------------------------------------------


def normalised_type(declared: str) -> str:
    """A declared type, case and spacing made canonical: ``varchar ( 20 )`` -> ``VARCHAR(20)``."""
    words = " ".join(declared.split()).upper()
    return re.sub(r"\s*([(),])\s*", r"\1", words)


def normalised_expression(text: str) -> str:
    """An expression, case (outside strings), spacing and outer parentheses made canonical."""
    toks = tokens(text)
    while (
        len(toks) >= 2
        and toks[0].text == "("
        and toks[-1].text == ")"
        and _after_group(toks, 0) == len(toks)
    ):
        toks = toks[1:-1]
    return " ".join(t.text.upper() if t.kind in ("word", "blob") else t.text for t in toks)


def same_definition(existing: ColumnDefinition, added: ColumnDefinition) -> bool:
    """Whether the column a table has is the one a file adds: type, NOT NULL and DEFAULT."""
    return (
        normalised_type(existing.type) == normalised_type(added.type)
        and existing.not_null == added.not_null
        and _default_key(existing.default) == _default_key(added.default)
        and not existing.generated
        and not added.generated
    )


def _default_key(default: str | None) -> str | None:
    if default is None or fold(default) == "null":
        return None  # DEFAULT NULL is what a column without a default has
    return normalised_expression(default)


# -- pragmas and TEMP objects --------------------------------------------------------


def pragma_setting(statement: Statement) -> tuple[str, bool] | None:
    """For ``PRAGMA [schema.]name [= value | (value)]``: the name (lower case), whether it sets."""
    toks = tokens(statement.sql, 5)
    if not toks or toks[0].keyword != "PRAGMA" or len(toks) < 2:
        return None
    index = 1
    if len(toks) >= 4 and toks[2].text == ".":
        index = 3
    name = fold(toks[index].name)
    following = toks[index + 1].text if index + 1 < len(toks) else ""
    return name, following in ("=", "(")


def may_create_temp(statement: Statement) -> bool:
    """Whether a ``CREATE`` statement may make a ``TEMP`` object (``TEMP``, ``temp.name``)."""
    if "temp" not in statement.sql.lower():  # the cheap answer for nearly every statement
        return False
    toks = tokens(statement.sql, 12)
    if not toks or toks[0].keyword != "CREATE":
        return False
    return any(
        t.keyword in ("TEMP", "TEMPORARY") or fold(t.name) == "temp" for t in toks if t.is_name
    )
