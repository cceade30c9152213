"""Exporting the process's database metrics: a Prometheus collector and OpenTelemetry instruments.

Owns the exported names and how a ``metrics.snapshot()`` maps onto each
library. Both read the snapshot when their library collects (a scrape, an
export interval); nothing happens per database call. Prometheus needs the
``prometheus`` extra (``prometheus-client``), OpenTelemetry the
``opentelemetry`` extra (``opentelemetry-api``, plus an SDK the product
configures); each is imported only here, only when asked for.

OpenTelemetry has no asynchronous histogram, so the duration histograms are
synchronous ``Histogram`` instruments fed at collection time: what was
recorded since the last collection is replayed bucket by bucket, each value
at the mean of its bucket's new values (which lies in that bucket), with the
same bucket boundaries advised to the SDK, so counts, buckets and sums come
out exact (min and max are those means). The replay costs one SDK record
per value, off the request path; a collection may see it only at the next.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

from . import metrics
from .errors import ExporterUnavailableError
from .metrics import DURATION_BUCKETS, HistogramSnapshot, MetricsSnapshot

#: (snapshot name, Prometheus name, help) of each histogram.
PROMETHEUS_HISTOGRAMS = (
    ("pool_wait", "circuitforge_db_pool_wait_seconds", "Time to obtain a pooled connection."),
    ("pool_use", "circuitforge_db_pool_use_seconds", "Time a pooled connection was checked out."),
    ("connect", "circuitforge_db_connect_seconds", "Time to open a new pooled connection."),
    (
        "lock_wait",
        "circuitforge_db_write_lock_wait_seconds",
        "transaction(): time waiting for the in-process writer lock of the file.",
    ),
    (
        "begin_wait",
        "circuitforge_db_begin_immediate_seconds",
        "transaction(): time in BEGIN IMMEDIATE (waiting for SQLite's write lock).",
    ),
    (
        "transaction",
        "circuitforge_db_transaction_seconds",
        "transaction(): duration of the whole block.",
    ),
    ("migration", "circuitforge_db_migration_seconds", "Duration of one applied migration file."),
)
PROMETHEUS_COUNTERS = (
    ("pool_timeouts", "circuitforge_db_pool_timeouts", "Checkouts that timed out."),
    (
        "transaction_failures",
        "circuitforge_db_transaction_failures",
        "transaction() blocks rolled back by an exception.",
    ),
    ("migration_failures", "circuitforge_db_migration_failures", "Migration files that failed."),
)


def _require(module: str, extra: str) -> Any:
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as exc:
        raise ExporterUnavailableError(
            f"{module} is not installed; install the extra: pip install "
            f"'circuitforge-core[{extra}]'."
        ) from exc


# -- Prometheus ------------------------------------------------------------------------


class PrometheusCollector:
    """A ``prometheus_client`` custom collector of the process's database metrics.

    ``PrometheusCollector().register()`` (the default registry) or
    ``registry.register(PrometheusCollector())``. Each scrape takes one
    ``metrics.snapshot()``.
    """

    def __init__(self, read: Callable[[], MetricsSnapshot] = metrics.snapshot) -> None:
        self._core = _require("prometheus_client.core", "prometheus")
        self._read = read

    def register(self, registry: Any = None) -> PrometheusCollector:
        if registry is None:
            registry = _require("prometheus_client", "prometheus").REGISTRY
        registry.register(self)
        return self

    def describe(self) -> list[Any]:
        return []  # families are built per scrape; nothing to check at registration

    def collect(self) -> Iterator[Any]:
        core = self._core
        snap = self._read()
        for key, name, documentation in PROMETHEUS_HISTOGRAMS:
            histogram = snap.histograms[key]
            family = core.HistogramMetricFamily(name, documentation)
            family.add_metric(
                [],
                [(_le(bound), float(count)) for bound, count in histogram.cumulative()],
                histogram.sum,
            )
            yield family
        for key, name, documentation in PROMETHEUS_COUNTERS:
            yield core.CounterMetricFamily(name, documentation, value=snap.counters[key])
        connections = core.GaugeMetricFamily(
            "circuitforge_db_connections", "Open pooled connections by state.", labels=["state"]
        )
        connections.add_metric(["idle"], snap.connections_idle)
        connections.add_metric(["used"], snap.connections_used)
        yield connections
        for name, documentation, value in (
            (
                "circuitforge_db_connections_max",
                "Connections the pools may open.",
                snap.connections_max,
            ),
            (
                "circuitforge_db_pending_checkouts",
                "Checkouts waiting for a connection.",
                snap.connections_pending,
            ),
            ("circuitforge_db_databases", "Database files with an open pool.", snap.databases),
            (
                "circuitforge_db_wal_bytes",
                "Total size of the -wal files of the databases with a pool.",
                snap.wal_bytes,
            ),
            (
                "circuitforge_db_wal_bytes_max",
                "Largest -wal file among the databases with a pool.",
                snap.wal_bytes_max,
            ),
        ):
            yield core.GaugeMetricFamily(name, documentation, value=value)


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


# -- OpenTelemetry ---------------------------------------------------------------------

#: (snapshot name, instrument name, description, attributes) of each histogram.
OPENTELEMETRY_HISTOGRAMS: tuple[tuple[str, str, str, dict[str, str]], ...] = (
    (
        "pool_wait",
        "db.client.connection.wait_time",
        "The time it took to obtain an open connection from the pool.",
        {},
    ),
    (
        "pool_use",
        "db.client.connection.use_time",
        "The time between borrowing a connection and returning it to the pool.",
        {},
    ),
    (
        "connect",
        "db.client.connection.create_time",
        "The time it took to create a new connection.",
        {},
    ),
    (
        "transaction",
        "db.client.operation.duration",
        "Duration of transaction() blocks.",
        {"db.operation.name": "TRANSACTION"},
    ),
    (
        "lock_wait",
        "circuitforge.db.write_lock.wait_time",
        "transaction(): time waiting for the in-process writer lock of the file.",
        {"circuitforge.db.lock": "process"},
    ),
    (
        "begin_wait",
        "circuitforge.db.write_lock.wait_time",
        "transaction(): time in BEGIN IMMEDIATE (waiting for SQLite's write lock).",
        {"circuitforge.db.lock": "sqlite"},
    ),
    (
        "migration",
        "circuitforge.db.migration.duration",
        "Duration of one applied migration file.",
        {},
    ),
)
POOL_NAME = "circuitforge_core.db"


class OpenTelemetryInstruments:
    """Observable OpenTelemetry instruments over the process's database metrics.

    ``OpenTelemetryInstruments(meter)`` (default: the global meter provider's
    meter ``circuitforge_core.db``). Counts and gauges are observable
    instruments with the ``db.client.*`` semantic-convention names; the
    duration histograms are replayed at each collection (see the module
    docstring). Every series carries ``db.system.name = sqlite`` and
    ``db.client.connection.pool.name``; none carries a user or a file.
    """

    def __init__(
        self, meter: Any = None, read: Callable[[], MetricsSnapshot] = metrics.snapshot
    ) -> None:
        api = _require("opentelemetry.metrics", "opentelemetry")
        if meter is None:
            meter = api.get_meter("circuitforge_core.db")
        self._read = read
        self._observation = api.Observation
        self._base = {"db.system.name": "sqlite", "db.client.connection.pool.name": POOL_NAME}
        self._guard = threading.Lock()
        self._replayed: dict[str, HistogramSnapshot] = {}
        self._histograms: list[tuple[str, Any, dict[str, str]]] = []
        created: dict[str, Any] = {}
        for key, name, description, attributes in OPENTELEMETRY_HISTOGRAMS:
            if name not in created:
                created[name] = meter.create_histogram(
                    name,
                    unit="s",
                    description=description,
                    explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS),
                )
            self._histograms.append((key, created[name], {**self._base, **attributes}))
        up_down = meter.create_observable_up_down_counter
        counter = meter.create_observable_counter
        up_down(
            "db.client.connection.count",
            callbacks=[self._connection_count],
            unit="{connection}",
            description="The number of connections that are currently in the state described "
            "by the state attribute.",
        )
        up_down(
            "db.client.connection.max",
            callbacks=[self._value(lambda snap: snap.connections_max)],
            unit="{connection}",
            description="The maximum number of open connections allowed.",
        )
        up_down(
            "db.client.connection.pending_requests",
            callbacks=[self._value(lambda snap: snap.connections_pending)],
            unit="{request}",
            description="The number of current pending requests for an open connection.",
        )
        counter(
            "db.client.connection.timeouts",
            callbacks=[self._value(lambda snap: snap.counters["pool_timeouts"])],
            unit="{timeout}",
            description="The number of connection timeouts that have occurred trying to obtain "
            "a connection from the pool.",
        )
        counter(
            "circuitforge.db.transaction.failures",
            callbacks=[self._value(lambda snap: snap.counters["transaction_failures"])],
            unit="{transaction}",
            description="transaction() blocks rolled back by an exception.",
        )
        counter(
            "circuitforge.db.migration.failures",
            callbacks=[self._value(lambda snap: snap.counters["migration_failures"])],
            unit="{migration}",
            description="Migration files that failed.",
        )
        meter.create_observable_gauge(
            "circuitforge.db.wal.size",
            callbacks=[self._wal],
            unit="By",
            description="Size of the -wal files of the databases with a pool: the total and the "
            "largest (circuitforge.db.wal.aggregate = sum | max).",
        )

    def flush(self) -> None:
        """Replay what the histograms recorded since the last replay into the instruments now."""
        self._snapshot()

    def _snapshot(self) -> MetricsSnapshot:
        """A fresh snapshot, with the histograms' news replayed; every callback takes one."""
        with self._guard:
            snap = self._read()
            for key, instrument, attributes in self._histograms:
                self._replay(key, snap.histograms[key], instrument, attributes)
            return snap

    def _replay(
        self, key: str, current: HistogramSnapshot, instrument: Any, attributes: dict[str, str]
    ) -> None:
        """Record each bucket's new values at their mean: it lies in the bucket, so the
        instrument's buckets, count and sum come out exactly as recorded."""
        before = self._replayed.get(key)
        for index, count in enumerate(current.counts):
            new = count - (before.counts[index] if before else 0)
            if new <= 0:
                continue
            added = current.bucket_sums[index] - (before.bucket_sums[index] if before else 0.0)
            value = added / new
            for _ in range(new):
                instrument.record(value, attributes)
        self._replayed[key] = current

    def _connection_count(self, options: Any) -> list[Any]:
        snap = self._snapshot()
        return [
            self._observation(
                snap.connections_idle, {**self._base, "db.client.connection.state": "idle"}
            ),
            self._observation(
                snap.connections_used, {**self._base, "db.client.connection.state": "used"}
            ),
        ]

    def _value(self, pick: Callable[[MetricsSnapshot], int]) -> Callable[[Any], list[Any]]:
        def callback(options: Any) -> list[Any]:
            return [self._observation(pick(self._snapshot()), self._base)]

        return callback

    def _wal(self, options: Any) -> list[Any]:
        snap = self._snapshot()
        return [
            self._observation(
                snap.wal_bytes, {**self._base, "circuitforge.db.wal.aggregate": "sum"}
            ),
            self._observation(
                snap.wal_bytes_max, {**self._base, "circuitforge.db.wal.aggregate": "max"}
            ),
        ]
