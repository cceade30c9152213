"""Pool section: pooled connections against opening one per request, and 10,000 users.

Owns the three figures issue 3 asks for and their goals:

1. a pooled checkout + return against a fresh ``get_db`` + close (goal >= 10x faster);
2. one request the way products do it today (``get_connection``, its pragmas,
   ``run_migrations`` on the example's folder, one query, close) against the
   pooled request path (``user_db_path``, ``use_db``, a registry checkout, the
   same query) (goal >= 10x faster);
3. 10,000 distinct user databases touched from one process through a
   registry capped at 256 connections: the most file descriptors ever open
   (against 3 per connection plus a small constant), each database migrated
   exactly once, the first-touch cost per user, and per-request p50/p99 for a
   hot set of users and for requests spread over all 10,000.

Ratios are medians of interleaved batches from this same run; the absolute
figures are this shared machine's.
"""

from __future__ import annotations

import gc
import os
import platform
import random
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from circuitforge_core.db import (
    ConnectionPool,
    PoolRegistry,
    current_db_path,
    get_connection,
    get_db,
    run_migrations,
    use_db,
    user_db_path,
)

from .measure import columns, duration, heading, median, note, per_call, percentile, ratio_line
from .old_runner import connect_old, run_old_migrations

NOTES_MIGRATIONS = Path(__file__).resolve().parent.parent / "examples" / "notes" / "migrations"
QUERY = "SELECT id, title, body FROM notes WHERE id = ?"  # one point read: (1,)
USERS = 10_000
CAP = 256
MEMORY_FROM = 2_000  # users touched before the memory baseline
FD_SLACK = 16  # sockets, the migrations folder scan, a log file: what "small constant" allows


def run() -> None:
    with tempfile.TemporaryDirectory(prefix="cf-bench-pool-") as tmp:
        folder = Path(tmp)
        print(
            f"SQLite {sqlite3.sqlite_version}, Python {platform.python_version()}, "
            f"{os.cpu_count()} CPUs; medians of interleaved batches, ratio = ours / baseline",
            flush=True,
        )
        bench_checkout(folder)
        bench_request(folder)
        bench_many_users(folder)


def _goal_row(
    label: str, samples: dict[str, list[float]], ours: str, baseline: str, *, goal: bool = True
) -> None:
    mine, theirs = median(samples[ours]), median(samples[baseline])
    if goal:
        ratio_line(label, mine, theirs, "<= 0.10x", mine <= 0.10 * theirs)
    else:
        ratio_line(label, mine, theirs, "(context)", None)
    note(f"{theirs / mine:.1f}x faster")


# -- 1. checkout + return ------------------------------------------------------------------


def bench_checkout(tmp: Path) -> None:
    heading("1. a connection for one block: pooled checkout + return vs get_db + close")
    columns("pool", "get_db")
    pooled_path, fresh_path = tmp / "pooled.db", tmp / "fresh.db"
    get_db(fresh_path).close()
    with ConnectionPool(pooled_path) as pool:

        def pooled() -> None:
            with pool.connection():
                pass

        def fresh() -> None:
            get_db(fresh_path).close()

        samples = per_call({"pool": pooled, "get_db": fresh}, batch=100, rounds=41)
        _goal_row("get_db as the file's only connection", samples, "pool", "get_db")
        holder = get_db(fresh_path)  # a concurrent request keeps the file open
        try:
            samples = per_call({"pool": pooled, "get_db": fresh}, batch=200, rounds=41)
        finally:
            holder.close()
        _goal_row("get_db while another connection is open", samples, "pool", "get_db")


# -- 2. one request ------------------------------------------------------------------------


def bench_request(tmp: Path) -> None:
    heading(
        "2. one request: pooled path vs today's (get_connection, pragmas, run_migrations, "
        "query, close)"
    )
    columns("pooled", "today")
    root = tmp / "request-root"
    root.mkdir()
    for user in ("today", "pooled", "before"):
        db = get_db(user_db_path(root, user, "notes.db"))
        run_migrations(db, NOTES_MIGRATIONS)
        db.executemany("INSERT INTO notes (title) VALUES (?)", [(f"note {i}",) for i in range(50)])
        db.commit()
        db.close()

    def today() -> None:
        db = get_connection(os.path.join(root, "today", "notes.db"))
        try:
            run_migrations(db, NOTES_MIGRATIONS)
            db.execute(QUERY, (1,)).fetchall()
        finally:
            db.close()

    def before() -> None:  # the old factory and the old runner, as products ship today
        db = connect_old(root / "before" / "notes.db")
        try:
            run_old_migrations(db, NOTES_MIGRATIONS)
            db.execute(QUERY, (1,)).fetchall()
        finally:
            db.close()

    with PoolRegistry(migrations=NOTES_MIGRATIONS) as registry:

        def pooled() -> None:
            with (
                use_db(user_db_path(root, "pooled", "notes.db")),
                registry.connection(current_db_path()) as db,
            ):
                db.execute(QUERY, (1,)).fetchall()

        cases = {"pooled": pooled, "today": today, "before": before}
        samples = per_call(cases, batch=50, rounds=41)
        _goal_row("today's connection is the file's only one", samples, "pooled", "today")
        _goal_row("  old factory + old runner, likewise", samples, "pooled", "before", goal=False)
        holders = [get_db(root / name / "notes.db") for name in ("today", "before")]
        try:
            samples = per_call(cases, batch=100, rounds=41)
        finally:
            for holder in holders:
                holder.close()
        _goal_row("another connection holds the file open", samples, "pooled", "today")
        _goal_row("  old factory + old runner, likewise", samples, "pooled", "before", goal=False)
    note(
        "pooled = user_db_path + use_db + registry checkout + the query + return; the query "
        "is one primary-key read"
    )


