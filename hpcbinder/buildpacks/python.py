"""Python repositories: requirements.txt, setup.py, pyproject.toml, runtime.txt.

Also the default buildpack: a repository with no recognised configuration
gets the base image's Python with apt.txt, postBuild and start applied.
"""

from __future__ import annotations

import tomllib
from functools import cached_property
from typing import Any

from packaging.specifiers import InvalidSpecifier, SpecifierSet

from hpcbinder import textpatterns
from hpcbinder.buildpacks.base import BuildPack, Step, StepKind, in_image, parsing
from hpcbinder.errors import RepoConfigError

# A requirement that reads other files of the repository: the install then
# needs the whole repository, and the env key covers it. Space is what pip
# strips (Python's), so no line pip reads as local passes for a name.
_S = textpatterns.SPACE
_LOCAL_REQUIREMENT = textpatterns.compile(
    rf"{_S}*(?:(?:-e|--editable){_S}+)?"
    r"(?:\.|\.\.|/|file:|-r\b|--requirement\b|-c\b|--constraint\b)"
)


def parse_toml(repo_text: str, relative: str) -> dict[str, Any]:
    try:
        with parsing(relative):
            return tomllib.loads(repo_text)
    except tomllib.TOMLDecodeError as exc:
        line = getattr(exc, "lineno", None)
        raise RepoConfigError(relative, f"not valid TOML ({exc})", line=line) from exc


class PythonBuildPack(BuildPack):
    name = "python"

    def detect(self) -> bool:
        runtime = self.runtime
        if runtime is not None:
            return runtime.name == "python"
        return self.is_python_package or self.repo.has("requirements.txt")

    @cached_property
    def pyproject(self) -> dict[str, Any]:
        if not self.repo.has_top_level("pyproject.toml"):
            return {}
        return parse_toml(self.repo.read("pyproject.toml"), "pyproject.toml")

    @cached_property
    def is_python_package(self) -> bool:
        if self.repo.has_top_level("setup.py"):
            return True
        return "project" in self.pyproject and "build-system" in self.pyproject

    def python_requires(self) -> str | None:
        project = self.pyproject.get("project", {})
        requires = project.get("requires-python") if isinstance(project, dict) else None
        if requires is None:
            return None
        try:
            SpecifierSet(str(requires))
        except InvalidSpecifier as exc:
            raise RepoConfigError(
                "pyproject.toml", f"invalid requires-python {requires!r}"
            ) from exc
        return str(requires)

    @cached_property
    def requirements_are_local(self) -> bool:
        """requirements.txt names files of the repository (``-e .``, ``-r x``)."""
        if not self.repo.has("requirements.txt"):
            return False
        text = self.repo.read(self.repo.path("requirements.txt"))
        return any(_LOCAL_REQUIREMENT.match(line) for line in text.splitlines())

    def _requirements_step(self, in_repo: bool) -> Step:
        relative = self.repo.path("requirements.txt")
        return Step(
            StepKind.PIP_REQUIREMENTS,
            {"file": relative if in_repo else in_image(relative), "in_repo": in_repo},
        )

    def env_files(self) -> list[str]:
        files = super().env_files()
        if self.repo.has("requirements.txt") and not self.requirements_are_local:
            files.append(self.repo.path("requirements.txt"))
        if self.repo.has("requirements3.txt"):
            self.warn(
                f"{self.repo.path('requirements3.txt')} is ignored: it was for Python 2 "
                "kernels, which this site does not support"
            )
        return files

    def env_steps(self) -> list[Step]:
        steps = super().env_steps()
        if self.repo.has("requirements.txt") and not self.requirements_are_local:
            steps.append(self._requirements_step(in_repo=False))
        return steps

    def repo_steps(self) -> list[Step]:
        steps = []
        if self.requirements_are_local:
            steps.append(self._requirements_step(in_repo=True))
        if self.is_python_package:
            steps.append(Step(StepKind.PIP_INSTALL_REPO))
        return [*steps, *super().repo_steps()]
