"""The seam around Slurm's command-line tools.

Works with every Slurm a site may run, because it only calls the commands a
user would (``sbatch``, ``scontrol``, ``sinfo``, ``squeue``, ``scancel``,
``sacctmgr``) with argv lists
and parses their plain-text answers. The commands and the patterns that read
their output are data (:class:`SlurmDialect`), so a site with wrappers or an
unusual version changes data, not code.
"""

from __future__ import annotations

import enum
import pwd
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from hpcbinder import textpatterns
from hpcbinder.patterns import SITE_NAME
from hpcbinder.seams import proc

#: States after which a job will never run again.
TERMINAL_STATES = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "OUT_OF_MEMORY",
        "NODE_FAIL",
        "PREEMPTED",
        "BOOT_FAIL",
        "DEADLINE",
    }
)

#: Node states in which a node can take new jobs.
USABLE_NODE_STATES = frozenset({"idle", "mixed", "allocated", "completing"})


#: A job id as sbatch prints it, or one task of an array.
JOB_ID = textpatterns.compile(r"\d+(?:_\d+)?")


class SlurmError(RuntimeError):
    """Slurm refused or could not answer a request."""


def _checked_job_id(job_id: str) -> str:
    if not JOB_ID.fullmatch(job_id):
        raise ValueError(f"not a Slurm job id: {job_id!r}")
    return job_id


@dataclass(frozen=True)
class SlurmDialect:
    """Commands and output patterns: the parts that differ between sites."""

    sbatch: tuple[str, ...] = ("sbatch",)
    scontrol: tuple[str, ...] = ("scontrol",)
    sinfo: tuple[str, ...] = ("sinfo",)
    scancel: tuple[str, ...] = ("scancel",)
    sacctmgr: tuple[str, ...] = ("sacctmgr",)
    #: Jobs' id, owner's uid, state, node, partition and pending reason, in
    #: every state Slurm still remembers (a lost node's NODE_FAIL for
    #: MinJobAge) and every partition (``-a``: hidden ones too), for the
    #: frequent queries of the hub's servers, many jobs at once
    #: (``--jobs=ID,ID``; :attr:`squeue_fields` reads each line). The uid,
    #: not the name: a name squeue could not look up prints as a number or
    #: ``nobody``.
    squeue: tuple[str, ...] = (
        "squeue", "-h", "-a", "--states=all", "-o", "%i|%U|%T|%B|%P|%r", "--jobs",
    )  # fmt: skip
    #: A pending job's expected start (``N/A`` until the scheduler has one).
    squeue_start: tuple[str, ...] = ("squeue", "-h", "--start", "-o", "%S", "-j")
    #: A partition's pending jobs, the next to start first.
    squeue_pending_jobs: tuple[str, ...] = (
        "squeue", "-h", "-t", "PENDING", "--sort=-p,i", "-o", "%i", "-p",
    )  # fmt: skip
    #: Each partition's CPUs (allocated/idle/other/total) and GPUs (gres).
    sinfo_load: tuple[str, ...] = ("sinfo", "-h", "-o", "%P|%C|%G")
    #: Every pending job's partition (one line per job).
    squeue_pending_partitions: tuple[str, ...] = ("squeue", "-h", "-a", "-t", "PENDING", "-o", "%P")
    #: Every job of every user and partition with its state, owner and
    #: comment. Not squeue's default states: those leave out suspended and
    #: held jobs.
    squeue_comments: tuple[str, ...] = ("squeue", "-h", "-a", "--states=all", "-o", "%T|%u|%k")
    private_data: textpatterns.Pattern = textpatterns.compile(r"(?m)^PrivateData\s*=\s*(\S*)")
    slurm_user: textpatterns.Pattern = textpatterns.compile(r"(?m)^SlurmUser\s*=\s*([^\s(]+)")
    #: Admin levels (sacctmgr) that see every job whatever PrivateData says.
    sees_all_jobs: frozenset[str] = frozenset({"operator", "administrator"})
    squeue_pending: textpatterns.Pattern = textpatterns.compile(
        r"(?:PENDING|CONFIGURING|REQUEUED|RESIZING)\b"
    )
    squeue_running: textpatterns.Pattern = textpatterns.compile(r"(?:RUNNING|COMPLETING)\b")
    squeue_fields: textpatterns.Pattern = textpatterns.compile(
        r"(?P<job>[^|]+)\|(?P<uid>\d+)\|(?P<state>[^|]+)\|(?P<node>[^|]*)\|"
        r"(?P<partition>[^|]*)\|(?P<reason>.*)"
    )
    squeue_no_node: frozenset[str] = frozenset({"n/a", "(null)"})
    ping_up: textpatterns.Pattern = textpatterns.compile(
        r"Slurmctld\((?:primary|backup)\) at (\S+) is UP"
    )
    job_id: textpatterns.Pattern = textpatterns.compile(r"(\d+)(?:;\S+)?")
    job_gone: textpatterns.Pattern = textpatterns.compile(r"Invalid job id specified")
    job_fields: dict[str, textpatterns.Pattern] = field(
        default_factory=lambda: {
            name: textpatterns.compile(rf"(?:^|\s){name}=(\S*)")
            for name in (
                "JobId",
                "JobName",
                "JobState",
                "Reason",
                "ExitCode",
                "NodeList",
                "Partition",
                "UserId",
                "StdOut",
            )
        }
    )


