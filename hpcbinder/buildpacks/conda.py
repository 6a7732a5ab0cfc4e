"""environment.yml repositories: a conda environment, created with
micromamba from the site's channels, becomes the notebook kernel."""

from __future__ import annotations

from functools import cached_property
from typing import Any

import yaml

from hpcbinder import textpatterns
from hpcbinder.buildpacks.base import BuildPack, Step, StepKind, in_image, parsing
from hpcbinder.errors import RepoConfigError

#: The conda environment that becomes the notebook kernel.
CONDA_ENV = "/opt/conda/envs/kernel"
_PYTHON_DEP = textpatterns.compile(r"python\s*[=<>!~]*\s*(3\.\d{1,2})(?:[.*\d]*)")
_R_BASE = textpatterns.compile(r"r-base\b")


class CondaBuildPack(BuildPack):
    name = "conda"

    @cached_property
    def environment_file(self) -> str | None:
        for name in ("environment.yml", "environment.yaml"):
            if self.repo.has(name):
                return self.repo.path(name)
        return None

    def detect(self) -> bool:
        return self.environment_file is not None

    def _file(self) -> str:
        if self.environment_file is None:
            raise RepoConfigError("environment.yml", "does not exist")
        return self.environment_file

    @cached_property
    def spec(self) -> dict[str, Any]:
        try:
            with parsing(self._file()):
                data = yaml.safe_load(self.repo.read(self._file())) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            raise RepoConfigError(
                self._file(), "not valid YAML", line=mark.line + 1 if mark else None
            ) from exc
        if not isinstance(data, dict):
            raise RepoConfigError(self._file(), "expected a mapping with 'dependencies'")
        return data

    def _dependencies(self) -> list[str]:
        deps = self.spec.get("dependencies") or []
        return [d for d in deps if isinstance(d, str)] if isinstance(deps, list) else []

    def conda_python(self) -> str | None:
        """The Python version the environment pins, which the kernel will run."""
        for dep in self._dependencies():
            if match := _PYTHON_DEP.fullmatch(dep.strip()):
                return match.group(1)
        return None

    def has_r(self) -> bool:
        return any(_R_BASE.match(dep.strip()) for dep in self._dependencies())

    def path(self) -> list[str]:
        return [f"{CONDA_ENV}/bin", *super().path()]

    def env_files(self) -> list[str]:
        files = [*super().env_files(), self._file()]
        if self.has_r() and self.repo.has("install.R"):
            files.append(self.repo.path("install.R"))
        return files

    def env_steps(self) -> list[Step]:
        steps = [
            *super().env_steps(),
            Step(
                StepKind.CONDA_ENV,
                {"file": in_image(self._file()), "python": self.conda_python()},
            ),
        ]
        if self.has_r() and self.repo.has("install.R"):
            steps.append(
                Step(
                    StepKind.R_INSTALL_SCRIPT,
                    {"file": in_image(self.repo.path("install.R")), "conda": True},
                )
            )
        return steps
