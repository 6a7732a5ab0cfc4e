"""BuildPlan + site → Apptainer definition text and env key. The only place
that writes definitions.

The definition names repository files by paths relative to the checkout
(the builder runs ``apptainer build`` there), so the same environment gives
the same text whatever commit or cache directory it came from. The env key
hashes that text, the files the renderer generated for the build and the
exact bytes of exactly the repository files the build reads: a commit that
changes only notebooks keeps its key and its image.

A definition holds the templates' text and single-line tokens only: every
value passes the renderer's one-line rule (:mod:`templating`), was
validated by a full-match pattern (buildpacks, site file) and is
shell-quoted where it reaches shell. Anything else a repository supplies
reaches the build as a file (:mod:`buildfiles`). As a last guard the
rendered text must open exactly the sections the template wrote, by
Apptainer's own rule, or rendering fails.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from packaging.specifiers import SpecifierSet
from packaging.version import Version

from hpcbinder import textpatterns
from hpcbinder.buildpacks.base import ENV_FILES_DIR, REPO_DIR, BuildPlan, DockerRecipe, StepKind
from hpcbinder.buildpacks.conda import CONDA_ENV
from hpcbinder.config import Site, SiteConfigError
from hpcbinder.errors import RepoConfigError
from hpcbinder.render import buildfiles, templating
from hpcbinder.seams.apptainer import Bind

#: Changes whenever the templates change what a build does.
RENDERER_VERSION = "2"
#: The Python environment of every site base: Jupyter server and default kernel.
KERNEL_PREFIX = "/opt/hpcbinder/python"
#: A repository's own Python packages (a venv that sees the base's packages).
KERNEL_ENV = "/opt/hpcbinder/kernel"
CA_IN_IMAGE = "/etc/hpcbinder/ca-bundle.crt"
#: Where builders bind the build's download cache (site: build.cache_dir;
#: one per repository, see build.cache_dir).
BUILD_CACHE_IN_IMAGE = "/opt/hpcbinder/build-cache"
#: Where an overlay build sees the checkout, the host's files (CA bundle) and its script.
CONTEXT_IN_IMAGE = "/mnt/hpcbinder-context"
HOST_FILES_IN_IMAGE = "/mnt/hpcbinder-files"
OVERLAY_SCRIPT_IN_IMAGE = "/mnt/hpcbinder-build.sh"
JULIA_VERSION = "1.10.5"
#: The image's runscript, in a full build (%runscript) and an overlay alike.
RUNSCRIPT_IN_IMAGE = "/.singularity.d/runscript"

_SAFE_PATH = textpatterns.compile(r"/?[A-Za-z0-9_.+-]+(?:/[A-Za-z0-9_.+-]+)*/?")
_DOCKER_REF = textpatterns.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@-]*")


@dataclass(frozen=True)
class BaseChoice:
    """The image a repository builds on: a site base, or a Dockerfile's FROM."""

    name: str
    python: str
    bootstrap: str  # "localimage" or "docker"
    source: str  # a SIF path, or a docker reference
    warnings: list[str] = field(default_factory=list)
    #: The R version the site declares for this base (bases.NAME.r), if any.
    r: str | None = None


@dataclass(frozen=True)
class Rendered:
    """A definition ready to build, and the key its image is stored under.

    ``overlay_script`` is the same build as a script for an overlay on the
    base (None where the image cannot be an overlay: Dockerfiles).
    ``entrypoint`` is what every command run in the image goes through
    (see :func:`entrypoint`).
    """

    definition: str
    env_key: str
    base: BaseChoice
    warnings: list[str]
    overlay_script: str | None = None
    entrypoint: list[str] = field(default_factory=list)
    #: Files the build reads from the generated folder (name → text; see buildfiles).
    build_files: dict[str, str] = field(default_factory=dict)


def _version_number(version: str) -> int:
    """``X.Y`` (or ``X.Y.Z``) as one number, to order versions and measure
    how far apart they are (text order puts 3.10 before 3.9)."""
    major, minor = version.split(".")[:2]
    return int(major) * 100 + int(minor)


def _site_base(site: Site, name: str, warnings: list[str] | None = None) -> BaseChoice:
    image = _safe_site_path(str(site.base_image_path(name)), "image_store")
    base = site.bases[name]
    return BaseChoice(name, base.python, "localimage", image, warnings or [], base.r)


