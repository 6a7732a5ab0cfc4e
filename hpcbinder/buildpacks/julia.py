"""Julia repositories: Project.toml / JuliaProject.toml (and their manifests),
instantiated with the site's Julia download mirror and package server."""

from __future__ import annotations

from hpcbinder.buildpacks.base import Step, StepKind, in_image
from hpcbinder.buildpacks.python import PythonBuildPack, parse_toml


class JuliaProjectBuildPack(PythonBuildPack):
    name = "julia"

    def _project_file(self) -> str | None:
        for name in ("JuliaProject.toml", "Project.toml"):
            if self.repo.has(name):
                return self.repo.path(name)
        return None

    def detect(self) -> bool:
        return self._project_file() is not None

    def julia_compat(self) -> str | None:
        """The ``[compat] julia`` bound, if the project sets one."""
        project = self._project_file()
        if project is None:
            return None
        compat = parse_toml(self.repo.read(project), project).get("compat", {})
        value = compat.get("julia") if isinstance(compat, dict) else None
        return str(value) if value is not None else None

    def path(self) -> list[str]:
        return ["/opt/julia/bin", *super().path()]

    def env_files(self) -> list[str]:
        names = ("JuliaProject.toml", "Project.toml", "JuliaManifest.toml", "Manifest.toml")
        return [*super().env_files(), *(self.repo.path(n) for n in names if self.repo.has(n))]

    def env_steps(self) -> list[Step]:
        project_dir = in_image(self.repo.binder_dir or ".")
        return [
            *super().env_steps(),
            Step(StepKind.JULIA_SETUP, {"compat": self.julia_compat()}),
            Step(StepKind.JULIA_INSTANTIATE, {"project": project_dir}),
        ]
