"""cf-db's migration commands: migrate (and its dry run), status, new, lint, verify.

Owns their arguments and how their results are shown. Every verdict comes
from the migrations package: a handler calls one library function and
prints what it returns.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from .. import (
    ChecksumCheck,
    LintFinding,
    MigrationError,
    MigrationPlan,
    PlannedMigration,
    lint_report,
    migration_status,
    new_migration,
    plan_migrations,
    run_migrations,
    verify_migrations,
)
from ..migrations import NO_TRANSACTION_MARKER
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
from .output import (
    EXIT_ACTION,
    EXIT_OK,
    LiveLine,
    duration,
    plural,
    print_json,
    print_rows,
)
from .tenants import migrate_every_tenant, tenant_options

# -- migrate -------------------------------------------------------------------------


def _add_migrate(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    parser = command(
        commands,
        common,
        "migrate",
        "apply pending migrations",
        "Apply the pending NNN_name.sql files of DIR to DB, in filename order, each in one\n"
        "transaction with its _migrations row. Prints one line per applied file with its\n"
        "duration; on a terminal, shows the running file's elapsed time.\n"
        "\n"
        "--dry-run changes nothing and never creates DB: it judges every pending file with\n"
        "the runner's rules, then runs each one on a private copy of DB (in TMPDIR), so\n"
        "that a runtime error such as a misspelt table is reported with its file and line.\n"
        "\n"
        "With --all, the first argument is a data root (ROOT) and DIR is applied to every\n"
        "tenant file under it (--product-path or --pattern): a rehearsal on an empty\n"
        "database first, then --jobs at a time after an optional --canary; each tenant's\n"
        "failure is reported (tenant, file, line, error) and the others go on. A rerun is\n"
        "the resume. Exit 1 unless every tenant is migrated.",
    )
    database_argument(parser, "database file (created if missing); with --all, the data root")
    folder_argument(parser)
    parser.add_argument(
        "--all",
        action="store_true",
        help="migrate every tenant file under the data root given as DB "
        f"(default: {default_source('data_root')})",
    )
    tenant_options(parser, canary=True)
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="run every pending file on a copy of DB and report what would be refused or fail; "
        "change nothing (exit 1 if the run would be refused or fail)",
    )
    parser.add_argument(
        "--plan-only",
        action="store_true",
        help="with --dry-run: only judge the files by the runner's rules, make no copy of DB "
        "(for a database too big to copy)",
    )
    lock_timeout_option(parser)
    json_option(parser)
    key_options(parser)
    parser.set_defaults(handler=_migrate)


def _migrate(args: argparse.Namespace) -> int:
    if args.all:
        if args.dry_run:
            raise ValueError("--dry-run goes with one database; drop --all, or drop --dry-run")
        return migrate_every_tenant(args)
    fill_defaults(args, "database", "migrations")
    if args.dry_run:
        return _migrate_dry_run(args)
    if args.plan_only:
        raise ValueError("--plan-only goes with --dry-run")
    live = LiveLine(sys.stderr) if sys.stderr.isatty() else None
    # Between files the runner waits for SQLite's write lock (another process may
    # be migrating); on_start comes once it holds it.
    waiting = f"waiting for the write lock on {args.db}"
    applied: list[dict[str, Any]] = []

    def on_start(name: str) -> None:
        if live is not None:
            live.start(f"applying {name}")

    def on_applied(name: str, seconds: float) -> None:
        if live is not None:
            live.stop()
        applied.append({"name": name, "seconds": round(seconds, 6)})
        if not args.json:
            print(f"applied {name} ({duration(seconds)})", flush=True)
        if live is not None:
            live.start(waiting)

    started = time.perf_counter()
    db_key = key(args)
    if live is not None:
        live.start(waiting)
    try:
        # A path: the library reads DIR first, so a bad folder creates no database.
        run_migrations(
            args.db,
            args.dir,
            key=db_key,
            lock_timeout=args.lock_timeout,
            on_start=on_start,
            on_applied=on_applied,
        )
    except MigrationError as exc:
        if args.json:  # what was applied before the error, then the usual error line
            _print_migrate_json(args, applied, started, exc)
        raise
    finally:
        if live is not None:
            live.stop()
    if args.json:
        _print_migrate_json(args, applied, started, None)
    elif applied:
        total = duration(time.perf_counter() - started)
        print(f"{plural(len(applied), 'migration')} applied in {total}")
    else:
        print("nothing to apply")
    return EXIT_OK


def _print_migrate_json(
    args: argparse.Namespace,
    applied: list[dict[str, Any]],
    started: float,
    error: MigrationError | None,
) -> None:
    print_json(
        {
            "database": os.path.abspath(args.db),
            "folder": os.path.abspath(args.dir),
            "applied": applied,
            "seconds": round(time.perf_counter() - started, 6),
            "error": None
            if error is None
            else {"name": error.name, "line": getattr(error, "line", None), "message": str(error)},
        }
    )


def _migrate_dry_run(args: argparse.Namespace) -> int:
    """What ``migrate`` would do, as ``plan_migrations`` finds it; changes nothing."""
    plan = plan_migrations(args.db, args.dir, key=key(args), execute=not args.plan_only)
    if args.json:
        print_json(
            {
                "database": os.path.abspath(args.db),
                "folder": os.path.abspath(args.dir),
                "ok": plan.ok,
                "executed": plan.executed,
                "pending": [_planned_json(entry) for entry in plan.pending],
                "problems": [
                    {"kind": p.kind, "name": p.name, "line": p.line, "message": p.message}
                    for p in plan.problems
                ],
                "notes": list(plan.notes),
            }
        )
    else:
        _print_plan(plan)
    return EXIT_OK if plan.ok else EXIT_ACTION


def _planned_json(entry: PlannedMigration) -> dict[str, Any]:
    problem = entry.problem
    return {
        "name": entry.name,
        "statements": entry.statements,
        "transaction": entry.transaction,
        "foreign_keys_checked": entry.foreign_keys_checked,
        "seconds": None if entry.seconds is None else round(entry.seconds, 6),
        "problem": None
        if problem is None
        else {"kind": problem.kind, "line": problem.line, "message": problem.message},
    }


def _print_plan(plan: MigrationPlan) -> None:
    for problem in plan.problems:
        print(f"{'failed' if problem.kind == 'failed' else 'refused'}: {problem.message}")
    blocked = any(p.kind != "failed" for p in plan.problems)
    failed = next((p.name for p in plan.problems if p.kind == "failed"), None)
    before_failure = 0
    for entry in plan.pending:
        if entry.problem is not None:
            continue
        would_apply = not blocked and (failed is None or entry.name < failed)
        before_failure += would_apply
        how = "one transaction" if entry.transaction else "no transaction"
        if entry.foreign_keys_checked:
            how += ", foreign keys off then checked"
        if plan.executed:
            ran = "not run" if entry.seconds is None else f"ran in {duration(entry.seconds)}"
            how += f"; {ran} on a copy"
        verb = "would apply" if would_apply else "blocked    "
        print(f"{verb} {entry.name} ({plural(entry.statements, 'statement')}, {how})")
    for note in plan.notes:
        print(f"note: {note}")
    if blocked:
        print("nothing would be applied until the problems above are fixed; nothing was changed")
    elif failed is not None:
        print(
            f"migrate would apply {plural(before_failure, 'file')}, then stop at {failed}; "
            f"nothing was changed"
        )
    elif plan.pending:
        copy = ": every file ran on a copy" if plan.executed else ""
        print(f"{len(plan.pending)} to apply; nothing was changed (dry run{copy})")
    else:
        print("nothing to apply")


# -- status --------------------------------------------------------------------------


def _add_status(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    parser = command(
        commands,
        common,
        "status",
        "list applied, pending, modified and missing migrations (never writes)",
        "List every migration of DIR with its state in DB (applied, pending, modified,\n"
        "missing) and when it was applied. Opens DB read-only and never creates it: a\n"
        "missing DB shows everything pending. Exit 1 when anything is not applied.",
    )
    database_argument(parser, "database file (never created)")
    folder_argument(parser)
    json_option(parser)
    key_options(parser)
    parser.set_defaults(handler=_status)


def _status(args: argparse.Namespace) -> int:
    fill_defaults(args, "database", "migrations")
    statuses = migration_status(args.db, args.dir, key=key(args))
    counts = dict.fromkeys(("applied", "pending", "modified", "missing"), 0)
    for status in statuses:
        counts[status.state] += 1
    if args.json:
        print_json(
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
        print_rows([(s.state, s.name, s.applied_at or "") for s in statuses])
        if statuses:
            print(", ".join(f"{n} {state}" for state, n in counts.items() if n))
        else:
            print("no migrations")
    return EXIT_ACTION if any(s.state != "applied" for s in statuses) else EXIT_OK


# -- new -----------------------------------------------------------------------------


def _add_new(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    parser = command(
        commands,
        common,
        "new",
        "create the next numbered migration file",
        "Create DIR/NNN_NAME.sql with the next number, zero-padded to the width the folder's\n"
        "files use (3 digits in an empty folder), and print its path. DIR must exist.\n"
        "NAME is lower-case letters, digits and _ only, and must not name an existing\n"
        "migration.",
    )
    folder_argument(parser)
    parser.add_argument("name", metavar="NAME", help="what the migration does, e.g. add_tags")
    parser.add_argument(
        "--no-transaction",
        action="store_true",
        help=f"start the file with `{NO_TRANSACTION_MARKER}` (for VACUUM and the like)",
    )
    parser.set_defaults(handler=_new)


def _new(args: argparse.Namespace) -> int:
    fill_defaults(args, "migrations")
    created = new_migration(args.dir, args.name, no_transaction=args.no_transaction)
    print(created.path)
    return EXIT_OK


# -- lint ----------------------------------------------------------------------------


def _add_lint(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    parser = command(
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
    folder_argument(parser)
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
    json_option(parser)
    parser.set_defaults(handler=_lint)


def _lint(args: argparse.Namespace) -> int:
    fill_defaults(args, "migrations")
    report = lint_report(args.dir, ignore=args.ignore)
    if args.json:
        print_json(
            {
                "folder": os.path.abspath(args.dir),
                "files": len(report.files),
                "errors": report.errors,
                "warnings": report.warnings,
                "findings": [_finding_json(f) for f in report.findings],
            }
        )
    else:
        _print_findings(report.findings)
        print(
            f"{plural(len(report.files), 'file')}: {plural(report.errors, 'error')}, "
            f"{plural(report.warnings, 'warning')}"
        )
    return EXIT_ACTION if report.failed(strict=args.strict) else EXIT_OK


def _finding_json(finding: LintFinding) -> dict[str, Any]:
    return {
        "severity": finding.severity,
        "file": finding.file,
        "line": finding.line,
        "code": finding.code,
        "message": finding.message,
        "why": finding.why,
    }


def _print_findings(findings: tuple[LintFinding, ...]) -> None:
    explained: set[str] = set()
    for finding in findings:
        where = finding.file if finding.line is None else f"{finding.file}:{finding.line}"
        print(f"{where}: {finding.severity}: {finding.message} [{finding.code}]")
        if finding.code not in explained:  # the reason once per rule is enough
            print(f"    why: {finding.why}")
            explained.add(finding.code)


# -- verify --------------------------------------------------------------------------


def _add_verify(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    parser = command(
        commands,
        common,
        "verify",
        "compare the checksums of applied migrations with the files (never writes)",
        "Compare the SHA-256 checksum recorded for each applied migration in DB with the\n"
        "file in DIR. Exit 1 when an applied file was modified or is missing. Pending files\n"
        "are listed but not compared; rows the old runner left without a checksum are\n"
        "listed as unchecked.",
    )
    database_argument(parser, "database file (must exist; opened read-only)")
    folder_argument(parser)
    json_option(parser)
    key_options(parser)
    parser.set_defaults(handler=_verify)


def _verify(args: argparse.Namespace) -> int:
    fill_defaults(args, "database", "migrations")
    checks = verify_migrations(args.db, args.dir, key=key(args))
    failed = any(c.state in ("modified", "missing") for c in checks)
    if args.json:
        print_json(
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
    print_rows([(c.state, c.name, _verify_detail(c)) for c in checks])
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


#: This group's commands, in the order ``--help`` lists them.
COMMANDS: tuple[AddCommand, ...] = (_add_migrate, _add_status, _add_new, _add_lint, _add_verify)
