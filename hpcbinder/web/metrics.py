"""Prometheus metrics of the Binder service (``/metrics``), and the bearer
token Prometheus scrapes them with."""

from __future__ import annotations

import hmac
import os
import stat
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest

from hpcbinder.config import SiteConfigError

#: The site setting naming the token's file.
SETTING = "binder.metrics_token_file"
#: Fewer characters than this are guessable.
MIN_TOKEN_CHARS = 16


def scrape_token(path: Path) -> str:
    """The token in ``path`` (surrounding whitespace dropped, as Prometheus
    drops it from its ``credentials_file``). SiteConfigError naming the
    setting if the file cannot be read, is empty or short, or other
    accounts may read it: a token all may read authenticates nobody."""
    try:
        with open(path, encoding="utf-8") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            token = handle.read(4096).strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise SiteConfigError(SETTING, [f"cannot read {path}: {reason}"]) from None
    if mode & (stat.S_IROTH | stat.S_IWOTH):
        raise SiteConfigError(
            SETTING,
            [
                f"{path} is mode {stat.S_IMODE(mode):o}: other accounts may read or change "
                "it; make it the service account's only (chmod 600)"
            ],
        )
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
        raise SiteConfigError(
            SETTING,
            [
                f"{path} must hold one token of at least {MIN_TOKEN_CHARS} characters "
                "and no spaces (e.g. from openssl rand -hex 32)"
            ],
        )
    return token


def is_scrape_token(given: str, expected: str | None) -> bool:
    """Whether ``given`` is the site's token (None: there is none),
    compared in constant time."""
    return expected is not None and hmac.compare_digest(given.encode(), expected.encode())


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
