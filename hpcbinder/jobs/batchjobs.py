"""A researcher's batch jobs: submitting a checked run, and what ``hpcbinder
jobs`` shows of them afterwards.

Runs are found through the user's job index (``~/.hpcbinder/jobs/JOB.json``,
written at submission and again by the job itself, so a script submitted by
hand is listed too). Their state comes from Slurm while it remembers the
job, then from the provenance records the tasks wrote: a task without a
``completed`` record is never shown as complete. Those records are read
from the job's ``.provenance/`` folder, which no container sees: the
``provenance.json`` beside a task's outputs is the reader's copy, in the
folder the run's own code could write (and fake its completion in).
"""

from __future__ import annotations

import json
import os
import pwd
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from hpcbinder import textpatterns
from hpcbinder.config import Site
from hpcbinder.errors import UserError
from hpcbinder.growingfile import GrowingFile
from hpcbinder.images.store import ImageRecord
from hpcbinder.jobs.batch import (
    JOB_INDEX,
    BatchRun,
    expand_array,
    plan_run,
    plan_tasks,
    render_batch_script,
)
from hpcbinder.jobs.records import RunRecord, TaskProvenance
from hpcbinder.jobs.request import JobRequest
from hpcbinder.render.pipeline import Fetched
from hpcbinder.seams import proc
from hpcbinder.seams.cluster import cluster_slurm
from hpcbinder.seams.slurm import JOB_ID, JobInfo, SlurmCLI, SubmitOptions

#: Exit status of ``hpcbinder sbatch --wait`` for jobs Slurm ended.
EXIT_FOR_STATE = {"TIMEOUT": 124, "CANCELLED": 130, "OUT_OF_MEMORY": 137}
INCOMPLETE = "INCOMPLETE"
#: Each task's provenance (``task-N.json``), in the job's folder, out of the
#: container's sight (slurm/batch.sbatch.j2).
PROVENANCE_DIR = ".provenance"
#: The id an index entry is filed under: the job's (an array's own) id.
_INDEX_JOB_ID = textpatterns.compile(r"[0-9]+")


class UnknownJob(UserError):
    """A job id that is not one of the user's hpcbinder runs."""


def _home(user: str) -> Path:
    return Path(pwd.getpwnam(user).pw_dir)


def _slurm_user(user: str) -> str | None:
    return None if user == proc.current_user() else user


def submit_checked(
    site: Site,
    fetched: Fetched,
    record: ImageRecord,
    launch: list[str],
    user: str,
    request: JobRequest,
    path: str,
    parameters: dict[str, str],
) -> tuple[str, Path]:
    """Check and submit one run of ``path`` in ``record`` as ``user`` (the
    launch page's batch run: the Binder service's for a public image, her
    own job's for a private one); (job id, run folder)."""
    plan = plan_tasks(fetched, path, parameters)
    run = plan_run(site, fetched, record, launch, user=user, request=request, plan=plan)
    return submit_run(run, render_batch_script(run), cluster_slurm(site)), run.run_dir


def submit_run(run: BatchRun, script: str, slurm: SlurmCLI) -> str:
    """Submit ``script`` as the run's user; the job id. The job makes its run
    folder, keeps its script there and records itself in the user's job
    index: nothing but the user's own job writes into their home."""
    return slurm.submit(script, SubmitOptions(), user=_slurm_user(run.user))


def exit_status(info: JobInfo) -> int:
    """The exit status a finished job stands for."""
    if info.state == "COMPLETED":
        return 0
    if info.state == "FAILED":
        return info.exit_code or 1
    return EXIT_FOR_STATE.get(info.state, 1)


@dataclass(frozen=True)
class TaskOutput:
    """One task's folder and what its provenance record says."""

    folder: Path
    provenance: TaskProvenance | None  # None: not written yet, or unreadable

    @property
    def complete(self) -> bool:
        return (
            self.provenance is not None
            and self.provenance.complete
            and not (self.folder / INCOMPLETE).exists()
        )

    def describe(self, slurm_state: str | None) -> str:
        if self.complete:
            return "complete"
        provenance = self.provenance
        state = provenance.state if provenance else "not started"
        if state == "running" and slurm_state and slurm_state != "RUNNING":
            state = f"ended by Slurm ({slurm_state})"
        code = provenance.exit_code if provenance else None
        return f"INCOMPLETE: {state}" + (f" (exit {code})" if code is not None else "")


@dataclass(frozen=True)
class BatchJob:
    """One of the user's runs, from the job index."""

    job_id: str
    record: RunRecord

    @property
    def run_dir(self) -> Path:
        return self.record.run_dir

    def tasks(self) -> list[TaskOutput]:
        folder = self.run_dir / f"job-{self.job_id}"
        outputs = []
        for task in sorted(folder.glob("task-*"), key=lambda p: int(p.name.split("-")[1])):
            provenance: TaskProvenance | None
            try:
                text = (folder / PROVENANCE_DIR / f"{task.name}.json").read_text()
                provenance = TaskProvenance.model_validate_json(text)
            except (OSError, ValueError):  # pydantic's ValidationError is a ValueError
                provenance = None
            outputs.append(TaskOutput(task, provenance))
        return outputs

    def task_ids(self) -> list[str]:
        """The Slurm ids to wait for: each array task, or the job."""
        array = self.record.array
        return [f"{self.job_id}_{i}" for i in expand_array(array)] if array else [self.job_id]

    def logs(self) -> list[Path]:
        single = self.run_dir / f"slurm-{self.job_id}.out"
        tasks = self.run_dir.glob(f"slurm-{self.job_id}_*.out")
        return [single] if single.exists() else sorted(tasks, key=lambda p: p.stat().st_mtime)


