"""Every tenant at once: find the per-user files under a data root, run one operation on each.

Owns finding tenant databases (the product's sub-path in every user folder,
as ``user_db_path`` lays them out, or a glob), running one operation over
them (parallel jobs, a canary, per-tenant failure isolation, a failure
limit), progress (count, rate, ETA) and the result that says whether every
tenant went through. Two operations use it: ``migrate_all``
(``run_migrations`` on each file) and ``drift_all`` (``schema_drift`` on
each). Never creates a tenant file: a file that is gone by the time its turn
comes, or that is not an SQLite database, is skipped and reported. Does not
print (the CLI does) and knows nothing of users beyond the folder layout.

Why threads, not processes: a tenant's migration is mostly SQLite work and
file-system calls (open, the WAL's fsync and checkpoint at close), during
which the GIL is released, so threads overlap the waits. Measured on 2
cores (``make bench``, section tenants): files just written, where the
fsyncs dominate, 15 to 20 ms a tenant one at a time, about 2.5 with 4 or 8
threads, 5 to 6 with 2 processes; files already in the page cache, 1.9 ms
sequential, 1.5 with 4 threads, 1.5 with 2 processes. Processes would add
start-up and pickling and gain nothing.

Why it is safe beside a running service: each file is migrated by
``run_migrations``, which holds SQLite's write lock for each migration file
(requests wait on their busy timeout, then go on) and skips any file another
process (the service migrating on first checkout) applied meanwhile.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .cipher import Key
from .connect import Connection, get_db
from .errors import MigrationError, OpenError, UnsafePathError
from .migrations import (
    DEFAULT_LOCK_TIMEOUT,
    MigrationFile,
    MigrationsDir,
    SchemaDrift,
    drift_from,
    read_migrations,
    run_migrations,
)
from .sqlite_facts import COMPANION_SUFFIXES, HEADER, MIGRATION_LOCK_SUFFIX
from .tenancy import user_db_path

logger = logging.getLogger("circuitforge_core.db")

DEFAULT_JOBS = 4
KeySource = Key | Callable[[str], Key] | None
TenantStatus = Literal["applied", "up to date", "clean", "drift", "failed", "skipped"]
SUCCESSES: frozenset[str] = frozenset({"applied", "up to date", "clean"})


# -- finding the tenants ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TenantDatabase:
    """One tenant's database file under the data root.

    ``tenant`` is the first folder under the root (the user id in the
    ``user_db_path`` layout). ``problem`` says why the file must not be
    touched (a link leading out of the root), None for a usable one.
    """

    tenant: str
    path: str
    problem: str | None = None


def find_tenant_databases(
    root: str | os.PathLike[str],
    *,
    product_path: str | None = None,
    pattern: str | None = None,
) -> list[TenantDatabase]:
    """The tenant files under ``root``, sorted by path; never creates anything.

    ``product_path`` (``"kiwi.db"``, ``"snipe/user.db"``): the file at that
    sub-path in every user folder, as ``user_db_path(root, user, product_path)``
    names it; folders whose name is not a valid user id, and users without
    the file, are not tenants of this product. ``pattern``: a glob relative
    to ``root`` (``"*/kiwi.db"``, ``"**/*.sqlite3"``) for other layouts;
    SQLite's companion files (``-wal``, ``-shm``, ``-journal``) never match.
    Give exactly one of the two.
    """
    if (product_path is None) == (pattern is None):
        raise ValueError("give exactly one of product_path (e.g. 'kiwi.db') and pattern")
    root_path = os.path.abspath(os.fspath(root))
    if not os.path.isdir(root_path):
        raise OpenError(
            root_path,
            f"the data root {root_path} does not exist (or is not a folder); pass the folder "
            f"that holds one folder per user (CLOUD_DATA_ROOT).",
        )
    if product_path is not None:
        return _by_product_path(root_path, product_path)
    assert pattern is not None
    return _by_pattern(root_path, pattern)


def _by_product_path(root: str, product_path: str) -> list[TenantDatabase]:
    user_db_path(root, "tenant", product_path, create=False)  # a bad sub-path fails here
    found = []
    with os.scandir(root) as entries:
        folders = sorted(entry.name for entry in entries if entry.is_dir())
    for user_id in folders:
        try:
            path = user_db_path(root, user_id, product_path, create=False)
        except UnsafePathError as exc:
            if not _has_link(root, user_id, product_path):
                continue  # ".snapshots", "lost+found": not a user folder
            found.append(
                TenantDatabase(user_id, os.path.join(root, user_id, product_path), str(exc))
            )
            continue
        except OpenError as exc:  # a file where a folder of the sub-path should be
            found.append(
                TenantDatabase(user_id, os.path.join(root, user_id, product_path), str(exc))
            )
            continue
        if os.path.lexists(path):
            found.append(TenantDatabase(user_id, str(path)))
    return found


def _has_link(root: str, user_id: str, product_path: str) -> bool:
    """Whether a symbolic link lies on the way from ``root`` to the tenant's file."""
    current = root
    for name in [user_id, *product_path.split("/")]:
        current = os.path.join(current, name)
        if os.path.islink(current):
            return True
    return False


