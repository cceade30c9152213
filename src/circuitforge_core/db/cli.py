"""cf-db: the command line for a product's database.

Owns argument parsing, output and exit codes: 0 all is well, 1 something to
act on (a migration pending, modified or missing), 2 an error. Errors go to
stderr as ``error: ...``, with a traceback only under ``-v``. Uses only the
public API; nothing imports this module but ``__main__``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Sequence

from .connect import get_db
from .errors import DBError
from .migrations import MigrationStatus, migration_status, run_migrations

EXIT_OK = 0
EXIT_ACTION = 1
EXIT_ERROR = 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run cf-db with ``argv`` (default: ``sys.argv[1:]``) and return its exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_ERROR
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s: %(message)s",
    )
    try:
        code: int = args.handler(args)
    except (DBError, OSError, ValueError) as exc:
        if args.verbose:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cf-db", description="Look at and look after a CircuitForge product's database."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress; tracebacks")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    migrate = commands.add_parser("migrate", help="apply pending migrations")
    migrate.add_argument("db", metavar="DB", help="database file (created if missing)")
    migrate.add_argument("dir", metavar="DIR", help="folder of NNN_name.sql migrations")
    migrate.set_defaults(handler=_migrate)

    status = commands.add_parser(
        "status", help="list applied, pending, modified and missing migrations (never writes)"
    )
    status.add_argument("db", metavar="DB", help="database file (never created)")
    status.add_argument("dir", metavar="DIR", help="folder of NNN_name.sql migrations")
    status.set_defaults(handler=_status)
    return parser


def _migrate(args: argparse.Namespace) -> int:
    db = get_db(args.db)
    try:
        applied = run_migrations(db, args.dir)
    finally:
        db.close()
    for name in applied:
        print(f"applied {name}")
    if not applied:
        print("nothing to apply")
    return EXIT_OK


def _status(args: argparse.Namespace) -> int:
    statuses = _read_status(args.db, args.dir)
    width = max((len(s.name) for s in statuses), default=4)
    for status in statuses:
        print(f"{status.state:<9} {status.name:<{width}}  {status.applied_at or ''}".rstrip())
    if not statuses:
        print("no migrations")
    return EXIT_ACTION if any(s.state != "applied" for s in statuses) else EXIT_OK


def _read_status(db_path: str, migrations_dir: str) -> list[MigrationStatus]:
    """Status of ``db_path`` without creating or writing it."""
    if not os.path.exists(db_path):
        from .migrations import read_migrations

        return [MigrationStatus(f.name, "pending", None) for f in read_migrations(migrations_dir)]
    db = get_db(db_path, readonly=True)
    try:
        return migration_status(db, migrations_dir)
    finally:
        db.close()
