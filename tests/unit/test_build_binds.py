"""What a build's containers may write: only the build's work folder and
its download cache, never the staging folder the build server reads,
writes and publishes from (see :func:`hpcbinder.images.store.work_dir`).
Checked on the commands the builder gives its backend, for both ways to
build and for site bases."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from hpcbinder.images.backends import BuildCommands, BuildFailed, OnStart
from hpcbinder.images.builder import Builder, ImageBuildError, cache_dir
from hpcbinder.images.store import ImageStore, work_dir
from hpcbinder.render import pipeline
from tests.repohelpers import git, local_spec, site_for_tests


class Recording:
    """A backend that keeps the commands it is given and runs none."""

    name = "recording"

    def __init__(self) -> None:
        self.builds: list[BuildCommands] = []

    def run(self, build: BuildCommands, on_line: Callable[[str], None], on_start: OnStart) -> None:
        self.builds.append(build)
        raise BuildFailed("recorded", "not run", [])

    def stop_leftover(self, started: str) -> None:
        """Nothing runs."""


def writable_paths(argv: list[str]) -> list[Path]:
    """Host paths an apptainer command lets its container write."""
    found = []
    for index, word in enumerate(argv):
        value = argv[index + 1] if index + 1 < len(argv) else ""
        if word == "--bind" and not value.endswith(":ro"):
            found.append(Path(value.split(":")[0]))
        elif word in ("--overlay", "--workdir") and not value.endswith(":ro"):
            found.append(Path(value))
        elif word.startswith("APPTAINER_WORKDIR="):
            found.append(Path(word.partition("=")[2]))
    return found


def repo_with(path: Path, files: dict[str, str]) -> Path:
    path.mkdir(parents=True)
    for name, text in files.items():
        (path / name).write_text(text)
    git(path, "init", "-q", "-b", "main")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "fixture")
    return path


@pytest.mark.parametrize(
    "files",
    [
        {"requirements.txt": "numpy\n", "postBuild": "#!/bin/sh\ntrue\n"},  # overlay
        {"Dockerfile": "FROM python:3.11-slim\nRUN true\n"},  # a full SIF build
    ],
)
def test_containers_write_only_the_work_folder_and_cache(
    tmp_path: Path, files: dict[str, str]
) -> None:
    site = site_for_tests(
        tmp_path,
        image_store=str(tmp_path / "store"),
        build={"cache_dir": str(tmp_path / "cache")},
    )
    prepared = pipeline.prepare(local_spec(repo_with(tmp_path / "repo", files)), site)
    backend = Recording()
    builder = Builder(site, ImageStore(site.image_store), backend)
    with pytest.raises(ImageBuildError):
        builder.build_image(prepared, lambda event: None)
    (build,) = backend.builds
    staging = build.output.parent
    allowed = [work_dir(staging), cache_dir(site, prepared.rendered.env_key)]
    containers = [step for step in build.steps if "apptainer" in step.argv]
    assert containers
    for step in containers:
        for path in writable_paths(step.argv):
            assert any(path.is_relative_to(folder) for folder in allowed if folder), (step, path)
            assert not path.is_relative_to(staging) or path.is_relative_to(work_dir(staging))
