"""What every buildpack shares: reading the repository, the plan it returns,
and the configuration files every repository may have (apt.txt, postBuild,
start, runtime.txt).

Buildpacks only read files and return data. Hooks return sets, lists and
dicts; a subclass extends them with ``super()``. No hook produces shell or
definition text: :mod:`hpcbinder.render.definition` does, from the :class:`BuildPlan`.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

from hpcbinder import textpatterns
from hpcbinder.errors import RepoConfigError

#: The largest configuration file read (a big Pipfile.lock is ~200 KB):
#: parsers of TOML, JSON and YAML are not regular expressions, but their
#: time and memory grow with what they are given.
FILE_BYTES = 1 << 20

#: Where the build places environment files and, when the build reads it, the repository.
ENV_FILES_DIR = "/opt/hpcbinder/env"
REPO_DIR = "/srv/repo"

_APT_PACKAGE = textpatterns.compile(r"[a-z0-9][a-z0-9.+-]*(?:=[A-Za-z0-9.+:~-]+)?")
# Repository-relative paths that may appear in a definition: no '..' part,
# no spaces, quotes or shell syntax.
# A part is a name, '.', or begins '.x' or '..x'; so never '..' (RE2 has no lookahead).
_REPO_PART = (
    r"(?:[A-Za-z0-9_][A-Za-z0-9_.+-]*|\.|\.[A-Za-z0-9_+-][A-Za-z0-9_.+-]*|\.\.[A-Za-z0-9_.+-]+)"
)
_REPO_PATH = textpatterns.compile(rf"{_REPO_PART}(?:/{_REPO_PART})*")
_PYTHON_RUNTIME = textpatterns.compile(r"python-(\d+)(?:\.(\d+))?(?:\.(\d+))?")
_R_RUNTIME = textpatterns.compile(r"r-(?:(\d+\.\d+(?:\.\d+)?)-)?(\d{4}-\d{2}-\d{2})")


class StepKind(enum.StrEnum):
    """The build steps there are, each rendered by its template
    (``templates/steps/<value>.sh.j2``; a unit test checks both ways)."""

    CONDA_ENV = "conda-env"
    JULIA_INSTANTIATE = "julia-instantiate"
    JULIA_SETUP = "julia-setup"
    NIX_SHELL = "nix-shell"
    PIP_INSTALL_REPO = "pip-install-repo"
    PIP_REQUIREMENTS = "pip-requirements"
    PIPFILE = "pipfile"
    POST_BUILD = "post-build"
    R_DESCRIPTION = "r-description"
    R_INSTALL_SCRIPT = "r-install-script"
    R_SETUP = "r-setup"

    @property
    def template(self) -> str:
        return f"steps/{self.value}.sh.j2"


@dataclass(frozen=True)
class Step:
    """One build step: ``kind`` names its template, ``params`` are the
    validated values it needs."""

    kind: StepKind
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DockerRecipe:
    """A repository's Dockerfile as the definition needs it: checked, COPY
    and ADD turned into ``files`` (repository path, image path)."""

    from_image: str  # the FROM line as written (the site maps it)
    file: str  # the Dockerfile's path in the repository
    files: list[tuple[str, str]]
    post: list[str]  # RUN lines, for %post
    environment: list[str]  # ENV assignments
    labels: list[str]
    workdir: str | None
    entrypoint: list[str]
    cmd: list[str]
    #: JSON (exec) form: a list of words; shell form: text the author wrote for sh.
    exec_form: bool


@dataclass(frozen=True)
class Runtime:
    """What runtime.txt asks for."""

    name: str  # "python" or "r"
    version: str | None
    date: str | None


@dataclass(frozen=True)
class BuildPlan:
    """Everything the build needs to know about a repository, as data."""

    buildpack: str
    binder_dir: str
    python_version: str | None
    python_requires: str | None
    apt_packages: list[str]
    env_files: list[str]
    env_steps: list[Step]
    repo_steps: list[Step]
    environment: dict[str, str]
    path: list[str]
    start: str | None
    reads_whole_repo: bool
    warnings: list[str]
    dockerfile: DockerRecipe | None = None
    #: The R version runtime.txt asks for (``r-X.Y-YYYY-MM-DD``), which picks a base.
    r_version: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class RepoFiles:
    """A checkout, seen the way repo2docker sees it: configuration comes from
    ``binder/`` or ``.binder/`` when one exists, else from the top level."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        has_binder = (root / "binder").is_dir()
        has_dotbinder = (root / ".binder").is_dir()
        if has_binder and has_dotbinder:
            raise RepoConfigError(
                "binder/", "the repository has both 'binder/' and '.binder/'; keep one"
            )
        self.binder_dir = ".binder" if has_dotbinder else "binder" if has_binder else ""

    def path(self, name: str) -> str:
        """Repo-relative path of configuration file ``name``."""
        return f"{self.binder_dir}/{name}" if self.binder_dir else name

    def _inside(self, relative: str) -> Path | None:
        candidate = self.root / relative
        if not candidate.is_file():
            return None
        real = candidate.resolve()
        if not real.is_relative_to(self.root):
            raise RepoConfigError(relative, "is a link to a file outside the repository")
        if not _REPO_PATH.fullmatch(relative):
            raise RepoConfigError(relative, "has characters this site does not accept in paths")
        return real

    def has(self, name: str) -> bool:
        """Configuration file ``name`` exists (in the binder dir if there is one)."""
        return self._inside(self.path(name)) is not None

    def has_top_level(self, name: str) -> bool:
        """``name`` exists at the top level and no binder dir hides it."""
        return not self.binder_dir and self._inside(name) is not None

    def read(self, relative: str) -> str:
        """The file's text: every parser of repository files reads through
        here, so every one gets at most :data:`FILE_BYTES`, in lines of at
        most :data:`~hpcbinder.textpatterns.LINE_CHARS`."""
        real = self._inside(relative)
        if real is None:
            raise RepoConfigError(relative, "does not exist")
        with real.open("rb") as handle:
            data = handle.read(FILE_BYTES + 1)
        if len(data) > FILE_BYTES:
            raise RepoConfigError(relative, f"is larger than this site reads ({FILE_BYTES} bytes)")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RepoConfigError(relative, "is not UTF-8 text") from exc
        if (number := textpatterns.long_line(text)) is not None:
            raise RepoConfigError(
                relative, f"line longer than {textpatterns.LINE_CHARS} characters", line=number
            )
        return text


