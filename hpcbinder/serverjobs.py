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
import contextlib
import enum
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from hpcbinder.proc import CommandError
from hpcbinder.slurm import JOB_ID, QueueState, SlurmCLI, SlurmError, SubmitOptions

OUTPUT_TAIL_LINES = 20
#: Prints the last lines of ~/.hpcbinder-server-JOB.log, run as the
#: researcher (configs/hpcbinder-server-log, allowed by the shipped sudoers
#: rule): the service account may read that log and no other file of theirs.
SERVER_LOG_READER = "/usr/local/libexec/hpcbinder-server-log"


class ServerJobState(enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    GONE = "gone"  # definitely not queued or running any more
    UNKNOWN = "unknown"  # Slurm did not answer; the job may well be fine


_FROM_QUEUE = {
    QueueState.PENDING: ServerJobState.PENDING,
    QueueState.RUNNING: ServerJobState.RUNNING,
    QueueState.GONE: ServerJobState.GONE,
}


class JobDied(RuntimeError):
    """The server's job ended before the server was up."""

    def __init__(self, job_id: str, tail: list[str]) -> None:
        self.job_id = job_id
        self.tail = tail
        shown = "\n".join(tail) if tail else "(no output)"
        super().__init__(f"the server's Slurm job {job_id} ended while starting:\n{shown}")


@dataclass
class ServerJobs:
    """Submit, query and cancel one user's server jobs, through the site's
    Slurm client (this host or a login node), from the hub's event loop."""

    user: str
    slurm: SlurmCLI = field(default_factory=SlurmCLI)
    retries: int = 4
    backoff: float = 0.5

    async def submit(self, script: str, env: Mapping[str, str]) -> str:
        """Submit ``script`` as the user; its environment is ``env``."""
        return await asyncio.to_thread(
            self.slurm.submit, script, SubmitOptions(), user=self.user, env=env
        )

    async def state(self, job_id: str) -> tuple[ServerJobState, str]:
        """The job's state and (when running) its node."""
        for attempt in range(self.retries + 1):
            try:
                state, host = await asyncio.to_thread(
                    self.slurm.queue_state, job_id, user=self.user
                )
            except SlurmError:
                if attempt < self.retries:
                    await asyncio.sleep(self.backoff * 2**attempt)
                continue
            return _FROM_QUEUE[state], host
        return ServerJobState.UNKNOWN, ""

    async def cancel(self, job_id: str) -> None:
        if JOB_ID.fullmatch(job_id):
            # A job that has ended already is not an error here.
            with contextlib.suppress(SlurmError, CommandError):
                await asyncio.to_thread(self.slurm.cancel, job_id, user=self.user)

    async def output_tail(self, job_id: str, lines: int = OUTPUT_TAIL_LINES) -> list[str]:
        """The last lines of a server job's log (serverscript's ``--output``),
        read as the user on the host that submitted it."""
        result = await asyncio.to_thread(
            self.slurm.runner.run, [SERVER_LOG_READER, job_id, str(lines)], user=self.user
        )
        return result.stdout.splitlines() if result.ok else []

    async def wait_started(self, job_id: str, poll: float, ready: Callable[[], bool]) -> str:
        """Wait until the job runs and ``ready()`` (the server reported its
        port); the job's node. :class:`JobDied` as soon as the job is gone,
        before or after it started running."""
        host = ""
        while True:
            state, node = await self.state(job_id)
            if state is ServerJobState.GONE:
                raise JobDied(job_id, await self.output_tail(job_id))
            if state is ServerJobState.RUNNING:
                host = node or host
                if ready():
                    return host
            await asyncio.sleep(poll)

    async def wait_listening(
        self,
        job_id: str,
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
                    raise JobDied(job_id, await self.output_tail(job_id))
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
