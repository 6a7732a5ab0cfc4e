"""A server's workspace seeded from hostile trees (slurm/seeding.j2 through
slurm/server.sbatch.j2, run with bash): whatever links and ``.git`` entries
the repository folder holds, at whatever depth and name, seeding writes
nothing outside the new workspace, leaves no ``.git`` and writes its marker
as a regular file. The container is a stand-in that runs the copy on the
host (as a real one would, seeing only the new folder); real jobs:
tests/integration/test_serverscript.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from hpcbinder.config import Site
from hpcbinder.jobs.request import request_for
from hpcbinder.jobs.serverscript import Seed, ServerJob, render_server_script

COMMIT = "c" * 40
IMAGE = "/fake/image.sif"
#: Runs the command after the image, the image's /srv/repo being $FAKE_REPO.
FAKE_APPTAINER = """#!/bin/bash
while [ "$1" != "/fake/image.sif" ]; do shift; done
shift
args=()
for arg in "$@"; do args+=("${arg/#\\/srv\\/repo/$FAKE_REPO}"); done
exec "${args[@]}"
"""
NAMES = st.sampled_from([".git", ".hpcbinder-workspace", "a", "b"])
KINDS = st.sampled_from(["file", "dir", "link-abs", "link-rel", "link-dir"])
ENTRIES = st.lists(st.tuples(st.lists(NAMES, min_size=1, max_size=3), KINDS), max_size=12)


def plant(root: Path, entries: list[tuple[list[str], str]], victim: Path) -> None:
    """The repository folder: ``entries`` made where their parents are
    folders (links lead to the researcher's file and folder, absolute or
    relative)."""
    root.mkdir()
    for parts, kind in entries:
        path = root.joinpath(*parts)
        parent = path.parent
        # Never through a link planted before: that would write the victim's folder.
        if any(root.joinpath(*parts[:depth]).is_symlink() for depth in range(1, len(parts) + 1)):
            continue
        if path.exists():
            continue
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            continue
        if parent.is_symlink() or not parent.is_dir():
            continue
        if kind == "file":
            path.write_text("repository file\n")
        elif kind == "dir":
            path.mkdir()
        elif kind == "link-abs":
            path.symlink_to(victim / "bashrc")
        elif kind == "link-rel":
            path.symlink_to(os.path.relpath(victim / "bashrc", parent))
        else:
            path.symlink_to(victim)


def snapshot(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(folder.iterdir())}


@settings(max_examples=40, deadline=None)
@given(entries=ENTRIES, from_image=st.booleans())
def test_seeding_writes_through_no_link_and_leaves_no_git(
    entries: list[tuple[list[str], str]], from_image: bool
) -> None:
    base = Path(tempfile.mkdtemp(prefix="seed-"))
    try:
        victim = base / "home"
        victim.mkdir()
        (victim / "bashrc").write_text("untouched\n")
        repo = base / "repo"
        plant(repo, entries, victim)
        tools = base / "bin"
        tools.mkdir()
        (tools / "apptainer").write_text(FAKE_APPTAINER)
        (tools / "apptainer").chmod(0o755)
        site = Site.model_validate({"workspace": {"root": str(base / "ws")}})
        workspace = base / "ws" / "repo"
        job = ServerJob(
            "alice",
            base,
            request_for(site, None, {}, user="alice"),
            [str(tools / "apptainer"), "exec", IMAGE],
            ["true"],
            workspace=workspace,
            seed=Seed(repo, COMMIT, from_image=from_image),
        )
        done = subprocess.run(
            ["bash", "-c", render_server_script(site, job)],
            env={"PATH": "/usr/bin:/bin", "FAKE_REPO": str(repo)},
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
        assert snapshot(victim) == {"bashrc": "untouched\n"}
        marker = workspace / ".hpcbinder-workspace"
        assert not marker.is_symlink() and marker.read_text() == f"{COMMIT}\n"
        for _, folders, files in os.walk(workspace):  # links not followed
            assert ".git" not in folders + files
        assert sorted(p.name for p in workspace.parent.iterdir()) == ["repo"]  # nothing left
    finally:
        shutil.rmtree(base)
