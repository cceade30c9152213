"""Concurrent writers: transaction() against raw BEGIN IMMEDIATE (and plain BEGIN).

Owns the read-modify-write contention benchmark. N threads, each with its
own connection to one file, line up on a Barrier and then each runs a
fixed number of transactions that read a balance and write it back plus
one, optionally sleeping inside the transaction to stand for request work.

What is reported per setup: errors (must be 0), lost updates (the final
balance must equal the number of successful transactions), throughput of
transaction() relative to raw BEGIN IMMEDIATE, and how long a writer waited
between asking for its transaction and holding it. The deferred ``BEGIN``
variant, which the old module used, is run once for its error count.
"""

from __future__ import annotations

import functools
import itertools
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from circuitforge_core.db import get_db, transaction

from .bare import bare_connect
from .lock_policies import CHOSEN, POLICIES, Lock
from .measure import heading, median, note, percentile

JOIN_TIMEOUT = 120.0

# (threads, seconds of work inside each transaction, transactions per thread):
# the counts keep every run near half a second on this machine.
SETUPS = [
    (8, 0.0, 600),
    (16, 0.0, 300),
    (8, 0.001, 60),
    (16, 0.001, 30),
]
ROUNDS = 5


@dataclass
class Outcome:
    """What one run of N writers produced."""

    successes: int = 0
    errors: int = 0
    error_names: set[str] = field(default_factory=set)
    lost_updates: int = 0
    seconds: float = 0.0
    waits: list[float] = field(default_factory=list)

    @property
    def throughput(self) -> float:
        return self.successes / self.seconds


def run(tmp: Path) -> None:
    paths = (tmp / "writers" / f"{n}.db" for n in itertools.count())
    (tmp / "writers").mkdir()
    heading("4. concurrent read-modify-write writers, one connection per thread, one file")
    print(
        f"  {'':<22} {'ours tx/s':>10} {'raw tx/s':>10} {'ratio':>7}  {'goal':<15} {'':4} "
        f"{'errors':>7} {'lost':>7}  writer wait p50/p99/max in ms, ours | raw",
        flush=True,
    )
    for threads, work, per_thread in SETUPS:
        ours: list[Outcome] = []
        raw: list[Outcome] = []
        for number in range(ROUNDS):
            order = [("transaction", ours), ("immediate", raw)]
            for mode, results in order if number % 2 == 0 else reversed(order):
                results.append(contend(next(paths), threads, per_thread, work, mode))
        deferred = contend(next(paths), threads, per_thread, work, "deferred")
        _report(threads, work, threads * per_thread, ours, raw, deferred)
    note(
        "ours: get_db + `with transaction(db)`; raw: sqlite3.connect(isolation_level=None, "
        "timeout=5) + the same pragmas + BEGIN IMMEDIATE/COMMIT by hand"
    )
    note(f"medians of {ROUNDS} interleaved runs; waits pooled over all runs")


def contend(
    path: Path,
    threads: int,
    per_thread: int,
    work: float,
    mode: str,
    lock: Lock | None = None,
) -> Outcome:
    """Run ``threads`` writers of ``per_thread`` transactions each; ``mode`` says how they begin.

    ``transaction``: get_db connections and ``transaction()``. ``immediate`` /
    ``deferred``: plain sqlite3 connections with the same pragmas issuing
    ``BEGIN IMMEDIATE`` / ``BEGIN`` and ``COMMIT`` themselves. ``policy``:
    get_db connections doing what transaction() does, with ``lock`` as the
    file's in-process writer lock.
    """
    setup = get_db(path)
    setup.execute("CREATE TABLE account (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL)")
    setup.execute("INSERT INTO account VALUES (1, 0)")
    setup.commit()
    open_connection: Callable[[Path], sqlite3.Connection] = (
        get_db if mode in ("transaction", "policy") else bare_connect
    )
    barrier = threading.Barrier(threads + 1)
    per_thread_outcomes = [Outcome() for _ in range(threads)]

    def writer(outcome: Outcome) -> None:
        try:
            db = open_connection(path)
        except BaseException:
            barrier.abort()  # release the others and the main thread instead of hanging
            raise
        try:
            barrier.wait(JOIN_TIMEOUT)
            for _ in range(per_thread):
                _one_transaction(db, mode, work, outcome, lock)
        finally:
            db.close()

    workers = [
        threading.Thread(target=writer, args=(outcome,), name=f"writer-{n}")
        for n, outcome in enumerate(per_thread_outcomes)
    ]
    for worker in workers:
        worker.start()
    barrier.wait(JOIN_TIMEOUT)
    started = time.perf_counter()
    for worker in workers:
        worker.join(JOIN_TIMEOUT)
    seconds = time.perf_counter() - started
    # A writer still alive here is a deadlock; fail loudly rather than hang.
    assert not any(worker.is_alive() for worker in workers), f"{mode}: writers deadlocked"

    total = Outcome(seconds=seconds)
    for outcome in per_thread_outcomes:
        total.successes += outcome.successes
        total.errors += outcome.errors
        total.error_names |= outcome.error_names
        total.waits += outcome.waits
    balance = setup.execute("SELECT balance FROM account WHERE id = 1").fetchone()[0]
    setup.close()
    total.lost_updates = total.successes - balance
    return total


