"""cf-db's commands about a database's history and schema: diff, repair, baseline.

Owns their arguments and how their results are shown. ``diff`` is
``schema_drift`` (``drift_all`` with ``--all``), ``repair`` is
``accept_checksum`` and ``baseline`` is ``baseline``; each handler calls one
library function and prints what it returns.
"""

from __future__ import annotations

import argparse
import os

from .. import SchemaDrift, accept_checksum, baseline, schema_drift
from .options import (
    AddCommand,
    Subcommands,
    command,
    database_argument,
    default_source,
    fill_defaults,
    folder_argument,
    json_option,
    key,
    key_options,
    lock_timeout_option,
)
from .output import EXIT_ACTION, EXIT_OK, plural, print_json
from .tenants import diff_every_tenant, tenant_options

# -- diff ----------------------------------------------------------------------------


def _add_diff(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    parser = command(
        commands,
        common,
        "diff",
        "compare a database's schema with what its applied migrations build",
        "Build, in an empty in-memory database, exactly the migrations recorded in DB's\n"
        "_migrations, in the order they were applied, and compare that schema with DB's:\n"
        "tables, columns (type, NOT NULL, default, primary key), their order, foreign keys,\n"
        "UNIQUE and CHECK constraints, indexes, triggers, views. Formatting, keyword case and\n"
        "quoting do not count; sqlite_%, _migrations and _litestream_% are ignored. Prints\n"
        "each difference; exit 0 when clean, 1 otherwise. Opens DB read-only.\n\n"
        "With --all, the first argument is a data root and every tenant file under it is\n"
        "compared (--product-path or --pattern).",
    )
    database_argument(parser, "database file (must exist; opened read-only); with --all, the root")
    folder_argument(parser)
    parser.add_argument(
        "--all",
        action="store_true",
        help="compare every tenant file under the data root given as DB "
        f"(default: {default_source('data_root')})",
    )
    parser.add_argument(
        "--ignore",
        action="append",
        default=[],
        metavar="GLOB",
        help="also ignore tables (and their indexes and triggers) named like GLOB; repeatable",
    )
    tenant_options(parser, canary=False)
    json_option(parser)
    key_options(parser)
    parser.set_defaults(handler=_diff)


def _diff(args: argparse.Namespace) -> int:
    if args.all:
        return diff_every_tenant(args)
    fill_defaults(args, "database", "migrations")
    drift = schema_drift(args.db, args.dir, ignore=args.ignore, key=key(args))
    if args.json:
        print_json({**drift.as_dict(), "folder": os.path.abspath(args.dir)})
    else:
        _print_drift(drift)
    return EXIT_OK if drift.clean else EXIT_ACTION


def _print_drift(drift: SchemaDrift) -> None:
    for problem in drift.problems:
        print(f"problem: {problem}")
    for difference in drift.differences:
        print(difference)
    applied = plural(len(drift.applied), "applied migration")
    if drift.clean:
        print(f"clean: the schema is what its {applied} build")
    else:
        print(
            f"{plural(len(drift.differences), 'difference')} from what its {applied} build"
            + (f", {plural(len(drift.problems), 'problem')}" if drift.problems else "")
        )


# -- repair --------------------------------------------------------------------------


def _add_repair(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    parser = command(
        commands,
        common,
        "repair",
        "accept the edited text of an applied migration, after review",
        "Record NAME's current checksum in DB as the applied one, so that migrate goes on\n"
        "after an applied file was edited (a comment, a typo) and the edit was reviewed.\n"
        "Nothing of the file runs: the database keeps what the old text did. Logged, with\n"
        "the old and new checksums and who did it. Prints how the schema then differs from\n"
        "what the accepted history builds; exit 1 if it does.",
    )
    database_argument(parser, "database file (must exist)")
    folder_argument(parser)
    parser.add_argument("name", metavar="NAME", help="the applied migration file, e.g. 003_x.sql")
    lock_timeout_option(parser)
    key_options(parser)
    parser.set_defaults(handler=_repair)


def _repair(args: argparse.Namespace) -> int:
    fill_defaults(args, "database", "migrations")
    result = accept_checksum(
        args.db, args.dir, args.name, key=key(args), lock_timeout=args.lock_timeout
    )
    if result.changed:
        print(
            f"accepted {result.name} as applied in {args.db}: checksum "
            f"{(result.old or 'none')[:12]} -> {result.new[:12]}; nothing was run"
        )
    else:
        print(f"{result.name} in {args.db} already has its file's checksum; nothing changed")
    if result.drift.clean:
        return EXIT_OK
    print(f"warning: {args.db} differs from what its migrations, as accepted, build:")
    for item in [*result.drift.problems, *(str(d) for d in result.drift.differences)]:
        print(f"    {item}")
    return EXIT_ACTION


# -- baseline ------------------------------------------------------------------------


def _add_baseline(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    parser = command(
        commands,
        common,
        "baseline",
        "mark migrations as applied on a database built by other means",
        "Record every file of DIR up to and including --up-to NAME as applied to DB without\n"
        "running it, for a database made another way (a restored dump, a copy) that already\n"
        "holds what those files make. Its schema is checked first against what the files\n"
        "build (refused, recording nothing, on any difference, unless --no-check). Later\n"
        "files stay pending for migrate. Logged.",
    )
    database_argument(parser, "database file (must exist)")
    folder_argument(parser)
    parser.add_argument(
        "--up-to", required=True, metavar="NAME", help="the last file the database already holds"
    )
    parser.add_argument(
        "--no-check",
        action="store_true",
        help="do not compare the schema with what the files build first",
    )
    lock_timeout_option(parser)
    key_options(parser)
    parser.set_defaults(handler=_baseline)


def _baseline(args: argparse.Namespace) -> int:
    fill_defaults(args, "database", "migrations")
    result = baseline(
        args.db,
        args.dir,
        args.up_to,
        key=key(args),
        check_schema=not args.no_check,
        lock_timeout=args.lock_timeout,
    )
    if result.marked:
        print(
            f"marked {', '.join(result.marked)} as applied in {args.db} without running "
            f"{'them' if len(result.marked) > 1 else 'it'}"
        )
    else:
        print(f"nothing to mark: every file up to {result.up_to} is recorded in {args.db}")
    return EXIT_OK


#: This group's commands, in the order ``--help`` lists them.
COMMANDS: tuple[AddCommand, ...] = (_add_diff, _add_repair, _add_baseline)
