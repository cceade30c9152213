"""Process-wide metrics: recording per thread, the snapshot, gauges, and both exporters."""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from circuitforge_core.db import (
    ConnectionPool,
    ExporterUnavailableError,
    MigrationFailedError,
    PoolRegistry,
    PoolTimeoutError,
    get_db,
    metrics,
    run_migrations,
    transaction,
)
from circuitforge_core.db.metrics import DURATION_BUCKETS, ConnectionGauges, snapshot
from circuitforge_core.db.metrics_export import OpenTelemetryInstruments, PrometheusCollector
from circuitforge_core.db.transaction import writer_lock_for


@pytest.fixture(autouse=True)
def _fresh_metrics() -> Iterator[None]:
    metrics.reset()
    metrics.set_enabled(True)
    yield
    metrics.set_enabled(True)
    metrics.reset()


class Source:
    """A stand-in for a pool registry: what connection_gauges() reports."""

    def __init__(self, paths: tuple[str, ...] = (), **counts: int) -> None:
        self.gauges = ConnectionGauges(
            counts.get("open", 0),
            counts.get("idle", 0),
            counts.get("used", 0),
            counts.get("pending", 0),
            counts.get("max", 0),
            paths,
        )

    def connection_gauges(self) -> ConnectionGauges:
        return self.gauges


def test_durations_land_in_their_buckets() -> None:
    """Each value goes to the first bucket whose bound is at least the value; sums add up."""
    for seconds in (0.00005, 0.0001, 0.0003, 0.2, 30.0):
        metrics.observe(metrics.POOL_WAIT, seconds)
    metrics.observe(metrics.POOL_WAIT, 0.0)
    histogram = snapshot().histograms["pool_wait"]
    assert histogram.bounds == DURATION_BUCKETS
    assert histogram.count == 6
    assert histogram.sum == pytest.approx(30.20045)
    assert histogram.counts[0] == 3  # 0, 0.05 ms, and 0.1 ms (bounds are inclusive)
    assert histogram.counts[2] == 1  # 0.3 ms: over 0.25, at most 0.5
    assert histogram.counts[DURATION_BUCKETS.index(0.25)] == 1
    assert histogram.counts[-1] == 1  # above every bound
    assert histogram.cumulative()[-1] == (float("inf"), 6)


def test_threads_never_lose_a_count() -> None:
    """Eight threads recording at once, and ended threads folded in: exact totals."""
    barrier = threading.Barrier(8)

    def work() -> None:
        barrier.wait(30)
        for _ in range(5000):
            metrics.observe(metrics.TRANSACTION, 0.001)
            metrics.increment(metrics.POOL_TIMEOUTS)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads)
    for _ in range(2):  # the second snapshot sees the folded shards again
        snap = snapshot()
        assert snap.histograms["transaction"].count == 40_000
        assert snap.counters["pool_timeouts"] == 40_000
    # Ended threads' shards were folded in. Threads of earlier tests in this process
    # (idle async workers, say) keep theirs, so only these eight are looked for.
    ended = set(threads)
    kept = [shard for shard in metrics._shards if shard.thread is not None]
    assert not [shard for shard in kept if shard.thread() in ended]


def test_gauges_come_from_live_sources_and_wal_files(tmp_path: Path) -> None:
    """Open/idle/used/pending/max summed over sources; WAL bytes of their files; gone sources
    drop out. (Other pools of this process count too: compared with a baseline.)"""
    db = get_db(tmp_path / "a.db")
    db.execute("CREATE TABLE t (x)")
    db.execute("INSERT INTO t VALUES (randomblob(10000))")
    db.commit()
    wal = Path(str(tmp_path / "a.db") + "-wal").stat().st_size
    assert wal > 0
    base = snapshot()
    one = Source((str(tmp_path / "a.db"),), open=3, idle=1, used=2, pending=4, max=8)
    two = Source((str(tmp_path / "missing.db"),), open=1, used=1, max=4)
    metrics.track(one)
    metrics.track(two)
    snap = snapshot()
    assert snap.connections_open - base.connections_open == 4
    assert snap.connections_idle - base.connections_idle == 1
    assert snap.connections_used - base.connections_used == 3
    assert snap.connections_pending - base.connections_pending == 4
    assert snap.connections_max - base.connections_max == 12
    assert snap.databases - base.databases == 2
    assert snap.wal_bytes - base.wal_bytes == wal
    assert snap.wal_bytes_max >= wal
    metrics.untrack(one)
    del two  # a source that is gone is forgotten
    assert snapshot().connections_open == base.connections_open
    db.close()


