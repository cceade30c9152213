"""cf-db: the command line for a product's database.

Owns argument parsing, output and exit codes: 0 all is well, 1 something to
act on (a migration pending, a lint error, a damaged database, ...), 2 an
error (bad arguments, a file that cannot be read). Errors go to stderr as
``error: ...``, with a traceback only under ``-v``. ``--json`` prints what a
command would show as a table as one JSON document on stdout instead. The
work itself is done by the library (migrations, lint, maintenance); nothing
imports this module but ``__main__``.

Each command is one ``_add_<command>`` function that declares its arguments
and points at its handler; adding a command means writing one and listing
it in ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sqlite3
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, TextIO, TypeAlias

from .cipher import Key, decrypt_database, encrypt_database, rekey_database
from .connect import get_db
from .errors import BackupError, DBError, MigrationRefusedError
from .lint import LintFinding, lint_migrations
from .maintenance import (
    CheckResult,
    ChecksumCheck,
    backup_database,
    check_database,
    verify_migrations,
)
from .migrations import (
    NO_TRANSACTION_MARKER,
    MigrationStatus,
    _plan,
    migration_status,
    read_migrations,
    run_migrations,
)

EXIT_OK = 0
EXIT_ACTION = 1
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130  # what shells report for Ctrl-C

Handler = Callable[[argparse.Namespace], int]
# argparse's type for the object add_subparsers() returns (private, but typed by typeshed).
Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
AddCommand: TypeAlias = Callable[[Subcommands, argparse.ArgumentParser], None]


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
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s: %(message)s",
    )
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


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, sqlite3.Error):
        return f"SQLite says: {exc}"
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return str(exc)


# -- the parser ----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The cf-db argument parser, one sub-command per entry of ``COMMANDS``."""
    parser = argparse.ArgumentParser(
        prog="cf-db",
        description="Look at and look after a CircuitForge product's database.",
        epilog="exit codes: 0 ok, 1 something to act on, 2 error. Details: docs/cli.md.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress; tracebacks")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    # Also accepted after the command name; SUPPRESS keeps it from resetting the one above.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
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


