"""The only host-side step of a definition, ``%setup``, makes the mount
points the builder binds. It runs as the build account on the host, in the
base image's unpacked tree: a base (a Dockerfile's FROM) whose ``/opt`` is
a link out of the tree would have ``mkdir -p`` make folders wherever the
link leads (the image store: another key's publish then fails). It makes
them a folder at a time and refuses a link on the way."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from hpcbinder.render import pipeline
from tests.repohelpers import REPOS, git, local_spec, site_for_tests


def setup_section(tmp_path: Path) -> str:
    repo = tmp_path / "repo"
    shutil.copytree(REPOS / "python" / "requirements", repo)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "fixture")
    site = site_for_tests(tmp_path, build={"cache_dir": str(tmp_path / "cache")})
    definition = pipeline.prepare(local_spec(repo), site).rendered.definition
    return definition.split("\n%setup\n", 1)[1].split("\n%", 1)[0]


def run_setup(section: str, rootfs: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", "-e", "-c", section],
        env={"PATH": "/usr/bin:/bin", "APPTAINER_ROOTFS": str(rootfs)},
        capture_output=True,
        text=True,
    )


def test_setup_makes_the_mount_points_in_the_image(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    (rootfs / "opt").mkdir(parents=True)
    done = run_setup(setup_section(tmp_path), rootfs)
    assert done.returncode == 0, done.stderr
    assert (rootfs / "opt" / "hpcbinder" / "build-cache").is_dir()


def test_setup_refuses_a_link_in_the_base_image(tmp_path: Path) -> None:
    rootfs, outside = tmp_path / "rootfs", tmp_path / "store"
    rootfs.mkdir()
    outside.mkdir()
    (rootfs / "opt").symlink_to(outside)
    done = run_setup(setup_section(tmp_path), rootfs)
    assert done.returncode != 0
    assert "hpcbinder: the base image's /opt is a link" in done.stderr
    assert list(outside.iterdir()) == []