def _base_by_version(
    site: Site,
    declared: dict[str, str],
    wanted: str,
    *,
    language: str,
    source: str,
    policy: str,
    exact_only: bool,
) -> BaseChoice:
    """The base whose ``declared`` version of ``language`` is ``wanted`` (the
    default base first); else the nearest (the newer of two as near), with a
    warning, or under the ``exact`` policy an error naming ``source`` and the
    site setting ``policy``. One rule for Python and R, so both behave alike."""
    exact = sorted(name for name, version in declared.items() if version == wanted)
    if exact:
        return _site_base(site, site.default_base if site.default_base in exact else exact[0])
    offered = ", ".join(sorted(set(declared.values()), key=_version_number))
    if exact_only:
        raise RepoConfigError(
            source,
            f"{language} {wanted} is not offered by this site "
            f"(it offers {offered}; {policy}: exact)",
        )
    nearest = min(
        sorted(declared),
        key=lambda name: (
            abs(_version_number(declared[name]) - _version_number(wanted)),
            -_version_number(declared[name]),
            name != site.default_base,
        ),
    )
    label = declared[nearest] if language == "Python" else f"{declared[nearest]} (base {nearest})"
    return _site_base(
        site,
        nearest,
        [f"{language} {wanted} is not offered by this site; using the nearest, {label}"],
    )


def _choose_r_base(site: Site, wanted: str) -> BaseChoice:
    """The base whose declared R (bases.NAME.r) runtime.txt asks for, by
    the site's r_policy; the default base where no base declares one."""
    declared = {name: base.r for name, base in site.bases.items() if base.r is not None}
    if not declared:
        return _site_base(
            site,
            site.default_base,
            [
                f"runtime.txt asks for R {wanted}; this site's bases declare no R version "
                "(site: bases.NAME.r), so the default base's Debian R is used"
            ],
        )
    return _base_by_version(
        site,
        declared,
        wanted,
        language="R",
        source="runtime.txt",
        policy="r_policy",
        exact_only=site.r_policy == "exact",
    )


def choose_base(site: Site, plan: BuildPlan) -> BaseChoice:
    """The base whose R or Python the repository asks for, by the site's policy."""
    if plan.r_version is not None:
        return _choose_r_base(site, plan.r_version)
    pythons = {name: base.python for name, base in site.bases.items()}
    wanted = plan.python_version
    if wanted is None or wanted == "3":
        if plan.python_requires:
            return _base_by_requires_python(site, plan.python_requires)
        return _site_base(site, site.default_base)
    return _base_by_version(
        site,
        pythons,
        wanted,
        language="Python",
        source="runtime.txt" if plan.buildpack != "pipfile" else "Pipfile",
        policy="python_policy",
        exact_only=site.python_policy == "exact",
    )


def _base_by_requires_python(site: Site, requires: str) -> BaseChoice:
    """The default base if its Python meets pyproject.toml's requires-python,
    else the newest base that does, else (under ``nearest``) the default."""
    spec = SpecifierSet(requires)
    default = site.bases[site.default_base]
    if Version(default.python) in spec:
        return _site_base(site, site.default_base)
    fits = sorted(
        (n for n, b in site.bases.items() if Version(b.python) in spec),
        key=lambda n: _version_number(site.bases[n].python),
    )
    if fits:
        return _site_base(site, fits[-1])
    offered = ", ".join(sorted({b.python for b in site.bases.values()}, key=_version_number))
    message = (
        f"pyproject.toml requires-python {requires!r} matches no Python of this site ({offered})"
    )
    if site.python_policy == "exact":
        raise RepoConfigError("pyproject.toml", message + " (python_policy: exact)")
    return _site_base(site, site.default_base, [f"{message}; using {default.python}"])


def _safe_path(value: str, what: str) -> str:
    """``value`` (a path of the repository's file ``what``) as definitions may hold it."""
    if not _is_safe_path(value):
        raise RepoConfigError(
            what, f"path {value[:80]!r} has characters this site does not accept in definitions"
        )
    return value


def _safe_site_path(value: str, setting: str) -> str:
    """``value`` (from the site file's ``setting``) as definitions may hold
    it: a bad one is the sysadmin's to fix, not the repository's."""
    if not _is_safe_path(value):
        raise SiteConfigError(
            "site file",
            [f"{setting}: path {value[:80]!r} has characters definitions cannot hold"],
        )
    return value


