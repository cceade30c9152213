"""cf-db over every tenant: ``migrate --all ROOT DIR`` and ``diff --all ROOT DIR``.

Owns the options that pick and run the tenants (``--product-path``,
``--pattern``, ``--jobs``, ``--canary``, ``--max-failures``), the progress
display (count, rate and ETA on a terminal; one line a tenant otherwise) and
the report. The work is ``migrate_all`` and ``drift_all``; exit codes say
whether every tenant went through (0) or not (1).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import TextIO

from .. import (
    FanOutProgress,
    FanOutResult,
    Settings,
    TenantResult,
    drift_all,
    migrate_all,
    user_key_resolver,
)
from .options import default_source, fill_defaults, key
from .output import EXIT_ACTION, EXIT_OK, StatusLine, count, duration, print_json


def tenant_options(parser: argparse.ArgumentParser, *, canary: bool) -> None:
    """The options of a run over every tenant (``--all`` itself is the command's)."""
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--product-path",
        metavar="SUBPATH",
        help="each user's file under ROOT, e.g. kiwi.db or snipe/user.db, laid out as "
        f"user_db_path does (default: {default_source('product_path')})",
    )
    which.add_argument(
        "--pattern", metavar="GLOB", help="the tenant files as a glob under ROOT, e.g. '*/kiwi.db'"
    )
    parser.add_argument(
        "--user-keys",
        action="store_true",
        help="open each tenant with its own key, derived from $CF_SERVER_SECRET as "
        "user_key_resolver does (instead of one key for all)",
    )
    parser.add_argument(
        "--jobs",
        type=_positive_int,
        default=4,
        metavar="N",
        help="tenants at a time, in threads (default 4)",
    )
    if canary:
        parser.add_argument(
            "--canary",
            type=_positive_int,
            default=0,
            metavar="N",
            help="migrate tenants one at a time until N had something applied; stop at the "
            "first failure",
        )
        parser.add_argument(
            "--max-failures",
            type=_positive_int,
            default=None,
            metavar="N",
            help="stop starting tenants after N failures",
        )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {text}")
    return value


def _keys(args: argparse.Namespace) -> str | Callable[[str], bytes] | None:
    """One key for every tenant (--key-env/--key-file), each tenant's own (--user-keys), or none."""
    shared = key(args)
    if not args.user_keys:
        return shared
    if shared is not None:
        raise ValueError("--user-keys derives each tenant's key; drop --key-env/--key-file")
    secret = Settings.from_env().server_secret
    if secret is None:
        raise ValueError(
            "--user-keys derives each tenant's key from CF_SERVER_SECRET, which is not set; "
            "set it to the service's secret."
        )
    return user_key_resolver(args.db, secret)


def _fill(args: argparse.Namespace) -> None:
    """ROOT, DIR and which files are tenants, from the defaults where the command line has none."""
    fill_defaults(args, "data_root", "migrations")
    if args.pattern is None:
        fill_defaults(args, "product_path")


def migrate_every_tenant(args: argparse.Namespace) -> int:
    """``cf-db migrate --all ROOT DIR``."""
    _fill(args)
    display = _Display("migrated", quiet=args.json)
    result = migrate_all(
        args.db,
        args.dir,
        product_path=args.product_path,
        pattern=args.pattern,
        jobs=args.jobs,
        canary=args.canary,
        max_failures=args.max_failures,
        key=_keys(args),
        lock_timeout=args.lock_timeout,
        on_progress=display.progress,
    )
    display.finish()
    return _report(args, result)


def diff_every_tenant(args: argparse.Namespace) -> int:
    """``cf-db diff --all ROOT DIR``."""
    _fill(args)
    display = _Display("checked", quiet=args.json)
    result = drift_all(
        args.db,
        args.dir,
        product_path=args.product_path,
        pattern=args.pattern,
        jobs=args.jobs,
        key=_keys(args),
        ignore=args.ignore,
        on_progress=display.progress,
    )
    display.finish()
    return _report(args, result)


class _Display:
    """On a terminal: a status line (count, rate, ETA) and a line per problem as it happens.

    Elsewhere: one line per tenant on standard output. With ``--json``: only
    the status line, on a terminal.
    """

    def __init__(self, verb: str, *, quiet: bool, out: TextIO | None = None) -> None:
        self._verb = verb
        self._quiet = quiet
        self._out = sys.stdout if out is None else out
        self._status = StatusLine(sys.stderr) if sys.stderr.isatty() else None

    def progress(self, progress: FanOutProgress) -> None:
        result = progress.last
        if self._status is not None:
            if not result.ok and not self._quiet:
                self._status.print_above(tenant_line(result), self._out)
            self._status.show(_status_text(self._verb, progress), force=progress.done == 1)
        elif not self._quiet:
            print(tenant_line(result), file=self._out, flush=True)

    def finish(self) -> None:
        if self._status is not None:
            self._status.clear()


def _status_text(verb: str, progress: FanOutProgress) -> str:
    percent = 100 * progress.done // progress.total if progress.total else 100
    eta = progress.eta
    parts = [
        f"{verb} {count(progress.done)}/{count(progress.total)} tenants ({percent}%)",
        f"{progress.rate:,.0f}/s",
        f"ETA {duration(eta)}" if eta is not None else "ETA ?",
    ]
    if progress.failed:
        parts.append(f"{count(progress.failed)} failed")
    return ", ".join(parts)


_SHOWN: dict[str, Callable[[TenantResult], str]] = {
    "applied": lambda r: f"{', '.join(r.applied)} ({duration(r.seconds)})",
    "up to date": lambda r: "nothing to apply",
    "clean": lambda r: "clean",
    "drift": lambda r: _drift_summary(r),
    "failed": lambda r: _failure(r),
    "skipped": lambda r: r.error or "",
}


def tenant_line(result: TenantResult) -> str:
    """``applied     user001  004_pinned.sql (3.1 ms)``, one line whatever happened."""
    return f"{result.status:<10}  {result.tenant}  {_SHOWN[result.status](result)}"


def _failure(result: TenantResult) -> str:
    first = (result.error or "").splitlines()[0] if result.error else "failed"
    if result.migration is None or result.migration in first:
        return first  # a migration's message already names the file and the line
    return f"{result.migration}: {first}"


def _drift_summary(result: TenantResult) -> str:
    drift = result.drift
    if drift is None:
        return ""
    items = [str(d) for d in drift.differences] + list(drift.problems)
    shown = "; ".join(items[:3])
    more = f"; and {len(items) - 3} more" if len(items) > 3 else ""
    return f"{len(items)} difference(s): {shown}{more}"


def _report(args: argparse.Namespace, result: FanOutResult) -> int:
    if args.json:
        print_json(
            {
                "root": os.path.abspath(args.db),
                "folder": os.path.abspath(args.dir),
                **result.as_dict(),
            }
        )
        return EXIT_OK if result.ok else EXIT_ACTION
    counts = ", ".join(f"{count(n)} {status}" for status, n in result.counts().items())
    print(
        f"{count(result.total)} tenant{'s' if result.total != 1 else ''}"
        f"{': ' + counts if counts else ''} in {duration(result.elapsed)}"
    )
    if result.stopped is not None:
        print(
            f"stopped: {result.stopped}; {count(len(result.not_attempted))} tenants left as "
            f"they were (run again to go on)"
        )
    elif result.failures:
        print("each failed tenant is as it was before the failing file; fix it and run again")
    return EXIT_OK if result.ok else EXIT_ACTION
