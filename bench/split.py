"""Split section: statement splitting stays linear on any input.

Owns the bound that issue 8 puts on ``split_sql`` instead of a timed test: for
each adversarial script (blank lines after a last statement without ``;``, an
unterminated string before thousands of ``;``, a trigger body of thousands of
statements, an unterminated block comment, ordinary statements) it times what
the runner's planner reads (``split_sql`` and ``head(6)`` of every statement)
at 0.1, 1 and 4 MB, next to ``executescript`` of the same text on a fresh
in-memory database (which runs it or refuses it at the first error).

The verdict is on growth, not on speed: the time per MB at 4 MB over the time
per MB at 0.1 MB. Linear work keeps that near 1 (up to 2 when a neighbour on
this shared machine lands on one size; the goal leaves room for that); the
quadratic splitter this replaces had it near 40 on the unterminated string, and
the backtracking one never finished the blank lines.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable

from circuitforge_core.db.sqlsplit import split_sql

from .measure import alternate, duration, gc_paused, heading, median, note

SIZES_MB = (0.1, 1.0, 4.0)
GROWTH_GOAL = 3.0  # time per MB at 4 MB / time per MB at 0.1 MB; quadratic is ~40
ROUNDS = 7
STATEMENT = "INSERT INTO t VALUES (1, 'a;b');\n"


def _filled(head: str, unit: str, tail: str, size: int) -> str:
    return head + unit * max(1, (size - len(head) - len(tail)) // len(unit)) + tail


# name -> script of about `size` characters
INPUTS: dict[str, Callable[[int], str]] = {
    "statements": lambda size: _filled("CREATE TABLE t (x, y);\n", STATEMENT, "", size),
    "blank lines after a last statement without ;": lambda size: _filled(
        "CREATE TABLE t (x, y);\nDROP TABLE t", "\n", "", size
    ),
    "unterminated string, then statements": lambda size: _filled(
        "CREATE TABLE t (x, y);\nINSERT INTO t VALUES ('oops);\n",
        "INSERT INTO t VALUES (1);\n",
        "",
        size,
    ),
    "unterminated /*, then statements": lambda size: _filled(
        "CREATE TABLE t (x, y);\nSELECT 1 /* oops;\n", "INSERT INTO t VALUES (1);\n", "", size
    ),
    "trigger body of many statements": lambda size: _filled(
        "CREATE TABLE t (x, y);\nCREATE TRIGGER tr AFTER INSERT ON t BEGIN\n",
        "  UPDATE t SET y = 'a;b' WHERE x = new.x;\n",
        "END;\n",
        size,
    ),
}


def run() -> None:
    print(
        f"SQLite {sqlite3.sqlite_version}; split = split_sql + head(6) of every statement; "
        f"executescript = the same text on a fresh :memory: database; medians of {ROUNDS} "
        f"interleaved samples",
        flush=True,
    )
    heading("1. time per MB of adversarial scripts (growth = per MB at 4 MB / per MB at 0.1 MB)")
    sizes = "".join(f"{f'{mb:g} MB':>11}" for mb in SIZES_MB)
    print(f"  {'script':<46} {'':<14}{sizes}  {'growth':>7}  goal", flush=True)
    for name, make in INPUTS.items():
        per_mb = {"split": [], "executescript": []}
        for mb in SIZES_MB:
            script = make(int(mb * 1_000_000))
            samples = _measure(script)
            for case, values in samples.items():
                per_mb[case].append(median(values) / (len(script) / 1_000_000))
        for case, values in per_mb.items():
            growth = values[-1] / values[0]
            verdict = ""
            if case == "split":
                verdict = f"<= {GROWTH_GOAL:g}  {'PASS' if growth <= GROWTH_GOAL else 'MISS'}"
            label = name if case == "split" else ""
            cells = "".join(f"{duration(v):>11}" for v in values)
            print(f"  {label:<46} {case:<14}{cells}  {growth:>6.2f}x  {verdict}", flush=True)
        ratios = ", ".join(
            f"{s / e:.1f}x" for s, e in zip(per_mb["split"], per_mb["executescript"], strict=True)
        )
        note(f"split / executescript at {', '.join(f'{mb:g}' for mb in SIZES_MB)} MB: {ratios}")
    note("executescript stops at the first error, so on a broken script it is a refusal time")


def _measure(script: str) -> dict[str, list[float]]:
    def split() -> float:
        started = time.perf_counter()
        for statement in split_sql(script):
            statement.head(6)
        return time.perf_counter() - started

    def executescript() -> float:
        db = sqlite3.connect(":memory:", isolation_level=None)
        try:
            started = time.perf_counter()
            with contextlib.suppress(sqlite3.Error):  # a broken script: the time to refuse
                db.executescript(script)
            return time.perf_counter() - started
        finally:
            db.close()

    with gc_paused():
        return alternate({"split": split, "executescript": executescript}, ROUNDS)
