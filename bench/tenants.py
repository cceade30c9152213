"""Tenants section: one migrations folder over 10,000 per-user files.

Owns the figures issue 12 asks for:

1. ``migrate_all`` over 10,000 tenant files (each with the notes schema and
   a few rows, one new file to apply): the whole run with jobs, per tenant;
   the no-op rerun; ``drift_all`` over the same files;
2. per tenant, side by side in interleaved chunks of fresh copies:
   ``run_migrations`` in a plain loop (the baseline), ``migrate_all`` with
   one job, 4 and 8 threads, and 2 processes running the plain loop (what a
   process pool would give; the library uses threads);
3. the no-op rerun and the drift check per tenant, against the plain loop's
   no-op rerun;
4. the request path with metrics on against metrics off (goal: at most 5 %
   slower): a pooled read request, and a pooled write request in
   ``transaction()``.

Tenant files are copies of one template, so building 10,000 of them takes
seconds. Ratios are medians of interleaved chunks from this same run.
"""

from __future__ import annotations

import multiprocessing
import os
import platform
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from circuitforge_core.db import (
    PoolRegistry,
    current_db_path,
    drift_all,
    get_db,
    metrics,
    migrate_all,
    run_migrations,
    transaction,
    use_db,
    user_db_path,
)

from .measure import alternate, columns, duration, heading, median, note, per_call, ratio_line

NOTES_MIGRATIONS = Path(__file__).resolve().parent.parent / "examples" / "notes" / "migrations"
NEW_FILE = (
    "004_pinned.sql",
    "ALTER TABLE notes ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0;\n"
    "CREATE INDEX IF NOT EXISTS notes_pinned ON notes (pinned);\n",
)
TENANTS = 10_000
PRODUCT = "kiwi.db"
CHUNK = 200
ROUNDS = 4


def run() -> None:
    with tempfile.TemporaryDirectory(prefix="cf-bench-tenants-") as tmp:
        base = Path(tmp)
        print(
            f"SQLite {sqlite3.sqlite_version}, Python {platform.python_version()}, "
            f"{os.cpu_count()} CPUs; medians of interleaved chunks, ratio = ours / baseline",
            flush=True,
        )
        old, new = _folders(base)
        template = _template(base, old)
        bench_metrics(base)
        bench_whole_run(base, template, new)
        bench_side_by_side(base, template, new)


def _folders(base: Path) -> tuple[Path, Path]:
    old = base / "migrations-old"
    shutil.copytree(NOTES_MIGRATIONS, old)
    new = base / "migrations-new"
    shutil.copytree(NOTES_MIGRATIONS, new)
    (new / NEW_FILE[0]).write_text(NEW_FILE[1], encoding="utf-8")
    return old, new


def _template(base: Path, migrations: Path) -> Path:
    """One tenant's file, migrated to the old folder, a few rows in it, WAL checkpointed away."""
    path = base / "template.db"
    db = get_db(path)
    try:
        run_migrations(db, migrations)
        for number in range(20):
            db.execute(
                "INSERT INTO notes (title, body) VALUES (?, ?)", (f"note {number}", "x" * 200)
            )
        db.commit()
    finally:
        db.close()
    return path


def _tenants(root: Path, template: Path, count: int, start: int = 0) -> list[str]:
    """``count`` tenant files under ``root`` in the user_db_path layout, copies of the template."""
    paths = []
    for number in range(start, start + count):
        folder = root / f"user{number:05d}"
        folder.mkdir(mode=0o700)
        path = folder / PRODUCT
        shutil.copyfile(template, path)
        paths.append(str(path))
    return paths


# -- 1. the whole run --------------------------------------------------------------------


def bench_whole_run(base: Path, template: Path, new: Path) -> None:
    heading(f"migrate_all over {TENANTS:,} tenant files (one new migration each), jobs=4")
    root = base / "all"
    root.mkdir()
    started = time.perf_counter()
    _tenants(root, template, TENANTS)
    note(f"{TENANTS:,} tenant files copied in {time.perf_counter() - started:.1f} s")
    for label, action in (
        ("migrate_all (applies 004)", lambda: migrate_all(root, new, product_path=PRODUCT)),
        ("migrate_all again (no-op rerun)", lambda: migrate_all(root, new, product_path=PRODUCT)),
        ("drift_all", lambda: drift_all(root, new, product_path=PRODUCT)),
    ):
        started = time.perf_counter()
        result = action()
        seconds = time.perf_counter() - started
        counts = ", ".join(f"{n} {status}" for status, n in result.counts().items())
        print(
            f"  {label:<34} {seconds:>7.1f} s   {duration(seconds / TENANTS):>10} a tenant"
            f"   ({counts}; ok={result.ok})",
            flush=True,
        )


# -- 2. and 3. side by side --------------------------------------------------------------


def _plain_one(path: str, folder: str) -> int:
    """What a product would write without migrate_all: open, run_migrations, close."""
    db = get_db(path)
    try:
        return len(run_migrations(db, folder))
    finally:
        db.close()


def _plain_loop(paths: list[str], folder: Path) -> None:
    for path in paths:
        _plain_one(path, str(folder))