def index_entry(job_id: str, record: RunRecord) -> str:
    """A job index entry, as the job script also writes it (batch.sbatch.j2)."""
    return json.dumps({"job_id": job_id, "run": record.model_dump(mode="json")}, sort_keys=True)


def read_index(index: Path) -> list[BatchJob]:
    """The jobs of a job index folder, by id; entries that are not a job
    id with a run record (a half-written or hand-edited file) are skipped."""
    jobs = []
    for path in index.glob("*.json"):
        try:
            data = json.loads(path.read_text())
            job_id = str(data["job_id"])
            if _INDEX_JOB_ID.fullmatch(job_id):
                jobs.append(BatchJob(job_id, RunRecord.model_validate(data["run"])))
        except (OSError, ValueError, KeyError, TypeError):  # ValidationError is a ValueError
            continue
    return sorted(jobs, key=lambda job: int(job.job_id))


class BatchJobs:
    """The hpcbinder batch jobs of one user."""

    def __init__(self, user: str, slurm: SlurmCLI) -> None:
        """``slurm``: the site's cluster client (:func:`hpcbinder.seams.cluster.cluster_slurm`)."""
        self.user = user
        self.slurm = slurm
        self.index = _home(user) / JOB_INDEX

    def all(self) -> list[BatchJob]:
        return read_index(self.index)

    def remember(self, job_id: str, run: BatchRun) -> None:
        """Record a job this process (the user) just submitted, before the
        job starts and records itself."""
        if self.user != proc.current_user():
            raise UserError(f"only {self.user} may write {self.user}'s job index")
        self.index.mkdir(parents=True, exist_ok=True, mode=0o700)
        entry = self.index / f"{job_id}.json"
        partial = entry.with_name(f".{job_id}.json.{os.getpid()}")
        partial.write_text(index_entry(job_id, run.record()))
        partial.replace(entry)

    def get(self, job_id: str) -> BatchJob:
        if JOB_ID.fullmatch(job_id):
            for job in self.all():
                if job.job_id == job_id:
                    return job
        raise UnknownJob(f"{job_id} is not one of {self.user}'s hpcbinder jobs (see: jobs ls)")

    def slurm_state(self, job: BatchJob) -> str | None:
        """Slurm's state of the job (of its first task for an array), while it remembers."""
        info = self.slurm.job(job.job_id)
        return info.state if info else None

    def state(self, job: BatchJob) -> str:
        """Slurm's state while it remembers the job (with the node, for a
        job its node's loss ended: ``NODE_FAIL on hpcb-c1``), else what its
        outputs say."""
        info = self.slurm.job(job.job_id)
        if info is not None:
            lost = info.state == "NODE_FAIL" and info.node_list
            return f"{info.state} on {info.node_list}" if lost else info.state
        tasks = job.tasks()
        if not tasks:
            return "UNKNOWN"
        if all(task.complete for task in tasks):
            return "COMPLETED"
        return INCOMPLETE

    def cancel(self, job: BatchJob) -> None:
        self.slurm.cancel(job.job_id, user=_slurm_user(self.user))

    def follow(
        self,
        job: BatchJob,
        write: Callable[[str], None],
        poll: float = 0.5,
        timeout: float = 7 * 24 * 3600,
    ) -> dict[str, JobInfo]:
        """Stream the job's logs through ``write`` until every task ended;
        each task's final record, by the id waited for (``JOB_TASK`` for an
        array task: Slurm's own record names the last task by the job id)."""
        followed: dict[Path, GrowingFile] = {}
        deadline = time.monotonic() + timeout
        waiting = job.task_ids()
        finished: dict[str, JobInfo] = {}
        while True:
            for line in _new_lines(job.logs(), followed):
                write(line)
            for task_id in waiting:
                if task_id not in finished:
                    info = self.slurm.job(task_id)
                    if info is None:
                        raise UserError(f"Slurm no longer knows job {task_id}")
                    if info.finished:
                        finished[task_id] = info
            if len(finished) == len(waiting):
                for line in _new_lines(job.logs(), followed):
                    write(line)
                return {task_id: finished[task_id] for task_id in waiting}
            if time.monotonic() > deadline:
                raise UserError(f"job {job.job_id} still running after {timeout:g} s")
            time.sleep(poll)


def _new_lines(paths: list[Path], followed: dict[Path, GrowingFile]) -> Iterator[str]:
    """New lines of every task's log, each prefixed with its task's index.
    A progress bar's carriage returns end lines too, so that no redrawn
    line writes over the prefix."""
    for path in paths:
        log = followed.setdefault(path, GrowingFile(path))
        prefix = f"[{path.stem.split('_', 1)[1]}] " if "_" in path.stem else ""
        for line in log.new_lines():
            for part in line.splitlines() or [""]:
                yield prefix + part
