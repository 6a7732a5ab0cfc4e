"""What the command-line modules share: the site file in force, the front
half of the pipeline with one-line errors, and build progress on stderr."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from urllib.parse import quote

import click

from hpcbinder.config import Site, SiteConfigError, load_site
from hpcbinder.errors import UserError
from hpcbinder.images import builder
from hpcbinder.images.client import BuildRefused, BuildServerClient, BuildServerError, ServerEvent
from hpcbinder.render import pipeline
from hpcbinder.render.pipeline import Fetched

EXIT_CONFIG = 2
EXIT_FAILED = 1


def site_in_force(ctx: click.Context) -> Site:
    """The site file in force; a bad one ends the command with each problem."""
    path: Path | None = ctx.find_root().params.get("site")
    try:
        return load_site(path)
    except SiteConfigError as exc:
        report_config_error(exc)
        sys.exit(EXIT_CONFIG)


def report_config_error(exc: SiteConfigError) -> None:
    click.echo(f"{exc.source}: invalid site file", err=True)
    for problem in exc.problems:
        click.echo(f"  {problem}", err=True)


def full_spec(spec: str, ref: str | None) -> str:
    return spec if ref is None else f"{spec.rstrip('/')}/{quote(ref, safe='')}"


def prepare(site: Site, spec: str) -> pipeline.Prepared:
    """Resolve, fetch, detect and render (warnings to stderr), or end with
    the one-line reason."""
    try:
        prepared = pipeline.prepare(spec, site)
    except UserError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_CONFIG)
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
        self(builder.BuildEvent(event.phase, event.message, time.monotonic() - self.started))

    def __call__(self, event: builder.BuildEvent) -> None:
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
    ``spec``, showing its progress; or end with the one-line reason."""
    display = ProgressDisplay(verbose)
    try:
        fetched = BuildServerClient(site).request(
            spec, display.server_event, prepare_only=prepare_only
        )
    except BuildRefused as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_CONFIG)
    except builder.ImageBuildError as exc:
        report_build_error(exc)
        sys.exit(EXIT_FAILED)
    except BuildServerError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_FAILED)
    if prepare_only:
        for warning in fetched.warnings:
            click.echo(f"warning: {warning}", err=True)
    return fetched


def report_build_error(exc: builder.ImageBuildError) -> None:
    click.echo(f"error: {exc}", err=True)
    for line in exc.tail[-15:]:
        click.echo(f"  | {line}", err=True)
