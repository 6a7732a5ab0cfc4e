"""Slurm jobs that run notebook servers, as the hub sees them.

What batchspawner does with shell strings, done with argv lists and with
the failure handling a long-running server needs:

- a query that fails for a transient reason (controller busy, network)
  is retried with backoff and, if it keeps failing, reported as UNKNOWN:
  only a definite answer ("no such job", or the job no longer listed) ends
  a server;
- a job that dies while starting is reported at once with the tail of its
  output, instead of after the spawner's start timeout.

The hub token reaches the job through the environment sbatch passes on,
never through argv or a log line.
"""

from __future__ import annotations

import asyncio
import enum
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from hpcbinder.slurm import JOB_ID

OUTPUT_TAIL_LINES = 20


class ServerJobState(enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    GONE = "gone"  # definitely not queued or running any more
    UNKNOWN = "unknown"  # Slurm did not answer; the job may well be fine


class JobDied(RuntimeError):
    """The server's job ended before the server was up."""

    def __init__(self, job_id: str, tail: list[str]) -> None:
        self.job_id = job_id
        self.tail = tail
        shown = "\n".join(tail) if tail else "(no output)"
        super().__init__(f"the server's Slurm job {job_id} ended while starting:\n{shown}")


@dataclass(frozen=True)
class ServerJobDialect:
    """Commands and patterns (a site with wrappers changes data, not code)."""

    sbatch: tuple[str, ...] = ("sbatch", "--parsable")
    squeue: tuple[str, ...] = ("squeue", "-h", "-o", "%T %B", "-j")
    scancel: tuple[str, ...] = ("scancel",)
    pending: re.Pattern[str] = re.compile(r"(?:PENDING|CONFIGURING|REQUEUED|RESIZING)\b")
    running: re.Pattern[str] = re.compile(r"(?:RUNNING|COMPLETING)\b")
    gone: re.Pattern[str] = re.compile(r"Invalid job id specified")
    host: re.Pattern[str] = re.compile(r"\S+\s+(\S+)\s*$")


class CommandRunner(Protocol):
    """Runs a command as a user where Slurm is: this host or a login node."""

    async def run(
        self,
        user: str,
        argv: Sequence[str],
        stdin: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> tuple[int, str, str]: ...


@dataclass(frozen=True)
class LocalCommands:
    """Commands on this host (a Slurm submit host), as the user through sudo."""

    prefix: Sequence[str] = ("sudo", "-n", "-E", "-u", "{user}", "--")

    async def run(
        self,
        user: str,
        argv: Sequence[str],
        stdin: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> tuple[int, str, str]:
        prefix = [part.replace("{user}", user) for part in self.prefix]
        process = await asyncio.create_subprocess_exec(
            *prefix,
            *argv,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=dict(env) if env is not None else None,
        )
        out, err = await process.communicate(stdin.encode() if stdin is not None else None)
        return process.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")


@dataclass
class ServerJobs:
    """Submit, query and cancel one user's server jobs."""

    user: str
    runner: CommandRunner = field(default_factory=LocalCommands)
    dialect: ServerJobDialect = field(default_factory=ServerJobDialect)
    retries: int = 4
    backoff: float = 0.5

    async def _run(
        self, argv: list[str], stdin: str | None = None, env: Mapping[str, str] | None = None
    ) -> tuple[int, str, str]:
        return await self.runner.run(self.user, argv, stdin, env)

    async def submit(self, script: str, env: Mapping[str, str]) -> str:
        """Submit ``script`` as the user; its environment is ``env``."""
        status, out, err = await self._run([*self.dialect.sbatch], script, env)
        job_id = out.strip().split(";", 1)[0]
        if status != 0 or not JOB_ID.fullmatch(job_id):
            raise RuntimeError(f"sbatch refused the server job: {(err or out).strip()}")
        return job_id

    async def state(self, job_id: str) -> tuple[ServerJobState, str]:
        """The job's state and (when running) its node."""
        if not JOB_ID.fullmatch(job_id):
            return ServerJobState.GONE, ""
        for attempt in range(self.retries + 1):
            status, out, err = await self._run([*self.dialect.squeue, job_id])
            if self.dialect.gone.search(err + out):
                return ServerJobState.GONE, ""
            if status == 0:
                return self._parse(out)
            if attempt < self.retries:
                await asyncio.sleep(self.backoff * 2**attempt)
        return ServerJobState.UNKNOWN, ""

    def _parse(self, out: str) -> tuple[ServerJobState, str]:
        line = out.strip()
        if not line:
            return ServerJobState.GONE, ""
        if self.dialect.running.match(line):
            match = self.dialect.host.search(line)
            return ServerJobState.RUNNING, match.group(1) if match else ""
        if self.dialect.pending.match(line):
            return ServerJobState.PENDING, ""
        return ServerJobState.GONE, ""

    async def cancel(self, job_id: str) -> None:
        if JOB_ID.fullmatch(job_id):
            await self._run([*self.dialect.scancel, job_id])

    async def output_tail(self, path: Path, lines: int = OUTPUT_TAIL_LINES) -> list[str]:
        """The last lines of a job's output file, read as the user where it ran."""
        status, out, _ = await self._run(["tail", "-n", str(lines), "--", str(path)])
        return out.splitlines() if status == 0 else []

    async def wait_started(
        self, job_id: str, output: Path, poll: float, ready: Callable[[], bool]
    ) -> str:
        """Wait until the job runs and ``ready()`` (the server reported its
        port); the job's node. :class:`JobDied` as soon as the job is gone,
        before or after it started running."""
        host = ""
        while True:
            state, node = await self.state(job_id)
            if state is ServerJobState.GONE:
                raise JobDied(job_id, await self.output_tail(output))
            if state is ServerJobState.RUNNING:
                host = node or host
                if ready():
                    return host
            await asyncio.sleep(poll)

    async def wait_listening(
        self,
        job_id: str,
        output: Path,
        poll: float,
        listening: Callable[[], Awaitable[bool]],
        attempt_every: float = 0.05,
    ) -> None:
        """Wait until the server accepts connections, trying every
        ``attempt_every`` seconds: the hub's own check backs off
        exponentially and would find it seconds late. :class:`JobDied` if
        the job ends meanwhile (checked every ``poll`` seconds)."""
        loop = asyncio.get_running_loop()
        next_query = loop.time() + poll
        while not await listening():
            if loop.time() >= next_query:
                if (await self.state(job_id))[0] is ServerJobState.GONE:
                    raise JobDied(job_id, await self.output_tail(output))
                next_query = loop.time() + poll
            await asyncio.sleep(attempt_every)


async def accepts_connections(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether ``host:port`` accepts a TCP connection now."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (TimeoutError, OSError):
        return False
    writer.close()
    return True
