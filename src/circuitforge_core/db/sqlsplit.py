"""Split an SQL script into statements the way SQLite itself reads it, in linear time.

Owns statement boundaries, the line each statement starts on, and its first
keywords. Does not run anything.

SQLite decides where a statement ends with ``sqlite3_complete()``
(``src/complete.c``, exposed as ``sqlite3.complete_statement``): a ``;`` ends
a statement unless it sits in a string, a quoted identifier, a comment, or the
body of a ``CREATE TRIGGER``, which only ``; END ;`` ends. Asking that function
at each candidate ``;`` costs the length of the statement so far each time,
which is quadratic in a trigger body with thousands of ``;`` or after an
unterminated quote. So this module runs the same eight-state machine over the
script once, token by token, and the tests hold every split against
``complete_statement`` itself. Consequences kept from SQLite: a string, quoted
identifier or block comment left open runs to the end of the script (the rest
is one statement, which then fails to run with SQLite's own error); whitespace
is SQLite's (space, tab, CR, LF, FF), so a stray NBSP or vertical tab is a
token, as it is to SQLite. A final statement without ``;`` is kept, as
``executescript`` does.

Every pattern here is linear: possessive quantifiers (``*+``, ``++``) cannot
backtrack, and every quoted span may stop at the end of the script instead of
failing there.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

# SQLite's whitespace, and its comments; an unterminated /* runs to the end.
_WS = r"[ \t\n\f\r]++|--[^\n]*+|/\*(?:[^*]++|\*(?!/))*+(?:\*/)?+"

# Whitespace, comments and empty statements between two statements.
_GAP = re.compile(rf"(?:{_WS}|;)*+")

# Up to the next ';' that a string, quoted identifier or comment does not
# hide, or the end of the script. Quotes may be left open: SQLite reads an
# open quote to the end, and so do we.
_TO_SEMICOLON = re.compile(
    rf"""(?: [^;'"`\[/\-]++
           | '[^']*+'?+ | "[^"]*+"?+ | `[^`]*+`?+ | \[[^\]]*+\]?+
           | {_WS}
           | [/\-]
         )*+""",
    re.VERBOSE,
)

# One token as sqlite3_complete() sees it. A doubled quote inside a string is
# read as two strings in a row, which changes nothing for the state machine.
_TOKEN = re.compile(
    rf"""(?P<ws> {_WS} )
       | (?P<semi> ; )
       | (?P<word> [A-Za-z0-9_$\x80-\U0010ffff]++ )
       | '[^']*+'?+ | "[^"]*+"?+ | `[^`]*+`?+ | \[[^\]]*+\]?+
       | (?s:.)""",
    re.VERBOSE,
)

# sqlite3_complete()'s tokens and states (src/complete.c), same numbers.
_SEMI, _WS_TOKEN, _OTHER, _EXPLAIN, _CREATE, _TEMP, _TRIGGER, _END = range(8)
_NOTHING, _START, _NORMAL, _AFTER_EXPLAIN, _AFTER_CREATE, _IN_TRIGGER, _BODY_SEMI, _BODY_END = (
    range(8)
)
_KEYWORDS = {
    "EXPLAIN": _EXPLAIN,
    "CREATE": _CREATE,
    "TEMP": _TEMP,
    "TEMPORARY": _TEMP,
    "TRIGGER": _TRIGGER,
    "END": _END,
}
# SQLite folds the case of ASCII letters only: str.upper() would read "\u0131" (dotless i)
# as "I" and "\u017f" (long s) as "S".
_ASCII_UPPER = str.maketrans(string.ascii_lowercase, string.ascii_uppercase)
# _TRANSITIONS[state][token] -> next state, the table of complete.c.
_TRANSITIONS = (
    # SEMI WS OTHER EXPLAIN CREATE TEMP TRIGGER END
    (1, 0, 2, 3, 4, 2, 2, 2),  # NOTHING: no token yet
    (1, 1, 2, 3, 4, 2, 2, 2),  # START: just past a ';'
    (1, 2, 2, 2, 2, 2, 2, 2),  # NORMAL: the next ';' ends the statement
    (1, 3, 3, 2, 4, 2, 2, 2),  # AFTER_EXPLAIN
    (1, 4, 2, 2, 2, 4, 5, 2),  # AFTER_CREATE (and TEMP)
    (6, 5, 5, 5, 5, 5, 5, 5),  # IN_TRIGGER: only '; END ;' ends it
    (6, 6, 5, 5, 5, 5, 5, 7),  # BODY_SEMI: seen the ';' of '; END ;'
    (1, 7, 5, 5, 5, 5, 5, 5),  # BODY_END: seen '; END'
)


def _token_kind(match: re.Match[str]) -> int:
    if match.lastgroup == "ws":
        return _WS_TOKEN
    if match.lastgroup == "semi":
        return _SEMI
    if match.lastgroup == "word":
        return _KEYWORDS.get(match.group().translate(_ASCII_UPPER), _OTHER)
    return _OTHER


def _statement_end(script: str, start: int) -> int:
    """The index just past the statement that begins at ``start``.

    Runs sqlite3_complete()'s state machine from ``start``; in the two states
    where only a ';' can change anything (a plain statement, a trigger body)
    one regex jumps to the next ';', so each character is read once.
    """
    length = len(script)
    state = _NOTHING
    pos = start
    while pos < length:
        if state in (_NORMAL, _IN_TRIGGER):
            pos = _TO_SEMICOLON.match(script, pos).end()  # type: ignore[union-attr]  # matches ""
            if pos >= length:
                break
            token = _SEMI
            pos += 1
        else:
            match = _TOKEN.match(script, pos)
            assert match is not None  # the last branch matches any character
            token = _token_kind(match)
            pos = match.end()
        state = _TRANSITIONS[state][token]
        if state == _START:
            return pos
    return length


@dataclass(frozen=True, slots=True)
class Statement:
    """One statement of a script.

    ``sql`` runs from its first token to its ``;`` (included when present);
    ``line`` is the 1-based line on which it starts.
    """

    sql: str
    line: int

    def head(self, count: int = 4) -> tuple[str, ...]:
        """The first ``count`` tokens, words upper-cased (ASCII letters, as SQLite
        compares them) and quotes kept."""
        tokens: list[str] = []
        pos = 0
        while len(tokens) < count:
            pos = _HEAD_SKIP.match(self.sql, pos).end()  # type: ignore[union-attr]  # matches ""
            match = _HEAD_TOKEN.match(self.sql, pos)
            if match is None:  # only whitespace and comments are left
                break
            token = match.group()
            word = token[0].isalpha() or token[0] == "_"
            tokens.append(token.translate(_ASCII_UPPER) if word else token)
            pos = match.end()
        return tuple(tokens)


# What head() skips between tokens, and one token (any character not skipped
# is at least a one-character token, so a statement's head is never empty).
_HEAD_SKIP = re.compile(rf"(?:{_WS})*+")
_HEAD_TOKEN = re.compile(
    r"""[A-Za-z_\x80-\U0010ffff][\w$\x80-\U0010ffff]*+           # word
      | "(?:[^"]++|"")*+"?+ | `(?:[^`]++|``)*+`?+ | \[[^\]]*+\]?+  # quoted identifier
      | '(?:[^']++|'')*+'?+                                      # string
      | [-+]?\d[\w.]*+                                           # number
      | (?s:.)""",
    re.VERBOSE,
)


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
