"""Batch runs: a repository's notebook or script run non-interactively in
its image, through sbatch, as the researcher (``hpcbinder sbatch``).

Everything is checked before a job exists: the file is in the repository
at the resolved commit, a notebook declares every parameter passed, array
indices have a parameter row, resources are within the partition's limits.
The job script (slurm/batch.sbatch.j2) is standalone: image path, digest
and commit are pinned in it, so submitting it again by hand runs the same
thing. Each task writes a provenance record next to its outputs, and an
``INCOMPLETE`` marker that only a successful end removes.

A run folder (``--output-dir``, default ``~/hpcbinder-runs/REPO-COMMIT``)
holds ``slurm-JOB[_TASK].out`` logs and ``job-JOB/task-N/``: ``work/`` (a
copy of the repository, the working directory), the executed notebook,
``provenance.json`` (a copy; the record hpcbinder reads is
``job-JOB/.provenance/task-N.json``, out of the container's sight). No run
folder lies in a folder containers may write (a site bind).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import pwd
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from hpcbinder import textpatterns
from hpcbinder.buildpacks.base import REPO_DIR
from hpcbinder.config import Site
from hpcbinder.errors import UserError
from hpcbinder.images.jobrefs import job_comment
from hpcbinder.images.launch import image_entrypoint
from hpcbinder.images.store import ImageRecord
from hpcbinder.jobs.notebooks import check_parameters
from hpcbinder.jobs.records import RunRecord
from hpcbinder.jobs.request import JobRequest
from hpcbinder.jobs.serverscript import (
    apptainer_options,
    container_home,
    safe_path,
    writable_bind_holding,
)
from hpcbinder.render import templating
from hpcbinder.render.pipeline import Fetched
from hpcbinder.sources.providers import ResolvedRepo

#: How each kind of file runs inside the image (notebooks: papermill).
INTERPRETERS = {".py": ["python"], ".sh": ["bash"], ".R": ["Rscript"], ".jl": ["julia"]}
NOTEBOOK = ".ipynb"
#: Where each user's runs are recorded, for ``hpcbinder jobs`` (under home).
JOB_INDEX = ".hpcbinder/jobs"
_NAME = textpatterns.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_RANGE = r"\d+(?:-\d+(?::\d+)?)?"
_ARRAY = textpatterns.compile(rf"({_RANGE}(?:,{_RANGE})*)(%\d+)?")
_SLUG_CHARS = textpatterns.compile(r"[^A-Za-z0-9_.-]+")


class BatchError(UserError):
    """A batch run that cannot be submitted as asked."""


@dataclass(frozen=True)
class BatchTask:
    """One task's parameters (``index`` is its array index)."""

    index: int
    parameters: dict[str, str]


@dataclass(frozen=True)
class ImageIdentity:
    """The image a run is pinned to: its file and digest, and for an overlay
    image (the file is its overlay) the base image it lies on."""

    image: Path
    sha256: str
    base_image: Path | None = None
    base_sha256: str | None = None


@dataclass(frozen=True)
class BatchRun:
    """A checked batch run, ready to render."""

    user: str
    home: Path
    repo: ResolvedRepo
    env_key: str
    image: ImageIdentity
    launch: list[str]  # apptainer exec … IMAGE: contained, sees the run folder
    checkout: Path
    from_image: bool  # postBuild ran: copy the repository as built into the image
    path: str  # the file to run, relative to the repository
    args: list[str]
    tasks: list[BatchTask]
    per_task: bool  # tasks come from a parameter grid, one per array index
    array: str | None
    request: JobRequest
    run_dir: Path
    container_home: str | None = None  # the real home, where the site binds it
    entrypoint: tuple[str, ...] = ()  # what the run goes through: the repository's start
    private: bool = False  # built into her own store (hpcbinder.images.private)

    @property
    def notebook(self) -> bool:
        return self.path.endswith(NOTEBOOK)

    def record(self) -> RunRecord:
        """What every provenance record and job index entry says of the run."""
        return RunRecord(
            spec=self.repo.spec,
            url=self.repo.url,
            ref=self.repo.ref,
            commit=self.repo.commit,
            env_key=self.env_key,
            image=self.image.image,
            image_sha256=self.image.sha256,
            base_image=self.image.base_image,
            base_image_sha256=self.image.base_sha256,
            run=self.path,
            args=self.args,
            array=self.array,
            resources=self.request.sbatch_options(),
            run_dir=self.run_dir,
        )

    def task_argv(self, task: BatchTask) -> list[str]:
        """Parameters as papermill options, or as ``--name=value`` for scripts."""
        if self.notebook:
            return [word for name, value in task.parameters.items() for word in ("-p", name, value)]
        return [*self.args, *(f"--{name}={value}" for name, value in task.parameters.items())]


