"""Split an SQL script into statements the way SQLite itself reads it.

Owns statement boundaries, the line each statement starts on, and its first
keywords. Does not run anything.

SQLite decides where a statement ends with ``sqlite3_complete()``: a ``;``
ends a statement unless it sits in a string, a quoted identifier, a comment,
or the ``BEGIN ... END`` body of a ``CREATE TRIGGER``. We ask that function
(exposed as ``sqlite3.complete_statement``) at each candidate ``;`` instead of
re-implementing SQLite's tokenizer, so triggers with ``CASE ... END`` inside,
``;`` in strings and comments, and quoted identifiers all split as SQLite
would. A final statement without ``;`` is kept, as ``executescript`` does.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass

# Whitespace, comments and empty statements between two statements.
_GAP = re.compile(r"(?:\s+|--[^\n]*|/\*.*?(?:\*/|\Z)|;)*", re.DOTALL)

# One token at the head of a statement: what the keyword checks look at.
_HEAD_TOKEN = re.compile(
    r"""(?:\s+|--[^\n]*|/\*.*?(?:\*/|\Z))*   # skip whitespace and comments
    (   [A-Za-z_\x80-\U0010ffff][\w$\x80-\U0010ffff]*   # word
      | "(?:[^"]|"")*"? | `(?:[^`]|``)*`? | \[[^\]]*\]?  # quoted identifier
      | '(?:[^']|'')*'?                                 # string
      | [-+]?\d[\w.]*                                   # number
      | \S )""",
    re.DOTALL | re.VERBOSE,
)


@dataclass(frozen=True, slots=True)
class Statement:
    """One statement of a script.

    ``sql`` runs from its first token to its ``;`` (included when present);
    ``line`` is the 1-based line on which it starts.
    """

    sql: str
    line: int

    def head(self, count: int = 4) -> tuple[str, ...]:
        """The first ``count`` tokens, words upper-cased and quotes kept."""
        tokens: list[str] = []
        pos = 0
        while len(tokens) < count:
            match = _HEAD_TOKEN.match(self.sql, pos)
            if match is None:
                break
            token = match.group(1)
            tokens.append(token.upper() if token[0].isalpha() or token[0] == "_" else token)
            pos = match.end()
        return tuple(tokens)


def split_sql(script: str) -> list[Statement]:
    """The statements of ``script`` in order, without empty or comment-only ones."""
    statements: list[Statement] = []
    line = 1
    pos = 0
    length = len(script)
    while True:
        start = _GAP.match(script, pos).end()  # type: ignore[union-attr]  # always matches
        if start >= length:
            break
        line += script.count("\n", pos, start)
        end = _statement_end(script, start)
        statements.append(Statement(script[start:end], line))
        line += script.count("\n", start, end)
        pos = end
    return statements


# A ';', or a span in which a ';' cannot end a statement (string, quoted
# identifier, comment). Only prunes candidates: complete_statement decides.
_SEMICOLON_OR_SPAN = re.compile(
    r"""'[^']*(?:''[^']*)*' | "[^"]*(?:""[^"]*)*" | `[^`]*(?:``[^`]*)*` | \[[^\]]*\]
      | --[^\n]* | /\*.*?\*/ | ;""",
    re.DOTALL | re.VERBOSE,
)


def _statement_end(script: str, start: int) -> int:
    """The index just past the statement that begins at ``start``.

    Asking ``complete_statement`` only at semicolons outside strings and
    comments keeps a seed file with thousands of ';' in its strings linear;
    inside a trigger body every ';' is still a candidate.
    """
    for match in _SEMICOLON_OR_SPAN.finditer(script, start):
        if match.group() == ";" and sqlite3.complete_statement(script[start : match.end()]):
            return match.end()
    return len(script)
