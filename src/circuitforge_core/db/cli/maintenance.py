"""cf-db's maintenance commands: backup and check.

Owns their arguments and how their results are shown; the work is
``backup_database`` and ``check_database``.
"""

from __future__ import annotations

import argparse
import os
import sys

from .. import BackupError, CheckResult, backup_database, check_database
from .options import AddCommand, Subcommands, command, json_option, key, key_options
from .output import EXIT_ACTION, EXIT_OK, Progress, duration, print_json, size, working

# -- backup --------------------------------------------------------------------------


def _add_backup(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    parser = command(
        commands,
        common,
        "backup",
        "copy a database safely while it is in use",
        "Copy DB to DEST with SQLite's backup API: a consistent snapshot of what was\n"
        "committed when the backup began, taken while other connections keep writing. The\n"
        "copy is checked with integrity_check, fsynced, and renamed over DEST only then, so\n"
        "DEST is never half-written. DEST may be an existing folder (the copy keeps DB's\n"
        "name); an existing DEST is replaced only if it is an SQLite database. On a terminal,\n"
        "shows progress. An encrypted DB needs its key (--key-env or --key-file); its copy is\n"
        "encrypted with the same key (an older encrypted backup at DEST is replaced only if\n"
        "that key opens it).",
    )
    parser.add_argument("db", metavar="DB", help="database file to copy (opened read-only)")
    parser.add_argument("dest", metavar="DEST", help="file to write, or an existing folder")
    parser.add_argument(
        "--quick", action="store_true", help="check the copy with quick_check (O(N)) instead"
    )
    key_options(parser)
    parser.set_defaults(handler=_backup)


_PROBLEMS_SHOWN = 10


def _backup(args: argparse.Namespace) -> int:
    db_key = key(args)
    live = Progress(sys.stderr, os.path.basename(args.db)) if sys.stderr.isatty() else None
    try:
        result = backup_database(
            args.db,
            args.dest,
            quick=args.quick,
            progress=live.update if live else None,
            key=db_key,
        )
    except BackupError as exc:
        if not exc.problems:
            raise
        print(f"error: {exc}", file=sys.stderr)
        for problem in exc.problems[:_PROBLEMS_SHOWN]:
            print(f"    {problem}", file=sys.stderr)
        if len(exc.problems) > _PROBLEMS_SHOWN:
            print(f"    ... and {len(exc.problems) - _PROBLEMS_SHOWN} more", file=sys.stderr)
        return EXIT_ACTION
    finally:
        if live is not None:
            live.done()
    print(
        f"backed up {result.source} to {result.path}: {size(result.size)} in "
        f"{duration(result.seconds)}, {result.check} ok"
        + (", encrypted with the same key" if db_key is not None else "")
    )
    return EXIT_OK


# -- check ---------------------------------------------------------------------------


def _add_check(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    parser = command(
        commands,
        common,
        "check",
        "check a database for corruption and broken foreign keys (never writes)",
        "Run PRAGMA integrity_check (or quick_check with --quick) and PRAGMA\n"
        "foreign_key_check on DB, read-only; safe while the database is in use. Exit 1 when\n"
        "either finds a problem. An encrypted DB needs its key (--key-env or --key-file).",
    )
    parser.add_argument("db", metavar="DB", help="database file (opened read-only)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="quick_check: O(N), skips checking that indexes match their tables",
    )
    json_option(parser)
    key_options(parser)
    parser.set_defaults(handler=_check)


def _check(args: argparse.Namespace) -> int:
    with working(f"checking {args.db}"):
        result = check_database(args.db, quick=args.quick, key=key(args))
    if args.json:
        print_json(
            {
                "database": result.path,
                "check": result.check,
                "ok": result.ok,
                "integrity": list(result.integrity),
                "foreign_keys": [
                    {
                        "table": p.table,
                        "columns": list(p.columns),
                        "parent": p.parent,
                        "parent_columns": list(p.parent_columns),
                        "count": p.count,
                        "rowids": list(p.rowids),
                    }
                    for p in result.foreign_keys
                ],
            }
        )
    else:
        _print_check(result)
    return EXIT_OK if result.ok else EXIT_ACTION


def _print_check(result: CheckResult) -> None:
    if result.integrity:
        print(f"{result.check}: {len(result.integrity)} problem(s)")
        for message in result.integrity:
            print(f"    {message}")
    else:
        print(f"{result.check}: ok")
    if not result.foreign_keys:
        print("foreign_key_check: ok")
    else:
        rows = sum(p.count for p in result.foreign_keys)
        print(f"foreign_key_check: {rows} row(s) point at nothing")
    for problem in result.foreign_keys:
        child = f"{problem.table}({', '.join(problem.columns)})"
        parent = problem.parent + (
            f"({', '.join(problem.parent_columns)})" if problem.parent_columns else ""
        )
        shown = ", ".join("?" if r is None else str(r) for r in problem.rowids)
        more = ", ..." if problem.count > len(problem.rowids) else ""
        print(f"    {child} -> {parent}: {problem.count} row(s), rowid {shown}{more}")
    if result.integrity:
        print("the file is damaged: restore it from a backup (cf-db backup makes them)")


#: This group's commands, in the order ``--help`` lists them.
COMMANDS: tuple[AddCommand, ...] = (_add_backup, _add_check)