def _is_safe_path(value: str) -> bool:
    return bool(_SAFE_PATH.fullmatch(value)) and ".." not in value.split("/")


def sections(text: str) -> list[str]:
    """The sections Apptainer reads in ``text``, by its own rule
    (pkg/build/types/parser/deffile.go): lines end at ``\\n`` only; a line
    whose first word starts with ``%`` opens a section, named by that word
    without all its leading ``%``, in lower case (``%%SETUP`` is ``setup``).
    Words are split at Python's whitespace, which holds all of Go's
    (``unicode.IsSpace``, what Apptainer splits at) and more: this finds
    every section Apptainer would. A scan, linear in the text."""
    found = []
    for line in text.split("\n"):
        words = line.split(None, 1)
        if words and words[0].startswith("%"):
            found.append(words[0].lstrip("%").lower())
    return found


def _check_sections(text: str, expected: list[str]) -> None:
    found = sections(text)
    if found != expected:
        raise RepoConfigError(
            "(definition)",
            f"a value would have changed the definition's sections ({found} instead of {expected})",
        )


def env_key(
    definition: str,
    plan: BuildPlan,
    checkout: Path,
    tree_id: str | None,
    base_identity: str,
    build_files: dict[str, str],
) -> str:
    """Hash of everything the build reads, and of the entrypoint its image
    records (only where there is one: images without keep their keys).

    Files are hashed as the exact bytes the build reads: any difference (a
    CRLF ``start``, trailing space) is another environment, so no
    repository can claim the key of another whose files differ."""
    digest = hashlib.sha256()
    header: dict[str, object] = {
        "renderer": RENDERER_VERSION,
        "base": base_identity,
        "tree": tree_id if plan.reads_whole_repo else None,
    }
    if entry := entrypoint(plan):
        header["entrypoint"] = entry
    digest.update(json.dumps(header, sort_keys=True).encode())
    digest.update(b"\0definition\0" + definition.encode())
    for relative in plan.env_files:
        content = (checkout / relative).read_bytes()
        digest.update(f"\0file\0{len(content)}\0{relative}\0".encode() + content)
    for name, text in sorted(build_files.items()):
        content = text.encode()
        digest.update(f"\0generated\0{len(content)}\0{name}\0".encode() + content)
    return digest.hexdigest()[:32]


def base_identity(site: Site, base: BaseChoice) -> str:
    """What identifies the base image: its site settings and the image
    itself. A site base is known by the digest its build recorded
    (:func:`recorded_digest`), so moving ``image_store`` (the same file at
    another path) keeps every key and download cache, while a rebuilt base
    changes every key built on it; another local image by its path and
    stat, which a rebuild changes too."""
    parts = [base.bootstrap]
    if base.name in site.bases:
        # Not ``r``: a declaration the choice reads (and R builds check in
        # their text); declaring it does not rebuild every image.
        parts.append(site.bases[base.name].model_dump_json(exclude={"r"}))
    digest = recorded_digest(base)
    if digest is not None:
        return "|".join([*parts, digest])
    parts.append(base.source)
    image = Path(base.source)
    if base.bootstrap == "localimage" and image.is_file():
        stat = image.stat()
        parts.append(f"{stat.st_size}:{stat.st_mtime_ns}")
    return "|".join(parts)


_SHA256 = textpatterns.compile(r"sha256:[0-9a-f]{64}")


def recorded_digest(base: BaseChoice) -> str | None:
    """``sha256:...`` of a local base image, as its build recorded it in the
    record beside the image file the path leads to (``bases/NAME-TIME.json``,
    written by the build account with the image); None where there is none
    (a base built before digests were recorded, an image from elsewhere).
    Read, not computed: hashing a 200 MB image on every prepare would cost
    more than the rest of it."""
    if base.bootstrap != "localimage":
        return None
    try:
        record = json.loads(Path(base.source).resolve().with_suffix(".json").read_text())
    except (OSError, ValueError):
        return None
    digest = record.get("sha256") if isinstance(record, dict) else None
    return digest if isinstance(digest, str) and _SHA256.fullmatch(digest) else None


