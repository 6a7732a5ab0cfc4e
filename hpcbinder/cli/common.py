"""What the command-line modules share: the one place errors end a command,
the site file in force, the front half of the pipeline, and build progress
on stderr."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from urllib.parse import quote

import click

from hpcbinder.config import Site, SiteConfigError, load_site
from hpcbinder.errors import UserError
from hpcbinder.images import builder, private
from hpcbinder.images.client import (
    BuildServerClient,
    BuildServerError,
    NoAnonymousAccess,
    ServerEvent,
)
from hpcbinder.images.store import BuildEvent
from hpcbinder.render import pipeline
from hpcbinder.render.pipeline import Fetched
from hpcbinder.seams import proc
from hpcbinder.seams.slurm import SlurmError

#: Exit status of bad input (a spec, a repository's or the site's configuration).
EXIT_CONFIG = 2
#: Exit status of a failure (a build, the build server, Slurm).
EXIT_FAILED = 1


class CommandLine(click.Group):
    """The ``hpcbinder`` group: every error a user or sysadmin can cause,
    and every failure of an outside system, ends the command here as its
    one-line reason (a site file's problems one a line, a failed build's
    log tail), never as a traceback."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except SiteConfigError as exc:
            report_config_error(exc)
            sys.exit(EXIT_CONFIG)
        except UserError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_CONFIG)
        except builder.ImageBuildError as exc:
            report_build_error(exc)
            sys.exit(EXIT_FAILED)
        except (BuildServerError, SlurmError, proc.CommandError) as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_FAILED)


def site_in_force(ctx: click.Context) -> Site:
    """The site file in force (a bad one is a :class:`SiteConfigError`)."""
    path: Path | None = ctx.find_root().params.get("site")
    return load_site(path)


def report_config_error(exc: SiteConfigError) -> None:
    click.echo(f"{exc.source}: invalid site file", err=True)
    for problem in exc.problems:
        click.echo(f"  {problem}", err=True)


def full_spec(spec: str, ref: str | None) -> str:
    return spec if ref is None else f"{spec.rstrip('/')}/{quote(ref, safe='')}"


def prepare_with_warnings(site: Site, spec: str) -> pipeline.Prepared:
    """Resolve, fetch, detect and render, warnings to stderr."""
    prepared = pipeline.prepare(spec, site)
    for warning in prepared.rendered.warnings:
        click.echo(f"warning: {warning}", err=True)
    return prepared


class ProgressDisplay:
    """Build events on stderr: each phase with its elapsed time; on a
    terminal, the latest log line too; on failure, the last log lines."""

    def __init__(self, verbose: bool) -> None:
        self.verbose = verbose
        self.tty = sys.stderr.isatty()
        self.started = time.monotonic()

    def server_event(self, event: ServerEvent) -> None:
        self(BuildEvent(event.phase, event.message, time.monotonic() - self.started))

    def __call__(self, event: BuildEvent) -> None:
        stamp = f"[{event.elapsed:6.1f}s]"
        if event.phase == "log":
            if self.verbose:
                click.echo(f"{stamp}   {event.message}", err=True)
            elif self.tty:
                click.echo(f"\r\033[K{stamp}   {event.message[:100]}", err=True, nl=False)
            return
        if self.tty and not self.verbose:
            click.echo("\r\033[K", err=True, nl=False)
        click.echo(f"{stamp} {event.phase}: {event.message}", err=True)


def request_image(site: Site, spec: str, verbose: bool, *, prepare_only: bool = False) -> Fetched:
    """Ask the build server to fetch (and unless ``prepare_only``, build)
    ``spec``, showing its progress; a repository it cannot fetch is
    fetched and built as this account, into its own store
    (:mod:`hpcbinder.images.private`)."""
    display = ProgressDisplay(verbose)
    try:
        fetched = BuildServerClient(site).request(
            spec, display.server_event, prepare_only=prepare_only
        )
    except NoAnonymousAccess:
        fetched = private.request(site, spec, display, prepare_only=prepare_only)
    if prepare_only:
        for warning in fetched.warnings:
            click.echo(f"warning: {warning}", err=True)
    return fetched


def report_build_error(exc: builder.ImageBuildError) -> None:
    click.echo(f"error: {exc}", err=True)
    for line in exc.tail[-15:]:
        click.echo(f"  | {line}", err=True)