def _by_pattern(root: str, pattern: str) -> list[TenantDatabase]:
    if os.path.isabs(pattern) or ".." in Path(pattern).parts:
        raise UnsafePathError(
            f"the pattern {pattern!r} could reach outside the data root; give a glob relative "
            f"to it, such as '*/kiwi.db'.",
            value=pattern,
        )
    real_root = os.path.realpath(root)
    found = []
    for match in sorted(Path(root).glob(pattern)):
        if match.name.endswith((*COMPANION_SUFFIXES, MIGRATION_LOCK_SUFFIX)) or match.is_dir():
            continue
        relative = match.relative_to(root)
        tenant = relative.parts[0]
        real = os.path.realpath(match)
        problem = None
        if os.path.commonpath([real_root, real]) != real_root:
            problem = (
                f"{match} leads to {real}, outside the data root {real_root}; refusing to "
                f"touch it. Remove the link."
            )
        found.append(TenantDatabase(tenant, str(match), problem))
    return found


# -- results -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TenantResult:
    """What happened to one tenant.

    ``status``: ``applied`` (files were applied, named in ``applied``), ``up
    to date``, ``clean`` or ``drift`` (for drift checks, with ``drift``),
    ``failed`` (``error`` says why; ``migration`` and ``line`` name the file
    and line when a migration failed, ``applied`` what went in before it) or
    ``skipped`` (not touched: ``error`` says why).
    """

    tenant: str
    path: str
    status: TenantStatus
    seconds: float = 0.0
    applied: tuple[str, ...] = ()
    migration: str | None = None
    line: int | None = None
    error: str | None = None
    drift: SchemaDrift | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.status in SUCCESSES

    def as_dict(self) -> dict[str, object]:
        document: dict[str, object] = {
            "tenant": self.tenant,
            "path": self.path,
            "status": self.status,
            "seconds": round(self.seconds, 6),
            "applied": list(self.applied),
            "migration": self.migration,
            "line": self.line,
            "error": self.error,
        }
        if self.drift is not None:
            document["differences"] = [d.as_dict() for d in self.drift.differences]
            document["problems"] = list(self.drift.problems)
        return document