def _build_context(site: Site, *, generated: bool = True) -> dict[str, object]:
    """Values every definition template uses: the site's network and paths;
    ``generated``: the build reads a folder of generated files (a
    repository's build; a site base reads none)."""
    network = site.network
    ca_bundle = network.ca_bundle
    build_cache = BUILD_CACHE_IN_IMAGE if site.build.cache_dir else None
    return {
        "ca_bundle": _safe_site_path(str(ca_bundle), "network.ca_bundle") if ca_bundle else None,
        "ca_in_image": CA_IN_IMAGE,
        "build_cache": build_cache,
        # Bind targets, which a SIF build's %setup makes (a bind needs one).
        "build_mounts": [
            *([build_cache] if build_cache else []),
            *([buildfiles.GENERATED_IN_IMAGE] if generated else []),
        ],
        "generated": buildfiles.template_paths(),
        "network": network,
        "kernel_prefix": KERNEL_PREFIX,
        "kernel_env": KERNEL_ENV,
        "repo_dir": REPO_DIR,
        "env_dir": ENV_FILES_DIR,
        "conda_env": CONDA_ENV,
        "julia_version": JULIA_VERSION,
    }


def _sections(has_files: bool, setup: bool) -> list[str]:
    """The sections the definition templates write, in order."""
    return [
        "labels",
        *(["files"] if has_files else []),
        *(["setup"] if setup else []),
        "environment",
        "post",
        "runscript",
    ]


def _repo_files(plan: BuildPlan) -> list[tuple[str, str]]:
    """(checkout-relative source, target in the image) for the build."""
    files = [(_safe_path(f, f), f"{ENV_FILES_DIR}/{f}") for f in plan.env_files]
    if plan.reads_whole_repo:
        files.append((".", REPO_DIR))
    return files


def overlay_host_binds(site: Site) -> list[Bind]:
    """The host files an overlay build copies in, in the order
    overlay.sh.j2 numbers them."""
    ca_bundle = site.network.ca_bundle
    return [Bind(str(ca_bundle), f"{HOST_FILES_IN_IMAGE}/0", read_only=True)] if ca_bundle else []


def _overlay_script(plan: BuildPlan, site: Site, base: BaseChoice) -> str:
    context = _build_context(site)
    return templating.render_text(
        "templates",
        "overlay.sh.j2",
        plan=plan,
        base=base,
        files=_repo_files(plan),
        host_files=[CA_IN_IMAGE] if context["ca_bundle"] else [],
        context_dir=CONTEXT_IN_IMAGE,
        host_files_dir=HOST_FILES_IN_IMAGE,
        **context,
    )


def _repo_definition(plan: BuildPlan, site: Site, base: BaseChoice) -> tuple[str, list[str]]:
    files = _repo_files(plan)
    context = _build_context(site)
    text = templating.render_text(
        "templates", "repo.def.j2", plan=plan, base=base, files=files, **context
    )
    return text, _sections(bool(files or context["ca_bundle"]), bool(context["build_mounts"]))


def map_from_image(site: Site, image: str, relative: str) -> BaseChoice:
    """The bootstrap for a Dockerfile's FROM, through the site's table."""
    target = site.dockerfiles.from_map.get(image)
    if target is None:
        if not site.dockerfiles.allow_unmapped:
            raise RepoConfigError(
                relative,
                f"FROM {image}: this site builds only from the images in its dockerfiles.from_map",
            )
        target = f"docker://{image}"
    if target.startswith("base:"):
        name = target.removeprefix("base:")
        if name not in site.bases:
            raise RepoConfigError(relative, f"FROM {image} maps to unknown base {name!r}")
        path = _safe_site_path(str(site.base_image_path(name)), "image_store")
        return BaseChoice(name, site.bases[name].python, "localimage", path)
    if target.startswith("docker://"):
        reference = target.removeprefix("docker://")
        if not _DOCKER_REF.fullmatch(reference):
            raise RepoConfigError(relative, f"FROM {image}: invalid image reference {reference!r}")
        return BaseChoice(target, "", "docker", reference)
    return BaseChoice(target, "", "localimage", _safe_site_path(target, "dockerfiles.from_map"))


