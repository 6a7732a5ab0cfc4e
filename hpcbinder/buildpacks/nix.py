"""Nix repositories: default.nix, realised at build time and entered with
nix-shell when the server starts."""

from __future__ import annotations

from hpcbinder.buildpacks.base import BuildPack, Step, StepKind, in_image


class NixBuildPack(BuildPack):
    name = "nix"

    def detect(self) -> bool:
        return self.repo.has("default.nix")

    def env_files(self) -> list[str]:
        return [*super().env_files(), self.repo.path("default.nix")]

    def env_steps(self) -> list[Step]:
        return [
            *super().env_steps(),
            Step(StepKind.NIX_SHELL, {"file": in_image(self.repo.path("default.nix"))}),
        ]

    def environment(self) -> dict[str, str]:
        return {
            **super().environment(),
            "HPCBINDER_NIX_SHELL": in_image(self.repo.path("default.nix")),
        }
