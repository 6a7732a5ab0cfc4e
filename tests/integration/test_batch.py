"""Batch mode on the dev cluster: ``hpcbinder sbatch`` runs a repository's
notebook (parameters injected by papermill) or script in its image, as the
researcher, with provenance next to the outputs; arrays from a parameter
grid; the emitted script submitted again by hand; bad input refused before
anything is submitted; jobs Slurm ends keep their partial outputs, marked
incomplete."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from hpcbinder.config import Site
from hpcbinder.images.launch import launch_argv
from hpcbinder.images.store import ImageMeta, ImageRecord
from hpcbinder.jobs import batch
from hpcbinder.jobs.request import request_for
from hpcbinder.render.pipeline import Fetched
from hpcbinder.seams.slurm import SubmitOptions
from hpcbinder.sources.providers import ResolvedRepo
from tests.conftest import (
    REPO,
    SHARED_SCRATCH,
    SITE_BIN,
    DevCluster,
    as_account,
    running_build_server,
)
from tests.repohelpers import git, local_spec
from tests.storehelpers import DEV_BASE

pytestmark = [pytest.mark.slurm, pytest.mark.apptainer]

USER = "alice"
HPCBINDER = SITE_BIN / "hpcbinder"


@dataclass(frozen=True)
class BatchRepo:
    spec: str
    commit: str
    site: Path
    output_dir: Path

    def sbatch_argv(self, *args: str, wait: bool = True) -> list[str]:
        """``hpcbinder sbatch``, from the site-wide install, for this repository."""
        argv = [str(HPCBINDER), "--site", str(self.site), "sbatch", self.spec]
        return [*argv, "--output-dir", str(self.output_dir), *(["--wait"] if wait else []), *args]

    def sbatch(
        self, *args: str, wait: bool = True, user: str = USER
    ) -> subprocess.CompletedProcess[str]:
        """``hpcbinder sbatch`` as the researcher."""
        return as_account(user, self.sbatch_argv(*args, wait=wait), timeout=600)

    def jobs(self, *args: str, user: str = USER) -> subprocess.CompletedProcess[str]:
        argv = [str(HPCBINDER), "--site", str(self.site), "jobs", *args]
        return as_account(user, argv, timeout=300)

    def task(self, job_id: str, index: int = 0) -> Path:
        return self.output_dir / f"job-{job_id}" / f"task-{index}"


def alices_jobs() -> set[str]:
    """The ids of the researcher's jobs Slurm has now."""
    listed = subprocess.run(
        ["squeue", "-h", "-u", USER, "-o", "%i"], capture_output=True, text=True, check=True
    )
    return set(listed.stdout.split())


@contextmanager
def new_batch_repo() -> Iterator[BatchRepo]:
    """A copy of tests/batchrepo below a local root of its own site file;
    at the end, the jobs of the researcher's that came meanwhile are
    cancelled (only those: the module's over-time run goes on)."""
    root = SHARED_SCRATCH / f"batch-{uuid.uuid4().hex[:8]}"
    repo = root / "repo"
    shutil.copytree(REPO / "tests" / "batchrepo", repo)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "batch fixture")
    site = yaml.safe_load(Path("/etc/hpcbinder/site.yaml").read_text())
    site["repos"] = {"local_roots": [str(root)], "protocols": ["https", "file"]}
    (root / "site.yaml").write_text(yaml.safe_dump(site))
    home = Path(f"/home/{USER}")
    output_dir = home / "hpcbinder-runs" / f"test-{uuid.uuid4().hex[:8]}"
    before = alices_jobs()
    try:
        yield BatchRepo(
            local_spec(repo), git(repo, "rev-parse", "HEAD"), root / "site.yaml", output_dir
        )
    finally:
        if came := alices_jobs() - before:
            subprocess.run(["scancel", *sorted(came)], check=False)
        subprocess.run(["rm", "-rf", str(root), str(output_dir)], check=False)


