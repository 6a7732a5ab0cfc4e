"""The ``hpcbinder`` command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from urllib.parse import quote

import click

from hpcbinder import __version__, doctor, pipeline, proc
from hpcbinder.config import Site, SiteConfigError, load_site
from hpcbinder.errors import UserError
from hpcbinder.slurm import SlurmCLI

EXIT_CONFIG = 2


def _site(ctx: click.Context) -> Site:
    """The site file in force; a bad one ends the command with each problem."""
    path: Path | None = ctx.find_root().params.get("site")
    try:
        return load_site(path)
    except SiteConfigError as exc:
        _report_config_error(exc)
        sys.exit(EXIT_CONFIG)


def _report_config_error(exc: SiteConfigError) -> None:
    click.echo(f"{exc.source}: invalid site file", err=True)
    for problem in exc.problems:
        click.echo(f"  {problem}", err=True)


@click.group()
@click.version_option(__version__, prog_name="hpcbinder")
@click.option(
    "--site",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Site file (default: $HPCBINDER_SITE, /etc/hpcbinder/site.yaml, "
    "else the dev cluster's defaults).",
)
def main(site: Path | None) -> None:
    """Binder for supercomputing centres."""


@main.command("doctor")
@click.option(
    "--job",
    "job",
    is_flag=True,
    help="Also submit a short job that runs Apptainer on a compute node.",
)
@click.option(
    "--user",
    "job_user",
    metavar="USER",
    help="Account the test job runs as (implies --job; root must name one).",
)
@click.pass_context
def doctor_command(ctx: click.Context, job: bool, job_user: str | None) -> None:
    """Check that this host can build images and launch them; exit 1 if not."""
    site = _site(ctx)
    job = job or job_user is not None
    if job and job_user is None:
        if proc.current_user() == "root":
            raise click.UsageError("root cannot run containers here: name an account with --user")
        job_user = proc.current_user()
    results = doctor.run_checks(site, SlurmCLI(), job_user=job_user if job else None)
    for result in results:
        click.echo(result.line())
    sys.exit(0 if doctor.passed(results) else 1)


@main.group("config")
def config_group() -> None:
    """Site file commands."""


@config_group.command("check")
@click.argument("path", type=click.Path(path_type=Path, dir_okay=False), required=False)
@click.pass_context
def config_check(ctx: click.Context, path: Path | None) -> None:
    """Validate a site file and print every problem with its place in the file."""
    try:
        site = load_site(path or ctx.find_root().params.get("site"))
    except SiteConfigError as exc:
        _report_config_error(exc)
        sys.exit(EXIT_CONFIG)
    click.echo(
        f"site file is valid: {len(site.partitions)} partitions, "
        f"{len(site.bases)} base images, image store {site.image_store}"
    )


@main.command("render")
@click.argument("spec")
@click.option("--ref", help="Ref to use, when SPEC does not end with one.")
@click.option(
    "--plan",
    "show_plan",
    is_flag=True,
    help="Print the BuildPlan as JSON (with the env key) instead of the definition.",
)
@click.pass_context
def render_command(ctx: click.Context, spec: str, ref: str | None, show_plan: bool) -> None:
    """Print the Apptainer definition for SPEC (e.g. gh/org/repo/HEAD); builds nothing."""
    site = _site(ctx)
    if ref is not None:
        spec = f"{spec.rstrip('/')}/{quote(ref, safe='')}"
    try:
        prepared = pipeline.prepare(spec, site)
    except UserError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_CONFIG)
    for warning in prepared.rendered.warnings:
        click.echo(f"warning: {warning}", err=True)
    if show_plan:
        document = {
            "spec": prepared.repo.spec,
            "url": prepared.repo.url,
            "ref": prepared.repo.ref,
            "commit": prepared.repo.commit,
            "env_key": prepared.rendered.env_key,
            "base": prepared.rendered.base.name,
            "plan": prepared.plan.to_json(),
        }
        click.echo(json.dumps(document, indent=2))
    else:
        click.echo(prepared.rendered.definition, nl=False)
