"""Job scripts never write or bind through a link a container planted
(slurm/hostfiles.sh.j2), and a run cannot fake its own completion.

A container runs as the researcher: where a site binds /scratch/USER
read-write, a run folder or workspace there is the container's to fill with
links (to ~/.bashrc) or to swap for a link (to the home). The scripts are
rendered and run with bash and a stand-in container that runs the command
on the host (as a real one would, as the researcher), so "the container"
here may write anything; real jobs: tests/integration/test_batch.py and
test_serverscript.py. Site and CLI refuse such folders as well."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from hpcbinder.cli.main import main
from hpcbinder.config import Site, SiteConfigError, parse_site
from hpcbinder.errors import UserError
from hpcbinder.jobs.batch import BatchError, BatchTask, render_batch_script, run_folder
from hpcbinder.jobs.batchjobs import BatchJob
from hpcbinder.jobs.request import request_for
from hpcbinder.jobs.serverscript import ServerJob, render_server_script, workspace_for
from tests.unit.test_run_records import PLAIN, batch_run
from tests.unit.test_seeding import FAKE_APPTAINER, IMAGE

JOB = 41
#: The stand-in container, noting each start (its --bind and --home) first.
NOTING_APPTAINER = FAKE_APPTAINER.replace(
    "#!/bin/bash\n", '#!/bin/bash\necho "$@" >> "$CONTAINER_STARTS"\n', 1
)
BASHRC = "# alice's own .bashrc\n"


@dataclasses.dataclass
class Host:
    base: Path
    home: Path  # the researcher's (the victim)
    scratch: Path  # a folder containers may write
    tools: Path

    @property
    def bashrc(self) -> Path:
        return self.home / ".bashrc"

    @property
    def starts(self) -> Path:
        return self.base / "container-starts"

    def env(self, job: int = JOB) -> dict[str, str]:
        return {
            "PATH": f"{self.tools}:/usr/bin:/bin",
            "FAKE_REPO": str(self.base / "none"),
            "CONTAINER_STARTS": str(self.starts),
            "SLURM_JOB_ID": str(job),
        }

    def home_unchanged(self) -> bool:
        return sorted(p.name for p in self.home.iterdir()) == [".bashrc", ".hpcbinder"] and (
            self.bashrc.read_text() == BASHRC and not self.bashrc.is_symlink()
        )


@pytest.fixture
def host(tmp_path: Path) -> Host:
    home = tmp_path / "home"
    (home / ".hpcbinder").mkdir(parents=True)
    (home / ".bashrc").write_text(BASHRC)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "apptainer").write_text(NOTING_APPTAINER)
    (tools / "apptainer").chmod(0o755)
    return Host(tmp_path, home, scratch, tools)


def run_batch(host: Host, run_dir: Path, code: str, job: int = JOB) -> subprocess.Popen[str]:
    """A batch job of run.sh (``code``) into ``run_dir``, as submitted."""
    checkout = host.base / f"checkout-{job}"
    checkout.mkdir()
    (checkout / "run.sh").write_text(code)
    run = dataclasses.replace(
        batch_run(host.base, PLAIN),
        home=host.home,
        launch=[str(host.tools / "apptainer"), "exec", IMAGE],
        checkout=checkout,
        path="run.sh",
        tasks=[BatchTask(0, {})],
        run_dir=run_dir,
    )
    script = host.base / f"job-{job}.sh"
    script.write_text(render_batch_script(run))
    return subprocess.Popen(
        ["bash", str(script)], env=host.env(job), cwd=host.base, text=True, start_new_session=True
    )


def finished(job: subprocess.Popen[str]) -> int:
    return job.wait(timeout=60)


def test_a_batch_run_writes_through_no_link_its_container_planted(host: Host) -> None:
    """The attack: the run's code plants the next jobs' log names (and the
    script copy's staged name) as links to ~/.bashrc; the next batch job
    appended its output, which the container controls, to it."""
    run_dir = host.scratch / "runs"
    plant = "\n".join(
        f"ln -s {host.bashrc} ../../../{name}"
        for n in (1, 2)
        for name in (f"slurm-{JOB + n}.out", f"job-{JOB + n}.sbatch.0", f"job-{JOB + n}.sbatch")
    )
    assert finished(run_batch(host, run_dir, plant + "\necho ran\n")) == 0
    assert "ran" in (run_dir / f"slurm-{JOB}.out").read_text()
    # The next job finds its log's name taken: it refuses, writing nothing.
    assert finished(run_batch(host, run_dir, "echo 'curl evil | sh'\n", JOB + 1)) == 1
    assert host.home_unchanged()
    # A job whose log name is free replaces the planted script copy, never writes through it.
    (run_dir / f"slurm-{JOB + 2}.out").unlink()
    assert finished(run_batch(host, run_dir, "echo fine\n", JOB + 2)) == 0
    assert host.home_unchanged()
    assert not (run_dir / f"job-{JOB + 2}.sbatch").is_symlink()
    assert "fine" in (run_dir / f"slurm-{JOB + 2}.out").read_text()


@pytest.mark.parametrize("where", ["run folder", "below it"])
def test_a_run_folder_swapped_for_a_link_is_refused(host: Host, where: str) -> None:
    """A container moved the run folder (or a folder above it) aside and
    linked its name to the home: the job refuses it and starts nothing."""
    if where == "run folder":
        (host.scratch / "runs").symlink_to(host.home)
        run_dir = host.scratch / "runs"
    else:
        (host.scratch / "up").symlink_to(host.home)
        run_dir = host.scratch / "up" / "runs"
    assert finished(run_batch(host, run_dir, "echo ran\n")) == 1
    assert not host.starts.exists()
    assert sorted(p.name for p in host.home.iterdir()) == [".bashrc", ".hpcbinder"]
    assert host.bashrc.read_text() == BASHRC


def test_a_work_folder_swapped_for_a_link_is_never_bound(host: Host) -> None:
    """Between containers (seeding from the image, a notebook's retry) the
    work folder, the container's home, must be no link; here the seeding
    container swaps it for one to the home."""
    run = dataclasses.replace(
        batch_run(host.base, PLAIN),
        home=host.home,
        launch=[str(host.tools / "apptainer"), "exec", IMAGE],
        from_image=True,
        path="run.sh",
        tasks=[BatchTask(0, {})],
        run_dir=host.scratch / "runs",
    )
    swap = host.base / "swap"
    swap.write_text(f'#!/bin/bash\nw="${{2%/}}"; mv "$w" "$w.aside" && ln -s {host.home} "$w"\n')
    swap.chmod(0o755)
    script = render_batch_script(run).replace(" cp -a /srv/repo/. ", f" {swap} x ", 1)
    done = subprocess.run(["bash", "-c", script], env=host.env(), capture_output=True, text=True)
    starts = host.starts.read_text().splitlines()
    assert len(starts) == 1 and str(swap) in starts[0]  # the seeding one only
    assert done.returncode == 1
    task = host.scratch / "runs" / f"job-{JOB}" / "task-0"
    record = json.loads((task.parent / ".provenance" / "task-0.json").read_text())
    assert record["state"] == "failed: the work folder was replaced by a link"
    assert "is a link" in (host.scratch / "runs" / f"slurm-{JOB}.out").read_text()


def test_a_killed_run_cannot_fake_its_completion(host: Host) -> None:
    """The run writes a provenance.json saying complete, removes
    INCOMPLETE and is killed before its job records the end: hpcbinder
    reads the job's own record, which the container never saw."""
    run_dir = host.base / "runs"
    code = (
        'sed \'s/"state": "running", "exit_code": null, "complete": false/'
        '"state": "completed", "exit_code": 0, "complete": true/\' '
        "../provenance.json > ../p.x && mv -f ../p.x ../provenance.json\n"
        "rm -f ../INCOMPLETE; touch ../faked; sleep 60\n"
    )
    job = run_batch(host, run_dir, code)
    task = run_dir / f"job-{JOB}" / "task-0"
    for _ in range(600):
        if (task / "faked").exists():
            break
        job.poll()
        assert job.returncode is None
        time.sleep(0.05)
    os.killpg(job.pid, signal.SIGKILL)  # Slurm's end of a job that ignores TERM
    job.wait()
    assert json.loads((task / "provenance.json").read_text())["complete"] is True  # the fake
    record = batch_run(host.base, PLAIN).record().model_copy(update={"run_dir": run_dir})
    (output,) = BatchJob(str(JOB), record).tasks()
    assert not output.complete
    assert output.describe(None) == "INCOMPLETE: running"


def test_a_server_workspace_swapped_for_a_link_is_never_bound(host: Host) -> None:
    """The workspace variant: a container moved the persistent workspace
    aside and linked its name to the home; the next launch skipped seeding
    and bound the whole home into the container."""
    site = Site.model_validate({"workspace": {"root": str(host.scratch / "binder")}})
    (host.scratch / "binder").mkdir()
    workspace = host.scratch / "binder" / "repo"
    workspace.symlink_to(host.home)
    job = ServerJob(
        "alice",
        host.home,
        request_for(site, None, {}, user="alice"),
        [str(host.tools / "apptainer"), "exec", IMAGE],
        ["true"],
        workspace=workspace,
    )
    done = subprocess.run(
        ["bash", "-c", render_server_script(site, job)],
        env=host.env(),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1
    assert "is a link" in done.stderr and len(done.stderr.splitlines()) == 1
    assert not host.starts.exists()


def test_folders_below_a_writable_bind_are_refused(host: Host) -> None:
    binds = [{"source": f"{host.scratch}/{{user}}"}]
    with pytest.raises(SiteConfigError, match=r"workspace\.root: .* lies in binds\[0\]\.source"):
        parse_site(
            json.dumps({"binds": binds, "workspace": {"root": f"{host.scratch}/{{user}}/b"}})
        )
    read_only = [{**binds[0], "read_only": True}]
    site = Site.model_validate({"binds": read_only, "workspace": {"root": f"{host.scratch}/x"}})
    assert workspace_for(site, "alice", host.home, "r") == host.scratch / "x" / "r"
    # Compared resolved, for each user: a root under {home} where homes are bound.
    (host.scratch / "alice").mkdir()
    (host.base / "alias").symlink_to(host.scratch / "alice")
    site = Site.model_validate({"binds": binds, "workspace": {"root": "{home}/binder"}})
    with pytest.raises(UserError, match=r"^workspace\.root: .* which containers may write"):
        workspace_for(site, "alice", host.base / "alias", "r")
    assert workspace_for(site, "bob", host.home, "r") == host.home / "binder" / "r"
    with pytest.raises(BatchError, match=r"^--output-dir: .* which containers may write"):
        run_folder(site, "alice", host.base / "alias" / "runs")
    assert run_folder(site, "alice", host.home / "runs") == host.home / "runs"


def test_sbatch_refuses_such_an_output_dir_before_anything(host: Host) -> None:
    site_file = host.base / "site.yaml"
    site_file.write_text(json.dumps({"binds": [{"source": str(host.scratch)}]}))
    argv = ["--site", str(site_file), "sbatch", "gh/a/b/HEAD", "--run", "x.py"]
    result = CliRunner().invoke(main, [*argv, "--output-dir", str(host.scratch / "runs")])
    assert result.exit_code == 2, result.output
    assert (
        result.output.startswith("error: --output-dir: ")
        and "which containers may write" in result.output
    )
    assert len(result.output.splitlines()) == 1
