"""Process-wide database metrics: counted where things happen, read by an exporter's callback.

Owns the numbers and their names: fixed-bucket duration histograms and
counters, recorded into a shard of the recording thread (so recording takes
no lock and threads never contend), gauges read only when an exporter
collects (open, idle and used connections, pending checkouts, WAL bytes of
the files with open pools), and ``snapshot()``, which merges it all. Nothing
is ever labelled by user or file: a process exports the same few series
with 10 users or 100,000. Does not import any metrics library; the
exporters (``metrics_export.py``) do, and only when asked for.

Who records what (each a few hundred nanoseconds, only while ``enabled``):
the pool (wait for a connection, time in use, time to open one,
timeouts), ``transaction()`` (wait for the in-process writer lock, time in
``BEGIN IMMEDIATE``, which is SQLite's own busy wait, the block's duration
and whether it failed) and the migration runner (each file's duration,
failures). A forked child starts from zero.
"""

from __future__ import annotations

import bisect
import os
import threading
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

#: Upper bounds (seconds) of the duration buckets, shared by every histogram:
#: SQLite operations take microseconds to seconds, so the usual web buckets
#: (5 ms and up) would put nearly everything in the first one.
DURATION_BUCKETS: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

# Histograms, by index (a list index is the cheapest lookup on the hot path).
POOL_WAIT = 0  # time a checkout waited for a connection (the ones without a wait: see gauges)
POOL_USE = 1  # from asking for a pooled connection to giving it back
CONNECT = 2  # time the pool took to open a new connection (get_db)
LOCK_WAIT = 3  # transaction(): wait for the per-file lock of this process
BEGIN_WAIT = 4  # transaction(): time in BEGIN IMMEDIATE (SQLite's busy wait)
TRANSACTION = 5  # transaction(): the whole block, lock held
MIGRATION = 6  # one migration file applied
HISTOGRAMS: tuple[str, ...] = (
    "pool_wait",
    "pool_use",
    "connect",
    "lock_wait",
    "begin_wait",
    "transaction",
    "migration",
)

# Counters, by index.
POOL_TIMEOUTS = 0  # checkouts that gave up (PoolTimeoutError)
TRANSACTION_FAILURES = 1  # transaction() blocks that rolled back on an exception
MIGRATION_FAILURES = 2  # migration files that failed (nothing of them applied)
COUNTERS: tuple[str, ...] = ("pool_timeouts", "transaction_failures", "migration_failures")

#: Recording on or off for the whole process (``set_enabled``); callers test
#: it before taking the time, so "off" costs one attribute read.
enabled = True


def set_enabled(on: bool) -> None:
    """Turn recording on or off for the whole process (on by default)."""
    global enabled
    enabled = bool(on)


# -- recording -------------------------------------------------------------------------


class _Shard:
    """One thread's counts; only that thread writes them."""

    __slots__ = ("buckets", "counters", "sums", "thread")

    def __init__(self, thread: threading.Thread | None) -> None:
        self.thread = weakref.ref(thread) if thread is not None else None
        self.buckets = [[0] * (len(DURATION_BUCKETS) + 1) for _ in HISTOGRAMS]
        self.sums = [[0.0] * (len(DURATION_BUCKETS) + 1) for _ in HISTOGRAMS]  # per bucket
        self.counters = [0] * len(COUNTERS)

    def alive(self) -> bool:
        thread = self.thread() if self.thread is not None else None
        return thread is not None and thread.is_alive()

    def add(self, other: _Shard) -> None:
        for mine, theirs in zip(self.buckets, other.buckets, strict=True):
            for index, count in enumerate(theirs):
                mine[index] += count
        for mine_sums, their_sums in zip(self.sums, other.sums, strict=True):
            for index, value in enumerate(their_sums):
                mine_sums[index] += value
        for index, count in enumerate(other.counters):
            self.counters[index] += count


_local = threading.local()
_shards: list[_Shard] = []
_retired = _Shard(None)  # what threads that have ended recorded
_shards_guard = threading.Lock()


def _new_shard() -> _Shard:
    shard = _Shard(threading.current_thread())
    with _shards_guard:
        _shards.append(shard)
    _local.shard = shard
    return shard


_FIRST_BOUND = DURATION_BUCKETS[0]


def observe(histogram: int, seconds: float) -> None:
    """Record one duration into ``histogram`` (``POOL_WAIT``, ...)."""
    try:
        shard: _Shard = _local.shard
    except AttributeError:
        shard = _new_shard()
    # Most waits and many operations fit the first bucket: skip the search for them.
    index = 0 if seconds <= _FIRST_BOUND else bisect.bisect_left(DURATION_BUCKETS, seconds)
    shard.buckets[histogram][index] += 1
    shard.sums[histogram][index] += seconds


def observe_transaction(
    lock_wait: float | None, begin_wait: float, duration: float, failed: bool
) -> None:
    """Record one ``transaction()`` block in one call (it runs on every write).

    ``lock_wait`` None: the in-process lock was granted at once (a zero wait).
    """
    try:
        shard: _Shard = _local.shard
    except AttributeError:
        shard = _new_shard()
    buckets, sums = shard.buckets, shard.sums
    if lock_wait is None:
        buckets[LOCK_WAIT][0] += 1
    else:
        index = 0 if lock_wait <= _FIRST_BOUND else bisect.bisect_left(DURATION_BUCKETS, lock_wait)
        buckets[LOCK_WAIT][index] += 1
        sums[LOCK_WAIT][index] += lock_wait
    index = 0 if begin_wait <= _FIRST_BOUND else bisect.bisect_left(DURATION_BUCKETS, begin_wait)
    buckets[BEGIN_WAIT][index] += 1
    sums[BEGIN_WAIT][index] += begin_wait
    index = 0 if duration <= _FIRST_BOUND else bisect.bisect_left(DURATION_BUCKETS, duration)
    buckets[TRANSACTION][index] += 1
    sums[TRANSACTION][index] += duration
    if failed:
        shard.counters[TRANSACTION_FAILURES] += 1


