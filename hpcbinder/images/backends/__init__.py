"""Build backends: where a build's commands run.

A build is a short list of argv commands (see :mod:`hpcbinder.images.builder`) run
in one working directory as the build account. A backend runs them on this
host (:class:`LocalBackend`), in a Slurm job on the build partition
(:class:`SlurmBackend`) or on a build host over SSH (:class:`SSHBackend`),
streaming their output and stopping them at the site's time limit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from hpcbinder.config import Site


@dataclass(frozen=True)
class BuildStep:
    """One command of a build, named for progress and error messages."""

    name: str
    argv: list[str]


@dataclass(frozen=True)
class BuildCommands:
    """What to run for one build: commands, in order, in ``cwd``."""

    steps: list[BuildStep]
    cwd: Path
    #: Where a backend that cannot stream the output to ``on_line`` (a Slurm
    #: job) has it written: in the staging folder, which no container sees.
    output: Path
    timeout: float


class BuildFailed(RuntimeError):
    """A build command failed; ``tail`` holds the last lines of its output."""

    def __init__(self, step: str, message: str, tail: list[str]) -> None:
        self.step = step
        self.tail = tail
        super().__init__(f"{step}: {message}")


#: The line every backend writes into a build's output before each step:
#: the log shows where each step starts (and so how long it took), and the
#: Slurm backend, which reads the job's output after the fact, which one failed.
STEP_MARKER = "hpcbinder-build-step: "


#: Told what a backend started ("session 1234" or "slurm-job 56"), so that a
#: build taking over from a dead one can stop it.
OnStart = Callable[[str], None]


class Backend(Protocol):
    name: str

    def run(self, build: BuildCommands, on_line: Callable[[str], None], on_start: OnStart) -> None:
        """Run every command, each line of output (at most
        :data:`hpcbinder.boundedlines.LINE_LIMIT` characters) to ``on_line``;
        :class:`BuildFailed` at the first that fails."""

    def stop_leftover(self, started: str) -> None:
        """Stop what a dead build told ``on_start`` it started, if this
        backend started it and it still runs (best effort)."""


def backend_for(site: Site) -> Backend:
    """The backend the site file chooses."""
    from hpcbinder.images.backends.local import LocalBackend
    from hpcbinder.images.backends.slurmjob import SlurmBackend
    from hpcbinder.images.backends.ssh import SSHBackend

    backends: dict[str, Callable[[Site], Backend]] = {
        "local": LocalBackend,
        "slurm": SlurmBackend,
        "ssh": SSHBackend,
    }
    return backends[site.build.backend](site)