def _one_transaction(
    db: sqlite3.Connection, mode: str, work: float, outcome: Outcome, lock: Lock | None = None
) -> None:
    asked = time.perf_counter()
    try:
        if mode == "transaction":
            with transaction(db):
                outcome.waits.append(time.perf_counter() - asked)
                _read_modify_write(db, work)
        elif mode == "policy":
            assert lock is not None
            _policy_transaction(db, lock, work, outcome, asked)
        else:
            db.execute("BEGIN IMMEDIATE" if mode == "immediate" else "BEGIN")
            outcome.waits.append(time.perf_counter() - asked)
            try:
                _read_modify_write(db, work)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
    except sqlite3.OperationalError as exc:
        outcome.errors += 1
        outcome.error_names.add(getattr(exc, "sqlite_errorname", str(exc)))
        return
    outcome.successes += 1


def _policy_transaction(
    db: sqlite3.Connection, lock: Lock, work: float, outcome: Outcome, asked: float
) -> None:
    """transaction()'s steps with another in-process lock (same connection, same SQL)."""
    if not lock.acquire(timeout=5.0):
        raise sqlite3.OperationalError("database is locked: in-process writer lock timed out")
    try:
        db.execute("BEGIN IMMEDIATE")
        outcome.waits.append(time.perf_counter() - asked)
        try:
            _read_modify_write(db, work)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
    finally:
        lock.release()


def _read_modify_write(db: sqlite3.Connection, work: float) -> None:
    # The new balance is computed in Python, so two writers that read the same
    # value would lose an update: the lost-update count sees it.
    balance = db.execute("SELECT balance FROM account WHERE id = 1").fetchone()[0]
    if work:
        time.sleep(work)
    db.execute("UPDATE account SET balance = ? WHERE id = 1", (balance + 1,))


def _report(
    threads: int,
    work: float,
    attempted: int,
    ours: list[Outcome],
    raw: list[Outcome],
    deferred: Outcome,
) -> None:
    ours_rate = median([outcome.throughput for outcome in ours])
    raw_rate = median([outcome.throughput for outcome in raw])
    ratio = ours_rate / raw_rate
    ours_errors = sum(outcome.errors for outcome in ours)
    raw_errors = sum(outcome.errors for outcome in raw)
    ours_lost = sum(outcome.lost_updates for outcome in ours)
    raw_lost = sum(outcome.lost_updates for outcome in raw)
    passed = ratio >= 0.8 and ours_errors == 0 and ours_lost == 0
    label = f"{threads} threads, " + (f"{work * 1000:g} ms work" if work else "no work")
    print(
        f"  {label:<22} {ours_rate:>10,.0f} {raw_rate:>10,.0f} {ratio:>6.2f}x  "
        f"{'>= 0.8x, no err':<15} {'PASS' if passed else 'MISS':4} "
        f"{f'{ours_errors} | {raw_errors}':>7} {f'{ours_lost} | {raw_lost}':>7}  "
        f"{_waits(ours)} | {_waits(raw)}",
        flush=True,
    )
    names = ", ".join(sorted(deferred.error_names)) or "none"
    note(
        f"plain deferred BEGIN (old module): {deferred.errors} of {attempted} failed ({names}), "
        f"{deferred.lost_updates} lost"
    )


