"""Builds on this host, as the build account."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from hpcbinder.config import Site
from hpcbinder.images.backends import STEP_MARKER, BuildCommands, BuildFailed, OnStart
from hpcbinder.seams import proc

TAIL_LINES = 30


class LocalBackend:
    name = "local"

    def __init__(self, site: Site) -> None:
        self.account = site.build.account

    def stop_leftover(self, started: str) -> None:
        """Nothing to stop: Process sessions on this host are the store's to stop."""

    def run(self, build: BuildCommands, on_line: Callable[[str], None], on_start: OnStart) -> None:
        deadline = time.monotonic() + build.timeout
        tail: deque[str] = deque(maxlen=TAIL_LINES)

        def line(text: str) -> None:
            tail.append(text)
            on_line(text)

        for step in build.steps:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BuildFailed(step.name, "the build ran past its time limit", list(tail))
            line(f"{STEP_MARKER}{step.name}")
            try:
                status = proc.stream(
                    step.argv,
                    user=self.account,
                    cwd=build.cwd,
                    timeout=remaining,
                    on_line=line,
                    on_start=lambda pid: on_start(f"session {pid}"),
                )
            except proc.CommandTimeout as exc:
                raise BuildFailed(
                    step.name, "the build ran past its time limit", list(tail)
                ) from exc
            except proc.CommandError as exc:
                raise BuildFailed(step.name, exc.reason, list(tail)) from exc
            if status != 0:
                raise BuildFailed(step.name, f"exited with status {status}", list(tail))
