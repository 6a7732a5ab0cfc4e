"""Pipfile / Pipfile.lock repositories, installed with pipenv into the
image's Python (no virtualenv inside the image)."""

from __future__ import annotations

import re
from functools import cached_property
from typing import Any

from hpcbinder.buildpacks.base import BuildPack, Step, in_image
from hpcbinder.buildpacks.python import parse_toml
from hpcbinder.errors import RepoConfigError


class PipfileBuildPack(BuildPack):
    name = "pipfile"

    def detect(self) -> bool:
        runtime = self.runtime
        if runtime is not None and runtime.name != "python":
            return False
        return self.repo.has("Pipfile") or self.repo.has("Pipfile.lock")

    @cached_property
    def pipfile(self) -> dict[str, Any]:
        if not self.repo.has("Pipfile"):
            return {}
        return parse_toml(self.repo.read(self.repo.path("Pipfile")), self.repo.path("Pipfile"))

    def python_version(self) -> str | None:
        runtime_version = super().python_version()
        if runtime_version is not None:
            return runtime_version
        requires = self.pipfile.get("requires", {})
        version = requires.get("python_version") if isinstance(requires, dict) else None
        if version is None:
            return None
        if not re.fullmatch(r"3\.\d{1,2}", str(version)):
            raise RepoConfigError(
                self.repo.path("Pipfile"), f"[requires] python_version {version!r}: expected 3.X"
            )
        return str(version)

    @cached_property
    def installs_repo(self) -> bool:
        """The Pipfile installs the repository itself (``path = "."``)."""
        sections = [self.pipfile.get("packages", {}), self.pipfile.get("dev-packages", {})]
        return any(
            isinstance(spec, dict) and "path" in spec
            for section in sections
            if isinstance(section, dict)
            for spec in section.values()
        )

    def _step(self, in_repo: bool) -> Step:
        folder = self.repo.binder_dir
        directory = (folder or ".") if in_repo else in_image(folder or ".")
        return Step(
            "pipenv",
            {"dir": directory, "locked": self.repo.has("Pipfile.lock"), "in_repo": in_repo},
        )

    def env_files(self) -> list[str]:
        files = super().env_files()
        if not self.installs_repo:
            files += [self.repo.path(n) for n in ("Pipfile", "Pipfile.lock") if self.repo.has(n)]
        return files

    def env_steps(self) -> list[Step]:
        steps = super().env_steps()
        return steps if self.installs_repo else [*steps, self._step(in_repo=False)]

    def repo_steps(self) -> list[Step]:
        steps = [self._step(in_repo=True)] if self.installs_repo else []
        return [*steps, *super().repo_steps()]
