"""Pipfile / Pipfile.lock repositories, installed with uv into the image's
kernel environment; no pipenv at build time.

``Pipfile.lock`` is installed exactly: its ``default`` and ``develop``
packages (as ``pipenv install --dev --deploy`` would) become a requirements
list with every ``--hash`` of the lock, installed with ``--require-hashes
--no-deps``, so a package that differs from the lock fails the build. A
Pipfile without a lock is locked then installed: its ``[packages]`` and
``[dev-packages]`` become requirements that uv resolves (``uv pip compile
--generate-hashes``, kept in the image) and installs, as ``pipenv lock``
then ``install`` would.

Why not pipenv: it had to be installed from the index at every build, it
uninstalled setuptools in the kernel environment, and ``--deploy`` aborts
when the Pipfile's ``python_version`` differs from the interpreter, where
the site's ``nearest`` policy means "warn and use the nearest Python".
uv is in every base already and reads the site's package mirror.

Local paths (``path = "."``) and VCS entries carry no hashes: they are
installed after the hashed requirements, paths from the repository (which
the build then reads whole), VCS entries pinned to the lock's ``ref``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from packaging.markers import InvalidMarker, Marker

from hpcbinder import textpatterns
from hpcbinder.buildpacks.base import BuildPack, Step, StepKind, parsing
from hpcbinder.buildpacks.python import parse_toml
from hpcbinder.errors import RepoConfigError

_NAME = textpatterns.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")
_PINNED = textpatterns.compile(r"===?[A-Za-z0-9.+!*_-]+")
_SPECIFIER = textpatterns.compile(r"(?:[<>=!~]=?=?\s*[A-Za-z0-9.+!*_-]+\s*,?\s*)+|\*")
_HASH = textpatterns.compile(r"(?:sha256|sha384|sha512):[0-9a-f]{64,128}")
_VCS_URL = textpatterns.compile(r"(?:https|http|ssh|git)://[A-Za-z0-9._~:/@%+=-]+")
_VCS_REF = textpatterns.compile(r"[A-Za-z0-9._/-]{1,200}")
_INDEX_URL = textpatterns.compile(r"https?://[A-Za-z0-9._~:/@%+=-]+")
_LOCAL_PATH = textpatterns.compile(
    r"\.(?:/[A-Za-z0-9_.][A-Za-z0-9_.+-]*)*|[A-Za-z0-9_][A-Za-z0-9_.+/-]*"
)
#: Version control entries of a Pipfile; uv installs from git only.
_VCS = ("git", "hg", "svn", "bzr")
#: The default index: the site's package mirror (network.mirrors.pypi_index) stands for it.
_PYPI = textpatterns.compile(r"https?://(?:pypi\.org|pypi\.python\.org)/simple/?")
_PYTHON_VERSION = textpatterns.compile(r"3\.\d{1,2}")


@dataclass(frozen=True)
class PipfileRequirements:
    """A Pipfile or its lock as uv reads it: ``requirements`` (with their
    hashes, when locked); ``vcs`` entries and the repository's ``paths``
    (folder, editable), installed after them; the extra package
    ``indexes`` it names."""

    requirements: list[str] = field(default_factory=list)
    vcs: list[str] = field(default_factory=list)
    paths: list[tuple[str, bool]] = field(default_factory=list)
    indexes: list[str] = field(default_factory=list)


def _name(name: object, relative: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise RepoConfigError(relative, f"{str(name)[:60]!r} is not a package name")
    return name


def _marker(markers: object, name: str, relative: str) -> str:
    if markers is None:
        return ""
    try:
        return f" ; {Marker(str(markers))}"
    except InvalidMarker as exc:
        raise RepoConfigError(relative, f"{name}: invalid markers {markers!r}") from exc


def _extras(spec: dict[str, Any], name: str, relative: str) -> str:
    extras = spec.get("extras") or []
    if not isinstance(extras, list) or not all(
        isinstance(e, str) and _NAME.fullmatch(e) for e in extras
    ):
        raise RepoConfigError(relative, f"{name}: invalid extras {extras!r}")
    return f"[{','.join(extras)}]" if extras else ""


def _vcs(spec: dict[str, Any], name: str, relative: str) -> str:
    kind = next(k for k in _VCS if k in spec)
    if kind != "git":
        raise RepoConfigError(relative, f"{name}: {kind} entries are not supported (git only)")
    url, ref = str(spec[kind]).removeprefix("git+"), spec.get("ref")
    if not _VCS_URL.fullmatch(url):
        raise RepoConfigError(
            relative, f"{name}: git URL {url[:80]!r} is not one this site accepts"
        )
    if ref is not None and not _VCS_REF.fullmatch(str(ref)):
        raise RepoConfigError(relative, f"{name}: invalid ref {ref!r}")
    pinned = f"@{ref}" if ref is not None else ""
    return f"{name}{_extras(spec, name, relative)} @ git+{url}{pinned}"


def _local(spec: dict[str, Any], name: str, relative: str) -> tuple[str, bool]:
    path = str(spec["path"])
    if not _LOCAL_PATH.fullmatch(path) or ".." in path.split("/"):
        raise RepoConfigError(
            relative, f"{name}: path {path[:80]!r} must be a folder inside the repository"
        )
    return (path if path.startswith(".") else f"./{path}"), bool(spec.get("editable"))


def _indexes(sources: object, relative: str) -> list[str]:
    """The URLs of the sources that are not PyPI (the site's mirror, if it
    has one, stands for PyPI), as extra indexes, as pipenv used them."""
    if sources is None:
        return []
    if not isinstance(sources, list):
        raise RepoConfigError(relative, "[[source]] must be a list of tables")
    urls = []
    for source in sources:
        url = str(source.get("url", "")) if isinstance(source, dict) else ""
        if not _INDEX_URL.fullmatch(url):
            raise RepoConfigError(relative, f"[[source]] url {url[:80]!r} is not an http(s) URL")
        if not _PYPI.fullmatch(url):
            urls.append(url)
    return list(dict.fromkeys(urls))


def _collect(
    packages: object,
    relative: str,
    indexes: list[str],
    entry: Callable[[str, dict[str, Any]], str],
) -> PipfileRequirements:
    """The requirements of ``packages`` (name → spec): paths and VCS
    entries apart, every other one made by ``entry(name, spec)``."""
    if not isinstance(packages, dict):
        raise RepoConfigError(relative, "a package section must be a table")
    result = PipfileRequirements(indexes=indexes)
    for raw_name, raw_spec in sorted(packages.items()):
        name = _name(raw_name, relative)
        spec: dict[str, Any] = raw_spec if isinstance(raw_spec, dict) else {"version": raw_spec}
        if "file" in spec:
            raise RepoConfigError(
                relative,
                f"{name}: 'file' entries are not supported here; name a version "
                "from an index, a path in the repository or a git URL",
            )
        if "path" in spec:
            result.paths.append(_local(spec, name, relative))
        elif any(kind in spec for kind in _VCS):
            result.vcs.append(_vcs(spec, name, relative))
        else:
            result.requirements.append(entry(name, spec))
    return result


def lock_requirements(text: str, relative: str) -> PipfileRequirements:
    """``Pipfile.lock`` as a hash-checked requirements list: every package
    of ``default`` and ``develop`` pinned, with its hashes and markers."""
    try:
        with parsing(relative):
            lock = json.loads(text)
    except ValueError as exc:
        raise RepoConfigError(relative, f"not valid JSON ({exc})") from exc
    if not isinstance(lock, dict):
        raise RepoConfigError(relative, "not a Pipfile.lock (expected a JSON object)")
    meta = lock.get("_meta")
    indexes = _indexes(meta.get("sources") if isinstance(meta, dict) else None, relative)

    def pinned(name: str, spec: dict[str, Any]) -> str:
        version = spec.get("version")
        if not isinstance(version, str) or not _PINNED.fullmatch(version):
            raise RepoConfigError(relative, f"{name}: not pinned to one version ({version!r})")
        hashes = spec.get("hashes") or []
        if not hashes or not all(isinstance(h, str) and _HASH.fullmatch(h) for h in hashes):
            raise RepoConfigError(relative, f"{name}: the lock gives no valid hashes")
        options = " ".join(f"--hash={h}" for h in hashes)
        markers = _marker(spec.get("markers"), name, relative)
        return f"{name}{_extras(spec, name, relative)}{version}{markers} {options}"

    # A package in both sections is installed once (develop's pin wins, as in pipenv).
    default = lock.get("default") or {}
    develop = lock.get("develop") or {}
    if not isinstance(default, dict) or not isinstance(develop, dict):
        raise RepoConfigError(relative, "'default' and 'develop' must be objects")
    return _collect({**default, **develop}, relative, indexes, pinned)


def pipfile_requirements(pipfile: dict[str, Any], relative: str) -> PipfileRequirements:
    """A Pipfile's ``[packages]`` and ``[dev-packages]`` as requirements
    for uv to resolve."""
    indexes = _indexes(pipfile.get("source"), relative)

    def wanted(name: str, spec: dict[str, Any]) -> str:
        version = str(spec.get("version", "*")).strip()
        if not _SPECIFIER.fullmatch(version):
            raise RepoConfigError(relative, f"{name}: invalid version {version!r}")
        specifier = "" if version == "*" else version.replace(" ", "")
        markers = _marker(spec.get("markers"), name, relative)
        return f"{name}{_extras(spec, name, relative)}{specifier}{markers}"

    sections = [pipfile.get("packages") or {}, pipfile.get("dev-packages") or {}]
    if not all(isinstance(section, dict) for section in sections):
        raise RepoConfigError(relative, "[packages] and [dev-packages] must be tables")
    return _collect({**sections[0], **sections[1]}, relative, indexes, wanted)


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

    @cached_property
    def locked(self) -> bool:
        return self.repo.has("Pipfile.lock")

    @cached_property
    def requirements(self) -> PipfileRequirements:
        if self.locked:
            relative = self.repo.path("Pipfile.lock")
            return lock_requirements(self.repo.read(relative), relative)
        return pipfile_requirements(self.pipfile, self.repo.path("Pipfile"))

    def _required_python(self) -> tuple[object, str]:
        """The python_version the Pipfile (else its lock) asks for, and the file."""
        requires = self.pipfile.get("requires", {})
        if isinstance(requires, dict) and "python_version" in requires:
            return requires["python_version"], self.repo.path("Pipfile")
        if self.locked:
            relative = self.repo.path("Pipfile.lock")
            try:
                with parsing(relative):
                    meta = json.loads(self.repo.read(relative)).get("_meta", {})
            except (ValueError, AttributeError):
                return None, relative  # reported when the lock is read
            requires = meta.get("requires", {}) if isinstance(meta, dict) else {}
            if isinstance(requires, dict):
                return requires.get("python_version"), relative
        return None, self.repo.path("Pipfile")

    def python_version(self) -> str | None:
        runtime_version = super().python_version()
        if runtime_version is not None:
            return runtime_version
        version, relative = self._required_python()
        if version is None:
            return None
        if not _PYTHON_VERSION.fullmatch(str(version)):
            raise RepoConfigError(relative, f"[requires] python_version {version!r}: expected 3.X")
        return str(version)

    @property
    def in_repo(self) -> bool:
        """The install reads repository files (a ``path`` entry, e.g. ``.``)."""
        return bool(self.requirements.paths)

    def _step(self) -> Step:
        """The install as data: the requirement lines and git entries
        become files the renderer writes for the build (hence in the env
        key), read from ``source``; they need no repository file."""
        requirements = self.requirements
        source = self.repo.path("Pipfile.lock" if self.locked else "Pipfile")
        return Step(
            StepKind.PIPFILE,
            {
                "source": source,
                "locked": self.locked,
                "requirements": requirements.requirements,
                "vcs": requirements.vcs,
                "paths": [[path, editable] for path, editable in requirements.paths],
                "indexes": requirements.indexes,
                "dir": self.repo.binder_dir or ".",
            },
        )

    def env_steps(self) -> list[Step]:
        steps = super().env_steps()
        return steps if self.in_repo else [*steps, self._step()]

    def repo_steps(self) -> list[Step]:
        steps = [self._step()] if self.in_repo else []
        return [*steps, *super().repo_steps()]
