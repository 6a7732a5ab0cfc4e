"""Slurm jobs that run notebook servers, as the hub sees them.

What batchspawner does with shell strings, done with argv lists and with
the failure handling a long-running server needs:

- a query that fails for a transient reason (controller busy, network)
  is retried with backoff and, if it keeps failing, reported as UNKNOWN:
  only a definite answer ("no such job", or the job no longer listed) ends
  a server;
- a job that dies while starting is reported at once with the tail of its
  output, instead of after the spawner's start timeout.

The hub token reaches the job through the environment sbatch passes on
(exactly the variables the spawner names), never through argv or a log line.

On a busy cluster a server's job may wait in the queue for hours, so the
wait is reported (:class:`QueueWatch` → :class:`LaunchProgress`, which the
spawner's progress events follow): the partition, Slurm's reason in words,
the job's place in the partition's queue and the expected start where Slurm
has them; and bounded (``max_queue_seconds``: the job is cancelled).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from hpcbinder.errors import UserError
from hpcbinder.jobs.queueboard import QueueBoard
from hpcbinder.seams.proc import CommandError
from hpcbinder.seams.slurm import JOB_ID, QueueState, SlurmCLI, SlurmError, SubmitOptions

OUTPUT_TAIL_LINES = 20

#: BinderHub's variables of a launch (where the repository came from, the
#: link that started it), set from its ``user_options`` alone, never from
#: the hub's environment: :meth:`hpcbinder.hub.options.LaunchOptions.binder_env`.
BINDER_ENV = (
    "BINDER_REPO_URL",
    "BINDER_REF_URL",
    "BINDER_LAUNCH_HOST",
    "BINDER_REQUEST",
    "BINDER_PERSISTENT_REQUEST",
)
#: What a server's job gets of JupyterHub's ``get_env()``: the variables
#: jupyterhub-singleuser reads, each the server's own (its token, its URLs,
#: its OAuth client), by exact name. Nothing else of the hub's environment
#: (``env_keep``, ``Spawner.environment``) reaches a researcher's job; the
#: shipped sudoers rule keeps exactly these, as their container names
#: (:func:`hpcbinder.seams.apptainer.container_env`).
SERVER_ENV = (
    "JUPYTERHUB_ACTIVITY_URL",
    "JUPYTERHUB_ADMIN_ACCESS",
    "JUPYTERHUB_API_TOKEN",
    "JUPYTERHUB_API_URL",
    "JUPYTERHUB_BASE_URL",
    "JUPYTERHUB_CLIENT_ID",
    "JUPYTERHUB_COOKIE_HOST_PREFIX_ENABLED",
    "JUPYTERHUB_COOKIE_OPTIONS",
    "JUPYTERHUB_DEBUG",
    "JUPYTERHUB_DEFAULT_URL",
    "JUPYTERHUB_DISABLE_USER_CONFIG",
    "JUPYTERHUB_HOST",
    "JUPYTERHUB_OAUTH_ACCESS_SCOPES",
    "JUPYTERHUB_OAUTH_CALLBACK_URL",
    "JUPYTERHUB_OAUTH_CLIENT_ALLOWED_SCOPES",
    "JUPYTERHUB_OAUTH_SCOPES",
    "JUPYTERHUB_PUBLIC_HUB_URL",
    "JUPYTERHUB_PUBLIC_URL",
    "JUPYTERHUB_ROOT_DIR",
    "JUPYTERHUB_SERVER_NAME",
    "JUPYTERHUB_SERVICE_PREFIX",
    "JUPYTERHUB_SERVICE_URL",
    "JUPYTERHUB_SINGLEUSER_APP",
    "JUPYTERHUB_USER",
    *BINDER_ENV,
)
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


#: Slurm's pending reasons (``squeue %r``) in words a researcher
#: understands; any other reason is shown as Slurm names it.
PENDING_REASONS = {
    "None": "waiting for the scheduler to consider it",
    "Resources": "waiting for free nodes",
    "Priority": "other jobs are ahead",
    "QOSMaxJobsPerUserLimit": "you have the most jobs this QOS allows",
    "QOSMaxSubmitJobPerUserLimit": "you have the most jobs this QOS allows",
    "AssocMaxJobsLimit": "your account has the most jobs it may run",
    "AssocGrpJobsLimit": "your account's group has the most jobs it may run",
    "QOSMaxCpuPerUserLimit": "you use the most CPUs this QOS allows",
    "AssocGrpCpuLimit": "your account's group uses the most CPUs it may",
    "QOSGrpCpuLimit": "this QOS's jobs use the most CPUs it allows",
    "QOSGrpNodeLimit": "this QOS's jobs use the most nodes it allows",
    "ReqNodeNotAvail": "the nodes it needs are not available (down, drained or reserved)",
    "Reservation": "waiting for its reservation to start",
    "PartitionDown": "the partition is down",
    "PartitionInactive": "the partition is not accepting jobs to run",
    "PartitionNodeLimit": "it asks for more nodes than the partition allows",
    "PartitionTimeLimit": "it asks for more time than the partition allows",
    "NodeDown": "a node it needs is down",
    "BadConstraints": "no node has the features it asks for",
    "BeginTime": "waiting for its start time",
    "Dependency": "waiting for another job to end",
    "JobHeldUser": "held by you",
    "JobHeldAdmin": "held by an administrator",
    "Licenses": "waiting for licenses",
    "Cleaning": "its node is being cleaned up after a previous job",
}


def pending_reason(reason: str) -> str:
    """Slurm's pending ``reason`` in words (``ReqNodeNotAvail,_Unavail…``
    is read by its code, before the comma)."""
    return PENDING_REASONS.get(reason.split(",", 1)[0], reason)


@dataclass(frozen=True)
class ServerJobStatus:
    """A server job as the hub sees it: state, node (running), partition,
    and Slurm's pending reason."""

    state: ServerJobState
    node: str = ""
    partition: str = ""
    reason: str = ""
    #: A gone job's last state while Slurm remembers it (``NODE_FAIL``: its
    #: node, ``node``, was lost), else "".
    ended: str = ""