def expand_array(spec: str) -> list[int]:
    """The indices of a Slurm ``--array`` spec such as ``0-7:2,9%2``."""
    match = _ARRAY.fullmatch(spec)
    if match is None:
        raise BatchError(f"--array: {spec!r} is not a Slurm array spec (e.g. 0-3, 1,5,9, 0-9%2)")
    indices: list[int] = []
    for part in match.group(1).split(","):
        bounds, _, step = part.partition(":")
        first, _, last = bounds.partition("-")
        stop = int(last) if last else int(first)
        if stop < int(first) or (step and int(step) == 0):
            raise BatchError(f"--array: {part!r} is an empty range")
        indices.extend(range(int(first), stop + 1, int(step) if step else 1))
    return sorted(set(indices))


def read_grid(path: Path) -> list[dict[str, str]]:
    """Parameter rows from CSV (a header row), JSON or YAML (a list of mappings)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise BatchError(f"--param-grid: cannot read {path}: {exc.strerror}") from exc
    try:
        if path.suffix == ".csv":
            rows: Any = list(csv.DictReader(text.splitlines()))
        else:
            rows = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError, csv.Error) as exc:
        raise BatchError(f"--param-grid: {path} is not valid {path.suffix[1:]}: {exc}") from exc
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        raise BatchError(f"--param-grid: {path} must hold a non-empty list of parameter rows")
    grid = []
    for number, row in enumerate(rows, 1):
        for name, value in row.items():
            if not isinstance(name, str) or not _NAME.fullmatch(name):
                raise BatchError(f"--param-grid: row {number}: {name!r} is not a parameter name")
            if value is None or isinstance(value, (dict, list)):
                raise BatchError(f"--param-grid: row {number}: {name} needs a single value")
        grid.append({name: str(value) for name, value in row.items()})
    return grid


def file_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def image_identity(launch: list[str]) -> ImageIdentity:
    """The image's files and digests (an overlay image is its overlay on a base)."""
    image = Path(launch[-1])
    if "--overlay" not in launch:
        return ImageIdentity(image, file_sha256(image))
    overlay = Path(launch[launch.index("--overlay") + 1].removesuffix(":ro"))
    return ImageIdentity(overlay, file_sha256(overlay), image, file_sha256(image))


def _repository_file(checkout: Path, path: str, where: str) -> str:
    pure = PurePosixPath(path)
    if pure.is_absolute() or ".." in pure.parts or not path:
        raise BatchError(f"--run: {path!r} must be a path inside the repository")
    if not (checkout / pure).is_file():
        raise BatchError(f"--run: {path} is not a file in {where}")
    if pure.suffix != NOTEBOOK and pure.suffix not in INTERPRETERS:
        kinds = ", ".join([NOTEBOOK, *INTERPRETERS])
        raise BatchError(f"--run: {path}: don't know how to run it (runs {kinds} files)")
    return str(pure)


@dataclass(frozen=True)
class TaskPlan:
    """What runs, checked against the repository before any build or job."""

    path: str  # relative to the repository
    args: list[str]
    tasks: list[BatchTask]
    per_task: bool  # tasks come from a parameter grid, one per array index
    array: str | None


