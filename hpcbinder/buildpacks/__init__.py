"""Repository detection: which buildpack applies, and its :class:`BuildPlan`.

The order is repo2docker's, so a repository that launches on mybinder.org
is read the same way here: Dockerfile, Julia project, Nix, R, conda,
Pipfile, then Python, which is also the default.
"""

from __future__ import annotations

from pathlib import Path

from hpcbinder.buildpacks.base import BuildPack, BuildPlan, RepoFiles, Step, StepKind
from hpcbinder.buildpacks.conda import CondaBuildPack
from hpcbinder.buildpacks.dockerfile import DockerfileBuildPack
from hpcbinder.buildpacks.julia import JuliaProjectBuildPack
from hpcbinder.buildpacks.nix import NixBuildPack
from hpcbinder.buildpacks.pipfile import PipfileBuildPack
from hpcbinder.buildpacks.python import PythonBuildPack
from hpcbinder.buildpacks.r import RBuildPack

BUILDPACKS: list[type[BuildPack]] = [
    DockerfileBuildPack,
    JuliaProjectBuildPack,
    NixBuildPack,
    RBuildPack,
    CondaBuildPack,
    PipfileBuildPack,
    PythonBuildPack,
]
DEFAULT_BUILDPACK: type[BuildPack] = PythonBuildPack

__all__ = ["BUILDPACKS", "BuildPack", "BuildPlan", "RepoFiles", "Step", "detect"]


def detect(checkout: Path) -> BuildPlan:
    """The plan for the repository checked out at ``checkout``."""
    repo = RepoFiles(checkout)
    candidates = (buildpack_class(repo) for buildpack_class in BUILDPACKS)
    buildpack = next((bp for bp in candidates if bp.detect()), None) or DEFAULT_BUILDPACK(repo)
    plan = buildpack.plan()
    uses_install_r = any(s.kind is StepKind.R_INSTALL_SCRIPT for s in plan.env_steps)
    if repo.has("install.R") and not uses_install_r:
        plan.warnings.append(
            f"{repo.path('install.R')} is ignored: R is set up by runtime.txt "
            "'r-YYYY-MM-DD', a DESCRIPTION file, or r-base in environment.yml"
        )
    return plan