@dataclass(frozen=True)
class JobInfo:
    """One job as ``scontrol show job`` reports it."""

    job_id: str
    state: str
    exit_code: int | None
    signal: int | None
    node_list: str
    reason: str
    partition: str
    stdout_path: str

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL_STATES


@dataclass(frozen=True)
class PartitionState:
    """A partition's availability and the states its nodes are in."""

    name: str
    available: bool
    node_states: frozenset[str]
    is_default: bool

    @property
    def usable(self) -> bool:
        return self.available and bool(self.node_states & USABLE_NODE_STATES)


@dataclass(frozen=True)
class PartitionLoad:
    """How busy a partition is now, as a researcher choosing one wants it."""

    name: str
    idle_cpus: int
    total_cpus: int
    gpus: int  # configured on its nodes (gres gpu), idle or not
    pending_jobs: int


_GPU_GRES = textpatterns.compile(r"gpu(?::[A-Za-z0-9_.-]+)?:(\d+)")
_EXIT_CODE = textpatterns.compile(r"(\d+):(\d+)")


@dataclass(frozen=True)
class SubmitOptions:
    """sbatch options. Each is passed as one ``--name=value`` argument, so a
    value can never be read as another option."""

    partition: str | None = None
    time: str | None = None
    cpus: int | None = None
    mem: str | None = None
    job_name: str | None = None
    output: str | None = None
    chdir: str | None = None

    def argv(self) -> list[str]:
        pairs = {
            "partition": self.partition,
            "time": self.time,
            "cpus-per-task": None if self.cpus is None else str(self.cpus),
            "mem": self.mem,
            "job-name": self.job_name,
            "output": self.output,
            "chdir": self.chdir,
        }
        return [f"--{name}={value}" for name, value in pairs.items() if value is not None]


def _hides_jobs(config: str, dialect: SlurmDialect) -> bool:
    """Whether ``config`` (scontrol show config) hides other users' jobs
    from users (PrivateData=jobs)."""
    private = dialect.private_data.search(config)
    return private is not None and "jobs" in private.group(1).lower().split(",")


def _parse_exit_code(text: str) -> tuple[int | None, int | None]:
    match = _EXIT_CODE.fullmatch(text)
    if not match:
        return None, None
    return int(match.group(1)), int(match.group(2))


class QueueState(enum.Enum):
    """A job as ``squeue`` sees it."""

    PENDING = "pending"
    RUNNING = "running"
    GONE = "gone"  # definitely not queued or running any more


@dataclass(frozen=True)
class QueueEntry:
    """One job as ``squeue`` lists it: its state, its node once it runs, its
    partition, and while it pends Slurm's reason (``Resources``,
    ``Priority``, ...; ``None`` before the scheduler has looked at it)."""

    state: QueueState
    node: str = ""
    partition: str = ""
    reason: str = ""
    #: A gone job's last state while Slurm remembers it (``NODE_FAIL``,
    #: ``COMPLETED``...), with ``node`` the node it ran on; "" once forgotten.
    ended: str = ""


@dataclass(frozen=True)
class QueueListing:
    """One job as ``squeue`` lists it, with its owner's uid."""

    uid: int
    entry: QueueEntry


_ENTRY_FIELDS = ("state", "node", "partition", "reason")


