"""Cipher section: what encryption at rest costs, as ratios to a plain database.

Owns the comparisons issue 5 asks for: opening an encrypted database with a
passphrase and with a raw key, and a small write transaction, each against
the same operation on a plain file measured in the same run. Adds a point
read and the time to encrypt a file, for sizing a migration to encryption.

Samples of the cases are interleaved (the order flips every round) so that
a burst of load from a neighbour on this shared machine slows each case
alike; each figure is a median.
"""

from __future__ import annotations

import gc
import os
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from circuitforge_core.db import (
    cipher,
    decrypt_database,
    derive_user_key,
    encrypt_database,
    get_db,
    transaction,
)

PASSPHRASE = "correct horse battery staple"
RAW_KEY = derive_user_key("a server secret for the benchmark", "user-1")
ROW = "x" * 100


def run() -> None:
    try:
        import sqlcipher3
    except ImportError:
        print("sqlcipher3 is not installed: pip install 'circuitforge-core[sqlcipher]'")
        return
    with tempfile.TemporaryDirectory(prefix="cf-bench-cipher-") as tmp:
        folder = Path(tmp)
        versions = get_db(folder / "version.db", key=RAW_KEY)
        cipher_version = versions.execute("PRAGMA cipher_version").fetchone()[0]
        versions.close()
        print(
            f"plain = get_db on the standard library's SQLite {sqlite3.sqlite_version}; keyed = "
            f"get_db(key=) on SQLCipher {cipher_version} / SQLite {sqlcipher3.sqlite_version} "
            f"(sqlcipher3); medians of interleaved samples",
            flush=True,
        )
        keys: dict[str, str | bytes | None] = {
            "plain": None,
            "raw key": RAW_KEY,
            "passphrase": PASSPHRASE,
        }
        paths = {name: folder / f"{name.replace(' ', '_')}.db" for name in keys}
        for name, key in keys.items():
            db = get_db(paths[name], key=key)
            db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT)")
            with transaction(db):
                db.executemany("INSERT INTO t (body) VALUES (?)", [(ROW,)] * 10_000)
            db.close()
        bench_open(paths, keys)
        bench_write_and_read(paths, keys)
        bench_encrypt(folder)


def bench_open(paths: dict[str, Path], keys: dict[str, str | bytes | None]) -> None:
    """Open + close, with another connection holding the file open (the server's case)."""
    holders = [get_db(paths[name], key=key) for name, key in keys.items()]
    try:

        def opener(name: str) -> Callable[[], None]:
            return lambda: get_db(paths[name], key=keys[name]).close()

        fast = per_call({n: opener(n) for n in ("plain", "raw key")}, batch=50, rounds=15)
        # 256,000 PBKDF2 rounds per open: a few samples are plenty.
        slow = per_call({n: opener(n) for n in ("plain", "passphrase")}, batch=1, rounds=9)
    finally:
        for holder in holders:
            holder.close()
    heading("1. open + close get_db (another connection keeps the file open)")
    report(
        {"plain": fast["plain"], "raw key": fast["raw key"], "passphrase": slow["passphrase"]},
        baseline="plain",
    )
    note("a passphrase runs SQLCipher's PBKDF2 (256,000 rounds) on every open; a raw key does not")