def _waits(outcomes: list[Outcome]) -> str:
    waits = [wait for outcome in outcomes for wait in outcome.waits]
    ms = [percentile(waits, fraction) * 1000 for fraction in (0.5, 0.99, 1.0)]
    return "/".join(f"{value:.1f}" for value in ms)


# -- which writer-lock policy: the comparison behind writer_lock.py ---------------------

POLICY_ROUNDS = 5


def _contenders(
    paths: Iterator[Path], threads: int, per_thread: int, work: float
) -> dict[str, Callable[[], Outcome]]:
    def run_one(mode: str, factory: Callable[[], Lock] | None = None) -> Outcome:
        lock = factory() if factory is not None else None
        return contend(next(paths), threads, per_thread, work, mode, lock)

    contenders: dict[str, Callable[[], Outcome]] = {
        "raw sqlite3 + busy handler": functools.partial(run_one, "immediate"),
        "ours: transaction()": functools.partial(run_one, "transaction"),
    }
    for name, factory in POLICIES.items():
        contenders[name] = functools.partial(run_one, "policy", factory)
    return contenders


def run_policies(tmp: Path) -> None:
    """Every policy of bench/lock_policies.py, transaction() and raw, interleaved per setup."""
    folder = tmp / "policies"
    folder.mkdir()
    paths = (folder / f"{n}.db" for n in itertools.count())
    heading("writer-lock policies: threads writing one file, one connection each")
    print(
        f"  {'':<30} {'tx/s':>8} {'vs raw':>7}  {'wait p50':>9} {'p99':>8} {'max':>8} "
        f"{'errors':>6}",
        flush=True,
    )
    for threads, work, per_thread in SETUPS:
        contenders = _contenders(paths, threads, per_thread, work)
        results: dict[str, list[Outcome]] = {name: [] for name in contenders}
        names = list(contenders)
        for number in range(POLICY_ROUNDS):
            for name in names if number % 2 == 0 else reversed(names):
                results[name].append(contenders[name]())
        label = f"{threads} threads, " + (f"{work * 1000:g} ms work" if work else "no work")
        print(f"  {label}", flush=True)
        raw_rate = median([o.throughput for o in results["raw sqlite3 + busy handler"]])
        for name in names:
            outcomes = results[name]
            rate = median([o.throughput for o in outcomes])
            waits = [w for o in outcomes for w in o.waits]
            errors = sum(o.errors for o in outcomes) + sum(o.lost_updates for o in outcomes)
            p50, p99, worst = (percentile(waits, f) * 1000 for f in (0.5, 0.99, 1.0))
            mark = "  <- chosen" if name == CHOSEN else ""
            print(
                f"    {name:<28} {rate:>8,.0f} {rate / raw_rate:>6.2f}x  {p50:>7.2f}ms "
                f"{p99:>6.1f}ms {worst:>6.1f}ms {errors:>6}{mark}",
                flush=True,
            )
        ours = results["ours: transaction()"]
        ours_rate = median([o.throughput for o in ours])
        ours_errors = sum(o.errors + o.lost_updates for o in ours)
        if work:
            fifo_p99 = percentile(
                [w for o in results["strict FIFO hand-off"] for w in o.waits], 0.99
            )
            ours_p99 = percentile([w for o in ours for w in o.waits], 0.99)
            passed = ours_p99 <= 3 * fifo_p99 and ours_errors == 0
            note(
                f"goal: transaction() p99 wait <= 3x strict FIFO's: {ours_p99 * 1000:.1f} ms vs "
                f"{fifo_p99 * 1000:.1f} ms = {ours_p99 / fifo_p99:.2f}x, {ours_errors} errors "
                f"{'PASS' if passed else 'MISS'}"
            )
        else:
            passed = ours_rate >= 0.8 * raw_rate and ours_errors == 0
            note(
                f"goal: transaction() throughput >= 0.8x raw: {ours_rate / raw_rate:.2f}x, "
                f"{ours_errors} errors {'PASS' if passed else 'MISS'}"
            )
    note(
        f"medians of {POLICY_ROUNDS} interleaved runs; waits pooled; errors include lost "
        f"updates; raw = sqlite3.connect + BEGIN IMMEDIATE, SQLite's busy handler only"
    )
