"""The ``hpcbinder`` command line."""

from __future__ import annotations

import importlib.metadata
import json
import shlex
import sys
from datetime import UTC, datetime
from pathlib import Path

import click

from hpcbinder import __version__
from hpcbinder.cli import doctor
from hpcbinder.cli.common import (
    EXIT_FAILED,
    CommandLine,
    ProgressDisplay,
    full_spec,
    prepare_with_warnings,
    request_image,
    site_in_force,
)
from hpcbinder.cli.sbatch import jobs_group, sbatch_command
from hpcbinder.config import Site, load_site, site_file_in_force
from hpcbinder.errors import UserError
from hpcbinder.images import builder as build
from hpcbinder.images import gc as storegc
from hpcbinder.images.client import published_image
from hpcbinder.images.launch import image_entrypoint, launch_argv
from hpcbinder.images.store import image_store
from hpcbinder.patterns import ENV_KEY
from hpcbinder.seams import proc
from hpcbinder.seams.cluster import cluster_slurm
from hpcbinder.seams.slurm import SlurmError


@click.group(cls=CommandLine)
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
    site = site_in_force(ctx)
    job = job or job_user is not None
    if job and job_user is None:
        if proc.current_user() == "root":
            raise click.UsageError("root cannot run containers here: name an account with --user")
        job_user = proc.current_user()
    results = doctor.run_checks(site, cluster_slurm(site), job_user=job_user if job else None)
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
    site = load_site(path or ctx.find_root().params.get("site"))
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
    help="Print the BuildPlan as JSON (with the env key and the files generated for "
    "the build) instead of the definition.",
)
@click.pass_context
def render_command(ctx: click.Context, spec: str, ref: str | None, show_plan: bool) -> None:
    """Print the Apptainer definition for SPEC (e.g. gh/org/repo/HEAD); builds nothing."""
    site = site_in_force(ctx)
    prepared = prepare_with_warnings(site, full_spec(spec, ref))
    if show_plan:
        document = {
            "spec": prepared.repo.spec,
            "url": prepared.repo.url,
            "ref": prepared.repo.ref,
            "commit": prepared.repo.commit,
            "env_key": prepared.rendered.env_key,
            "base": prepared.rendered.base.name,
            "plan": prepared.plan.to_json(),
            # What the definition reads by fixed paths (render/buildfiles.py).
            "generated": prepared.rendered.build_files,
        }
        click.echo(json.dumps(document, indent=2))
    else:
        click.echo(prepared.rendered.definition, nl=False)


@main.command("build")
@click.argument("spec")
@click.option("--ref", help="Ref to use, when SPEC does not end with one.")
@click.option("-v", "--verbose", is_flag=True, help="Print every line of the build log.")
@click.pass_context
def build_command(ctx: click.Context, spec: str, ref: str | None, verbose: bool) -> None:
    """Build (or find) the image for SPEC and print its path (through the
    site's build server: build.server_url)."""
    site = site_in_force(ctx)
    fetched = request_image(site, full_spec(spec, ref), verbose)
    record = published_image(site, fetched)
    run = [*launch_argv(record), *image_entrypoint(record)]
    click.echo(f"run it with: {shlex.join(run)} COMMAND", err=True)
    click.echo(record.path)


@main.group("base")
def base_group() -> None:
    """Site base images."""


@base_group.command("build")
@click.argument("names", nargs=-1)
@click.option("-v", "--verbose", is_flag=True, help="Print every line of the build log.")
@click.option(
    "--missing", is_flag=True, help="Only those not built yet, or built from another definition."
)
@click.pass_context
def base_build(ctx: click.Context, names: tuple[str, ...], verbose: bool, missing: bool) -> None:
    """Build the site's base images (all of them, or NAMES)."""
    site = site_in_force(ctx)
    _require_build_account(site)
    unknown = [name for name in names if name not in site.bases]
    if unknown:
        raise click.UsageError(
            f"no base named {', '.join(unknown)} in the site file "
            f"(it has {', '.join(sorted(site.bases))})"
        )
    hub_major = int(importlib.metadata.version("jupyterhub").split(".")[0])
    builder = build.Builder(site)
    for name in names or tuple(site.bases):
        if missing and build.base_is_current(site, name, hub_major):
            click.echo(f"{site.base_image_path(name)} (up to date)")
            continue
        click.echo(builder.build_base(name, hub_major, ProgressDisplay(verbose)))


@main.group("images")
def images_group() -> None:
    """The image store."""


@images_group.command("ls")
@click.pass_context
def images_ls(ctx: click.Context) -> None:
    """Every published image: key, size, build time, spec."""
    store = image_store(site_in_force(ctx))
    for record in store.records():
        meta = record.meta
        click.echo(
            f"{record.key}  {meta.size_bytes / 2**20:8.1f} MB  "
            f"{meta.created or '?'}  {meta.buildpack or '?':10}  "
            f"{meta.spec or '?'}"
        )


