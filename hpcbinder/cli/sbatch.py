"""``hpcbinder sbatch`` and ``hpcbinder jobs``: batch runs from the command line.

Exit statuses: 0 done (or submitted), 2 bad input (nothing submitted), 1 a
build or Slurm failure; with ``--wait``, the job's: its own exit code when
it failed, 124 for a time limit, 130 when cancelled, 137 out of memory.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from hpcbinder.cli.common import full_spec, request_image, site_in_force
from hpcbinder.images.client import published_image
from hpcbinder.images.launch import launch_argv
from hpcbinder.jobs import batch
from hpcbinder.jobs.batchjobs import BatchJobs, exit_status, submit_run
from hpcbinder.jobs.request import request_for
from hpcbinder.seams import proc
from hpcbinder.seams.cluster import cluster_slurm
from hpcbinder.seams.slurm import JobInfo


@click.command("sbatch", context_settings={"show_default": True})
@click.argument("spec")
@click.argument("args", nargs=-1)
@click.option("--ref", help="Ref to use, when SPEC does not end with one.")
@click.option("--run", "path", required=True, help="Notebook or script in the repository.")
@click.option(
    "-p", "--param", "params", nargs=2, multiple=True, metavar="NAME VALUE", help="A parameter."
)
@click.option("--profile", help="Resource profile of the site file (default: its default).")
@click.option("--partition")
@click.option("--time", "time_limit", help="HH:MM:SS or D-HH:MM:SS.")
@click.option("--cpus", type=int)
@click.option("--mem", help="e.g. 4G")
@click.option("--gpus", type=int)
@click.option("--account")
@click.option("--qos")
@click.option("--array", help="Slurm array spec, e.g. 0-3 or 0-9%2.")
@click.option(
    "--param-grid",
    type=click.Path(path_type=Path, dir_okay=False),
    help="CSV, JSON or YAML rows of parameters: one array task per row.",
)
@click.option("--output-dir", type=click.Path(path_type=Path, file_okay=False))
@click.option("--wait", is_flag=True, help="Stream the output; exit with the job's status.")
@click.option("--emit-script", is_flag=True, help="Print the standalone script, submit nothing.")
@click.option("-v", "--verbose", is_flag=True, help="Print every line of a build's log.")
@click.pass_context
def sbatch_command(
    ctx: click.Context,
    spec: str,
    args: tuple[str, ...],
    ref: str | None,
    path: str,
    params: tuple[tuple[str, str], ...],
    profile: str | None,
    partition: str | None,
    time_limit: str | None,
    cpus: int | None,
    mem: str | None,
    gpus: int | None,
    account: str | None,
    qos: str | None,
    array: str | None,
    param_grid: Path | None,
    output_dir: Path | None,
    wait: bool,
    emit_script: bool,
    verbose: bool,
) -> None:
    """Run PATH of repository SPEC in its image as a Slurm job (script
    arguments after --)."""
    site = site_in_force(ctx)
    user = proc.current_user()
    overrides = {
        "partition": partition,
        "time": time_limit,
        "cpus": cpus,
        "mem": mem,
        "gpus": gpus,
        "account": account,
        "qos": qos,
    }
    request = request_for(site, profile, overrides, user=user)
    grid = batch.read_grid(param_grid) if param_grid else None
    if output_dir is not None:  # refused before any build, checked again in plan_run
        batch.run_folder(site, user, output_dir)
    spec = full_spec(spec, ref)
    fetched = request_image(site, spec, verbose, prepare_only=True)
    plan = batch.plan_tasks(fetched, path, dict(params), grid, array, list(args))
    fetched = request_image(site, spec, verbose)
    record = published_image(site, fetched)
    run = batch.plan_run(
        site,
        fetched,
        record,
        launch_argv(record),
        user=user,
        request=request,
        plan=plan,
        output_dir=output_dir,
    )
    script = batch.render_batch_script(run)
    if emit_script:
        click.echo(script, nl=False)
        return
    slurm = cluster_slurm(site)
    jobs = BatchJobs(user, slurm)
    job_id = submit_run(run, script, slurm)
    jobs.remember(job_id, run)
    click.echo(f"submitted job {job_id}: outputs in {run.run_dir}/job-{job_id}", err=True)
    click.echo(job_id)
    if wait:
        finals = jobs.follow(jobs.get(job_id), click.echo)
        sys.exit(_report_finals(jobs, job_id, finals))


def _report_finals(jobs: BatchJobs, job_id: str, finals: dict[str, JobInfo]) -> int:
    """One line per task that did not complete; the first failing status."""
    job = jobs.get(job_id)
    folders = {task.folder.name: task for task in job.tasks()}
    status = 0
    for task_id, info in finals.items():
        code = exit_status(info)
        if code == 0:
            continue
        status = status or code
        task = task_id.rpartition("_")[2] if "_" in task_id else "0"
        output = folders.get(f"task-{task}")
        kept = f"; partial outputs kept in {output.folder}, marked INCOMPLETE" if output else ""
        click.echo(f"job {task_id}: {info.state} (exit {code}){kept}", err=True)
    return status


@click.group("jobs")
@click.pass_context
def jobs_group(ctx: click.Context) -> None:
    """Your hpcbinder batch jobs."""
    ctx.obj = BatchJobs(proc.current_user(), cluster_slurm(site_in_force(ctx)))


@jobs_group.command("ls")
@click.pass_obj
def jobs_ls(jobs: BatchJobs) -> None:
    """Each job with its state, repository, commit and file."""
    rows = [("JOB", "STATE", "REPOSITORY", "COMMIT", "RUN")]
    for job in jobs.all():
        record = job.record
        rows.append((job.job_id, jobs.state(job), record.spec, record.commit[:12], record.run))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        cells = [row[i].ljust(widths[i]) for i in range(4)]
        click.echo("  ".join([*cells, row[4]]))


@jobs_group.command("logs")
@click.argument("job_id")
@click.option("-f", "--follow", is_flag=True, help="Keep printing until the job ends.")
@click.pass_obj
def jobs_logs(jobs: BatchJobs, job_id: str, follow: bool) -> None:
    """The job's Slurm output (each array task's lines prefixed with its index)."""
    job = jobs.get(job_id)
    if follow and jobs.slurm_state(job) is not None:
        jobs.follow(job, click.echo)
        return
    for path in job.logs():
        click.echo(path.read_text(errors="replace"), nl=False)


@jobs_group.command("cancel")
@click.argument("job_id")
@click.pass_obj
def jobs_cancel(jobs: BatchJobs, job_id: str) -> None:
    """Cancel the job (its partial outputs are kept, marked INCOMPLETE)."""
    job = jobs.get(job_id)
    jobs.cancel(job)
    click.echo(f"cancelled {job_id}", err=True)


@jobs_group.command("outputs")
@click.argument("job_id")
@click.pass_obj
def jobs_outputs(jobs: BatchJobs, job_id: str) -> None:
    """Each task's output folder, whether it is complete, and its files."""
    job = jobs.get(job_id)
    live = jobs.slurm_state(job)
    tasks = job.tasks()
    if not tasks:
        click.echo(f"job {job_id} has no outputs yet ({live or 'not known to Slurm'})")
    for task in tasks:
        click.echo(f"{task.folder.name}: {task.describe(live)}  {task.folder}")
        for item in sorted(task.folder.iterdir()):
            if item.name != "work":
                click.echo(f"  {item.name}")
