"""Prometheus metrics: what each server process counts, and how /metrics adds them up.

Two kinds:

- counted in the process (requests and their latency by route, transitions by entity and
  (from, to), events written and streamed, subscribers connected, reconciler sweeps, executor
  slots busy). With several server processes (`--workers N`), `farmstead serve` points
  PROMETHEUS_MULTIPROC_DIR at a fresh directory before the workers start; each process writes
  its values there and a scrape of any of them adds them all up (the official client's
  multiprocess mode);
- read from the database at each scrape (instances by status, the reconciler's lag: the age of
  the oldest deadline that has passed, the newest event id): the same whichever process answers.
"""

import os
from collections.abc import Iterable, Mapping

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

REQUESTS = Histogram(
    "farmstead_request_duration_seconds",
    "HTTP requests by route template, method and status class, and how long they took",
    ["route", "method", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
TRANSITIONS = Counter(
    "farmstead_transitions_total",
    "Moves applied, by entity (task_instance, task) and from/to status letters",
    ["entity", "from_status", "to_status"],
)
EVENTS_WRITTEN = Counter("farmstead_events_written_total", "Event rows written")
EVENTS_STREAMED = Counter(
    "farmstead_events_streamed_total", "Events sent to stream subscribers (Server-Sent Events)"
)
SUBSCRIBERS = Gauge(
    "farmstead_stream_subscribers",
    "Clients connected to the event stream",
    multiprocess_mode="livesum",
)
SWEEPS = Histogram(
    "farmstead_reconciler_sweep_seconds",
    "Reconciler sweeps and how long each took",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
SLOTS_BUSY = Gauge(
    "farmstead_executor_slots_busy",
    "Local executor slots whose command is running",
    multiprocess_mode="livesum",
)
SLOTS = Gauge(
    "farmstead_executor_slots", "Local executor slots in all", multiprocess_mode="livesum"
)


class _Snapshot:
    """Metric families computed before the scrape (from the database), handed to the
    exposition as a collector."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self.families


def database_families(
    instances: Mapping[str, int], tasks: Mapping[str, int], lag: float, newest_event: int
) -> list[Metric]:
    """The database's figures as metric families."""
    by_instance = GaugeMetricFamily(
        "farmstead_task_instances", "Task instances by status letter", labels=["status"]
    )
    for status, n in sorted(instances.items()):
        by_instance.add_metric([status], n)
    by_task = GaugeMetricFamily("farmstead_tasks", "Tasks by status letter", labels=["status"])
    for status, n in sorted(tasks.items()):
        by_task.add_metric([status], n)
    return [
        by_instance,
        by_task,
        GaugeMetricFamily(
            "farmstead_reconciler_lag_seconds",
            "Age of the oldest heartbeat deadline that has passed (0: none)",
            value=lag,
        ),
        GaugeMetricFamily(
            "farmstead_event_newest_id",
            "The newest event id (the stream's head)",
            value=newest_event,
        ),
    ]


def render(families: Iterable[Metric]) -> bytes:
    """The exposition text: this process's (or every process's) metrics and `families`."""
    registry = CollectorRegistry()
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        process = generate_latest(registry)
    else:
        from prometheus_client import REGISTRY

        process = generate_latest(REGISTRY)
    snapshot = CollectorRegistry()
    snapshot.register(_Snapshot(families))
    return process + generate_latest(snapshot)