@images_group.command("show")
@click.argument("key")
@click.pass_context
def images_show(ctx: click.Context, key: str) -> None:
    """An image's metadata as JSON, with when it was last used (what gc goes by)."""
    store = image_store(site_in_force(ctx))
    record = store.lookup(_checked_key(key))
    if record is None:
        click.echo(f"error: no image with key {key}", err=True)
        sys.exit(1)
    last_used = datetime.fromtimestamp(store.last_used(record), UTC).isoformat(timespec="seconds")
    click.echo(
        json.dumps(
            {"path": str(record.path), "last_used": last_used, **record.meta.model_dump()}, indent=2
        )
    )


@images_group.command("rm")
@click.argument("key")
@click.pass_context
def images_rm(ctx: click.Context, key: str) -> None:
    """Remove an image (running containers keep working)."""
    site = site_in_force(ctx)
    _require_build_account(site)
    if not image_store(site).remove(_checked_key(key)):
        click.echo(f"error: no image with key {key}", err=True)
        sys.exit(1)
    click.echo(f"removed {key}")


@images_group.command("gc")
@click.option(
    "--older-than",
    "days",
    type=click.FloatRange(min=0),
    required=True,
    metavar="DAYS",
    help="Remove images and checkouts not used for this many days...",
)
@click.option(
    "--keep",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="...but always keep this many of the most recently used images.",
)
@click.pass_context
def images_gc(ctx: click.Context, days: float, keep: int) -> None:
    """Remove images and checkouts nobody has used for a while and no
    pending or running job uses, and what crashed builds left."""
    site = site_in_force(ctx)
    _require_build_account(site)
    try:
        report = storegc.collect(site, days, keep, cluster_slurm(site))
    except (SlurmError, proc.CommandError) as exc:
        click.echo(f"error: {exc}; nothing removed", err=True)
        sys.exit(EXIT_FAILED)
    for key in report.images:
        click.echo(f"removed {key}")
    for path in report.checkouts:
        click.echo(f"removed checkout {path}")
    for name in report.staging:
        click.echo(f"removed staging/{name}")
    for path in report.caches:
        click.echo(f"removed build cache {path}")
    click.echo(
        f"{len(report.checkouts)} checkouts, {len(report.staging)} staging folders, "
        f"{len(report.caches)} build caches removed"
    )
    click.echo(f"{len(report.images)} images removed")


def _require_build_account(site: Site) -> None:
    """Only the build account writes the image store (never root at run time)."""
    if proc.current_user() != site.build.account:
        raise UserError(
            f"run this as the build account {site.build.account} (site file: "
            f"build.account), e.g. sudo -u {site.build.account} hpcbinder ..."
        )


def _checked_key(key: str) -> str:
    if not ENV_KEY.fullmatch(key):
        raise click.BadParameter(f"{key!r} is not an env key (32 hex digits)")
    return key


@main.command("build-server")
@click.pass_context
def build_server_command(ctx: click.Context) -> None:
    """Run the build server (as the build account) at build.server_url."""
    import asyncio

    from hpcbinder.images import server as buildserver

    site = site_in_force(ctx)
    _require_build_account(site)
    asyncio.run(buildserver.run_build_server(site, **buildserver.options(site)))


main.add_command(sbatch_command)
main.add_command(jobs_group)


@main.command("serve")
@click.option("--ip", default="127.0.0.1", show_default=True)
@click.option("--port", default=8585, type=int, show_default=True)
@click.option("--public-url", help="This service's address as browsers see it [http://IP:PORT/].")
@click.option(
    "--hub-public-url",
    envvar="HPCBINDER_HUB_PUBLIC_URL",
    required=True,
    help="The hub's address as browsers see it (env HPCBINDER_HUB_PUBLIC_URL).",
)
@click.option(
    "--state-dir",
    envvar="HPCBINDER_BINDER_STATE",
    default="/var/lib/hpcbinder/binder",
    show_default=True,
    type=click.Path(path_type=Path),
    help="The service's own folder: launch confirmations (env HPCBINDER_BINDER_STATE).",
)
@click.pass_context
def serve_command(
    ctx: click.Context,
    ip: str,
    port: int,
    public_url: str | None,
    hub_public_url: str,
    state_dir: Path,
) -> None:
    """Run the Binder service (JupyterHub starts it as a service)."""
    import asyncio

    from hpcbinder.web.app import serve  # JupyterHub's modules: only for this command

    site = site_in_force(ctx)
    address = public_url or f"http://{ip}:{port}/"
    site_file = site_file_in_force(ctx.find_root().params.get("site"))
    asyncio.run(serve(site, ip, port, address, hub_public_url, state_dir, site_file))
