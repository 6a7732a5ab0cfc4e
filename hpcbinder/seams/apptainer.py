"""The seam around the ``apptainer`` program: every argv that runs it is
built here.

Root cannot run Apptainer on every host (it needs capabilities a container
host may withhold), and builds must never run as root anyway: every call
here names the account it runs as.

Containment. Repository code (postBuild, setup.py, a Dockerfile's RUN, the
environment scripts an image runs at every start) is untrusted, so
everything that runs it is contained: no host home, no host /tmp, /var/tmp
or working folder, only the paths bound here on purpose. Builds also get
their own PID namespace (``--containall``): when the build's command ends,
the kernel ends every process it started, ``setsid`` daemons included.
``apptainer build`` has no ``--containall`` of its own, but it runs
``%post`` through a nested ``apptainer exec`` that inherits ``APPTAINER_*``
variables: ``APPTAINER_CONTAINALL`` and ``APPTAINER_WORKDIR`` contain it the
same way (measured: without them %post writes the host's /tmp and /var/tmp).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from hpcbinder import textpatterns
from hpcbinder.seams import proc

APPTAINER = "apptainer"
_VERSION = textpatterns.compile(r"apptainer version (\d+)\.(\d+)\.(\d+)\S*")

#: zstd at a low level: about as small as mksquashfs's default gzip, ten times
#: faster to write (1.5 s instead of 17.6 s for 231 MB here); squashfuse reads it.
SQUASH_OPTIONS = ["-comp", "zstd", "-Xcompression-level", "3"]


@dataclass(frozen=True)
class Bind:
    """A host path seen in a container (``--bind SOURCE:TARGET[:ro]``)."""

    source: str
    target: str
    read_only: bool = False

    def argv(self) -> list[str]:
        return ["--bind", f"{self.source}:{self.target}" + (":ro" if self.read_only else "")]


def _binds(binds: Sequence[Bind]) -> list[str]:
    return [word for bind in binds for word in bind.argv()]


def version_line() -> str:
    """Apptainer's version line (``apptainer version 1.4.5``), or "" where
    it does not run."""
    try:
        result = proc.run([APPTAINER, "--version"], timeout=20)
    except proc.CommandError:
        return ""
    return result.stdout.strip() if result.ok else ""


def version(user: str | None = None) -> tuple[int, int, int]:
    """Apptainer's (major, minor, patch) as ``user`` runs it."""
    result = proc.check(proc.run([APPTAINER, "--version"], user=user, timeout=30))
    match = _VERSION.search(result.stdout)
    if not match:
        raise proc.CommandError(result.argv, "printed no version", result.stdout)
    major, minor, patch = (int(part) for part in match.groups())
    return major, minor, patch


def build(definition: Path, image: Path, *, user: str, timeout: float) -> proc.CommandResult:
    """``apptainer build --fakeroot IMAGE DEFINITION`` as ``user``, for
    trusted definitions (tests' tiny images).

    Refuses to replace an existing image: images are immutable once built,
    and apptainer would otherwise stop at an interactive overwrite prompt.
    """
    if image.exists():
        raise FileExistsError(f"{image} exists already")
    argv = [APPTAINER, "build", "--fakeroot", str(image), str(definition)]
    return proc.check(proc.run(argv, user=user, timeout=timeout))


def contained_build(
    image: Path, definition: Path, *, binds: Sequence[Bind], workdir: Path
) -> list[str]:
    """``apptainer build --fakeroot`` whose ``%post`` runs contained, with
    /tmp, /var/tmp and its home in ``workdir`` (on disk: the default is a
    64 MB tmpfs, too small for package builds)."""
    return [
        "env",
        "APPTAINER_CONTAINALL=1",
        f"APPTAINER_WORKDIR={workdir}",
        APPTAINER,
        "build",
        "--fakeroot",
        "--mksquashfs-args",
        " ".join(SQUASH_OPTIONS),
        *_binds(binds),
        str(image),
        str(definition),
    ]


def contained_exec(
    image: str,
    command: Sequence[str],
    *,
    overlay: str | None = None,
    binds: Sequence[Bind] = (),
    workdir: Path | None = None,
    fakeroot: bool = False,
) -> list[str]:
    """``apptainer exec`` of a build step: contained, own PID namespace,
    clean environment (the host's ``PIP_*`` would leak in otherwise)."""
    return [
        APPTAINER,
        "exec",
        *(["--fakeroot"] if fakeroot else []),
        "--containall",
        *(["--workdir", str(workdir)] if workdir else []),
        *(["--overlay", overlay] if overlay else []),
        *_binds(binds),
        image,
        *command,
    ]


#: ``apptainer exec`` in researchers' jobs: ``--quiet`` keeps Apptainer's
#: INFO lines ("gocryptfs not found" at every start) out of server logs and
#: batch outputs; its warnings and errors still show.
_JOB_EXEC = [APPTAINER, "--quiet", "exec"]


def job_exec_argv(image: Path | str, *, overlay: Path | None = None) -> list[str]:
    """``apptainer exec`` in a researcher's job, up to the command: ``image``
    (a SIF), with ``overlay`` read-only on it. Jobs add :func:`job_options`
    before the image."""
    return [*_JOB_EXEC, *(["--overlay", f"{overlay}:ro"] if overlay else []), str(image)]


def job_options(binds: Sequence[Bind], *, gpus: int) -> list[str]:
    """Options before the image for a researcher's job (server or batch run).

    ``--contain``: none of Apptainer's default binds ($HOME, /tmp, /var/tmp,
    the working folder); the job script adds its workspace as home and
    working folder. ``--cleanenv``: nothing of the job's environment enters
    the container but what :func:`container_env` names (a server's own hub
    variables). ``--pid``: what the repository's code starts (a ``setsid``
    daemon too) ends with the job, whatever the site's Slurm process
    tracking. ``--nv`` for GPUs.
    """
    return ["--contain", "--cleanenv", "--pid", *(["--nv"] if gpus else []), *_binds(binds)]


#: Apptainer sets ``NAME`` in a container, ``--cleanenv`` or not, from the
#: host's ``APPTAINERENV_NAME``.
CONTAINER_ENV_PREFIX = "APPTAINERENV_"


def container_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` as the variables a job passes to ``apptainer exec`` so that
    its container (started with ``--cleanenv``) has them: values travel in
    the environment, never on a command line that ``ps`` shows. The names
    are ones no hub or service process has of its own."""
    return {CONTAINER_ENV_PREFIX + name: value for name, value in env.items()}