def test_pools_and_registries_report_their_connections(tmp_path: Path) -> None:
    """A registry's checkouts: wait (zero), use and open times; open/used/idle gauges."""
    base = snapshot()
    with PoolRegistry(max_connections=8) as registry:
        path = tmp_path / "u" / "app.db"
        with registry.connection(path) as db:
            db.execute("CREATE TABLE t (x)")
            db.commit()
            during = snapshot()
            assert during.connections_used - base.connections_used == 1
            assert during.connections_max - base.connections_max == 8
            assert str(path) in _tracked_paths()
        with registry.connection(path):
            pass
        after = snapshot()
        assert after.connections_idle - base.connections_idle == 1
        assert after.histograms["pool_wait"].count - base.histograms["pool_wait"].count == 2
        assert after.histograms["pool_use"].count - base.histograms["pool_use"].count == 2
        assert after.histograms["connect"].count - base.histograms["connect"].count == 1
    assert snapshot().connections_open == base.connections_open


def _tracked_paths() -> set[str]:
    return {
        path for source in list(metrics._sources) for path in source.connection_gauges().databases
    }


def test_a_pool_timeout_is_counted(tmp_path: Path) -> None:
    """Every connection busy past the timeout: PoolTimeoutError, and the counter moves."""
    with ConnectionPool(tmp_path / "a.db", max_size=1, timeout=0.05) as pool:
        with pool.connection(), pytest.raises(PoolTimeoutError), pool.connection():
            pass
        assert snapshot().counters["pool_timeouts"] == 1
        waits = snapshot().histograms["pool_wait"]
        assert waits.count == 1  # the checkout that got its connection; the timed-out one did not


def test_migrations_record_each_file_and_failures(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Each applied file's duration; a failing file counted; the log names the database."""
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "001.sql").write_text("CREATE TABLE a (x);")
    (folder / "002.sql").write_text("CREATE TABLE b (x);")
    path = tmp_path / "app.db"
    with caplog.at_level(logging.INFO, logger="circuitforge_core.db"):
        run_migrations(path, folder)
    assert snapshot().histograms["migration"].count == 2
    assert any(
        r.getMessage().startswith(f"applied migration 001.sql to {path} in ")
        for r in caplog.records
    )
    (folder / "003.sql").write_text("CREATE TABLE a (x);")
    with pytest.raises(MigrationFailedError):
        run_migrations(path, folder)
    assert snapshot().counters["migration_failures"] == 1


def test_transaction_counts_its_waits_duration_and_failures(tmp_path: Path) -> None:
    """One committed and one failed block; nested savepoints are part of their outer block."""
    db = get_db(tmp_path / "a.db")
    db.execute("CREATE TABLE t (x)")
    with transaction(db):
        db.execute("INSERT INTO t VALUES (1)")
        with transaction(db):
            db.execute("INSERT INTO t VALUES (2)")
    with pytest.raises(ZeroDivisionError), transaction(db):
        db.execute("INSERT INTO t VALUES (3)")
        _ = 1 / 0
    snap = snapshot()
    assert snap.histograms["lock_wait"].count == 2
    assert snap.histograms["lock_wait"].counts[0] == 2  # nobody else held the lock
    assert snap.histograms["begin_wait"].count == 2
    assert snap.histograms["transaction"].count == 2
    assert snap.counters["transaction_failures"] == 1
    db.close()


def test_a_contended_lock_wait_is_timed(tmp_path: Path) -> None:
    """A writer that waits for another thread's block records a non-zero wait."""
    path = tmp_path / "a.db"
    first, second = get_db(path), get_db(path)
    first.execute("CREATE TABLE t (x)")
    lock = writer_lock_for(first)
    assert lock is not None
    holding, release = threading.Event(), threading.Event()

    def holder() -> None:
        with transaction(first):
            holding.set()
            release.wait(30)

    def writer() -> None:
        with transaction(second):
            second.execute("INSERT INTO t VALUES (1)")

    threads = [threading.Thread(target=holder), threading.Thread(target=writer)]
    threads[0].start()
    assert holding.wait(30)
    threads[1].start()
    for _ in range(30_000):  # bounded: the writer queues within moments
        if lock.waiting:
            break
        time.sleep(0.001)
    assert lock.waiting == 1
    release.set()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads)
    waits = snapshot().histograms["lock_wait"]
    assert waits.count == 2  # the holder's grant (no wait) and the writer's wait
    assert waits.sum > 0
    first.close()
    second.close()