@dataclass(frozen=True)
class QueueReport:
    """What a researcher learns about a pending job."""

    partition: str
    reason: str
    position: tuple[int, int] | None = None  # (place, pending jobs), 1 starts next
    expected_start: datetime | None = None  # the controller's local time

    def message(self, now: datetime) -> str:
        where = self.partition or "(unknown)"
        text = f"Waiting in partition {where}: {pending_reason(self.reason)}"
        if self.position is not None:
            text += f"; position {self.position[0]} of {self.position[1]} pending jobs there"
        if self.expected_start is not None:
            start = self.expected_start
            day = "" if start.date() == now.date() else f" on {start:%Y-%m-%d}"
            text += f"; expected to start at {start:%H:%M}{day}"
        return text


class QueueTimeout(UserError):
    """The job waited in the queue past the site's limit and was cancelled."""

    def __init__(self, job_id: str, minutes: float) -> None:
        self.job_id = job_id
        super().__init__(
            f"no node became free within {minutes:g} minutes "
            "(site file: launch.max_queue_minutes); the job was cancelled"
        )


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
    slurm: SlurmCLI  # the site's cluster client (hpcbinder.seams.cluster.cluster_slurm)
    retries: int = 4
    backoff: float = 0.5
    #: Where job states come from: the process's board shared by every
    #: spawner of the hub (:func:`~hpcbinder.jobs.queueboard.board_for`),
    #: else one squeue per question.
    board: QueueBoard | None = None

    async def submit(self, script: str, env: Mapping[str, str]) -> str:
        """Submit ``script`` as the user; the job's environment is exactly
        ``env`` (on the user's own login environment)."""
        return await asyncio.to_thread(
            self.slurm.submit, script, SubmitOptions(), user=self.user, env=env
        )

    async def state(self, job_id: str) -> tuple[ServerJobState, str]:
        """The job's state and (when running) its node."""
        status = await self.status(job_id)
        return status.state, status.node

    async def status(self, job_id: str) -> ServerJobStatus:
        """The job's state, node, partition and pending reason."""
        for attempt in range(self.retries + 1):
            try:
                if self.board is not None:
                    entry = await self.board.entry(job_id, self.user)
                else:
                    entry = await asyncio.to_thread(self.slurm.queue_entry, job_id, user=self.user)
            except (SlurmError, CommandError):
                if attempt < self.retries:
                    await asyncio.sleep(self.backoff * 2**attempt)
                continue
            return ServerJobStatus(
                _FROM_QUEUE[entry.state], entry.node, entry.partition, entry.reason, entry.ended
            )
        return ServerJobStatus(ServerJobState.UNKNOWN)

    async def queue_report(self, job_id: str, status: ServerJobStatus) -> QueueReport:
        """The pending job's report: ``status`` with its place in its
        partition's queue and its expected start, each where Slurm tells."""

        def ask() -> QueueReport:
            position = start = None
            with contextlib.suppress(SlurmError, CommandError):
                position = self.slurm.pending_position(job_id, status.partition, user=self.user)
            with contextlib.suppress(SlurmError, CommandError):
                start = self.slurm.expected_start(job_id, user=self.user)
            return QueueReport(status.partition, status.reason, position, start)

        return await asyncio.to_thread(ask)

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

    async def wait_started(
        self,
        job_id: str,
        poll: float,
        ready: Callable[[], bool],
        *,
        on_status: Callable[[ServerJobStatus], Awaitable[None]] | None = None,
        max_queue_minutes: float | None = None,
    ) -> str:
        """Wait until the job runs and ``ready()`` (the server reported its
        port); the job's node. ``on_status`` hears each answer. :class:`JobDied`
        as soon as the job is gone, before or after it started running;
        :class:`QueueTimeout` (the job cancelled) if it has not started
        within ``max_queue_minutes``."""
        loop = asyncio.get_running_loop()
        deadline = None if max_queue_minutes is None else loop.time() + max_queue_minutes * 60
        host = ""
        while True:
            status = await self.status(job_id)
            if on_status is not None:
                await on_status(status)
            if status.state is ServerJobState.GONE:
                raise JobDied(job_id, await self.output_tail(job_id))
            if status.state is ServerJobState.RUNNING:
                host = status.node or host
                if ready():
                    return host
            elif not host and deadline is not None and loop.time() >= deadline:
                await self.cancel(job_id)
                raise QueueTimeout(job_id, max_queue_minutes or 0)
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