def owned_entry(listing: QueueListing | None, user: str) -> QueueEntry:
    """The job ``listing`` shows (None: one squeue did not list) as
    ``user``'s job: gone when not listed, and gone when listed as another
    account's, as that id is not her job any more (Slurm forgot hers and
    gave the id to a new job, as after its state was reset) and its state
    and node are someone else's. :class:`SlurmError` when this host cannot
    tell ``user``'s uid (a directory service down): no answer, not "gone"."""
    if listing is None:
        return QueueEntry(QueueState.GONE)
    try:
        uid = pwd.getpwnam(user).pw_uid
    except KeyError:
        raise SlurmError(f"cannot tell whose job {user}'s is: no account {user} here") from None
    return listing.entry if listing.uid == uid else QueueEntry(QueueState.GONE)


@dataclass(frozen=True)
class JobComment:
    """A job's comment and who owns the job."""

    user: str
    comment: str


class SlurmCLI:
    """Slurm through its command-line tools, as a given account or ourselves,
    wherever the site's ``runner`` runs them (this host or a login node)."""

    def __init__(
        self,
        runner: proc.CommandRunner,
        dialect: SlurmDialect | None = None,
        timeout: float = 30.0,
    ) -> None:
        """``runner``: where the commands run, chosen by the caller (the
        site's cluster client, :func:`hpcbinder.seams.cluster.cluster_slurm`,
        for everything but a build host's own build jobs)."""
        self.runner = runner
        self.dialect = dialect or SlurmDialect()
        self.timeout = timeout

    def _run(
        self,
        argv: list[str],
        user: str | None = None,
        input_text: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> proc.CommandResult:
        return self.runner.run(
            argv, user=user, input_text=input_text, env=env, timeout=self.timeout
        )

    def version(self) -> str:
        """Slurm's version line (``slurm 22.05.8``), or "" where sinfo does not run."""
        try:
            result = self._run([*self.dialect.sinfo, "--version"])
        except proc.CommandError:
            return ""
        return result.stdout.strip() if result.ok else ""

    def ping(self) -> str:
        """The controller's host if slurmctld answers, else :class:`SlurmError`."""
        result = self._run([*self.dialect.scontrol, "ping"])
        match = self.dialect.ping_up.search(result.stdout)
        if not match:
            answer = (result.stdout + result.stderr).strip() or f"exit status {result.returncode}"
            raise SlurmError(f"slurmctld is not reachable: {answer}")
        return match.group(1)

    def partitions(self) -> dict[str, PartitionState]:
        """Every partition with its availability and node states."""
        result = proc.check(self._run([*self.dialect.sinfo, "-h", "-o", "%P|%a|%T"]))
        states: dict[str, set[str]] = {}
        available: dict[str, bool] = {}
        defaults: set[str] = set()
        for line in result.stdout.splitlines():
            parts = line.strip().split("|")
            if len(parts) != 3:
                continue
            name, avail, node_state = parts
            if name.endswith("*"):
                name = name[:-1]
                defaults.add(name)
            available[name] = avail == "up"
            states.setdefault(name, set()).add(node_state.rstrip("*~#!%$@^-"))
        return {
            name: PartitionState(name, available[name], frozenset(states[name]), name in defaults)
            for name in states
        }

    def partition_load(self) -> dict[str, PartitionLoad]:
        """Each partition's idle and total CPUs, GPUs and pending jobs (of
        every user, as far as the site lets this account see them)."""
        info = proc.check(self._run(list(self.dialect.sinfo_load)))
        pending = proc.check(self._run(list(self.dialect.squeue_pending_partitions)))
        waiting: dict[str, int] = {}
        for line in pending.stdout.split():
            for name in line.split(","):  # a job may wait for any of several
                waiting[name] = waiting.get(name, 0) + 1
        loads: dict[str, PartitionLoad] = {}
        for line in info.stdout.splitlines():
            parts = line.strip().split("|")
            cpus = parts[1].split("/") if len(parts) == 3 else []
            if len(cpus) != 4 or not all(c.isdigit() for c in cpus):
                continue
            name = parts[0].rstrip("*")
            gpus = sum(int(m.group(1)) for m in _GPU_GRES.finditer(parts[2]))
            known = loads.get(name)
            idle, total = int(cpus[1]), int(cpus[3])
            if known is not None:  # sinfo splits a partition by node configuration
                idle, total, gpus = (
                    idle + known.idle_cpus,
                    total + known.total_cpus,
                    gpus + known.gpus,
                )
            loads[name] = PartitionLoad(name, idle, total, gpus, waiting.get(name, 0))
        return loads

    def submit(
        self,
        script: str,
        options: SubmitOptions,
        *,
        user: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> str:
        """Submit ``script`` (read by sbatch from stdin) and return the job
        id; never with the submitting process's environment.

        A job for another account gets the whole environment its sbatch
        runs with (``--export=ALL``), which is exactly what a command run as
        another account gets: a fixed PATH, the variables of ``env`` and
        sudo's own (the account's HOME, USER, LOGNAME, SHELL; or the SSH
        runner's ``env -i``). Not ``NONE`` or a list of names: for those
        Slurm loads the account's login environment on the node by running
        its login shell, which took 1 to 2 s of every launch here (and a
        slow or chatty ``.bashrc`` would be in every server's start). A job
        of this process's own account exports only the names in ``env``
        (``NONE`` for none), on that account's login environment."""
        names = sorted(proc.passed_env(env))
        for_another = user is not None and user != proc.current_user()
        export = "ALL" if for_another else ",".join(names) or "NONE"
        result = self._run(
            [*self.dialect.sbatch, "--parsable", f"--export={export}", *options.argv()],
            user=user,
            input_text=script,
            env=env,
        )
        match = self.dialect.job_id.fullmatch(result.stdout.strip())
        if not result.ok or not match:
            raise SlurmError(f"sbatch refused the job: {(result.stderr or result.stdout).strip()}")
        return match.group(1)

    def job(self, job_id: str) -> JobInfo | None:
        """The job's current record, or None once Slurm has forgotten it."""
        result = self._run([*self.dialect.scontrol, "-o", "show", "job", _checked_job_id(job_id)])
        if self.dialect.job_gone.search(result.stderr + result.stdout):
            return None
        proc.check(result)
        values = {
            name: (m.group(1) if (m := pattern.search(result.stdout)) else "")
            for name, pattern in self.dialect.job_fields.items()
        }
        exit_code, signal = _parse_exit_code(values["ExitCode"])
        return JobInfo(
            job_id=values["JobId"] or job_id,
            state=values["JobState"],
            exit_code=exit_code,
            signal=signal,
            node_list=values["NodeList"],
            reason=values["Reason"],
            partition=values["Partition"],
            stdout_path=values["StdOut"],
        )

    def queue_entry(self, job_id: str, *, user: str) -> QueueEntry:
        """``user``'s job as ``squeue`` run as ``user`` lists it."""
        return owned_entry(self.queue_listings([job_id], user=user).get(job_id), user)

    def queue_listings(
        self, job_ids: Iterable[str], *, user: str | None = None
    ) -> dict[str, QueueListing]:
        """The jobs of ``job_ids`` one ``squeue`` run as ``user`` lists (who
        must see them all), whoever's they are: :func:`owned_entry` says
        what each is to the researcher who asks. :class:`SlurmError` when
        Slurm gives no definite answer."""
        asked = [job_id for job_id in dict.fromkeys(job_ids) if JOB_ID.fullmatch(job_id)]
        if not asked:
            return {}
        result = self._run([*self.dialect.squeue, ",".join(asked)], user=user)
        if self.dialect.job_gone.search(result.stderr + result.stdout):
            return {}  # squeue says so only when none of them is known
        if not result.ok:
            raise SlurmError(f"squeue did not answer: {(result.stderr or result.stdout).strip()}")
        listings = {}
        for line in result.stdout.splitlines():
            fields = self.dialect.squeue_fields.fullmatch(line)
            if fields is not None and fields.group("job") in asked:
                entry = self._entry(*(fields.group(name) for name in _ENTRY_FIELDS))
                listings[fields.group("job")] = QueueListing(int(fields.group("uid")), entry)
        return listings

    def _entry(self, state: str, node: str, partition: str, reason: str) -> QueueEntry:
        if node.lower() in self.dialect.squeue_no_node:
            node = ""  # a job between pending and running has no batch host yet
        if self.dialect.squeue_running.match(state):
            return QueueEntry(QueueState.RUNNING, node, partition)
        if self.dialect.squeue_pending.match(state):
            return QueueEntry(QueueState.PENDING, "", partition, reason)
        if state in TERMINAL_STATES:
            return QueueEntry(QueueState.GONE, node, partition, ended=state)
        # Not over (SUSPENDED, STOPPED, SIGNALING, STAGE_OUT on its node;
        # REQUEUE_HOLD, SPECIAL_EXIT, RESV_DEL_HOLD without one): a job the
        # hub forgot now would run on with no server entry or route.
        if node:
            return QueueEntry(QueueState.RUNNING, node, partition)
        return QueueEntry(QueueState.PENDING, "", partition, reason)

    def expected_start(self, job_id: str, *, user: str | None = None) -> datetime | None:
        """When the scheduler expects the pending job to start (its local
        time, as Slurm prints it), or None when it has no estimate yet."""
        result = self._run([*self.dialect.squeue_start, _checked_job_id(job_id)], user=user)
        if not result.ok:
            return None
        try:
            return datetime.fromisoformat(result.stdout.strip())
        except ValueError:
            return None  # N/A: no estimate (yet)

    def pending_position(
        self, job_id: str, partition: str, *, user: str | None = None
    ) -> tuple[int, int] | None:
        """The pending job's place among the pending jobs of ``partition``
        (1 starts next), and their number; None where Slurm cannot tell:
        it hides other users' jobs (PrivateData=jobs), or does not answer."""
        if not SITE_NAME.fullmatch(partition):
            return None
        try:
            if _hides_jobs(self._config(), self.dialect):
                return None
        except proc.CommandError:
            return None
        result = self._run([*self.dialect.squeue_pending_jobs, partition], user=user)
        if not result.ok:
            return None
        jobs = result.stdout.split()
        if _checked_job_id(job_id) not in jobs:
            return None
        return jobs.index(job_id) + 1, len(jobs)

    def _config(self) -> str:
        """``scontrol show config``: slurm.conf as the controller runs it."""
        return proc.check(self._run([*self.dialect.scontrol, "show", "config"])).stdout

    def unfinished_job_comments(self, account: str) -> list[JobComment]:
        """The comment of every job of every user that has not finished
        (pending, held, running, suspended, completing), with the job's
        owner (a comment is only ever its owner's word), listed as
        ``account`` (this process's own); :class:`SlurmError` when Slurm does
        not answer, or hides other users' jobs from ``account``: an answer
        that leaves jobs out must never pass for the whole queue."""
        self._check_sees_every_job(account)
        result = self._run([*self.dialect.squeue_comments])
        if not result.ok:
            raise SlurmError(f"squeue did not answer: {(result.stderr or result.stdout).strip()}")
        comments = []
        for line in result.stdout.splitlines():
            state, sep, rest = line.partition("|")
            user, owned, comment = rest.partition("|")
            if sep and owned and state.strip() not in TERMINAL_STATES:
                comments.append(JobComment(user.strip(), comment))
        return comments

    def sees_every_job(self, account: str) -> bool:
        """Whether ``account`` (the one commands run as without ``user``)
        sees every user's jobs: Slurm hides none (no PrivateData=jobs), or
        it is root, SlurmUser, an operator or an administrator."""
        config = self._config()
        if not _hides_jobs(config, self.dialect):
            return True
        slurm_user = self.dialect.slurm_user.search(config)
        if account == "root" or (slurm_user is not None and slurm_user.group(1) == account):
            return True
        result = self._run(
            [*self.dialect.sacctmgr, "-n", "-P", "show", "user", account, "format=adminlevel"]
        )
        return result.ok and result.stdout.strip().lower() in self.dialect.sees_all_jobs

    def _check_sees_every_job(self, account: str) -> None:
        if self.sees_every_job(account):
            return
        raise SlurmError(
            f"Slurm hides other users' jobs from {account} (slurm.conf: PrivateData=jobs), so "
            "the images and checkouts their jobs use cannot be seen; make it an operator: "
            f"sacctmgr modify user {account} set adminlevel=Operator"
        )

    def wait(
        self,
        job_id: str,
        timeout: float,
        poll: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
    ) -> JobInfo:
        """Poll until the job has finished; :class:`SlurmError` if it takes
        longer than ``timeout`` seconds or Slurm forgets it first."""
        deadline = clock() + timeout
        while True:
            info = self.job(job_id)
            if info is None:
                raise SlurmError(f"job {job_id} is no longer known to Slurm")
            if info.finished:
                return info
            if clock() >= deadline:
                raise SlurmError(f"job {job_id} still {info.state} after {timeout:g} s")
            time.sleep(poll)

    def cancel(self, job_id: str, *, user: str | None = None) -> None:
        proc.check(self._run([*self.dialect.scancel, _checked_job_id(job_id)], user=user))