def _command(
    commands: Subcommands,
    common: argparse.ArgumentParser,
    name: str,
    summary: str,
    description: str,
) -> argparse.ArgumentParser:
    return commands.add_parser(
        name,
        parents=[common],
        help=summary,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON document instead")


def _print_json(document: object) -> None:
    print(json.dumps(document, indent=2, ensure_ascii=False))


# -- migrate -------------------------------------------------------------------------


def _add_migrate(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    parser = _command(
        commands,
        common,
        "migrate",
        "apply pending migrations",
        "Apply the pending NNN_name.sql files of DIR to DB, in filename order, each in one\n"
        "transaction with its _migrations row. Prints one line per applied file with its\n"
        "duration; on a terminal, shows the running file's elapsed time.",
    )
    parser.add_argument("db", metavar="DB", help="database file (created if missing)")
    parser.add_argument("dir", metavar="DIR", help="folder of NNN_name.sql migrations")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="list what would run and check it against the runner's rules; change nothing "
        "(exit 1 if the run would be refused)",
    )
    parser.add_argument(
        "--lock-timeout",
        type=_positive_seconds,
        default=600.0,
        metavar="SECONDS",
        help="how long to wait for another process's migration (default 600)",
    )
    _json_option(parser)
    _key_options(parser)
    parser.set_defaults(handler=_migrate)


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, not {text}")
    return value


def _migrate(args: argparse.Namespace) -> int:
    if args.dry_run:
        return _migrate_dry_run(args)
    if args.json:
        raise ValueError("--json goes with --dry-run; migrate itself prints one line per file")
    read_migrations(args.dir)  # a bad folder or file fails before the database is created
    live = _LiveLine(sys.stderr) if sys.stderr.isatty() else None
    # Between files the runner waits for SQLite's write lock (another process may
    # be migrating); on_start comes once it holds it.
    waiting = f"waiting for the write lock on {args.db}"

    def on_start(name: str) -> None:
        if live is not None:
            live.start(f"applying {name}")

    def on_applied(name: str, seconds: float) -> None:
        if live is not None:
            live.stop()
        print(f"applied {name} ({_duration(seconds)})", flush=True)
        if live is not None:
            live.start(waiting)

    started = time.perf_counter()
    db = get_db(args.db, key=_key(args))
    try:
        if live is not None:
            live.start(waiting)
        applied = run_migrations(
            db,
            args.dir,
            lock_timeout=args.lock_timeout,
            on_start=on_start,
            on_applied=on_applied,
        )
    finally:
        if live is not None:
            live.stop()
        db.close()
    if applied:
        count = f"{len(applied)} migration{'s' if len(applied) != 1 else ''}"
        print(f"{count} applied in {_duration(time.perf_counter() - started)}")
    else:
        print("nothing to apply")
    return EXIT_OK


def _migrate_dry_run(args: argparse.Namespace) -> int:
    """What ``migrate`` would do, judged by the runner's own planner; writes nothing."""
    files = {file.name: file for file in read_migrations(args.dir)}
    statuses = _read_status(args.db, args.dir, _key(args))
    applied = [s.name for s in statuses if s.state in ("applied", "modified")]
    problems: list[dict[str, Any]] = [
        {
            "name": s.name,
            "line": None,
            "message": f"applied migration {s.name} was edited since it was applied; migrate "
            f"refuses to run anything until the applied text is restored (put the change in a "
            f"new file).",
        }
        for s in statuses
        if s.state == "modified"
    ]
    notes = [
        f"{s.name} is recorded as applied but its file is gone; never delete an applied migration"
        for s in statuses
        if s.state == "missing"
    ]
    pending: list[dict[str, Any]] = []
    for status in statuses:
        if status.state != "pending":
            continue
        file = files[status.name]
        entry: dict[str, Any] = {"name": file.name, "refused": None}
        try:
            plan = _plan(file)
        except MigrationRefusedError as exc:
            entry["refused"] = str(exc)
            problems.append({"name": file.name, "line": exc.line, "message": str(exc)})
        else:
            entry["statements"] = len(plan.statements)
            entry["transaction"] = not file.no_transaction
            entry["foreign_keys_checked"] = plan.foreign_keys_off
        pending.append(entry)
        if applied and file.name < max(applied):
            notes.append(
                f"{file.name} sorts before the already applied {max(applied)}; it would be "
                f"applied anyway"
            )
    if args.json:
        _print_json(
            {
                "database": os.path.abspath(args.db),
                "folder": os.path.abspath(args.dir),
                "ok": not problems,
                "pending": pending,
                "problems": problems,
                "notes": notes,
            }
        )
    else:
        _print_dry_run(pending, problems, notes)
    return EXIT_ACTION if problems else EXIT_OK


def _print_dry_run(
    pending: list[dict[str, Any]], problems: list[dict[str, Any]], notes: list[str]
) -> None:
    for problem in problems:
        print(f"refused: {problem['message']}")
    for entry in pending:
        if entry["refused"] is not None:
            continue
        how = "one transaction" if entry["transaction"] else "no transaction"
        if entry["foreign_keys_checked"]:
            how += ", foreign keys off then checked"
        verb = "would apply" if not problems else "blocked    "
        count = entry["statements"]
        print(f"{verb} {entry['name']} ({count} statement{'s' if count != 1 else ''}, {how})")
    for note in notes:
        print(f"note: {note}")
    if problems:
        print("nothing would be applied until the problems above are fixed; nothing was changed")
    elif pending:
        print(f"{len(pending)} to apply; nothing was changed (dry run)")
    else:
        print("nothing to apply")


class _LiveLine:
    """One status line on a terminal, redrawn in place by a background thread.

    Shown only after ``delay`` seconds, so quick steps do not flicker. The
    caller creates one only when the stream is a terminal.
    """

    def __init__(self, stream: TextIO, *, delay: float = 0.25, interval: float = 0.1) -> None:
        self._stream = stream
        self._delay = delay
        self._interval = interval
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self._shown = False

    def start(self, label: str) -> None:
        self.stop()
        self._stopped = threading.Event()
        self._thread = threading.Thread(
            target=self._run,
            args=(label, time.monotonic(), self._stopped),
            name="cf-db-live-line",
            daemon=True,  # never keeps the process alive after an error
        )
        self._thread.start()

    def _run(self, label: str, started: float, stopped: threading.Event) -> None:
        if stopped.wait(self._delay):
            return
        while True:
            self._stream.write(f"\r{label} ... {time.monotonic() - started:.1f} s\x1b[K")
            self._stream.flush()
            self._shown = True
            if stopped.wait(self._interval):
                return

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stopped.set()
        self._thread.join()
        self._thread = None
        if self._shown:
            self._stream.write("\r\x1b[K")
            self._stream.flush()
            self._shown = False


def _duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms"
    if seconds < 60:
        return f"{seconds:.2f} s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)} min {rest:04.1f} s"


# -- status --------------------------------------------------------------------------


def _add_status(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    parser = _command(
        commands,
        common,
        "status",
        "list applied, pending, modified and missing migrations (never writes)",
        "List every migration of DIR with its state in DB (applied, pending, modified,\n"
        "missing) and when it was applied. Opens DB read-only and never creates it: a\n"
        "missing DB shows everything pending. Exit 1 when anything is not applied.",
    )
    parser.add_argument("db", metavar="DB", help="database file (never created)")
    parser.add_argument("dir", metavar="DIR", help="folder of NNN_name.sql migrations")
    _json_option(parser)
    _key_options(parser)
    parser.set_defaults(handler=_status)


def _status(args: argparse.Namespace) -> int:
    statuses = _read_status(args.db, args.dir, _key(args))
    counts = dict.fromkeys(("applied", "pending", "modified", "missing"), 0)
    for status in statuses:
        counts[status.state] += 1
    if args.json:
        _print_json(
            {
                "database": os.path.abspath(args.db),
                "folder": os.path.abspath(args.dir),
                "exists": os.path.exists(args.db),
                "migrations": [
                    {"name": s.name, "state": s.state, "applied_at": s.applied_at} for s in statuses
                ],
                "counts": counts,
            }
        )
    else:
        if not os.path.lexists(args.db):
            print(f"{args.db} does not exist yet: every migration is pending")
        _print_rows([(s.state, s.name, s.applied_at or "") for s in statuses])
        if statuses:
            print(", ".join(f"{n} {state}" for state, n in counts.items() if n))
        else:
            print("no migrations")
    return EXIT_ACTION if any(s.state != "applied" for s in statuses) else EXIT_OK


def _read_status(
    db_path: str, migrations_dir: str, key: Key | None = None
) -> list[MigrationStatus]:
    """Status of ``db_path`` without creating or writing it."""
    if not os.path.lexists(db_path):
        return [MigrationStatus(f.name, "pending", None) for f in read_migrations(migrations_dir)]
    db = get_db(db_path, readonly=True, key=key)
    try:
        return migration_status(db, migrations_dir)
    finally:
        db.close()


def _print_rows(rows: Sequence[Sequence[str]]) -> None:
    """Rows as aligned columns (the last column unpadded)."""
    if not rows:
        return
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]).rstrip())


