"""Dockerfile repositories, converted to an Apptainer definition by spython.

spython converts what Apptainer can express; the rest is reported here,
before any build, as a warning (ignored, and why) or an error (the build
would not mean what the Dockerfile says). The FROM image is mapped through
the site's ``dockerfiles.from_map`` when rendering.

COPY and ADD are read here, not by spython: their sources become ``%files``
lines, which Apptainer copies from the build host, so each must be a plain
path inside the repository (the build context), never an absolute path, a
``..`` out of it, a link leading out of it or a URL. Anything else would
put the build account's files, or a download nobody checked, in the image.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import posixpath
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from spython.main.parse.parsers import DockerParser

from hpcbinder import textpatterns
from hpcbinder.buildpacks.base import _REPO_PATH, BuildPack, DockerRecipe, Step
from hpcbinder.errors import RepoConfigError
from hpcbinder.sources.checkout import leads_outside

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
_WILDCARD = textpatterns.compile(r"[*?\[]")
#: A ``--flag[=value]`` word that starts COPY/ADD arguments (the paths follow).
_COPY_FLAG = textpatterns.compile(r"--([A-Za-z-]+)(?:=\S*)?(?:\s+|$)")
_COPY_FLAGS = textpatterns.compile(rf"(?:{_COPY_FLAG.pattern})*")
_IGNORED_FLAGS = {
    "chown": "files belong to the user at run time",
    "chmod": "files belong to the user at run time",
    "link": "an Apptainer image has no layers",
}
#: What Docker's ADD would download: ``scheme://...`` or a git ``user@host:path``.
_URL = textpatterns.compile(r"[A-Za-z][A-Za-z0-9+.-]*://.*|[^/@\s]+@[^/:\s]+:.*")
_ARG_NAME = textpatterns.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_IMAGE_WORD = textpatterns.compile(r"[A-Za-z0-9._/:@-]+")


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

    def _copy_files(self, instruction: Instruction) -> list[tuple[str, str]]:
        """The ``(repository path, image path)`` pairs a COPY or ADD copies,
        each source checked to be a plain path inside the repository."""
        # All flags in one pass over the text (matching them one by one off
        # the front re-read the rest each time: quadratic in continued lines).
        flags_end = _COPY_FLAGS.match(instruction.args)
        end = flags_end.end() if flags_end else 0
        names = [f.group(1) for f in _COPY_FLAG.finditer(instruction.args, 0, end)]
        rest = instruction.args[end:]
        for name in dict.fromkeys(names):
            if name == "from":
                raise self._error(instruction, "multi-stage COPY --from is not supported")
            if name not in _IGNORED_FLAGS:
                raise self._error(instruction, f"--{name} is not supported")
            self.warn(
                f"{self.relative}:{instruction.line}: {instruction.keyword} --{name} "
                f"is ignored: {_IGNORED_FLAGS[name]}"
            )
        paths = self._json_paths(instruction, rest) if rest.startswith("[") else rest.split()
        if len(paths) < 2:
            raise self._error(instruction, "needs a source and a destination")
        *sources, target = paths
        return [(self._source(instruction, source), target) for source in sources]

    def _check_arg_names(self, instruction: Instruction) -> None:
        """spython pastes an ARG's name (all before its first ``=``) into a
        regular expression of its own (``re``, over the FROM line): a name
        like ``x|(a+)+c`` would make it backtrack for hours. So what comes
        before ``=``, in the instruction and in each word, is a variable name."""
        args = instruction.args
        before = [w.partition("=")[0] for w in [args, *args.split()] if "=" in w]
        for name in before:
            if not _ARG_NAME.fullmatch(name.strip()):
                raise self._error(instruction, f"{name[:60]!r} is not a variable name")

    def _json_paths(self, instruction: Instruction, text: str) -> list[str]:
        try:
            paths = json.loads(text)
        except ValueError:
            paths = None
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            raise self._error(instruction, f"cannot read the JSON list {text[:80]!r}")
        return paths

    def _source(self, instruction: Instruction, source: str) -> str:
        """``source`` as a path relative to the repository (the build
        context), or an error naming what is wrong with it."""
        if _URL.fullmatch(source):
            raise self._error(
                instruction,
                f"source {source[:80]} is a URL; download it in a RUN step "
                "or add the file to the repository",
            )
        relative = posixpath.normpath(source)
        if source.startswith("/") or relative.split("/")[0] == "..":
            raise self._error(
                instruction,
                f"source {source[:80]} is outside the repository; use a path inside it",
            )
        if _WILDCARD.search(source):
            raise self._error(
                instruction,
                "wildcards in sources are not supported; name each file or copy a directory",
            )
        if not _REPO_PATH.fullmatch(relative):
            raise self._error(
                instruction, f"source {source[:80]!r} has characters this site does not accept"
            )
        if not os.path.lexists(self.repo.root / relative):
            raise self._error(instruction, f"source {source} does not exist in the repository")
        if leads_outside(self.repo.root, relative):
            raise self._error(
                instruction,
                f"source {source} links outside the repository; use a path inside it",
            )
        return relative

    @cached_property
    def from_image(self) -> str:
        stages = [i for i in self.instructions if i.keyword == "FROM"]
        if not stages:
            raise RepoConfigError(self.relative, "has no FROM instruction")
        if len(stages) > 1:
            raise self._error(stages[1], "multi-stage builds are not supported")
        words = [w for w in stages[0].args.split() if not w.startswith("--platform")]
        if len(words) != 1 or not _IMAGE_WORD.fullmatch(words[0]):
            raise self._error(stages[0], f"cannot read the image in {stages[0].args!r}")
        return words[0]

    @cached_property
    def translated(self) -> tuple[str, list[tuple[str, str]]]:
        """The Dockerfile for spython, without what Apptainer ignores and
        without COPY/ADD, and the files those copy (checked here, not by
        spython, which would pass any path, flags included, to ``%files``)."""
        kept = []
        files: list[tuple[str, str]] = []
        for instruction in self.instructions:
            if instruction.keyword in _IGNORED:
                self.warn(
                    f"{self.relative}:{instruction.line}: {instruction.keyword} is "
                    f"ignored: {_IGNORED[instruction.keyword]}"
                )
                continue
            if instruction.keyword == "ARG":
                self._check_arg_names(instruction)
                self.warn(
                    f"{self.relative}:{instruction.line}: ARG is not a build argument "
                    "here; its default value is used"
                )
            if instruction.keyword in ("COPY", "ADD"):
                files.extend(self._copy_files(instruction))
                continue
            kept.append(f"{instruction.keyword} {instruction.args}")
        return "\n".join(kept) + "\n", files

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

    def dockerfile(self) -> DockerRecipe:
        image = self.from_image  # first: a bad FROM is the error to report
        cleaned, files = self.translated
        return convert(cleaned, self.relative, image, [(src, dst) for src, dst in files])


def _words(value: object) -> list[str]:
    if isinstance(value, list):
        return [str(v) for v in value]
    return [] if not value else [str(value)]


def convert(
    dockerfile_text: str, relative: str, from_image: str, files: list[tuple[str, str]]
) -> DockerRecipe:
    """spython's reading of a (cleaned, COPY-free) Dockerfile, with its FROM
    image and the ``files`` its COPY and ADD lines became."""
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
    return DockerRecipe(
        from_image=from_image,
        file=relative,
        files=files,
        post=post,
        environment=[str(e) for e in recipe.environ],
        labels=[
            " ".join(label) if isinstance(label, list) else str(label) for label in recipe.labels
        ],
        workdir=str(recipe.workdir) if recipe.workdir else None,
        entrypoint=_words(recipe.entrypoint),
        cmd=_words(recipe.cmd),
        exec_form=isinstance(recipe.entrypoint or recipe.cmd, list),
    )
