"""cf-db: the command line for a product's database.

Owns argument parsing, output and exit codes: 0 all is well, 1 something to
act on (a migration pending, a lint error, a damaged database, ...), 2 an
error (bad arguments, a file that cannot be read). Errors go to stderr as
``error: ...``, with a traceback only under ``-v``; the library's warnings go
there as ``WARNING: ...`` unless ``-q``. ``--json`` prints what a
command would show as a table as one JSON document on stdout instead. The
work itself is done by the library, through its public names only; nothing
imports this package but ``__main__`` and the ``cf-db`` entry point.

    __init__.py      main(argv) -> int, the parser, the error boundary
    migrations.py    migrate (and --dry-run), status, new, lint, verify
    history.py       diff, repair, baseline
    tenants.py       migrate --all and diff --all: every tenant, with progress
    maintenance.py   backup, check
    encryption.py    encrypt, decrypt, rekey
    replication.py   replicate (the Litestream sidecar), restore, erase
    options.py       declaring a command, --json, --key-env/--key-file, seconds, defaults
    output.py        exit codes, JSON, aligned rows, durations, live terminal lines

Each command is one ``_add_<command>`` function in its group's module that
declares its arguments and points at its handler; adding a command means
writing one and listing it in that module's ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sqlite3
import sys
import traceback
from collections.abc import Sequence
from importlib import metadata

from .. import DBError
from . import encryption, history, maintenance, migrations, replication
from .options import AddCommand, Handler
from .output import EXIT_ACTION, EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK

__all__ = [
    "COMMANDS",
    "EXIT_ACTION",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "build_parser",
    "main",
]

#: Every sub-command, in the order ``--help`` lists them.
COMMANDS: tuple[AddCommand, ...] = (
    *migrations.COMMANDS,
    *history.COMMANDS,
    *maintenance.COMMANDS,
    *encryption.COMMANDS,
    *replication.COMMANDS,
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run cf-db with ``argv`` (default: ``sys.argv[1:]``) and return its exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error argparse reported
        return exc.code if isinstance(exc.code, int) else EXIT_ERROR
    if args.command is None:
        parser.print_help(sys.stderr)
        print("error: no command given; pick one of the commands above", file=sys.stderr)
        return EXIT_ERROR
    if args.verbose and args.quiet:
        print("error: -q/--quiet and -v/--verbose cannot be combined", file=sys.stderr)
        return EXIT_ERROR
    _configure_logging(verbose=args.verbose, quiet=args.quiet)
    handler: Handler = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`cf-db status ... | head`): stop quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_ERROR
    except (DBError, OSError, ValueError, sqlite3.Error) as exc:
        if args.verbose:
            traceback.print_exc()
        print(f"error: {_error_text(exc)}", file=sys.stderr)
        return EXIT_ERROR


def _configure_logging(*, verbose: bool, quiet: bool) -> None:
    """The library's log on stderr: warnings, INFO too with -v, errors only with -q."""
    handler = logging.StreamHandler()
    handler.setFormatter(_LogFormatter())
    level = logging.INFO if verbose else logging.ERROR if quiet else logging.WARNING
    logging.basicConfig(level=level, handlers=[handler])


class _LogFormatter(logging.Formatter):
    """``LEVEL: message``; the first warning of a run also says how to hide warnings."""

    def __init__(self) -> None:
        super().__init__("%(levelname)s: %(message)s")
        self._hint_given = False

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno == logging.WARNING and not self._hint_given:
            self._hint_given = True
            text += "\n  (cf-db -q hides this and every other warning.)"
        return text


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, sqlite3.Error):
        return f"SQLite says: {exc}"
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return str(exc)


def build_parser() -> argparse.ArgumentParser:
    """The cf-db argument parser, one sub-command per entry of ``COMMANDS``."""
    parser = argparse.ArgumentParser(
        prog="cf-db",
        description="Look at and look after a CircuitForge product's database.",
        epilog="exit codes: 0 ok, 1 something to act on, 2 error. Details: docs/cli.md.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress; tracebacks")
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="no warnings or progress logs; errors only"
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    # Also accepted after the command name; SUPPRESS keeps them from resetting the ones above.
    common = argparse.ArgumentParser(add_help=False)
    for short, long in (("-v", "--verbose"), ("-q", "--quiet")):
        common.add_argument(
            short, long, action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for add in COMMANDS:
        add(commands, common)
    return parser


def _version() -> str:
    try:
        return metadata.version("circuitforge-core")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"