@pytest.fixture
def batch_repo(devcluster: DevCluster) -> Iterator[BatchRepo]:
    with new_batch_repo() as repo:
        yield repo


@dataclass
class OverTimeRun:
    """A run of ``slow.ipynb`` (300 s) with a 1-minute time limit."""

    repo: BatchRepo
    process: subprocess.Popen[str]
    job_id: str

    def finished(self) -> tuple[int, str]:
        """Its ``hpcbinder sbatch --wait``'s exit status and stderr."""
        _, stderr = self.process.communicate(timeout=600)
        return self.process.returncode, stderr


@pytest.fixture(scope="module", autouse=True)
def over_time_run(devcluster: DevCluster) -> Iterator[OverTimeRun]:
    """The researcher's run over its time limit, submitted before the
    module's first test: Slurm ends it 60-90 s later (it checks limits
    every 30 s, and a limit is in minutes), while the other tests run."""
    with new_batch_repo() as repo:
        argv = repo.sbatch_argv("--run", "slow.ipynb", "--time", "00:01:00")
        process = subprocess.Popen(
            ["sudo", "-n", "-u", USER, "--", *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd="/",
        )
        try:
            assert process.stdout is not None
            # Submitted (its id printed) before any test's snapshot of her jobs.
            yield OverTimeRun(repo, process, process.stdout.readline().strip())
        finally:
            if process.poll() is None:
                process.terminate()
    process.communicate(timeout=120)


def submitted(result: subprocess.CompletedProcess[str]) -> str:
    assert result.stdout.splitlines(), result.stderr
    job_id = result.stdout.splitlines()[0]
    assert job_id.isdigit(), result.stdout + result.stderr
    return job_id


def provenance(task: Path) -> dict[str, Any]:
    return dict(json.loads((task / "provenance.json").read_text()))


def sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def cell_outputs(notebook: Path) -> str:
    cells = json.loads(notebook.read_text())["cells"]
    return "".join(
        "".join(output.get("text", "")) for cell in cells for output in cell.get("outputs", [])
    )


def test_a_parameterised_notebook_runs_with_provenance(batch_repo: BatchRepo) -> None:
    result = batch_repo.sbatch("--run", "analysis.ipynb", "-p", "alpha", "2", "-p", "label", "hi")
    assert result.returncode == 0, result.stderr
    job_id = submitted(result)
    assert "result=6.0 label=hi" in result.stdout  # streamed by --wait
    task = batch_repo.task(job_id)
    executed = task / "analysis.ipynb"
    assert "result=6.0 label=hi" in cell_outputs(executed)
    cells = json.loads(executed.read_text())["cells"]
    injected = [c for c in cells if "injected-parameters" in c["metadata"].get("tags", [])]
    assert injected and "alpha = 2" in "".join(injected[0]["source"])
    assert (task / "work" / "result-hi.txt").read_text() == "6.0\n"
    assert not (task / "work" / ".git").exists()  # nothing git on the host would run
    assert not (task / "INCOMPLETE").exists()
    assert os.stat(executed).st_uid == int(subprocess.check_output(["id", "-u", USER]))

    record = provenance(task)
    run = record["run"]
    assert run["commit"] == batch_repo.commit and run["spec"] == batch_repo.spec
    assert run["run"] == "analysis.ipynb" and run["env_key"]
    assert run["image_sha256"] == sha256(run["image"])
    assert record["parameters"] == {"alpha": "2", "label": "hi"}
    assert record["slurm_job_id"] == job_id
    assert (record["state"], record["exit_code"], record["complete"]) == ("completed", 0, True)
    assert record["started"] <= record["ended"]

    listed = batch_repo.jobs("ls")
    assert listed.returncode == 0
    line = next(x for x in listed.stdout.splitlines() if x.startswith(job_id))
    assert "COMPLETED" in line and batch_repo.commit[:12] in line and "analysis.ipynb" in line
    outputs = batch_repo.jobs("outputs", job_id)
    assert f"task-0: complete  {task}" in outputs.stdout and "analysis.ipynb" in outputs.stdout


def test_an_array_runs_one_task_per_grid_row(batch_repo: BatchRepo) -> None:
    grid = batch_repo.site.parent / "repo" / "grid.csv"
    result = batch_repo.sbatch("--run", "analysis.ipynb", "--param-grid", str(grid))
    assert result.returncode == 0, result.stdout + result.stderr
    job_id = submitted(result)
    for index, (alpha, label) in enumerate([(0.5, "a"), (1.5, "b"), (2.5, "c"), (3.5, "d")]):
        task = batch_repo.task(job_id, index)
        assert (task / "work" / f"result-{label}.txt").read_text() == f"{alpha * 2}\n"
        record = provenance(task)
        assert record["array_task_id"] == str(index) and record["array_job_id"] == job_id
        assert record["parameters"] == {"alpha": str(alpha), "n": "2", "label": label}
        assert record["complete"] is True
        assert f"[{index}] result={alpha * 2} label={label}" in result.stdout
    logs = batch_repo.jobs("logs", job_id)
    assert logs.stdout.count("Executing notebook with kernel") == 4


def test_the_emitted_script_resubmitted_by_hand_gives_the_same_result(
    batch_repo: BatchRepo, devcluster: DevCluster
) -> None:
    options = ["--run", "analysis.ipynb", "-p", "alpha", "3", "-p", "label", "again"]
    first = batch_repo.sbatch(*options)
    assert first.returncode == 0, first.stderr
    first_task = batch_repo.task(submitted(first))

    emitted = batch_repo.sbatch(*options, "--emit-script", wait=False)
    assert emitted.returncode == 0, emitted.stderr
    script = emitted.stdout
    record = provenance(first_task)["run"]
    assert record["image"] in script and batch_repo.commit in script
    by_hand = subprocess.run(
        ["sudo", "-n", "-u", USER, "sbatch", "--parsable"],
        input=script,
        capture_output=True,
        text=True,
        check=True,
    )
    job_id = by_hand.stdout.strip()
    assert devcluster.slurm.wait(job_id, timeout=300).state == "COMPLETED"
    task = batch_repo.task(job_id)
    assert (task / "work" / "result-again.txt").read_text() == "9.0\n"
    assert cell_outputs(task / "analysis.ipynb") == cell_outputs(first_task / "analysis.ipynb")
    again = provenance(task)
    assert again["run"] == record and again["complete"] is True
    assert job_id in batch_repo.jobs("ls").stdout  # the job indexed itself


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--run", "missing.ipynb"], "--run: missing.ipynb is not a file in local/"),
        (["--run", "../etc/passwd"], "must be a path inside the repository"),
        (
            ["--run", "analysis.ipynb", "-p", "beta", "1"],
            "analysis.ipynb does not declare parameter 'beta' (its parameters: alpha, label, n)",
        ),
        (
            ["--run", "analysis.ipynb", "--time", "99:00:00"],
            "time: 99:00:00 is over partition interactive's max_time (08:00:00)",
        ),
        (
            ["--run", "analysis.ipynb", "--partition", "nosuch"],
            "partition: 'nosuch' is not a partition of this site",
        ),
        (
            ["--run", "analysis.ipynb", "--param-grid", "GRID", "--array", "0-7"],
            "--array: index 7 has no row in the parameter grid (4 rows, indices 0-3)",
        ),
        (["--run", "compute.py", "--array", "1-x"], "--array: '1-x' is not a Slurm array spec"),
        # Limits a researcher must not lift.
        (["--run", "compute.py", "--mem", "0"], "mem: must be more than 0"),
        (["--run", "compute.py", "--time", "00:00:00"], "time: must be more than 0"),
        (["--run", "compute.py", "--partition", "build"], "build is not for researchers' jobs"),
        (["--run", "compute.py", "--account", "physics"], "account"),
    ],
)
def test_bad_requests_are_refused_before_anything_is_submitted(
    batch_repo: BatchRepo, over_time_run: OverTimeRun, args: list[str], message: str
) -> None:
    grid = str(batch_repo.site.parent / "repo" / "grid.csv")
    result = batch_repo.sbatch(*[grid if a == "GRID" else a for a in args])
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert alices_jobs() <= {over_time_run.job_id}
    assert not batch_repo.output_dir.exists()