# -- 3. ten thousand users -----------------------------------------------------------------


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _rss_bytes() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def bench_many_users(tmp: Path) -> None:
    heading(f"3. {USERS:,} user databases from one process, registry cap {CAP} connections")
    if not os.path.isdir("/proc/self/fd"):
        note("skipped: needs /proc to count file descriptors")
        return
    root = tmp / "users"
    root.mkdir()
    users = [f"user{n:05d}" for n in range(USERS)]
    gc.collect()
    fds_before, rss_before = _open_fds(), _rss_bytes()
    peak = {"fds": 0, "open": 0}
    with PoolRegistry(migrations=NOTES_MIGRATIONS, max_connections=CAP) as registry:

        def request(user: str, sql: str, *params: object, count_fds: bool = True) -> float:
            started = time.perf_counter()
            with (
                use_db(user_db_path(root, user, "notes.db")),
                registry.connection(current_db_path()) as db,
            ):
                db.execute(sql, params).fetchall()
                if sql.startswith("INSERT"):
                    db.commit()
                elapsed = time.perf_counter() - started
                if count_fds:
                    peak["fds"] = max(peak["fds"], _open_fds())  # counted while it is open
            peak["open"] = max(peak["open"], registry.open_connections)
            return elapsed

        started = time.perf_counter()
        first = []
        for n, user in enumerate(users):
            if n == MEMORY_FROM:
                gc.collect()
                rss_at_cap = _rss_bytes()  # the cap is long reached: 256 connections open
            first.append(
                request(user, "INSERT INTO notes (title) VALUES (?) RETURNING id", f"{user}'s")
            )
        first_total = time.perf_counter() - started
        gc.collect()
        rss_after = _rss_bytes()
        rng = random.Random(42)
        hot_users = rng.sample(users, 200)
        hot = [
            request(rng.choice(hot_users), QUERY, 1, count_fds=n % 50 == 0) for n in range(20_000)
        ]
        spread = [request(rng.choice(users), QUERY, 1) for _ in range(5_000)]
        stats = registry.stats()
    fds_after_close = _open_fds()

    _report_row("first touch per user (create, migrate 3 files, insert)", first)
    note(f"all {USERS:,} first touches: {first_total:.1f} s")
    _report_row("request, hot set of 200 users (all stay open)", hot)
    _report_row(f"request, spread over all {USERS:,} (most evict one)", spread)
    fd_bound = 3 * CAP + FD_SLACK
    over = peak["fds"] - fds_before
    print(
        f"  {'max connections open':<46} {peak['open']:>10} {'cap ' + str(CAP):>10}  "
        f"{'PASS' if peak['open'] <= CAP else 'MISS'}",
        flush=True,
    )
    print(
        f"  {'max file descriptors above baseline':<46} {over:>10} {'<= ' + str(fd_bound):>10}  "
        f"{'PASS' if over <= fd_bound else 'MISS'}",
        flush=True,
    )
    note(
        f"a WAL connection holds 3 (db, -wal, -shm): {over / peak['open']:.2f} per open "
        f"connection at the peak; {fds_after_close - fds_before:+d} after close()"
    )
    migrated_once = _check_migrated_once(root, users, rng)
    applied_ok = stats.migrations_applied == 3 * USERS
    print(
        f"  {'migration files applied / 3 x databases':<46} {stats.migrations_applied:>10,} "
        f"{3 * USERS:>10,}  {'PASS' if applied_ok and migrated_once else 'MISS'}",
        flush=True,
    )
    note(
        f"{'all' if migrated_once else 'NOT all'} of 200 sampled files record each of the 3 "
        f"migrations exactly once; folder runs: {stats.migration_runs:,} (one per first "
        f"touch, plus a no-write re-check each time an evicted file was reopened); "
        f"{stats.databases} pools held at the end"
    )
    per_database = (rss_after - rss_at_cap) / (USERS - MEMORY_FROM)
    note(
        f"evictions: {stats.evictions:,}; memory: RSS +{(rss_at_cap - rss_before) / 2**20:.0f} "
        f"MiB with {CAP} connections open after {MEMORY_FROM:,} users, then "
        f"{per_database / 1024:+.2f} KiB per further user touched"
    )
    started = time.perf_counter()
    shutil.rmtree(root)
    note(f"(removing the {USERS:,} files took {time.perf_counter() - started:.1f} s)")


def _report_row(label: str, seconds: list[float]) -> None:
    print(
        f"  {label:<46} p50 {duration(percentile(seconds, 0.5)):>9}  "
        f"p99 {duration(percentile(seconds, 0.99)):>9}  "
        f"max {duration(max(seconds)):>9}",
        flush=True,
    )


def _check_migrated_once(root: Path, users: list[str], rng: random.Random) -> bool:
    expected = sorted(path.name for path in NOTES_MIGRATIONS.glob("*.sql"))
    check: Callable[[str], bool]

    def check(user: str) -> bool:
        db = get_db(root / user / "notes.db", readonly=True)
        try:
            names = [row[0] for row in db.execute("SELECT name FROM _migrations ORDER BY name")]
        finally:
            db.close()
        return names == expected

    return all(check(user) for user in rng.sample(users, 200))