@dataclass(frozen=True)
class ProgressEvent:
    """One step of a launch as JupyterHub's progress stream shows it."""

    percent: int
    message: str


class LaunchProgress:
    """The events of one launch, for every viewer of its progress: each
    follower gets them all from the first, then each new one as it comes."""

    def __init__(self) -> None:
        self.events: list[ProgressEvent] = []
        self.finished = False
        self._changed = asyncio.Event()

    def add(self, percent: int, message: str) -> None:
        """A new step, unless it says what the last one said."""
        if self.events and self.events[-1].message == message:
            return
        self.events.append(ProgressEvent(percent, message))
        self._wake()

    def finish(self) -> None:
        self.finished = True
        self._wake()

    def _wake(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def follow(self) -> AsyncIterator[ProgressEvent]:
        seen = 0
        while True:
            changed = self._changed
            while seen < len(self.events):
                seen += 1
                yield self.events[seen - 1]
            if self.finished:
                return
            await changed.wait()


@dataclass
class QueueWatch:
    """Turns a starting job's answers into :class:`LaunchProgress` steps:
    while it pends, a :class:`QueueReport` (the costlier questions, its
    place and expected start, asked at most every ``detail_every`` seconds
    or when its partition or reason changes); then the node it runs on."""

    jobs: ServerJobs
    job_id: str
    progress: LaunchProgress
    detail_every: float = 10.0
    clock: Callable[[], float] = time.monotonic
    now: Callable[[], datetime] = datetime.now
    _report: QueueReport | None = field(default=None, init=False)
    _asked: float = field(default=float("-inf"), init=False)

    async def __call__(self, status: ServerJobStatus) -> None:
        if status.state is ServerJobState.PENDING:
            report = self._report
            stale = self.clock() - self._asked >= self.detail_every
            moved = report is not None and report.reason != status.reason
            if report is None or stale or moved or report.partition != status.partition:
                self._asked = self.clock()
                self._report = report = await self.jobs.queue_report(self.job_id, status)
            self.progress.add(20, report.message(self.now()))
        elif status.state is ServerJobState.RUNNING:
            self.progress.add(50, f"Job {self.job_id} started on node {status.node or '(unknown)'}")


async def accepts_connections(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether ``host:port`` accepts a TCP connection now."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (TimeoutError, OSError):
        return False
    writer.close()
    return True