def bench_write_and_read(paths: dict[str, Path], keys: dict[str, str | bytes | None]) -> None:
    """One-row write transactions and primary-key reads on open connections.

    "no key" is sqlcipher3's own SQLite without encryption, with get_db's
    pragmas: it tells the cost of encrypting from the cost of the other build.
    """
    conns: dict[str, Any] = {
        name: get_db(paths[name], key=keys[name]) for name in ("plain", "raw key")
    }
    conns["no key"] = unencrypted_sqlcipher3(paths["plain"].with_name("no_key.db"))
    try:

        def writer(name: str) -> Callable[[], None]:
            db = conns[name]

            def write() -> None:
                with transaction(db):
                    db.execute("INSERT INTO t (body) VALUES (?)", (ROW,))

            return write

        def reader(name: str) -> Callable[[], None]:
            db = conns[name]
            ids = iter(range(1, 10**9))

            def read() -> None:
                db.execute("SELECT body FROM t WHERE id = ?", (next(ids) % 10_000 + 1,)).fetchone()

            return read

        writes = per_call({n: writer(n) for n in conns}, batch=200, rounds=15)
        reads = per_call({n: reader(n) for n in conns}, batch=2000, rounds=15)
    finally:
        for db in conns.values():
            db.close()
    heading("2. small write transaction (BEGIN IMMEDIATE, 1 insert, COMMIT; WAL, NORMAL)")
    report(writes, baseline="plain")
    heading("3. point read by primary key (warm cache: pages are kept decrypted)")
    report(reads, baseline="plain")


def unencrypted_sqlcipher3(path: Path) -> Any:
    """A sqlcipher3 connection without a key, set up as get_db sets up its own."""
    import sqlcipher3

    cls = cipher.connection_class(sqlcipher3.dbapi2)
    db = sqlcipher3.dbapi2.connect(
        str(path), isolation_level="IMMEDIATE", check_same_thread=False, factory=cls
    )
    db.path, db.readonly, db.busy_timeout = str(path), False, 5.0
    db.execute("PRAGMA journal_mode=WAL").fetchone()
    db.executescript(
        "PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON; PRAGMA cache_size=-8192; "
        "PRAGMA temp_store=MEMORY; PRAGMA journal_size_limit=67108864;"
    )
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT)")
    with transaction(db):
        db.executemany("INSERT INTO t (body) VALUES (?)", [(ROW,)] * 10_000)
    return db


def bench_encrypt(folder: Path) -> None:
    """encrypt_database on a ~8 MiB file: the cost of moving a user to encryption."""
    path = folder / "convert.db"
    db = get_db(path)
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT)")
    with transaction(db):
        db.executemany("INSERT INTO t (body) VALUES (?)", [(os.urandom(32).hex() + ROW,)] * 40_000)
    db.close()
    size_mib = path.stat().st_size / 2**20
    samples = []
    for _ in range(3):
        started = time.perf_counter()
        encrypt_database(path, RAW_KEY)
        samples.append(time.perf_counter() - started)
        decrypt_database(path, RAW_KEY)
    seconds = statistics.median(samples)
    heading(f"4. encrypt_database on a {size_mib:.1f} MiB file (export, verify, fsync, rename)")
    print(f"  {seconds * 1000:9.1f} ms  ({seconds * 1000 / size_mib:.1f} ms per MiB)", flush=True)


# -- measuring and printing ------------------------------------------------------------


def per_call(
    cases: dict[str, Callable[[], object]], *, batch: int, rounds: int
) -> dict[str, list[float]]:
    """Seconds per call of each case: one sample per batch, cases alternating, GC paused."""
    samples: dict[str, list[float]] = {name: [] for name in cases}
    names = list(cases)
    gc.collect()
    gc.disable()
    try:
        for number in range(rounds + 1):  # round 0 warms up and is dropped
            for name in names if number % 2 == 0 else reversed(names):
                started = time.perf_counter()
                for _ in range(batch):
                    cases[name]()
                if number:
                    samples[name].append((time.perf_counter() - started) / batch)
    finally:
        gc.enable()
    return samples


def heading(text: str) -> None:
    print(f"\n{text}", flush=True)


def note(text: str) -> None:
    print(f"  ({text})", flush=True)


def report(samples: dict[str, list[float]], *, baseline: str) -> None:
    base = statistics.median(samples[baseline])
    for name, values in samples.items():
        value = statistics.median(values)
        ratio = "" if name == baseline else f"  {value / base:8.2f}x {baseline}"
        print(f"  {name:<12} {value * 1e3:10.3f} ms{ratio}", flush=True)
