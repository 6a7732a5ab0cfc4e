"""The sbatch script of a notebook server (slurm/server.sbatch.j2).

Puts together what the spawner decided: validated resources, the image's
``apptainer exec`` with the site's binds (and ``--nv`` for GPUs), the
researcher's workspace seeded from the checkout (or, where postBuild wrote
into the repository, from the repository as built into the image), and the
command to run.

The container runs a repository's code as the researcher, so it sees only
its workspace (as its home and working folder) and the site's binds, not
the researcher's home (unless the site sets ``container.bind_home``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from hpcbinder import textpatterns
from hpcbinder.buildpacks.base import REPO_DIR
from hpcbinder.config import Site
from hpcbinder.errors import UserError
from hpcbinder.images.jobrefs import job_comment
from hpcbinder.jobs.request import JobRequest
from hpcbinder.patterns import COMMIT
from hpcbinder.render import templating
from hpcbinder.seams import apptainer
from hpcbinder.seams.apptainer import Bind

_SAFE_PATH = textpatterns.compile(r"/[A-Za-z0-9_.+/-]*")
_SLUG = textpatterns.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


@dataclass(frozen=True)
class Seed:
    """Where a workspace's first files come from."""

    checkout: Path  # the repository at ``commit``, readable by the researcher
    commit: str
    from_image: bool  # postBuild ran: copy the repository as built into the image


@dataclass(frozen=True)
class ServerJob:
    user: str
    home: Path
    request: JobRequest
    image_argv: list[str]  # ["apptainer", "exec", ..., IMAGE] (see hpcbinder.images.launch)
    command: list[str]
    workspace: Path | None = None
    seed: Seed | None = None
    job_name: str = "hpcbinder-server"
    image_key: str | None = None  # the store's image (None: a site base); see jobrefs
    #: What the command runs through in the image: the repository's start
    #: (see :mod:`hpcbinder.images.launch`).
    entrypoint: tuple[str, ...] = ()
    #: An image of the researcher's own store: the job resolves it as her
    #: (:mod:`hpcbinder.jobs.privateserver`); ``image_argv`` and ``seed``
    #: are then decided there.
    private: PrivateLaunch | None = None


@dataclass(frozen=True)
class PrivateLaunch:
    """What a private launch's job gets on stdin (JSON: the launch's
    options, the command, the site file) and the Python it runs
    :mod:`hpcbinder.jobs.privateserver` with."""

    request: str
    python: str


def safe_path(path: Path | str, what: str) -> str:
    text = str(path)
    if not _SAFE_PATH.fullmatch(text) or ".." in text.split("/"):
        raise UserError(f"{what}: {text!r} is not a path this site accepts")
    return text


def writable_bind_holding(site: Site, user: str, path: Path) -> str | None:
    """The source of the site's writable bind (for ``user``) that is or holds
    ``path``, compared as given and resolved; None if none does. A container
    can plant links in such a folder, or swap it for one: the job scripts
    never write or bind through them (slurm/hostfiles.sh.j2), and run
    folders and workspaces are refused there as well."""
    paths = {Path(os.path.normpath(path)), Path(os.path.realpath(path))}
    for bind in site.binds:
        if bind.read_only:
            continue
        source = bind.source.replace("{user}", user)
        for held in {Path(os.path.normpath(source)), Path(os.path.realpath(source))}:
            if any(candidate.is_relative_to(held) for candidate in paths):
                return source
    return None


def workspace_for(site: Site, user: str, home: Path, slug: str) -> Path:
    """The researcher's workspace for one repository (``slug``), by site policy."""
    if not _SLUG.fullmatch(slug):
        raise UserError(f"workspace name {slug!r} has characters this site does not accept")
    root = site.workspace.root.replace("{home}", str(home)).replace("{user}", user)
    workspace = Path(safe_path(root, "workspace.root")) / slug
    source = writable_bind_holding(site, user, workspace)
    if source is not None:
        raise UserError(
            f"workspace.root: {workspace} lies in {source}, which containers may write "
            "(binds); choose a root outside every writable bind"
        )
    return workspace


def apptainer_options(site: Site, user: str, gpus: int) -> list[str]:
    """Options before the image: contained, the site's binds, and --nv for
    GPU jobs. The job script adds its workspace (a shell variable there)."""
    binds = []
    for bind in site.binds:
        source = safe_path(bind.source.replace("{user}", user), "binds.source")
        binds.append(Bind(source, bind.target or source, bind.read_only))
    return apptainer.job_options(binds, gpus=gpus)


def container_home(site: Site, home: Path) -> str | None:
    """The researcher's real home where the site binds it into containers
    (``container.bind_home``); None: the workspace is the container's home."""
    return safe_path(home, "home") if site.container.bind_home else None


def render_server_script(site: Site, job: ServerJob) -> str:
    if job.private is not None:
        return _render_private(job, job.private)
    if job.seed is not None and not COMMIT.fullmatch(job.seed.commit):
        raise UserError(f"not a commit id: {job.seed.commit!r}")
    # Without a repository (a base image from the spawn page) the server
    # still gets a workspace of its own, never the home itself.
    workspace = job.workspace or workspace_for(site, job.user, job.home, "default")
    return templating.render_text(
        "slurm",
        "server.sbatch.j2",
        job_name=job.job_name if _SLUG.fullmatch(job.job_name) else "hpcbinder-server",
        job_comment=job_comment(job.image_key, job.seed.commit if job.seed else None),
        request=job.request,
        output=f"{safe_path(job.home, 'home')}/.hpcbinder-server-%j.log",  # %j: sbatch's job id
        home=safe_path(job.home, "home"),
        workspace=safe_path(workspace, "workspace.root"),
        ephemeral=site.workspace.mode == "ephemeral",
        seed=job.seed is not None,
        seed_from_image=bool(job.seed and job.seed.from_image),
        checkout=str(job.seed.checkout) if job.seed else "",
        commit=job.seed.commit if job.seed else "",
        repo_dir=REPO_DIR,
        launch=[*job.image_argv[:-1], *apptainer_options(site, job.user, job.request.gpus)],
        image=job.image_argv[-1],
        container_home=container_home(site, job.home),
        command=[*job.entrypoint, *job.command],
    )


def private_job_name(user: str) -> str:
    """A private launch's Slurm job name, whatever its server's name: every
    account may list job names (squeue, unless PrivateData=jobs), and a
    server's name is derived from the repository's URL (an unsalted
    digest: a guessed private URL would be confirmed against it)."""
    name = f"hpcbinder-{user}-private"
    return name if _SLUG.fullmatch(name) else "hpcbinder-private"


def _render_private(job: ServerJob, launch: PrivateLaunch) -> str:
    """A private launch's job: its resources, and as the researcher, the
    server's script for the image in her own store (slurm/private-server.sbatch.j2)."""
    return templating.render_text(
        "slurm",
        "private-server.sbatch.j2",
        job_name=private_job_name(job.user),
        job_comment=job_comment(None, None, private=True),
        request=job.request,
        output=f"{safe_path(job.home, 'home')}/.hpcbinder-server-%j.log",
        home=safe_path(job.home, "home"),
        python=safe_path(launch.python, "python"),
        payload=launch.request,
    )