def _dockerfile_definition(
    plan: BuildPlan, recipe: DockerRecipe, site: Site, base: BaseChoice | None = None
) -> tuple[str, list[str], BaseChoice]:
    relative = recipe.file
    base = base or map_from_image(site, recipe.from_image, relative)
    files = [(_safe_path(src, relative), _safe_path(dst, relative)) for src, dst in recipe.files]
    context = _build_context(site)
    text = templating.render_text(
        "templates",
        "dockerfile.def.j2",
        plan=plan,
        base=base,
        files=files,
        recipe=recipe,
        **context,
    )
    return text, _sections(bool(files or context["ca_bundle"]), bool(context["build_mounts"])), base


def base_packages(hub_major: int) -> list[str]:
    """What every base installs into its Python: the single-user server that
    matches the hub's major version, what batchspawner needs in the job, and
    what batch jobs run notebooks with."""
    return [
        f"jupyterhub>={hub_major},<{hub_major + 1}",
        "batchspawner>=1.3,<2",
        "jupyterlab>=4,<5",
        "notebook>=7,<8",
        "ipykernel>=6",
        # Installs a repository's requirements several times faster than pip.
        "uv>=0.5",
        # Batch mode executes notebooks with parameters (hpcbinder sbatch).
        "papermill>=2.6,<3",
        # The server's memory and CPU against the job's allocation, in JupyterLab.
        "jupyter-resource-usage>=1,<2",
    ]


def render_base(site: Site, name: str, hub_major: int) -> str:
    """The definition of site base image ``name``."""
    base = site.bases[name]
    if base.bootstrap == "debootstrap" and base.mirror is None:
        raise RepoConfigError("site", f"bases.{name}.mirror: required for debootstrap")
    context = _build_context(site, generated=False)
    text = templating.render_text(
        "templates",
        "base.def.j2",
        base=base,
        base_name=name,
        packages=base_packages(hub_major),
        **context,
    )
    expected = [*_sections(bool(context["ca_bundle"]), bool(context["build_mounts"])), "test"]
    _check_sections(text, expected)
    return text


#: Steps that install Debian packages. dpkg renames directories, which a kernel
#: overlay in a user namespace refuses (EXDEV): such builds are full SIF builds.
_DPKG_STEPS = frozenset({StepKind.R_SETUP})


def _runs_dpkg(plan: BuildPlan) -> bool:
    steps = [*plan.env_steps, *plan.repo_steps]
    return bool(plan.apt_packages) or any(step.kind in _DPKG_STEPS for step in steps)


def entrypoint(plan: BuildPlan) -> list[str]:
    """What every command in the image (the Jupyter server, a batch run)
    runs through, as repo2docker runs ``start CMD ARGS...``: for a Nix
    repository the runscript (nix-shell, then start inside it), else the
    repository's ``start``; nothing for a Dockerfile (whose ENTRYPOINT the
    runscript keeps) or where there is neither."""
    if plan.dockerfile is not None:
        return []
    if plan.buildpack == "nix":
        return [RUNSCRIPT_IN_IMAGE]
    return [_safe_path(plan.start, "start")] if plan.start else []


def _definition(
    plan: BuildPlan, site: Site, base: BaseChoice | None = None
) -> tuple[str, list[str], BaseChoice]:
    """The definition text, its expected sections and its base (``base``:
    in place of the one the plan chooses)."""
    if plan.dockerfile is not None:
        return _dockerfile_definition(plan, plan.dockerfile, site, base)
    base = base or choose_base(site, plan)
    text, expected = _repo_definition(plan, site, base)
    return text, expected, base


def render_definition(
    plan: BuildPlan, site: Site, checkout: Path, tree_id: str | None = None
) -> Rendered:
    """The definition for ``plan`` on this site, and its env key.

    The key hashes the definition as it reads with the base image named by
    its digest rather than its path (where there is one), so that the same
    environment on the same base keeps its key wherever the store is."""
    text, expected, base = _definition(plan, site)
    _check_sections(text, expected)
    files = buildfiles.build_files(plan)
    digest = recorded_digest(base)
    keyed = text if digest is None else _definition(plan, site, replace(base, source=digest))[0]
    key = env_key(keyed, plan, checkout, tree_id, base_identity(site, base), files)
    overlay = None
    if plan.dockerfile is None and not _runs_dpkg(plan):
        overlay = _overlay_script(plan, site, base)
        _check_sections(overlay, [])
    warnings = [*plan.warnings, *base.warnings]
    return Rendered(text, key, base, warnings, overlay, entrypoint(plan), files)
