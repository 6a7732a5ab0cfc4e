"""Prometheus metrics of the Binder service (``/metrics``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest

_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 3600)


class Metrics:
    """Build and launch durations and counts by status, builds in progress,
    builds queued. Its own registry: two services in one process (tests)
    do not collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._builds = Histogram(
            "hpcbinder_build_duration_seconds",
            "Time from a build request to its image, by outcome",
            ["status"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self._launches = Histogram(
            "hpcbinder_launch_duration_seconds",
            "Time from a launch request to the server ready, by outcome",
            ["status"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self._building = Gauge(
            "hpcbinder_builds_in_progress", "Builds running now", registry=self.registry
        )
        self._queued = Gauge(
            "hpcbinder_build_queue_length", "Builds waiting for a slot", registry=self.registry
        )

    def build_finished(self, status: str, seconds: float) -> None:
        self._builds.labels(status=status).observe(seconds)

    def launch_finished(self, status: str, seconds: float) -> None:
        self._launches.labels(status=status).observe(seconds)

    def set_builds(self, running: int, queued: int) -> None:
        self._building.set(running)
        self._queued.set(queued)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