def plan_tasks(
    fetched: Fetched,
    path: str,
    parameters: dict[str, str],
    grid: list[dict[str, str]] | None = None,
    array: str | None = None,
    args: list[str] | None = None,
) -> TaskPlan:
    """Check the file and parameters; :class:`BatchError` names the first problem."""
    repo = fetched.repo
    path = _repository_file(fetched.checkout, path, f"{repo.spec} at {repo.commit[:12]}")
    for name in parameters:
        if not _NAME.fullmatch(name):
            raise BatchError(f"-p: {name!r} is not a parameter name")
    if path.endswith(NOTEBOOK):
        if args:
            raise BatchError(f"--run: {path} is a notebook: pass parameters with -p, not arguments")
        names = set(parameters).union(*(row.keys() for row in grid or []))
        check_parameters(fetched.checkout / path, path, names)
    if grid is None:
        if array:
            expand_array(array)
        return TaskPlan(path, list(args or []), [BatchTask(0, dict(parameters))], False, array)
    indices = expand_array(array) if array else list(range(len(grid)))
    if indices[-1] >= len(grid):
        raise BatchError(
            f"--array: index {indices[-1]} has no row in the parameter grid "
            f"({len(grid)} rows, indices 0-{len(grid) - 1})"
        )
    tasks = [BatchTask(i, {**parameters, **grid[i]}) for i in indices]
    return TaskPlan(path, list(args or []), tasks, True, array or f"0-{len(grid) - 1}")


def run_folder(site: Site, user: str, path: Path) -> Path:
    """``path`` as a run folder: a path the job script accepts, in no folder
    a container may write (a writable site bind), where a container could
    plant links at the names the job writes or swap the folder for one."""
    run_dir = Path(os.path.normpath(path))
    safe_path(run_dir, "--output-dir")
    source = writable_bind_holding(site, user, run_dir)
    if source is not None:
        raise BatchError(
            f"--output-dir: {run_dir} lies in {source}, which containers may write "
            "(the site's binds); choose a folder outside it, e.g. under your home"
        )
    return run_dir


def plan_run(
    site: Site,
    fetched: Fetched,
    record: ImageRecord,
    launch: list[str],
    *,
    user: str,
    request: JobRequest,
    plan: TaskPlan,
    output_dir: Path | None = None,
) -> BatchRun:
    """The run of ``plan`` in the built image, as ``user``."""
    repo = fetched.repo
    home = Path(pwd.getpwnam(user).pw_dir)
    name = _SLUG_CHARS.sub("-", repo.url.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git"))
    run_dir = run_folder(
        site, user, output_dir or home / "hpcbinder-runs" / f"{name}-{repo.commit[:8]}"
    )
    return BatchRun(
        user=user,
        home=home,
        repo=repo,
        env_key=record.key,
        image=image_identity(launch),
        launch=[
            *launch[:-1],
            *apptainer_options(site, user, request.gpus),
            launch[-1],
        ],
        checkout=fetched.checkout,
        from_image=fetched.reads_whole_repo,
        path=plan.path,
        args=plan.args,
        tasks=plan.tasks,
        per_task=plan.per_task,
        array=plan.array,
        request=request,
        run_dir=run_dir,
        container_home=container_home(site, home),
        entrypoint=tuple(image_entrypoint(record)),
        private=fetched.private,
    )


def render_batch_script(run: BatchRun) -> str:
    """The job script of ``run``. Each value is checked where it goes: an
    #SBATCH value by its shape (the array spec here), every shell word
    quoted, and none may add a line (the renderer refuses line breaks)."""
    if run.array:
        expand_array(run.array)
    cases = [
        (str(task.index), run.task_argv(task), json.dumps(task.parameters)) for task in run.tasks
    ]
    # The job's log, named as sbatch would (slurm-%A_%a.out, slurm-%j.out).
    log = "slurm-${job}_${task}.out" if run.array else "slurm-${SLURM_JOB_ID}.out"
    return templating.render_text(
        "slurm",
        "batch.sbatch.j2",
        job_name=_SLUG_CHARS.sub("-", f"hpcbinder-batch-{PurePosixPath(run.path).stem}")[:64],
        request=run.request,
        job_comment=job_comment(run.env_key, run.repo.commit, private=run.private),
        array=run.array,
        log=log,
        home=safe_path(run.home, "home"),
        run_dir=safe_path(run.run_dir, "--output-dir"),
        index=str(run.home / JOB_INDEX),
        cases=cases,
        per_task=run.per_task,
        record=run.record().json_text(),
        from_image=run.from_image,
        repo_dir=REPO_DIR,
        checkout=str(run.checkout),
        url=run.repo.url,
        commit=run.repo.commit,
        launch=run.launch[:-1],
        image=run.launch[-1],
        container_home=run.container_home,
        notebook=run.notebook,
        path=run.path,
        executed=PurePosixPath(run.path).name,
        interpreter=INTERPRETERS.get(PurePosixPath(run.path).suffix, []),
        entrypoint=list(run.entrypoint),
    )