def increment(counter: int, amount: int = 1) -> None:
    """Add ``amount`` to ``counter`` (``POOL_TIMEOUTS``, ...)."""
    try:
        shard: _Shard = _local.shard
    except AttributeError:
        shard = _new_shard()
    shard.counters[counter] += amount


def reset() -> None:
    """Forget everything recorded so far (tests; a forked child does it by itself)."""
    global _retired, _checkouts_at_reset
    _checkouts_at_reset = sum(source.connection_gauges().checkouts for source in list(_sources))
    with _shards_guard:
        for shard in _shards:
            fresh = _Shard(None)
            shard.buckets, shard.sums, shard.counters = fresh.buckets, fresh.sums, fresh.counters
        _retired = _Shard(None)


def _after_fork_in_child() -> None:
    global _shards_guard, _retired, _checkouts_at_reset
    _checkouts_at_reset = 0
    _shards_guard = threading.Lock()  # another thread may have held it at fork()
    _shards.clear()
    _retired = _Shard(None)
    _local.__dict__.clear()  # the forking thread's shard belonged to the parent


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# -- gauges: read at collection time from the live pools -------------------------------


@dataclass(frozen=True, slots=True)
class ConnectionGauges:
    """What a pool or registry holds right now (``PoolRegistry.connection_gauges()``)."""

    open: int
    idle: int
    used: int
    pending: int  # checkouts waiting for a connection
    max: int
    databases: tuple[str, ...]  # the files with a pool: their WAL sizes are summed
    #: Checkouts handed out so far, whether they waited or not. The pools record
    #: only the waits that happened; the others are this count less those, so a
    #: checkout that did not wait costs nothing here.
    checkouts: int = 0


class GaugeSource(Protocol):
    def connection_gauges(self) -> ConnectionGauges: ...


_sources: weakref.WeakSet[GaugeSource] = weakref.WeakSet()
_checkouts_at_reset = 0  # reset() forgets the checkouts counted before it


def track(source: GaugeSource) -> None:
    """Count ``source``'s connections in the gauges while it lives (pools and registries do)."""
    with _shards_guard:
        _sources.add(source)


def untrack(source: GaugeSource) -> None:
    with _shards_guard:
        _sources.discard(source)


def _wal_bytes(paths: Iterable[str]) -> tuple[int, int]:
    """Total and largest size of the ``-wal`` files of ``paths`` (one stat each, ~1 us)."""
    total = largest = 0
    for path in paths:
        try:
            size = os.stat(path + "-wal").st_size
        except OSError:  # no WAL right now (checkpointed and removed), or the file is gone
            continue
        total += size
        largest = max(largest, size)
    return total, largest


# -- the snapshot ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HistogramSnapshot:
    """One histogram: ``counts[i]`` values fell in bucket ``i`` (over ``bounds[i - 1]``, at or
    under ``bounds[i]``; the last bucket is above every bound), adding up to ``bucket_sums[i]``."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    bucket_sums: tuple[float, ...]

    @property
    def count(self) -> int:
        return sum(self.counts)

    @property
    def sum(self) -> float:
        return sum(self.bucket_sums)

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, values at or under it)`` pairs, ending with ``(inf, count)``."""
        pairs = []
        running = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            pairs.append((bound, running))
        return pairs


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    """Everything at one moment: histograms and counters by name, then the gauges."""

    histograms: dict[str, HistogramSnapshot]
    counters: dict[str, int]
    connections_open: int
    connections_idle: int
    connections_used: int
    connections_pending: int
    connections_max: int
    databases: int
    wal_bytes: int
    wal_bytes_max: int


def snapshot() -> MetricsSnapshot:
    """Merge every thread's counts and read the gauges; safe to call from any thread."""
    global _retired
    total = _Shard(None)
    with _shards_guard:
        ended = [shard for shard in _shards if not shard.alive()]
        for shard in ended:  # fold ended threads in, so the list stays as long as the threads
            _retired.add(shard)
            _shards.remove(shard)
        total.add(_retired)
        for shard in _shards:
            total.add(shard)
        sources = list(_sources)
    gauges = [source.connection_gauges() for source in sources]
    paths = {path for gauge in gauges for path in gauge.databases}
    wal_total, wal_largest = _wal_bytes(paths)
    # The checkouts that did not wait: all of them, less those whose wait was recorded.
    waits = total.buckets[POOL_WAIT]
    checkouts = sum(gauge.checkouts for gauge in gauges) - _checkouts_at_reset
    waits[0] += max(checkouts - sum(waits), 0)
    return MetricsSnapshot(
        histograms={
            name: HistogramSnapshot(
                DURATION_BUCKETS, tuple(total.buckets[index]), tuple(total.sums[index])
            )
            for index, name in enumerate(HISTOGRAMS)
        },
        counters={name: total.counters[index] for index, name in enumerate(COUNTERS)},
        connections_open=sum(g.open for g in gauges),
        connections_idle=sum(g.idle for g in gauges),
        connections_used=sum(g.used for g in gauges),
        connections_pending=sum(g.pending for g in gauges),
        connections_max=sum(g.max for g in gauges),
        databases=len(paths),
        wal_bytes=wal_total,
        wal_bytes_max=wal_largest,
    )
