"""Dockerfile repositories, converted to an Apptainer definition by spython.

spython converts what Apptainer can express; the rest is reported here,
before any build, as a warning (ignored, and why) or an error (the build
would not mean what the Dockerfile says). The FROM image is mapped through
the site's ``dockerfiles.from_map`` when rendering.
"""

from __future__ import annotations

import contextlib
import io
import re
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from spython.main.parse.parsers import DockerParser

from hpcbinder.buildpacks.base import BuildPack, Step
from hpcbinder.errors import RepoConfigError

_IGNORED = {
    "EXPOSE": "Apptainer shares the host network; the server's port is chosen at launch",
    "USER": "containers run as the user who launches them",
    "VOLUME": "Apptainer binds the site's paths instead",
    "HEALTHCHECK": "Apptainer has no health checks",
    "STOPSIGNAL": "Slurm stops jobs with its own signals",
    "ONBUILD": "it applies to images built FROM this one",
    "SHELL": "build steps run with /bin/sh",
    "MAINTAINER": "deprecated; use LABEL",
}
_WILDCARD = re.compile(r"[*?\[]")
_COPY_FLAG = re.compile(r"--([a-z-]+)(?:=(\S*))?")


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    line: int


def parse_instructions(text: str) -> list[Instruction]:
    """Dockerfile instructions with continuation lines joined; comments dropped."""
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if not pending:
            start = number
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending.append(stripped[:-1])
            continue
        pending.append(stripped)
        keyword, _, args = " ".join(pending).strip().partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip(), start))
        pending = []
    if pending:
        raise RepoConfigError("Dockerfile", "ends inside a continued line", line=start)
    return instructions


class DockerfileBuildPack(BuildPack):
    name = "dockerfile"

    def detect(self) -> bool:
        return self.repo.has("Dockerfile")

    @cached_property
    def relative(self) -> str:
        return self.repo.path("Dockerfile")

    @cached_property
    def instructions(self) -> list[Instruction]:
        return parse_instructions(self.repo.read(self.relative))

    def _error(self, instruction: Instruction, message: str) -> RepoConfigError:
        return RepoConfigError(
            self.relative, f"{instruction.keyword}: {message}", line=instruction.line
        )

    def _check_copy(self, instruction: Instruction) -> None:
        words = instruction.args.split()
        for word in words:
            flag = _COPY_FLAG.fullmatch(word)
            if flag and flag.group(1) == "from":
                raise self._error(instruction, "multi-stage COPY --from is not supported")
            if flag and flag.group(1) in ("chown", "chmod"):
                self.warn(
                    f"{self.relative}:{instruction.line}: {instruction.keyword} "
                    f"--{flag.group(1)} is ignored: files belong to the user at run time"
                )
        paths = [w for w in words if not w.startswith("--")]
        if instruction.args.lstrip().startswith("["):
            raise self._error(instruction, "the JSON form of COPY/ADD is not supported")
        if any(_WILDCARD.search(p) for p in paths[:-1]):
            raise self._error(
                instruction,
                "wildcards in sources are not supported; name each file or copy a directory",
            )
        if instruction.keyword == "ADD" and any(
            p.startswith(("http://", "https://")) for p in paths[:-1]
        ):
            self.warn(
                f"{self.relative}:{instruction.line}: ADD from a URL is fetched with curl "
                "during the build; the image needs curl"
            )

    @cached_property
    def from_image(self) -> str:
        stages = [i for i in self.instructions if i.keyword == "FROM"]
        if not stages:
            raise RepoConfigError(self.relative, "has no FROM instruction")
        if len(stages) > 1:
            raise self._error(stages[1], "multi-stage builds are not supported")
        words = [w for w in stages[0].args.split() if not w.startswith("--platform")]
        if len(words) != 1 or not re.fullmatch(r"[A-Za-z0-9._/:@-]+", words[0]):
            raise self._error(stages[0], f"cannot read the image in {stages[0].args!r}")
        return words[0]

    def cleaned_dockerfile(self) -> str:
        """The Dockerfile with what Apptainer ignores removed, for spython."""
        kept = []
        for instruction in self.instructions:
            if instruction.keyword in _IGNORED:
                self.warn(
                    f"{self.relative}:{instruction.line}: {instruction.keyword} is "
                    f"ignored: {_IGNORED[instruction.keyword]}"
                )
                continue
            if instruction.keyword == "ARG":
                self.warn(
                    f"{self.relative}:{instruction.line}: ARG is not a build argument "
                    "here; its default value is used"
                )
            if instruction.keyword in ("COPY", "ADD"):
                self._check_copy(instruction)
            if re.search(r"^\s*%", instruction.args, re.MULTILINE):
                raise self._error(
                    instruction,
                    "a line may not start with '%' (it would open an Apptainer section)",
                )
            kept.append(f"{instruction.keyword} {instruction.args}")
        return "\n".join(kept) + "\n"

    def _ignored_files(self) -> list[str]:
        return [self.repo.path(n) for n in ("apt.txt", "postBuild", "start") if self.repo.has(n)]

    def apt_packages(self) -> set[str]:
        # As on mybinder.org, a Dockerfile is the whole recipe.
        for relative in self._ignored_files():
            self.warn(f"{relative} is ignored: the Dockerfile is the whole recipe")
        return set()

    def env_files(self) -> list[str]:
        return []

    def repo_steps(self) -> list[Step]:
        return []

    def start(self) -> str | None:
        return None

    def reads_whole_repo(self, repo_steps: list[Step]) -> bool:
        return True  # COPY and ADD read any file of the repository

    def dockerfile(self) -> dict[str, Any]:
        image = self.from_image  # first: a bad FROM is the error to report
        cleaned = self.cleaned_dockerfile()
        return {"from": image, "file": self.relative, **convert(cleaned, self.relative)}


def _words(value: object) -> list[str]:
    if isinstance(value, list):
        return [str(v) for v in value]
    return [] if not value else [str(value)]


def convert(dockerfile_text: str, relative: str) -> dict[str, Any]:
    """spython's reading of a (cleaned) Dockerfile, as plain data."""
    with tempfile.TemporaryDirectory(prefix="hpcbinder-dockerfile-") as tmp:
        path = Path(tmp) / "Dockerfile"
        path.write_text(dockerfile_text, encoding="utf-8")
        try:
            with contextlib.redirect_stderr(io.StringIO()):  # spython's own chatter
                recipes = DockerParser(str(path)).recipe
        except Exception as exc:  # spython raises whatever its parsing hits
            raise RepoConfigError(relative, f"spython cannot convert it ({exc!r})") from exc
    (recipe,) = recipes.values()
    post = [line.rstrip("\n") for line in recipe.install if line.strip()]
    return {
        "files": [[str(src), str(dst)] for src, dst in recipe.files],
        "post": post,
        "environment": [str(e) for e in recipe.environ],
        "labels": [
            " ".join(label) if isinstance(label, list) else str(label) for label in recipe.labels
        ],
        "workdir": str(recipe.workdir) if recipe.workdir else None,
        "entrypoint": _words(recipe.entrypoint),
        "cmd": _words(recipe.cmd),
        # JSON (exec) form is a list; shell form a string the author wrote for sh.
        "exec_form": isinstance(recipe.entrypoint or recipe.cmd, list),
    }