@dataclass(frozen=True, slots=True)
class FanOutProgress:
    """Where a run over the tenants stands, after ``last`` finished."""

    done: int
    total: int
    failed: int
    elapsed: float
    last: TenantResult

    @property
    def rate(self) -> float:
        """Tenants finished per second so far."""
        return self.done / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds until every tenant is done at the rate so far; None before there is one."""
        rate = self.rate
        return (self.total - self.done) / rate if rate > 0 else None


Progress = Callable[[FanOutProgress], None]


@dataclass(frozen=True, slots=True)
class FanOutResult:
    """What a run over every tenant did.

    ``results`` holds one entry per tenant that was attempted, in the order
    the tenants were found; ``not_attempted`` the tenants left untouched
    because the run stopped early, and ``stopped`` why (the canary failed, the
    failure limit was reached), None when it ran to the end. ``ok``: every
    tenant went through (applied, up to date or clean) and none was left out.
    """

    operation: Literal["migrate", "drift"]
    results: tuple[TenantResult, ...]
    not_attempted: tuple[TenantDatabase, ...]
    stopped: str | None
    elapsed: float

    @property
    def total(self) -> int:
        return len(self.results) + len(self.not_attempted)

    @property
    def ok(self) -> bool:
        return not self.not_attempted and all(result.ok for result in self.results)

    @property
    def failures(self) -> list[TenantResult]:
        return [result for result in self.results if result.status == "failed"]

    @property
    def skipped(self) -> list[TenantResult]:
        return [result for result in self.results if result.status == "skipped"]

    def count(self, status: TenantStatus) -> int:
        return sum(result.status == status for result in self.results)

    def counts(self) -> dict[str, int]:
        """Tenants per status, plus ``not attempted``; statuses nobody had are left out."""
        counts: dict[str, int] = {}
        for result in self.results:
            counts[result.status] = counts.get(result.status, 0) + 1
        if self.not_attempted:
            counts["not attempted"] = len(self.not_attempted)
        return counts

    def as_dict(self) -> dict[str, object]:
        return {
            "operation": self.operation,
            "ok": self.ok,
            "total": self.total,
            "counts": self.counts(),
            "stopped": self.stopped,
            "seconds": round(self.elapsed, 3),
            "tenants": [result.as_dict() for result in self.results],
            "not_attempted": [{"tenant": t.tenant, "path": t.path} for t in self.not_attempted],
        }


# -- the two operations --------------------------------------------------------------


def migrate_all(
    root: str | os.PathLike[str],
    migrations_dir: MigrationsDir,
    *,
    product_path: str | None = None,
    pattern: str | None = None,
    jobs: int = DEFAULT_JOBS,
    canary: int = 0,
    max_failures: int | None = None,
    key: KeySource = None,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    rehearse: bool = True,
    on_progress: Progress | None = None,
) -> FanOutResult:
    """Apply ``migrations_dir`` to every tenant file under ``root``.

    Tenants are found as ``find_tenant_databases`` does (``product_path`` or
    ``pattern``). First, with ``rehearse``, the whole folder is applied to an
    empty in-memory database: a folder that cannot build a new tenant raises
    its ``MigrationError`` before any tenant is touched. Then, with
    ``canary=N``, tenants are migrated one at a time until N of them had
    something applied, and the run stops at the first failure; the rest run
    ``jobs`` at a time. A tenant's failure is recorded (file, line, error) and
    the others go on, unless ``max_failures`` are reached. Each file is
    applied atomically, so a rerun is the resume: tenants already migrated
    cost a no-op. ``key`` opens encrypted files: a key, or a function of the
    path (``user_key_resolver``). ``on_progress`` is called after each tenant,
    from the calling thread.
    """
    read_migrations(migrations_dir)  # a bad folder fails before anything is opened
    if rehearse:
        _rehearse(migrations_dir)
    tenants = find_tenant_databases(root, product_path=product_path, pattern=pattern)

    def operation(tenant: TenantDatabase) -> TenantResult:
        return _migrate_one(tenant, migrations_dir, key, lock_timeout)

    return _fan_out(
        "migrate",
        tenants,
        operation,
        jobs=jobs,
        canary=canary,
        max_failures=max_failures,
        on_progress=on_progress,
    )


def drift_all(
    root: str | os.PathLike[str],
    migrations_dir: MigrationsDir,
    *,
    product_path: str | None = None,
    pattern: str | None = None,
    jobs: int = DEFAULT_JOBS,
    key: KeySource = None,
    ignore: Sequence[str] = (),
    on_progress: Progress | None = None,
) -> FanOutResult:
    """``schema_drift`` of every tenant file under ``root``; opens each read-only.

    A tenant is ``clean`` or has ``drift`` (its ``drift`` holds each
    difference); ``ok`` means every tenant is clean. Tenants sharing one
    migration history share one scratch build, so each costs little more
    than reading its schema.
    """
    files = read_migrations(migrations_dir)  # once: every tenant is held to the same folder
    tenants = find_tenant_databases(root, product_path=product_path, pattern=pattern)

    def operation(tenant: TenantDatabase) -> TenantResult:
        return _drift_one(tenant, files, migrations_dir, key, ignore)

    return _fan_out(
        "drift", tenants, operation, jobs=jobs, canary=0, max_failures=None, on_progress=on_progress
    )


def _rehearse(migrations_dir: MigrationsDir) -> None:
    scratch = sqlite3.connect(":memory:")
    try:
        scratch.execute("PRAGMA foreign_keys=ON")
        try:
            run_migrations(scratch, migrations_dir)
        except MigrationError as exc:
            raise MigrationError(
                f"the migrations do not apply to an empty database, so no tenant was touched: "
                f"{exc}",
                name=exc.name,
            ) from exc
    finally:
        scratch.close()


def _migrate_one(
    tenant: TenantDatabase, migrations_dir: MigrationsDir, key: KeySource, lock_timeout: float
) -> TenantResult:
    started = time.perf_counter()
    opened = _open_tenant(tenant, key, readonly=False)
    if isinstance(opened, TenantResult):
        return opened
    applied: list[str] = []
    try:
        run_migrations(
            opened,
            migrations_dir,
            lock_timeout=lock_timeout,
            on_applied=lambda name, _seconds: applied.append(name),
        )
    except MigrationError as exc:
        return _failed(tenant, started, exc, applied, migration=exc.name, line=_line_of(exc))
    except Exception as exc:  # isolation: one tenant's trouble never stops the others
        return _failed(tenant, started, exc, applied)
    finally:
        opened.close()
    seconds = time.perf_counter() - started
    if applied:
        logger.info(
            "tenant %s (%s): applied %s in %.1f ms",
            tenant.tenant,
            tenant.path,
            ", ".join(applied),
            seconds * 1000,
        )
    status: TenantStatus = "applied" if applied else "up to date"
    return TenantResult(tenant.tenant, tenant.path, status, seconds, tuple(applied))


def _drift_one(
    tenant: TenantDatabase,
    files: list[MigrationFile],
    migrations_dir: MigrationsDir,
    key: KeySource,
    ignore: Sequence[str],
) -> TenantResult:
    started = time.perf_counter()
    opened = _open_tenant(tenant, key, readonly=True)
    if isinstance(opened, TenantResult):
        return opened
    try:
        drift = drift_from(opened, files, migrations_dir, ignore=ignore)
    except Exception as exc:  # isolation, as above
        return _failed(tenant, started, exc, [])
    finally:
        opened.close()
    status: TenantStatus = "clean" if drift.clean else "drift"
    return TenantResult(
        tenant.tenant,
        tenant.path,
        status,
        time.perf_counter() - started,
        applied=drift.applied,
        drift=drift,
    )


def _line_of(exc: MigrationError) -> int | None:
    line = getattr(exc, "line", None)
    return line if isinstance(line, int) and line > 0 else None


def _failed(
    tenant: TenantDatabase,
    started: float,
    exc: BaseException,
    applied: list[str],
    *,
    migration: str | None = None,
    line: int | None = None,
) -> TenantResult:
    message = (
        str(exc) if isinstance(exc, MigrationError | OpenError) else f"{type(exc).__name__}: {exc}"
    )
    first_line = message.splitlines()[0] if message else type(exc).__name__
    logger.warning("tenant %s (%s) failed: %s", tenant.tenant, tenant.path, first_line)
    return TenantResult(
        tenant.tenant,
        tenant.path,
        "failed",
        time.perf_counter() - started,
        tuple(applied),
        migration,
        line,
        message,
    )


def _skipped(tenant: TenantDatabase, reason: str) -> TenantResult:
    logger.warning("tenant %s skipped: %s", tenant.tenant, reason)
    return TenantResult(tenant.tenant, tenant.path, "skipped", error=reason)


def _open_tenant(
    tenant: TenantDatabase, key: KeySource, *, readonly: bool
) -> Connection | TenantResult:
    """An open connection to an existing tenant file, or the skipped result saying why not."""
    if tenant.problem is not None:
        return _skipped(tenant, tenant.problem)
    path = tenant.path
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return _skipped(
            tenant, f"{path} no longer exists (deleted since the run began); left alone"
        )
    except OSError as exc:
        return _skipped(tenant, f"{path}: {exc.strerror or exc}")
    if not stat.S_ISREG(info.st_mode):
        return _skipped(tenant, f"{path} is not a regular file")
    try:
        file_key = key(path) if callable(key) else key
    except Exception as exc:  # the resolver refused this path
        return _skipped(tenant, f"no key for {path}: {exc}")
    if file_key is None and info.st_size > 0:
        header = _header(path)
        if header != HEADER:
            return _skipped(
                tenant,
                f"{path} is not an SQLite database (it starts with {header[:16]!r}); if it is "
                f"encrypted, pass its key",
            )
    try:
        return get_db(path, readonly=readonly, key=file_key, create=False)
    except OpenError as exc:
        if exc.reason == "missing":  # deleted between the stat and the open: left alone
            return _skipped(tenant, f"{path} no longer exists (deleted during the run); left alone")
        return _failed(tenant, time.perf_counter(), exc, [])
    except Exception as exc:
        return _failed(tenant, time.perf_counter(), exc, [])


def _header(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(len(HEADER))
    except OSError:
        return b""


# -- running an operation over the tenants ------------------------------------------


def _fan_out(
    operation_name: Literal["migrate", "drift"],
    tenants: Sequence[TenantDatabase],
    operation: Callable[[TenantDatabase], TenantResult],
    *,
    jobs: int,
    canary: int,
    max_failures: int | None,
    on_progress: Progress | None,
) -> FanOutResult:
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, not {jobs}")
    if canary < 0:
        raise ValueError(f"canary must be 0 or more, not {canary}")
    if max_failures is not None and max_failures < 1:
        raise ValueError(f"max_failures must be at least 1, not {max_failures}")
    run = _Run(len(tenants), max_failures, on_progress)
    position = 0
    if canary:
        while position < len(tenants) and run.canaries < canary and run.stopped is None:
            result = operation(tenants[position])
            run.record(position, result)
            position += 1
            if result.status == "applied":
                run.canaries += 1
            elif result.status == "failed":
                run.stopped = f"canary failed at tenant {result.tenant}"
    remaining = list(enumerate(tenants))[position:]
    if run.stopped is None:
        if jobs == 1:
            for index, tenant in remaining:
                if run.stopped is not None:
                    break
                run.record(index, operation(tenant))
        else:
            _in_threads(remaining, operation, jobs, run)
    results = tuple(run.results[index] for index in sorted(run.results))
    not_attempted = tuple(t for index, t in enumerate(tenants) if index not in run.results)
    return FanOutResult(
        operation_name, results, not_attempted, run.stopped, time.perf_counter() - run.started
    )


class _Run:
    """The bookkeeping of one fan-out, touched by the calling thread only."""

    def __init__(self, total: int, max_failures: int | None, on_progress: Progress | None):
        self.total = total
        self.max_failures = max_failures
        self.on_progress = on_progress
        self.results: dict[int, TenantResult] = {}
        self.failed = 0
        self.canaries = 0
        self.stopped: str | None = None
        self.started = time.perf_counter()

    def record(self, index: int, result: TenantResult) -> None:
        self.results[index] = result
        if result.status == "failed":
            self.failed += 1
            if self.max_failures is not None and self.failed >= self.max_failures:
                self.stopped = self.stopped or f"{self.failed} tenants failed (the limit)"
        if self.on_progress is not None:
            elapsed = time.perf_counter() - self.started
            self.on_progress(
                FanOutProgress(len(self.results), self.total, self.failed, elapsed, result)
            )


def _in_threads(
    work: Iterable[tuple[int, TenantDatabase]],
    operation: Callable[[TenantDatabase], TenantResult],
    jobs: int,
    run: _Run,
) -> None:
    """Run ``operation`` over ``work`` ``jobs`` at a time, never queueing far ahead.

    Only ``2 * jobs`` tenants are handed to the threads at once, so a stop
    (the failure limit, Ctrl-C, an exception from the progress callback)
    leaves the rest untouched; tenants already running finish, each atomically.
    """
    pending = iter(work)
    in_flight: dict[Future[TenantResult], int] = {}
    pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="cf-db-fan-out")
    try:
        while True:
            while run.stopped is None and len(in_flight) < 2 * jobs:
                item = next(pending, None)
                if item is None:
                    break
                index, tenant = item
                in_flight[pool.submit(operation, tenant)] = index
            if not in_flight:
                break
            done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in done:
                run.record(in_flight.pop(future), future.result())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
