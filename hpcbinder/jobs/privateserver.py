"""A server launched from an image of the researcher's own store (a private
repository's: :mod:`hpcbinder.images.private`).

The hub's spawner, as the service account, may neither read her store nor
vouch for what is in it; the build server, which rules on launches of the
shared store's images, has no record of it. So the spawner submits, as
her, a job that gets the launch's options on stdin (the options the hub
validated: :class:`~hpcbinder.hub.options.LaunchOptions`, whose ``image``
is an env key, never a path) and runs this module. Here, as her, the key
is looked up in *her own* store only (:func:`~hpcbinder.images.private.open_store`:
her mode-700 folder), the image must be a regular file of hers, the
workspace's checkout a folder of hers in that store; then the server's
usual script (slurm/server.sbatch.j2) is written into her store and run in
place of this process, with the job's environment (the server's token and
settings, nothing else). Whoever names another's key (by the API or the
spawn form) only looks in their own store, and is refused in one line,
which the job's log and the hub's page give.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import stat
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from hpcbinder.config import Site, load_site
from hpcbinder.errors import UserError
from hpcbinder.hub.options import LaunchOptions
from hpcbinder.images import private
from hpcbinder.images.launch import image_entrypoint, launch_argv
from hpcbinder.jobs.request import JobRequest, request_for
from hpcbinder.jobs.serverscript import (
    PrivateLaunch,
    Seed,
    ServerJob,
    private_job_name,
    render_server_script,
    workspace_for,
)
from hpcbinder.seams import proc
from hpcbinder.seams.slurm import JOB_ID
from hpcbinder.sources.providers import served_checkout

#: Her store's folder of the scripts these jobs run (``server-JOB.sh``).
RUN = "run"
#: Age after which another launch's script is removed: its bash opened it
#: long since (a younger one may be a concurrent launch's, not yet opened).
STALE_SECONDS = 600


class PrivateLaunchError(UserError):
    """A private launch that cannot start as asked: the one line of its job."""


@dataclass(frozen=True)
class PrivateServerRequest:
    """What the spawner's job script feeds this module."""

    site_file: str
    options: dict[str, object]
    command: list[str]
    job_name: str

    def to_json(self) -> str:
        return json.dumps(
            {
                "site_file": self.site_file,
                "options": self.options,
                "command": self.command,
                "job_name": self.job_name,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> PrivateServerRequest:
        data = json.loads(text)
        command = data.get("command") if isinstance(data, dict) else None
        if not isinstance(command, list) or not all(isinstance(word, str) for word in command):
            raise PrivateLaunchError("not a private launch's request")
        return cls(
            str(data.get("site_file") or ""),
            dict(data.get("options") or {}),
            command,
            str(data.get("job_name") or "hpcbinder-server"),
        )


def private_server_job(
    site_file: Path | None,
    user: str,
    home: Path,
    request: JobRequest,
    options: LaunchOptions,
    command: Sequence[str],
    python: str = sys.executable,
) -> ServerJob:
    """The spawner's side: the job that resolves ``options``' image as
    ``user``, named for her alone (:func:`private_job_name`)."""
    job_name = private_job_name(user)
    payload = PrivateServerRequest(
        str(site_file or ""), options.user_options(), list(command), job_name
    )
    return ServerJob(
        user,
        home,
        request,
        [],
        list(command),
        job_name=job_name,
        private=PrivateLaunch(payload.to_json(), python),
    )


def _own(path: Path, kind: int, what: str) -> None:
    """:class:`PrivateLaunchError` unless ``path`` is (not a link to) a
    ``kind`` (stat.S_IFREG, S_IFDIR) of this account's."""
    try:
        info = path.lstat()
    except OSError as exc:
        raise PrivateLaunchError(f"{what} {path}: {exc.strerror}") from None
    if stat.S_IFMT(info.st_mode) != kind or info.st_uid != os.geteuid():
        raise PrivateLaunchError(f"{what} {path} is not one of yours: not launched")


def resolve(site: Site, request: PrivateServerRequest) -> ServerJob:
    """The server's job for an image of this account's own store, each part
    checked to be hers (see the module's docstring)."""
    user = proc.current_user()
    home = Path(pwd.getpwnam(user).pw_dir)
    options = LaunchOptions.parse(request.options)
    if not options.private or options.image is None:
        raise PrivateLaunchError("not a launch of an image of your private store")
    key = options.image  # an env key: LaunchOptions' check
    store = private.open_store(site, user)
    record = store.lookup(key)
    if record is None:
        raise PrivateLaunchError(f"image {key} is not in your private store {store.root}")
    if not record.path.is_relative_to(store.root):
        raise PrivateLaunchError(f"image {key} lies outside your private store")
    _own(record.path, stat.S_IFREG, "image")
    workspace = seed = None
    if options.workspace is not None:
        spec = options.workspace
        workspace = workspace_for(site, user, home, spec.slug)
        repos = private.private_site(site, store, user).repos
        checkout = served_checkout(repos, spec.commit)
        if checkout is None:
            raise PrivateLaunchError(
                f"workspace.commit: no checkout of {spec.commit} in your private store"
            )
        _own(checkout, stat.S_IFDIR, "checkout")
        seed = Seed(checkout, spec.commit, spec.from_image)
    resources = request_for(site, options.profile, options.resource_overrides(), user=user)
    return ServerJob(
        user,
        home,
        resources,
        launch_argv(record),
        request.command,
        workspace=workspace,
        seed=seed,
        job_name=request.job_name,
        entrypoint=tuple(image_entrypoint(record)),
    )


def _script_file(site: Site, text: str, job_id: str) -> Path:
    """``text`` in a new file of her store's (mode 600), never through a link."""
    folder = private.open_store(site, proc.current_user()).root / RUN
    folder.mkdir(mode=0o700, exist_ok=True)
    _own(folder, stat.S_IFDIR, "folder")
    path = folder / f"server-{job_id}.sh"
    # Earlier launches' scripts: each bash holds its own open, so they go
    # once stale (removing a concurrent launch's before its bash opened it
    # ended that launch: "No such file or directory").
    for old in folder.glob("server-*.sh"):
        with contextlib.suppress(FileNotFoundError):
            if old != path and time.time() - old.lstat().st_mtime > STALE_SECONDS:
                old.unlink()
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
    with os.fdopen(os.open(path, flags, 0o600), "w") as handle:
        handle.write(text)
    return path


def main(stdin: TextIO = sys.stdin) -> int:
    """The job's body: resolve, then become the server's usual script."""
    job_id = os.environ.get("SLURM_JOB_ID", "")
    try:
        if not JOB_ID.fullmatch(job_id):
            raise PrivateLaunchError("not in a Slurm job")
        request = PrivateServerRequest.from_json(stdin.read())
        site = load_site(Path(request.site_file) if request.site_file else None)
        script = _script_file(site, render_server_script(site, resolve(site, request)), job_id)
    except (UserError, ValueError, OSError) as exc:
        print(f"hpcbinder: {exc}", file=sys.stderr)
        return 1
    # Become the server's script (argv: no shell parses anything of it).
    os.execv("/bin/bash", ["bash", str(script)])  # noqa: S606


if __name__ == "__main__":
    sys.exit(main())