def test_bob_cannot_read_or_cancel_alices_runs(batch_repo: BatchRepo) -> None:
    result = batch_repo.sbatch("--run", "slow.ipynb", wait=False)
    job_id = submitted(result)
    try:
        refused = batch_repo.jobs("cancel", job_id, user="bob")
        assert refused.returncode == 2 and f"{job_id} is not one of bob's" in refused.stderr
        # Not through Slurm either: bob's scancel of alice's job is refused by Slurm.
        scancel = as_account("bob", ["scancel", job_id])
        assert scancel.returncode != 0, scancel
        wait_for(lambda: list(batch_repo.output_dir.glob("job-*/task-0")), "no task folder")
        task = next(batch_repo.output_dir.glob("job-*/task-0"))
        listing = as_account("bob", ["ls", str(task)])
        assert listing.returncode != 0 and "Permission denied" in listing.stderr
        mine = [
            line for line in batch_repo.jobs("ls").stdout.splitlines() if line.split()[0] == job_id
        ]
        assert len(mine) == 1 and "RUNNING" in mine[0]  # alice's job is still hers
    finally:
        batch_repo.jobs("cancel", job_id)


def test_a_failing_script_exits_with_its_status(batch_repo: BatchRepo) -> None:
    result = batch_repo.sbatch("--run", "compute.py", "--", "one", "two", "--exit-code=3")
    assert result.returncode == 3, result.stderr
    job_id = submitted(result)
    assert "words: one two scale: 2.0" in result.stdout
    # The container starts clean but for the researcher's own name and job.
    assert f"user: {USER} job: {job_id}" in result.stdout
    task = batch_repo.task(job_id)
    assert (task / "INCOMPLETE").exists()
    record = provenance(task)
    assert (record["state"], record["exit_code"], record["complete"]) == ("failed", 3, False)
    assert f"job {job_id}: FAILED (exit 3); partial outputs kept in {task}" in result.stderr