@contextlib.contextmanager
def parsing(relative: str) -> Iterator[None]:
    """Around a TOML, JSON or YAML parser (recursive, all three): input
    nested deeper than Python's stack is the repository's error, not a crash."""
    try:
        yield
    except RecursionError as exc:
        raise RepoConfigError(relative, "is nested too deeply") from exc


def in_image(relative: str) -> str:
    """Where environment file ``relative`` is placed in the image."""
    return f"{ENV_FILES_DIR}/{relative}"


class BuildPack:
    """The configuration every repository may carry, whatever its ecosystem.

    ``name`` identifies the buildpack in plans; ``detect`` says whether it
    applies; the other hooks return data that :meth:`plan` gathers.
    """

    name: ClassVar[str] = "base"

    def __init__(self, repo: RepoFiles) -> None:
        self.repo = repo
        self._warnings: list[str] = []

    def warn(self, message: str) -> None:
        self._warnings.append(message)

    def detect(self) -> bool:
        return True

    # --- runtime.txt -------------------------------------------------------

    @cached_property
    def runtime(self) -> Runtime | None:
        if not self.repo.has("runtime.txt"):
            return None
        relative = self.repo.path("runtime.txt")
        text = self.repo.read(relative).strip()
        if match := _PYTHON_RUNTIME.fullmatch(text):
            major, minor, patch = match.groups()
            if minor is None:
                return Runtime("python", major, None)
            if patch is not None:
                self.warn(
                    f"{relative}: bases are chosen by minor version; "
                    f"python-{major}.{minor}.{patch} is treated as {major}.{minor}"
                )
            return Runtime("python", f"{major}.{minor}", None)
        if match := _R_RUNTIME.fullmatch(text):
            return Runtime("r", match.group(1), match.group(2))
        raise RepoConfigError(
            relative,
            f"invalid runtime {text[:60]!r}: expected python-X.Y, r-YYYY-MM-DD or r-X.Y-YYYY-MM-DD",
            line=1,
        )

    def python_version(self) -> str | None:
        runtime = self.runtime
        if runtime is None or runtime.name != "python":
            return None
        if runtime.version == "2" or (runtime.version or "").startswith("2."):
            raise RepoConfigError(
                self.repo.path("runtime.txt"), "Python 2 is not supported on this site", line=1
            )
        return runtime.version

    def python_requires(self) -> str | None:
        return None

    def r_version(self) -> str | None:
        return None

    # --- hooks -------------------------------------------------------------

    def apt_packages(self) -> set[str]:
        if not self.repo.has("apt.txt"):
            return set()
        relative = self.repo.path("apt.txt")
        packages = set()
        for number, line in enumerate(self.repo.read(relative).splitlines(), start=1):
            package = line.partition("#")[0].strip()
            if not package:
                continue
            if not _APT_PACKAGE.fullmatch(package):
                raise RepoConfigError(
                    relative, f"{package[:60]!r} is not a package name", line=number
                )
            packages.add(package)
        return packages

    def env_files(self) -> list[str]:
        """Repo-relative files the environment build reads before the repo is present."""
        return [self.repo.path("start")] if self.repo.has("start") else []

    def env_steps(self) -> list[Step]:
        return []

    def repo_steps(self) -> list[Step]:
        """Steps that need the whole repository in the image."""
        if self.repo.has("postBuild"):
            return [Step(StepKind.POST_BUILD, {"script": self.repo.path("postBuild")})]
        return []

    def environment(self) -> dict[str, str]:
        return {}

    def path(self) -> list[str]:
        """Directories put in front of PATH in the image."""
        return []

    def start(self) -> str | None:
        return in_image(self.repo.path("start")) if self.repo.has("start") else None

    def dockerfile(self) -> DockerRecipe | None:
        return None

    def reads_whole_repo(self, repo_steps: list[Step]) -> bool:
        """Whether the build reads every file (so every file is in the env key)."""
        return bool(repo_steps)

    def plan(self) -> BuildPlan:
        repo_steps = self.repo_steps()
        return BuildPlan(
            buildpack=self.name,
            binder_dir=self.repo.binder_dir,
            python_version=self.python_version(),
            python_requires=self.python_requires(),
            apt_packages=sorted(self.apt_packages()),
            env_files=sorted(set(self.env_files())),
            env_steps=self.env_steps(),
            repo_steps=repo_steps,
            environment=self.environment(),
            path=self.path(),
            start=self.start(),
            reads_whole_repo=self.reads_whole_repo(repo_steps),
            dockerfile=self.dockerfile(),
            r_version=self.r_version(),
            warnings=list(self._warnings),
        )