def bench_side_by_side(base: Path, template: Path, new: Path) -> None:
    heading(f"per tenant, {ROUNDS} interleaved chunks of {CHUNK} fresh tenant files each")
    columns("ours", "plain loop")
    counter = iter(range(10**9))
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(2, mp_context=context) as processes:
        list(processes.map(_plain_one, [], []))  # start the workers before timing

        def fresh() -> tuple[Path, list[str]]:
            root = base / f"chunk{next(counter)}"
            root.mkdir()
            return root, _tenants(root, template, CHUNK)

        def timed(action: Callable[[Path, list[str]], object]) -> Callable[[], float]:
            def case() -> float:
                root, paths = fresh()
                started = time.perf_counter()
                action(root, paths)
                seconds = (time.perf_counter() - started) / CHUNK
                shutil.rmtree(root)
                return seconds

            return case

        def processes_loop(root: Path, paths: list[str]) -> None:
            list(processes.map(_plain_one, paths, [str(new)] * len(paths), chunksize=16))

        def fan_out(jobs: int) -> Callable[[Path, list[str]], object]:
            return lambda root, paths: migrate_all(root, new, product_path=PRODUCT, jobs=jobs)

        samples = alternate(
            {
                "plain": timed(lambda root, paths: _plain_loop(paths, new)),
                "jobs1": timed(fan_out(1)),
                "jobs4": timed(fan_out(4)),
                "jobs8": timed(fan_out(8)),
                "processes2": timed(processes_loop),
            },
            ROUNDS,
        )
    plain = median(samples["plain"])
    for key, label in (
        ("jobs1", "migrate_all, jobs=1"),
        ("jobs4", "migrate_all, jobs=4 (default)"),
        ("jobs8", "migrate_all, jobs=8"),
        ("processes2", "2 processes, plain loop (not offered)"),
    ):
        ratio_line(label, median(samples[key]), plain, "(context)", None)
    jobs1, jobs4 = median(samples["jobs1"]), median(samples["jobs4"])
    note(
        f"fan-out bookkeeping (header check, result) at jobs=1: {(jobs1 - plain) * 1e6:+.0f} us "
        f"a tenant; jobs=4 is {plain / jobs4:.1f}x the plain loop's speed"
    )

    root = base / "noop"
    root.mkdir()
    paths = _tenants(root, template, CHUNK)
    _plain_loop(paths, new)

    def noop_plain() -> float:
        started = time.perf_counter()
        _plain_loop(paths, new)
        return (time.perf_counter() - started) / CHUNK

    def noop_fan_out(jobs: int) -> Callable[[], float]:
        def case() -> float:
            started = time.perf_counter()
            migrate_all(root, new, product_path=PRODUCT, jobs=jobs)
            return (time.perf_counter() - started) / CHUNK

        return case

    def drift(jobs: int) -> Callable[[], float]:
        def case() -> float:
            started = time.perf_counter()
            drift_all(root, new, product_path=PRODUCT, jobs=jobs)
            return (time.perf_counter() - started) / CHUNK

        return case

    noop = alternate(
        {
            "plain": noop_plain,
            "fan1": noop_fan_out(1),
            "fan4": noop_fan_out(4),
            "drift1": drift(1),
            "drift4": drift(4),
        },
        ROUNDS,
    )
    baseline = median(noop["plain"])
    heading("nothing pending, and the drift check, per tenant")
    columns("ours", "plain no-op")
    for key, label in (
        ("fan1", "migrate_all no-op rerun, jobs=1"),
        ("fan4", "migrate_all no-op rerun, jobs=4"),
        ("drift1", "drift_all, jobs=1"),
        ("drift4", "drift_all, jobs=4"),
    ):
        ratio_line(label, median(noop[key]), baseline, "(context)", None)


# -- 4. metrics on and off ---------------------------------------------------------------

QUERY = "SELECT id, title, body FROM notes WHERE id = ?"


def bench_metrics(base: Path) -> None:
    heading("the request path with metrics on against off (recording only; no exporter)")
    columns("on", "off")
    root = base / "metrics-root"
    root.mkdir()
    path = user_db_path(root, "user", "notes.db")
    with PoolRegistry(migrations=NOTES_MIGRATIONS) as registry:

        def read() -> None:
            with use_db(path), registry.connection(current_db_path()) as db:
                db.execute(QUERY, (1,)).fetchall()

        def write() -> None:
            with use_db(path), registry.connection(current_db_path()) as db, transaction(db):
                db.execute("INSERT INTO notes (title, body) VALUES ('n', 'b')")

        def switched(request: Callable[[], None], on: bool) -> Callable[[], None]:
            # The switch costs the same on both sides; each call runs as it would with
            # recording on or off for good.
            def call() -> None:
                metrics.set_enabled(on)
                request()

            return call

        try:
            reads = per_call(
                {"on": switched(read, True), "off": switched(read, False)}, batch=200, rounds=201
            )
            writes = per_call(
                {"on": switched(write, True), "off": switched(write, False)}, batch=40, rounds=201
            )
        finally:
            metrics.set_enabled(True)
    for samples, label in (
        (reads, "pooled read request (checkout, query, return)"),
        (writes, "pooled write request in transaction()"),
    ):
        on, off = median(samples["on"]), median(samples["off"])
        # The goal is judged on the ratio within each round (both sides ran back to
        # back), so a neighbour's burst or a checkpoint lands on one round, not one side.
        paired = median([a / b for a, b in zip(samples["on"], samples["off"], strict=True)])
        ratio_line(label, on, off, "<= 1.05x", paired <= 1.05)
        note(f"median of the 201 per-round ratios: {paired:.3f}x")
    recording = _recording_cost()
    note(
        "on: per checkout the use time (one more clock read) and, when it waited, the wait; "
        "per transaction the lock wait, BEGIN IMMEDIATE wait and duration"
    )
    note(
        f"the recording itself, timed alone: {recording * 1e6:.2f} us per transaction "
        f"(three clock reads and one observe_transaction), "
        f"{recording / median(writes['off']):.1%} of a write request"
    )


def _recording_cost() -> float:
    """Seconds per transaction of what recording adds, without the transaction around it."""
    clock = time.perf_counter

    def record() -> None:
        granted = clock()
        begun = clock()
        metrics.observe_transaction(None, begun - granted, clock() - begun, False)

    return median(per_call({"record": record}, batch=10_000, rounds=21)["record"])