def test_a_failing_array_task_is_reported_by_its_own_index(batch_repo: BatchRepo) -> None:
    """Slurm's record of an array's last task carries the array's job id:
    the report still names that task and its folder, not task 0."""
    grid = batch_repo.site.parent / "grid.json"
    grid.write_text(json.dumps([{"exit_code": 0}, {"exit_code": 0}, {"exit_code": 5}]))
    grid.chmod(0o644)
    result = batch_repo.sbatch("--run", "compute.py", "--param-grid", str(grid))
    assert result.returncode == 5, result.stdout + result.stderr
    job_id = submitted(result)
    failed = batch_repo.task(job_id, 2)
    assert (
        f"job {job_id}_2: FAILED (exit 5); partial outputs kept in {failed}, marked INCOMPLETE"
        in result.stderr
    ), result.stderr
    assert result.stderr.count("FAILED") == 1, result.stderr
    assert (failed / "INCOMPLETE").exists() and provenance(failed)["exit_code"] == 5
    assert all(provenance(batch_repo.task(job_id, i))["complete"] for i in (0, 1))


def test_a_kernel_that_dies_before_running_a_cell_is_started_again(batch_repo: BatchRepo) -> None:
    """A kernel whose port another kernel took first dies before it runs
    anything (array tasks starting at once on one node): the task starts it
    again instead of failing. The flaky kernel (found in the work folder,
    the task's home) dies on its first start."""
    result = batch_repo.sbatch("--run", "flaky_kernel.ipynb")
    assert result.returncode == 0, result.stdout + result.stderr
    task = batch_repo.task(submitted(result))
    assert (task / "work" / "kernel-died-once").exists()  # it did die once
    assert "kernel ended before it ran a cell (attempt 1 of 3)" in result.stdout
    assert (task / "work" / "ran.txt").read_text() == "ran\n"  # the notebook ran once
    assert "ran once" in cell_outputs(task / "flaky_kernel.ipynb")
    assert provenance(task)["complete"] is True


