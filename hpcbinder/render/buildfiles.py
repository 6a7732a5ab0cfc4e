"""The files hpcbinder writes for a build from what a repository supplies.

A repository's text never becomes definition text: Apptainer opens a
section at any line whose first word starts with ``%``, and ``%setup``
runs on the build host. What a build needs beyond the repository's own
files (which ``%files`` copies by validated path) is written here, into
files the builder places in a folder of their own, bound read-only at
:data:`GENERATED_IN_IMAGE` while the build runs; the definition reads them
there by fixed paths. That covers a Pipfile's requirement lines (names,
versions, markers, hashes, git URLs), apt.txt's package names and a
Dockerfile's RUN, ENV, WORKDIR, ENTRYPOINT and CMD.

Each file is rendered by a template in ``templates/generated/``, so every
value in it passed the renderer's one-line rule too. The env key covers
their exact text.
"""

from __future__ import annotations

from dataclasses import dataclass

from hpcbinder.buildpacks.base import BuildPlan, DockerRecipe, StepKind
from hpcbinder.render import templating

#: Where every build sees the folder of its generated files (read-only).
GENERATED_IN_IMAGE = "/mnt/hpcbinder-generated"
#: Where a Dockerfile's image keeps its environment and runscript.
DOCKERFILE_DIR_IN_IMAGE = "/opt/hpcbinder/dockerfile"


@dataclass(frozen=True)
class GeneratedNames:
    """The generated files by name, in the folder and (for a Dockerfile's
    runtime files) in the image: what the templates refer to."""

    apt_packages: str = "apt-packages.txt"
    pipfile_requirements: str = "pipfile-requirements.txt"
    pipfile_vcs: str = "pipfile-vcs.txt"
    dockerfile_post: str = "dockerfile-post.sh"
    dockerfile_environment: str = "dockerfile-environment.sh"
    dockerfile_runscript: str = "dockerfile-runscript.sh"


NAMES = GeneratedNames()


def template_paths() -> dict[str, str]:
    """What the definition templates use: the folder, each file in it, and
    the Dockerfile's runtime files in the image."""
    paths = {key: f"{GENERATED_IN_IMAGE}/{name}" for key, name in vars(NAMES).items()}
    return {
        "dir": GENERATED_IN_IMAGE,
        **paths,
        "dockerfile_environment_in_image": f"{DOCKERFILE_DIR_IN_IMAGE}/environment.sh",
        "dockerfile_runscript_in_image": f"{DOCKERFILE_DIR_IN_IMAGE}/runscript.sh",
    }


def _lines(lines: list[str], source: str) -> str:
    """One value a line: a value holding a line break is refused naming
    ``source`` (the repository file it came from), never split in two."""
    return templating.render_text(
        "templates", "generated/lines.txt.j2", lines=lines, value_source=source
    )


def _dockerfile(recipe: DockerRecipe) -> dict[str, str]:
    values = {"recipe": recipe, "value_source": recipe.file}
    return {
        NAMES.dockerfile_post: templating.render_text(
            "templates", "generated/dockerfile-post.sh.j2", **values
        ),
        NAMES.dockerfile_environment: templating.render_text(
            "templates", "generated/dockerfile-environment.sh.j2", **values
        ),
        NAMES.dockerfile_runscript: templating.render_text(
            "templates", "generated/dockerfile-runscript.sh.j2", **values
        ),
    }


def build_files(plan: BuildPlan) -> dict[str, str]:
    """The files the build of ``plan`` reads from the generated folder, by name."""
    files: dict[str, str] = {}
    if plan.apt_packages:
        apt = f"{plan.binder_dir}/apt.txt" if plan.binder_dir else "apt.txt"
        files[NAMES.apt_packages] = _lines(plan.apt_packages, apt)
    for step in [*plan.env_steps, *plan.repo_steps]:
        if step.kind is StepKind.PIPFILE:
            source = str(step.params["source"])
            files[NAMES.pipfile_requirements] = _lines(step.params["requirements"], source)
            files[NAMES.pipfile_vcs] = _lines(step.params["vcs"], source)
    if plan.dockerfile is not None:
        files.update(_dockerfile(plan.dockerfile))
    return files