# -- new -----------------------------------------------------------------------------

_SAFE_NAME = re.compile(r"[a-z0-9_]{1,100}\Z")
_NUMBERED_SQL = re.compile(r"(\d+)_?(.*)\.sql\Z")
DEFAULT_WIDTH = 3


def _add_new(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    parser = _command(
        commands,
        common,
        "new",
        "create the next numbered migration file",
        "Create DIR/NNN_NAME.sql with the next number, zero-padded to the width the folder's\n"
        "files use (3 digits in an empty folder), and print its path. DIR must exist.\n"
        "NAME is lower-case letters, digits and _ only, and must not name an existing\n"
        "migration.",
    )
    parser.add_argument("dir", metavar="DIR", help="folder of NNN_name.sql migrations")
    parser.add_argument("name", metavar="NAME", help="what the migration does, e.g. add_tags")
    parser.add_argument(
        "--no-transaction",
        action="store_true",
        help=f"start the file with `{NO_TRANSACTION_MARKER}` (for VACUUM and the like)",
    )
    parser.set_defaults(handler=_new)


def _new(args: argparse.Namespace) -> int:
    folder = Path(args.dir)
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise ValueError(f"{folder} {what}; create the migrations folder first (mkdir -p).")
    name: str = args.name
    if not _SAFE_NAME.match(name):
        raise ValueError(
            f"{name!r} is not a safe migration name: use 1 to 100 lower-case letters, digits "
            f"and _ (no spaces, dots or slashes), e.g. add_tags."
        )
    numbered = [
        (int(match[1]), len(match[1]), match[2], entry.name)
        for entry in folder.iterdir()
        if (match := _NUMBERED_SQL.match(entry.name))
    ]
    for _, _, existing_name, file_name in numbered:
        if existing_name.lower() == name:
            raise ValueError(
                f"{folder} already has a migration named {name}: {file_name}. Choose a name "
                f"that says what this one changes."
            )
    number = max((n for n, _, _, _ in numbered), default=0) + 1
    width = max((w for n, w, _, _ in numbered if n == number - 1), default=DEFAULT_WIDTH)
    digits = str(number).zfill(width)
    if len(digits) > width:
        raise ValueError(
            f"the next number, {number}, needs more digits than the {width} the files in "
            f"{folder} use, so {digits}_{name}.sql would sort (and run) before the files "
            f"numbered 1 to 9{'9' * (width - 1)}. Renumber the files with more digits while "
            f"none is applied anywhere, or keep the numbering by hand (see cf-db lint)."
        )
    path = folder / f"{digits}_{name}.sql"
    header = f"{NO_TRANSACTION_MARKER}\n" if args.no_transaction else ""
    how = (
        "runs statement by statement, outside a transaction: make it safe to run again"
        if args.no_transaction
        else "runs in one transaction together with its _migrations row"
    )
    with open(path, "x", encoding="utf-8") as handle:  # "x": never overwrite a file
        handle.write(
            f"{header}-- {path.name}: {how}.\n"
            f"-- Once it is applied anywhere, never edit it: put further changes in a new file.\n"
        )
    print(path)
    return EXIT_OK


# -- lint ----------------------------------------------------------------------------


def _add_lint(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    parser = _command(
        commands,
        common,
        "lint",
        "check the migration files against the conventions",
        "Check DIR's migration files: numbering, names, statements the runner refuses,\n"
        "conventions (no RENAME COLUMN, IF NOT EXISTS), UTF-8, and whether SQLite can parse\n"
        "every statement (the files are replayed in order into an in-memory database).\n"
        "Each finding says why it matters. Exit 1 if there is an error (with --strict, also\n"
        "a warning).",
    )
    parser.add_argument("dir", metavar="DIR", help="folder of NNN_name.sql migrations")
    parser.add_argument(
        "--strict", action="store_true", help="exit 1 on warnings too, not only on errors"
    )
    parser.add_argument(
        "--ignore",
        action="append",
        default=[],
        metavar="RULE",
        help="leave out findings of RULE (a code such as rename-column), or FILE:RULE for one "
        "file; repeatable",
    )
    _json_option(parser)
    parser.set_defaults(handler=_lint)


def _lint(args: argparse.Namespace) -> int:
    findings = lint_migrations(args.dir, ignore=args.ignore)
    files = sum(1 for entry in Path(args.dir).iterdir() if entry.name.endswith(".sql"))
    errors = sum(1 for f in findings if f.severity == "error")
    warnings = len(findings) - errors
    if args.json:
        _print_json(
            {
                "folder": os.path.abspath(args.dir),
                "files": files,
                "errors": errors,
                "warnings": warnings,
                "findings": [_finding_json(f) for f in findings],
            }
        )
    else:
        _print_findings(findings)
        print(
            f"{files} file{'s' if files != 1 else ''}: {errors} error{'s' if errors != 1 else ''}"
            f", {warnings} warning{'s' if warnings != 1 else ''}"
        )
    failed = errors > 0 or (args.strict and warnings > 0)
    return EXIT_ACTION if failed else EXIT_OK


def _finding_json(finding: LintFinding) -> dict[str, Any]:
    return {
        "severity": finding.severity,
        "file": finding.file,
        "line": finding.line,
        "code": finding.code,
        "message": finding.message,
        "why": finding.why,
    }


def _print_findings(findings: list[LintFinding]) -> None:
    explained: set[str] = set()
    for finding in findings:
        where = finding.file if finding.line is None else f"{finding.file}:{finding.line}"
        print(f"{where}: {finding.severity}: {finding.message} [{finding.code}]")
        if finding.code not in explained:  # the reason once per rule is enough
            print(f"    why: {finding.why}")
            explained.add(finding.code)


# -- verify --------------------------------------------------------------------------


def _add_verify(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    parser = _command(
        commands,
        common,
        "verify",
        "compare the checksums of applied migrations with the files (never writes)",
        "Compare the SHA-256 checksum recorded for each applied migration in DB with the\n"
        "file in DIR. Exit 1 when an applied file was modified or is missing. Pending files\n"
        "are listed but not compared; rows the old runner left without a checksum are\n"
        "listed as unchecked.",
    )
    parser.add_argument("db", metavar="DB", help="database file (must exist; opened read-only)")
    parser.add_argument("dir", metavar="DIR", help="folder of NNN_name.sql migrations")
    _json_option(parser)
    _key_options(parser)
    parser.set_defaults(handler=_verify)


def _verify(args: argparse.Namespace) -> int:
    if not os.path.lexists(args.db):
        raise ValueError(f"{os.path.abspath(args.db)} does not exist; nothing to verify.")
    read_migrations(args.dir)  # folder problems first, with their own message
    db = get_db(args.db, readonly=True, key=_key(args))
    try:
        checks = verify_migrations(db, args.dir)
    finally:
        db.close()
    failed = any(c.state in ("modified", "missing") for c in checks)
    if args.json:
        _print_json(
            {
                "database": os.path.abspath(args.db),
                "folder": os.path.abspath(args.dir),
                "ok": not failed,
                "migrations": [
                    {
                        "name": c.name,
                        "state": c.state,
                        "applied_at": c.applied_at,
                        "recorded_checksum": c.recorded,
                        "file_checksum": c.actual,
                    }
                    for c in checks
                ],
            }
        )
        return EXIT_ACTION if failed else EXIT_OK
    _print_rows([(c.state, c.name, _verify_detail(c)) for c in checks])
    counts: dict[str, int] = {}
    for check in checks:
        counts[check.state] = counts.get(check.state, 0) + 1
    print(", ".join(f"{n} {state}" for state, n in counts.items()) or "no migrations")
    return EXIT_ACTION if failed else EXIT_OK


def _verify_detail(check: ChecksumCheck) -> str:
    recorded, actual = (check.recorded or "")[:12], (check.actual or "")[:12]
    if check.state == "ok":
        return f"sha256 {recorded}  applied {check.applied_at or '?'}"
    if check.state == "modified":
        return f"recorded sha256 {recorded}, the file's is now {actual}"
    if check.state == "missing":
        return f"applied {check.applied_at or '?'}, file gone"
    if check.state == "unchecked":
        return "no checksum recorded (old runner); the next migrate records the file's"
    return "not applied yet"


# -- backup --------------------------------------------------------------------------


def _add_backup(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    parser = _command(
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
    _key_options(parser)
    parser.set_defaults(handler=_backup)


_PROBLEMS_SHOWN = 10


def _backup(args: argparse.Namespace) -> int:
    key = _key(args)
    live = _Progress(sys.stderr, os.path.basename(args.db)) if sys.stderr.isatty() else None
    try:
        result = backup_database(
            args.db,
            args.dest,
            quick=args.quick,
            progress=live.update if live else None,
            key=key,
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
        f"backed up {result.source} to {result.path}: {_size(result.size)} in "
        f"{_duration(result.seconds)}, {result.check} ok"
        + (", encrypted with the same key" if key is not None else "")
    )
    return EXIT_OK


class _Progress:
    """``backing up app.db  45%`` on a terminal, redrawn after each backup step."""

    def __init__(self, stream: TextIO, label: str) -> None:
        self._stream = stream
        self._label = label
        self._shown = False

    def update(self, done: int, total: int) -> None:
        if done >= total and not self._shown:
            return  # finished in the first step: nothing worth showing
        percent = 100 * done // total if total else 100
        self._stream.write(f"\rbacking up {self._label} {percent:3d}%\x1b[K")
        self._stream.flush()
        self._shown = True

    def done(self) -> None:
        if self._shown:
            self._stream.write("\r\x1b[K")
            self._stream.flush()


def _size(size: int) -> str:
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KiB"
    if size < 1024**3:
        return f"{size / 1024**2:.1f} MiB"
    return f"{size / 1024**3:.2f} GiB"


# -- check ---------------------------------------------------------------------------


def _add_check(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    parser = _command(
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
    _json_option(parser)
    _key_options(parser)
    parser.set_defaults(handler=_check)


def _check(args: argparse.Namespace) -> int:
    result = check_database(args.db, quick=args.quick, key=_key(args))
    if args.json:
        _print_json(
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


# -- encrypt, decrypt, rekey (and where keys come from) -----------------------------
#
# Keys are never taken from argv, where `ps` and shell history show them: only
# from an environment variable or a file (or standard input) named on the
# command line. A raw 256-bit key is written x'<64 hex digits>'.


def _key_options(
    parser: argparse.ArgumentParser, *, new: bool = False, required: bool = False
) -> None:
    """``--key-env NAME`` / ``--key-file PATH`` (``--new-...`` for rekey's new key)."""
    prefix, what = ("new-", "new ") if new else ("", "")
    source = parser.add_mutually_exclusive_group(required=required)
    source.add_argument(
        f"--{prefix}key-env",
        metavar="NAME",
        help=f"read the {what}key of an encrypted database from environment variable NAME",
    )
    source.add_argument(
        f"--{prefix}key-file",
        metavar="PATH",
        help=f"read the {what}key from file PATH ('-': standard input; one trailing newline "
        f"is dropped)",
    )


def _key(args: argparse.Namespace, *, new: bool = False) -> Key | None:
    """The key named by ``--[new-]key-env`` or ``--[new-]key-file``; None for neither."""
    prefix = "new_" if new else ""
    env_name = getattr(args, f"{prefix}key_env", None)
    file_name = getattr(args, f"{prefix}key_file", None)
    if env_name is not None:
        value = os.environ.get(env_name)
        if not value:
            state = "empty" if value == "" else "not set"
            raise ValueError(f"environment variable {env_name} is {state}; put the key in it.")
        return value
    if file_name is None:
        return None
    if file_name == "-":
        text = sys.stdin.read()
    else:
        with open(file_name, encoding="utf-8") as handle:
            text = handle.read()
    text = text.removesuffix("\n").removesuffix("\r")
    if not text:
        raise ValueError(f"the key file {file_name} is empty.")
    return text


def _required_key(args: argparse.Namespace, *, new: bool = False) -> Key:
    key = _key(args, new=new)
    if key is None:  # argparse already requires one source; this keeps mypy honest
        raise ValueError("no key given: use --key-env NAME or --key-file PATH")
    return key


_CONVERSION_NOTES = (
    "\n\nThe copy is checked (schema, rows per table, integrity_check), fsynced and renamed\n"
    "over DB, so DB is always either the old or the complete new database. DB must not be\n"
    "open elsewhere: stop the service first (an open connection is detected and refused).\n"
    "Keys come from --key-env NAME or --key-file PATH, never from the command line; a raw\n"
    "key is written x'<64 hex digits>'. Needs: pip install 'circuitforge-core[sqlcipher]'."
)


def _add_encrypt(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    parser = _command(
        commands,
        common,
        "encrypt",
        "encrypt a plain database in place with SQLCipher (service stopped)",
        "Rewrite the plain database DB encrypted under the given key." + _CONVERSION_NOTES,
    )
    parser.add_argument("db", metavar="DB", help="plain database file")
    _key_options(parser, required=True)
    parser.set_defaults(handler=_encrypt)


def _encrypt(args: argparse.Namespace) -> int:
    rows = encrypt_database(args.db, _required_key(args))
    print(f"encrypted {args.db} ({rows} rows checked)")
    return EXIT_OK


def _add_decrypt(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    parser = _command(
        commands,
        common,
        "decrypt",
        "turn an encrypted database back into a plain one (service stopped)",
        "Rewrite the encrypted database DB, opened with the given key, as a plain one."
        + _CONVERSION_NOTES,
    )
    parser.add_argument("db", metavar="DB", help="encrypted database file")
    _key_options(parser, required=True)
    parser.set_defaults(handler=_decrypt)


def _decrypt(args: argparse.Namespace) -> int:
    rows = decrypt_database(args.db, _required_key(args))
    print(f"decrypted {args.db} ({rows} rows checked)")
    return EXIT_OK


def _add_rekey(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    parser = _command(
        commands,
        common,
        "rekey",
        "re-encrypt a database under a new key (service stopped)",
        "Rewrite the encrypted database DB, opened with the current key (--key-env or\n"
        "--key-file), encrypted under the new key (--new-key-env or --new-key-file)."
        + _CONVERSION_NOTES,
    )
    parser.add_argument("db", metavar="DB", help="encrypted database file")
    _key_options(parser, required=True)
    _key_options(parser, new=True, required=True)
    parser.set_defaults(handler=_rekey)


def _rekey(args: argparse.Namespace) -> int:
    rows = rekey_database(args.db, _required_key(args), _required_key(args, new=True))
    print(f"re-keyed {args.db} ({rows} rows checked)")
    return EXIT_OK


#: Every sub-command, in the order ``--help`` lists them.
COMMANDS: tuple[AddCommand, ...] = (
    _add_migrate,
    _add_status,
    _add_new,
    _add_lint,
    _add_verify,
    _add_backup,
    _add_check,
    _add_encrypt,
    _add_decrypt,
    _add_rekey,
)