def test_switched_off_records_nothing(tmp_path: Path) -> None:
    """set_enabled(False): transaction() reads no clock and counts nothing."""
    metrics.set_enabled(False)
    db = get_db(tmp_path / "a.db")
    with transaction(db):
        db.execute("CREATE TABLE t (x)")
    db.close()
    assert snapshot().histograms["transaction"].count == 0


def test_a_forked_child_starts_from_zero(tmp_path: Path) -> None:
    """Counts belong to the process that made them: a child of fork() reports its own only."""
    script = textwrap.dedent(
        """
        import os
        from circuitforge_core.db import metrics
        metrics.observe(metrics.MIGRATION, 0.5)
        pid = os.fork()
        if pid == 0:
            metrics.observe(metrics.MIGRATION, 0.1)
            print("child", metrics.snapshot().histograms["migration"].count, flush=True)
            os._exit(0)
        os.waitpid(pid, 0)
        print("parent", metrics.snapshot().histograms["migration"].count, flush=True)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.split("\n")[:2] == ["child 1", "parent 1"]


# -- Prometheus ----------------------------------------------------------------------------


def with_gauges(**gauges: int) -> Callable[[], metrics.MetricsSnapshot]:
    """Snapshots as recorded, with these gauges: other tests' pools stay out of the picture."""
    return lambda: dataclasses.replace(snapshot(), **gauges)


def test_prometheus_collector_exposes_histograms_counters_and_gauges(tmp_path: Path) -> None:
    """One scrape: the text format a Prometheus server reads, no label naming a user or file."""
    prometheus_client = pytest.importorskip("prometheus_client")
    registry = prometheus_client.CollectorRegistry()
    gauges = with_gauges(
        connections_open=2, connections_idle=1, connections_used=1, connections_max=256, databases=1
    )
    PrometheusCollector(read=gauges).register(registry)
    metrics.observe(metrics.POOL_WAIT, 0.002)
    metrics.observe(metrics.POOL_WAIT, 0.0)
    metrics.increment(metrics.POOL_TIMEOUTS, 3)
    value = registry.get_sample_value
    assert value("circuitforge_db_pool_wait_seconds_count") == 2
    assert value("circuitforge_db_pool_wait_seconds_sum") == pytest.approx(0.002)
    assert value("circuitforge_db_pool_wait_seconds_bucket", {"le": "0.0001"}) == 1
    assert value("circuitforge_db_pool_wait_seconds_bucket", {"le": "0.0025"}) == 2
    assert value("circuitforge_db_pool_wait_seconds_bucket", {"le": "+Inf"}) == 2
    assert value("circuitforge_db_pool_timeouts_total") == 3
    assert value("circuitforge_db_connections", {"state": "idle"}) == 1
    assert value("circuitforge_db_connections", {"state": "used"}) == 1
    assert value("circuitforge_db_connections_max") == 256
    assert value("circuitforge_db_databases") == 1
    text = prometheus_client.generate_latest(registry).decode()
    assert "# TYPE circuitforge_db_migration_seconds histogram" in text
    labels = {
        label
        for family in registry.collect()
        for sample in family.samples
        for label in sample.labels
    }
    assert labels <= {"le", "state"}


def test_a_missing_exporter_library_says_which_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """No prometheus_client or opentelemetry: an error naming the pip extra, also ImportError."""
    monkeypatch.setitem(sys.modules, "prometheus_client.core", None)
    monkeypatch.setitem(sys.modules, "opentelemetry.metrics", None)
    with pytest.raises(ExporterUnavailableError, match=r"circuitforge-core\[prometheus\]"):
        PrometheusCollector()
    with pytest.raises(ImportError, match=r"circuitforge-core\[opentelemetry\]"):
        OpenTelemetryInstruments()


# -- OpenTelemetry -------------------------------------------------------------------------


def otel_reader() -> tuple[Any, Any]:
    sdk_metrics = pytest.importorskip("opentelemetry.sdk.metrics")
    export = pytest.importorskip("opentelemetry.sdk.metrics.export")
    reader = export.InMemoryMetricReader()
    provider = sdk_metrics.MeterProvider(metric_readers=[reader])
    return reader, provider.get_meter("test")


def collected(reader: Any) -> dict[str, Any]:
    data = reader.get_metrics_data()
    return {
        metric.name: metric
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }


def test_opentelemetry_semantic_convention_instruments(tmp_path: Path) -> None:
    """db.client.connection.* from the gauges and counters; histograms exact after replay."""
    reader, meter = otel_reader()
    gauges = with_gauges(
        connections_open=3,
        connections_idle=1,
        connections_used=2,
        connections_pending=1,
        connections_max=10,
    )
    instruments = OpenTelemetryInstruments(meter, read=gauges)
    for seconds in (0.0002, 0.0002, 0.03):
        metrics.observe(metrics.POOL_WAIT, seconds)
    metrics.observe(metrics.TRANSACTION, 0.004)
    metrics.increment(metrics.POOL_TIMEOUTS)
    instruments.flush()
    found = collected(reader)
    counts = {
        point.attributes["db.client.connection.state"]: point.value
        for point in found["db.client.connection.count"].data.data_points
    }
    assert counts == {"idle": 1, "used": 2}
    (maximum,) = found["db.client.connection.max"].data.data_points
    assert maximum.value == 10
    assert maximum.attributes["db.system.name"] == "sqlite"
    (timeouts,) = found["db.client.connection.timeouts"].data.data_points
    assert timeouts.value == 1
    (wait,) = found["db.client.connection.wait_time"].data.data_points
    assert wait.count == 3
    assert wait.sum == pytest.approx(0.0304)
    assert tuple(wait.explicit_bounds) == DURATION_BUCKETS
    assert wait.bucket_counts[DURATION_BUCKETS.index(0.00025)] == 2
    assert wait.bucket_counts[DURATION_BUCKETS.index(0.05)] == 1
    (operation,) = found["db.client.operation.duration"].data.data_points
    assert operation.count == 1
    assert operation.attributes["db.operation.name"] == "TRANSACTION"
    # Recorded after the first collection: replayed once, never twice.
    metrics.observe(metrics.POOL_WAIT, 0.0002)
    instruments.flush()
    instruments.flush()
    (wait,) = collected(reader)["db.client.connection.wait_time"].data.data_points
    assert wait.count == 4
    assert wait.sum == pytest.approx(0.0306)


def test_opentelemetry_write_lock_waits_share_one_instrument() -> None:
    """The in-process lock and SQLite's lock are two series of one instrument."""
    reader, meter = otel_reader()
    instruments = OpenTelemetryInstruments(meter)
    metrics.observe(metrics.LOCK_WAIT, 0.001)
    metrics.observe(metrics.BEGIN_WAIT, 0.002)
    metrics.observe(metrics.BEGIN_WAIT, 0.002)
    instruments.flush()
    points = collected(reader)["circuitforge.db.write_lock.wait_time"].data.data_points
    assert {p.attributes["circuitforge.db.lock"]: p.count for p in points} == {
        "process": 1,
        "sqlite": 2,
    }


def test_an_async_writers_lock_wait_is_timed_too(tmp_path: Path) -> None:
    """A coroutine that waits in the loop for another thread's block records its wait."""
    import asyncio

    from circuitforge_core.db import ConnectionPool

    with ConnectionPool(tmp_path / "a.db", max_size=2) as pool:
        with pool.connection() as db:
            db.execute("CREATE TABLE t (x)")
            db.commit()
        holding, release = threading.Event(), threading.Event()

        def holder() -> None:
            with pool.connection() as db, transaction(db):
                holding.set()
                release.wait(30)

        thread = threading.Thread(target=holder)
        thread.start()
        assert holding.wait(30)
        metrics.reset()

        async def main() -> None:
            async def write() -> None:
                async with pool.aconnection() as db, db.transaction():
                    await db.execute("INSERT INTO t VALUES (1)")

            task = asyncio.create_task(write())
            with pool.connection() as db:
                lock = writer_lock_for(db)
            assert lock is not None
            for _ in range(30_000):  # bounded: the coroutine queues within moments
                if lock.waiting:
                    break
                await asyncio.sleep(0.001)
            assert lock.waiting == 1
            release.set()
            await task

        asyncio.run(main())
        thread.join(30)
        assert not thread.is_alive()
    waits = snapshot().histograms["lock_wait"]
    assert waits.count >= 1
    assert waits.sum > 0