def test_a_notebook_whose_kernel_died_while_running_is_not_run_again(
    batch_repo: BatchRepo,
) -> None:
    """Only a kernel that never ran a cell is started again: cells that ran
    may have changed files, and running them twice would change them twice."""
    result = batch_repo.sbatch("--run", "dies_midway.ipynb")
    assert result.returncode != 0, result.stdout + result.stderr
    task = batch_repo.task(submitted(result))
    assert (task / "work" / "ran.txt").read_text() == "ran\n"
    assert "starting it again" not in result.stdout
    assert (task / "INCOMPLETE").exists() and provenance(task)["state"] == "failed"


def wait_for(condition: Any, what: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} after {seconds} s")
        time.sleep(0.5)


def test_a_cancelled_job_keeps_its_partial_outputs_marked_incomplete(
    batch_repo: BatchRepo,
) -> None:
    argv = [str(HPCBINDER), "--site", str(batch_repo.site), "sbatch", batch_repo.spec]
    argv += ["--output-dir", str(batch_repo.output_dir), "--wait"]
    waiting = subprocess.Popen(
        ["sudo", "-n", "-u", USER, "--", *argv, "--run", "slow.ipynb"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd="/",
    )
    try:
        partial = "job-*/task-0/work/partial.txt"
        wait_for(lambda: list(batch_repo.output_dir.glob(partial)), "no partial output")
        job_id = next(batch_repo.output_dir.glob("job-*.sbatch")).stem.removeprefix("job-")
        cancelled = batch_repo.jobs("cancel", job_id)
        assert cancelled.returncode == 0, cancelled.stderr
        _, err = waiting.communicate(timeout=120)
    finally:
        waiting.kill()
    assert waiting.returncode == 130, err
    task = batch_repo.task(job_id)
    assert f"job {job_id}: CANCELLED (exit 130); partial outputs kept in {task}" in err
    assert (task / "INCOMPLETE").exists() and (task / "work" / "partial.txt").exists()
    record = provenance(task)
    assert record["complete"] is False and record["state"].startswith("killed by Slurm")
    outputs = batch_repo.jobs("outputs", job_id)
    assert "task-0: INCOMPLETE: killed by Slurm" in outputs.stdout


def test_a_researcher_runs_a_repository_whose_image_is_not_built_yet(
    batch_repo: BatchRepo,
) -> None:
    """No root, no sudo rights, no write access to the store: alice's
    sbatch asks the build server, which builds the new environment."""
    repo = batch_repo.site.parent / "repo"
    marker = uuid.uuid4().hex
    (repo / "postBuild").write_text(f"#!/bin/sh\necho {marker} > built-by-postbuild.txt\n")
    git(repo, "add", "postBuild")
    git(repo, "commit", "-q", "-m", "a new environment")
    result = batch_repo.sbatch("--run", "compute.py")
    assert result.returncode == 0, result.stderr
    assert "Building image" in result.stderr  # built now, for this run
    task = batch_repo.task(submitted(result))
    assert (task / "work" / "built-by-postbuild.txt").read_text().strip() == marker
    assert provenance(task)["complete"] is True
    assert os.stat(task).st_uid == int(subprocess.check_output(["id", "-u", USER]))


def test_a_run_goes_through_the_repositorys_start(batch_repo: BatchRepo) -> None:
    """As on mybinder.org, a repository's ``start`` wraps every command run
    in its image: the run sees what it exports and the files it makes."""
    repo = batch_repo.site.parent / "repo"
    (repo / "start").write_text(
        "#!/bin/sh\nexport HPCBINDER_FROM_START=exported-by-start\n"
        'echo made-by-start > prepared-by-start.txt\nexec "$@"\n'
    )
    (repo / "start").chmod(0o755)
    (repo / "show_start.sh").write_text(
        'echo "from start: ${HPCBINDER_FROM_START:-unset}"\ncat prepared-by-start.txt\n'
    )
    git(repo, "add", "start", "show_start.sh")
    git(repo, "commit", "-q", "-m", "a start script")
    with running_build_server(batch_repo.site):  # this tree's build server
        result = batch_repo.sbatch("--run", "show_start.sh")
    assert result.returncode == 0, result.stderr
    job_id = submitted(result)
    task = batch_repo.task(job_id)
    assert (task / "work" / "prepared-by-start.txt").read_text() == "made-by-start\n"
    log = (batch_repo.output_dir / f"slurm-{job_id}.out").read_text()
    assert "from start: exported-by-start" in log, log
    assert provenance(task)["complete"] is True


def test_a_run_plants_no_link_the_next_run_writes_through(
    devcluster: DevCluster, shared_dir: Path
) -> None:
    """A run whose container can write its run folder (bound read-write, as
    a site's /scratch/USER bind would bind a run folder below it, a bind
    the site-file check does not know of) links the next jobs' log names to
    a file of alice's. The next run, whose output the repository controls,
    appended it there; now it refuses a log it did not create and writes
    nothing."""
    victim = Path("/home/alice/.hpcbinder-test-bashrc")
    victim.write_text("untouched\n")
    subprocess.run(["chown", "alice:alice", str(victim)], check=True)
    run_dir = shared_dir / "runs"
    plant = (
        f"for n in $(seq 1 50); do ln -s {victim} {run_dir}/slurm-$((SLURM_JOB_ID + n)).out;"
        " done; echo planted\n"
    )
    try:
        first, state = bound_run(devcluster, shared_dir / "first", run_dir, plant)
        assert state == "COMPLETED"
        assert "planted" in (run_dir / f"slurm-{first}.out").read_text()
        second, state = bound_run(devcluster, shared_dir / "second", run_dir, "echo evil\n")
        assert state == "FAILED" and int(second) <= int(first) + 50
        assert victim.read_text() == "untouched\n"
        assert not (run_dir / f"job-{second}").exists()  # refused before anything
    finally:
        victim.unlink(missing_ok=True)


def bound_run(devcluster: DevCluster, checkout: Path, run_dir: Path, code: str) -> tuple[str, str]:
    """A batch run of ``code`` as alice in the dev base, its run folder
    bound into its container read-write; its job id and final state."""
    checkout.mkdir()
    (checkout / "run.sh").write_text(code)
    site = Site()
    repo = ResolvedRepo("local/x/HEAD", "file:///x/probe", "HEAD", "b" * 40)
    record = ImageRecord("0" * 32, DEV_BASE.resolve(), ImageMeta(key="0" * 32))
    run = batch.plan_run(
        site,
        Fetched(repo, checkout, "0" * 32, False),
        record,
        launch_argv(record),
        user=USER,
        request=request_for(site, None, {"time": "00:05:00"}, user=USER),
        plan=batch.TaskPlan("run.sh", [], [batch.BatchTask(0, {})], False, None),
        output_dir=run_dir,
    )
    launch = [*run.launch[:-1], "--bind", str(run_dir), run.launch[-1]]
    script = batch.render_batch_script(dataclasses.replace(run, launch=launch))
    job_id = devcluster.slurm.submit(script, SubmitOptions(), user=USER)
    return job_id, devcluster.slurm.wait(job_id, timeout=180).state


def test_a_job_over_its_time_limit_is_reported_as_such(over_time_run: OverTimeRun) -> None:
    """Last in the module: the run began with it (:func:`over_time_run`)."""
    returncode, stderr = over_time_run.finished()
    assert returncode == 124, stderr
    job_id = over_time_run.job_id
    assert job_id.isdigit(), stderr
    task = over_time_run.repo.task(job_id)
    assert f"job {job_id}: TIMEOUT (exit 124); partial outputs kept in {task}" in stderr
    assert (task / "INCOMPLETE").exists()
    assert provenance(task)["complete"] is False
