"""R repositories against a CRAN-like repository made in the test and served
on loopback with the snapshot-date layout (tests/cranhelpers.py).

The build-time profile (templates/steps/r-build-profile.R) is first checked
with the host's R, in seconds: every way install.packages() only warns
stops instead, naming the package and the mirror. Then real builds on the
dev cluster: install.R's package loads in the image as a researcher, the R
kernel is offered by the Jupyter server and runs a notebook through
``hpcbinder sbatch``; a package the mirror lacks fails the build with no
image; a DESCRIPTION-only repository gets its Imports from the mirror; an
R version picks the base that declares it.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpcbinder.buildpacks.r import DEFAULT_SNAPSHOT_AGE
from hpcbinder.config import Site
from hpcbinder.images.builder import Builder, ImageBuildError
from hpcbinder.images.store import BuildEvent
from hpcbinder.render import pipeline
from hpcbinder.render.templating import resource_dir
from tests.conftest import SHARED_SCRATCH, SITE_BIN, as_account, free_port, running_build_server
from tests.cranhelpers import RPackage, build_snapshot, r_available, serving
from tests.integration.test_build import (  # noqa: F401 (dev_base, workspace: fixtures)
    build,
    dev_base,
    no_leftovers,
    run_verify,
    workspace,
)
from tests.integration.test_python_versions import (  # noqa: F401 (fixtures)
    py313_base,
    two_bases,
)
from tests.repohelpers import local_spec, make_repo
from tests.storehelpers import workspace_site

SNAPSHOT = "2024-01-15"
#: The snapshot a repository without a date in runtime.txt installs from.
DEFAULT_SNAPSHOT = (datetime.date.today() - DEFAULT_SNAPSHOT_AGE).isoformat()
TRIXIE_SNAPSHOT = "2025-06-01"
PROFILE = resource_dir("templates") / "steps" / "r-build-profile.R"
SETTING = "network.mirrors.cran; date from runtime.txt"
PACKAGES = [
    RPackage("hpcbinderdemo", greeting="hello from the test mirror"),
    RPackage("hpcbinderneedy", imports=("hpcbindermissingdep",)),
    RPackage("hpcbinderbroken", broken=True),
]


@pytest.fixture(scope="module")
def cran() -> Iterator[str]:
    """The test mirror's URL (network.mirrors.cran), with its snapshots."""
    if not r_available():
        message = "no R on this host (slurm/devcluster installs r-base-core)"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    root = SHARED_SCRATCH / f"cran-{uuid.uuid4().hex[:8]}"
    for date in {SNAPSHOT, DEFAULT_SNAPSHOT, TRIXIE_SNAPSHOT}:
        build_snapshot(root, date, PACKAGES)
    with serving(root) as url:
        yield url
    subprocess.run(["rm", "-rf", str(root)], check=False)


# --- the build profile with the host's R -------------------------------------


def host_install(cran: str, tmp_path: Path, *expressions: str) -> subprocess.CompletedProcess[str]:
    """``expressions`` run by the host's Rscript as a build runs install.R."""
    library = tmp_path / "library"
    library.mkdir(exist_ok=True)
    snapshot = f"{cran}/{SNAPSHOT}"
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "R_LIBS_USER": str(library),
        "R_PROFILE_USER": str(PROFILE),
        "HPCBINDER_CRAN": snapshot,
        "HPCBINDER_CRAN_SETTING": SETTING,
    }
    setup = f'options(repos = c(CRAN = "{snapshot}")); .libPaths("{library}")'
    argv = ["Rscript", "-e", setup]
    for expression in expressions:
        argv += ["-e", expression]
    return subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)


def hpcbinder_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("hpcbinder: ")]


def test_a_package_on_the_mirror_installs_quietly(cran: str, tmp_path: Path) -> None:
    done = host_install(
        cran, tmp_path, 'install.packages("hpcbinderdemo")', "cat(hpcbinderdemo::hello())"
    )
    assert done.returncode == 0, done.stderr
    assert hpcbinder_lines(done) == []


@pytest.mark.parametrize(
    ("packages", "expected"),
    [
        # Not on the mirror (R only warns: "package ... is not available").
        ('"hpcbindernosuch"', ["'hpcbindernosuch' could not be installed from {url}: package "]),
        # On the mirror, its dependency is not: the dependency is named first.
        (
            '"hpcbinderneedy"',
            [
                "'hpcbindermissingdep' could not be installed from {url}: dependency ",
                "'hpcbinderneedy' could not be installed from {url}: installation of package ",
            ],
        ),
        # Fails to install (its R code does not parse).
        ('"hpcbinderbroken"', ["'hpcbinderbroken' could not be installed from {url}: "]),
        # One of two: the other is installed, the build still fails.
        ('c("hpcbinderdemo", "hpcbindernosuch")', ["'hpcbindernosuch' could not be installed"]),
    ],
)
def test_a_package_that_cannot_be_installed_stops_the_build(
    cran: str, tmp_path: Path, packages: str, expected: list[str]
) -> None:
    done = host_install(cran, tmp_path, f"install.packages({packages})", 'cat("went on\\n")')
    assert done.returncode == 1, done.stderr
    assert "went on" not in done.stdout
    url = f"{cran}/{SNAPSHOT} ({SETTING})"
    lines = hpcbinder_lines(done)
    assert len(lines) == len(expected), done.stderr
    for line, start in zip(lines, expected, strict=True):
        assert line.startswith("hpcbinder: R package " + start.format(url=url)), line


def test_a_local_package_folder_that_fails_stops_the_build(cran: str, tmp_path: Path) -> None:
    """install.packages(".", repos = NULL), as some install.R files do."""
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "DESCRIPTION").write_text(
        "Package: hpcbinderlocal\nVersion: 0.1\nImports: hpcbindernosuch\n"
    )
    done = host_install(cran, tmp_path, 'install.packages("pkg", repos = NULL, type = "source")')
    assert done.returncode == 1
    assert hpcbinder_lines(done)[0].startswith(
        "hpcbinder: R package 'hpcbinderlocal' could not be installed from local files: "
    ), done.stderr


def test_install_r_may_still_handle_a_failure_itself(cran: str, tmp_path: Path) -> None:
    """An install.R that catches the error on purpose (an optional package) goes on."""
    done = host_install(
        cran,
        tmp_path,
        'tryCatch(install.packages("hpcbindernosuch"), error = function(e) cat("optional\\n"))',
    )
    assert done.returncode == 0 and "optional" in done.stdout, done.stderr


# --- real builds on the dev cluster -------------------------------------------


def r_site(root: Path, cran: str, **changes: object) -> Site:
    settings = workspace_site(root).model_dump()
    settings["network"]["mirrors"]["cran"] = cran
    settings.update(changes)
    return Site.model_validate(settings)


@pytest.mark.slurm
@pytest.mark.apptainer
def test_install_r_from_the_mirror_runs_in_servers_and_batch(
    workspace: Path,  # noqa: F811 (the fixture)
    cran: str,
) -> None:
    repo = make_repo("r/mirror-install-r", workspace / "repos" / "repo")
    repo.chmod(0o755)
    site = r_site(workspace, cran)
    record, events = build(site, repo)
    assert events[-1].phase == "ready"
    verified = run_verify(record, repo)
    assert verified.returncode == 0, verified.stdout + verified.stderr

    # The notebook (kernel "ir") through hpcbinder sbatch, as the researcher;
    # the build server finds the image just built (same site, same key).
    site_file = workspace / "site.yaml"
    site_file.write_text(site.model_dump_json())
    output_dir = Path("/home/alice") / "hpcbinder-runs" / f"test-r-{uuid.uuid4().hex[:8]}"
    try:
        with running_build_server(site_file):
            argv = [str(SITE_BIN / "hpcbinder"), "--site", str(site_file), "sbatch"]
            argv += [local_spec(repo), "--run", "analysis.ipynb", "-p", "who", "batch"]
            argv += ["--output-dir", str(output_dir), "--wait"]
            ran = as_account("alice", argv, timeout=600)
        assert ran.returncode == 0, ran.stdout + ran.stderr
        job_id = ran.stdout.splitlines()[0]
        task = output_dir / f"job-{job_id}" / "task-0"
        cells = json.loads((task / "analysis.ipynb").read_text())["cells"]
        printed = "".join("".join(o.get("text", "")) for c in cells for o in c.get("outputs", []))
        assert "hello from the test mirror batch 4" in printed, printed
        assert (task / "work" / "who.txt").read_text() == "batch\n"
    finally:
        subprocess.run(["scancel", "--user=alice"], check=False)
        subprocess.run(["rm", "-rf", str(output_dir)], check=False)


@pytest.mark.slurm
@pytest.mark.apptainer
def test_a_package_the_mirror_lacks_fails_the_build(
    workspace: Path,  # noqa: F811 (the fixture)
    cran: str,
) -> None:
    repo = make_repo("r/mirror-missing-package", workspace / "repos" / "repo")
    site = r_site(workspace, cran)
    events: list[BuildEvent] = []
    prepared = pipeline.prepare(local_spec(repo), site)
    with pytest.raises(ImageBuildError) as caught:
        Builder(site).build_image(prepared, events.append)
    reason = (
        "hpcbinder: R package 'hpcbindernosuch' could not be installed from "
        f"{cran}/{SNAPSHOT} (network.mirrors.cran; date from runtime.txt): package "
    )
    assert str(caught.value).startswith(reason), str(caught.value)
    assert events[-1].phase == "failed" and events[-1].message.startswith(reason)
    key = prepared.rendered.env_key
    assert Builder(site).store.lookup(key) is None
    no_leftovers(site, key)


@pytest.mark.slurm
@pytest.mark.apptainer
def test_an_unreachable_mirror_fails_before_any_install_naming_it(
    workspace: Path,  # noqa: F811 (the fixture)
) -> None:
    """No CRAN at the site's URL: the build stops before R is installed, in
    one line naming the URL and the setting (it used to fail much later with
    "R package 'Couldn' could not be installed", curl's text read as a
    package name)."""
    repo = make_repo("r/mirror-missing-package", workspace / "repos" / "repo")
    nowhere = f"http://127.0.0.1:{free_port()}/cran"
    site = r_site(workspace, nowhere)
    events: list[BuildEvent] = []
    prepared = pipeline.prepare(local_spec(repo), site)
    with pytest.raises(ImageBuildError) as caught:
        Builder(site).build_image(prepared, events.append)
    reason = f"hpcbinder: cannot reach the CRAN mirror {nowhere}/{SNAPSHOT} ({SETTING}): curl: "
    assert str(caught.value).startswith(reason), str(caught.value)
    logged = "\n".join(event.message for event in events)
    assert "r-base-core" not in logged and "could not be installed" not in logged, logged
    no_leftovers(site, prepared.rendered.env_key)


@pytest.mark.slurm
@pytest.mark.apptainer
def test_a_description_only_repository_gets_its_imports_from_the_mirror(
    workspace: Path,  # noqa: F811 (the fixture)
    cran: str,
) -> None:
    repo = make_repo("r/description-imports", workspace / "repos" / "repo")
    repo.chmod(0o755)
    record, events = build(r_site(workspace, cran), repo)
    assert events[-1].phase == "ready"
    verified = run_verify(record, repo)
    assert verified.returncode == 0, verified.stdout + verified.stderr


@pytest.mark.slurm
@pytest.mark.apptainer
def test_a_description_whose_import_the_mirror_lacks_fails_naming_it(
    workspace: Path,  # noqa: F811 (the fixture)
    cran: str,
) -> None:
    """remotes skips an Import the mirror does not have, silently: the build names it."""
    repo = make_repo("r/description-imports", workspace / "repos" / "repo")
    description = repo / "DESCRIPTION"
    description.write_text(description.read_text().replace("hpcbinderdemo", "hpcbindernosuch"))
    subprocess.run(["git", "-C", str(repo), "commit", "-qam", "missing import"], check=True)
    site = r_site(workspace, cran)
    with pytest.raises(ImageBuildError) as caught:
        build(site, repo)
    assert str(caught.value).startswith(
        f"hpcbinder: R package 'hpcbindernosuch' could not be installed from {cran}/"
        f"{DEFAULT_SNAPSHOT} (network.mirrors.cran; no date in runtime.txt: 2 days before "
        "the build): not on the mirror"
    ), str(caught.value)


@pytest.mark.slurm
@pytest.mark.apptainer
def test_an_r_version_picks_the_base_that_declares_it(
    two_bases: Path,  # noqa: F811 (the fixture)
    cran: str,
) -> None:
    """runtime.txt r-4.5-DATE on the dev cluster's two bases lands on trixie's R 4.5."""
    repo = make_repo("r/version-exact", two_bases / "repos" / "repo")
    (repo / "runtime.txt").write_text(f"r-4.5-{TRIXIE_SNAPSHOT}\n")
    (repo / "verify").write_text(
        "Rscript -e 'library(hpcbinderdemo); stopifnot(getRversion() >= \"4.5\")'\n"
    )
    subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(repo), "commit", "-qm", "trixie date"], check=True)
    repo.chmod(0o755)
    bases = {
        "default": {"python": "3.11", "source": "bookworm", "r": "4.2"},
        "py313": {"python": "3.13", "source": "trixie", "r": "4.5"},
    }
    record, events = build(r_site(two_bases, cran, bases=bases), repo)
    assert events[-1].phase == "ready"
    assert record.meta.base == "py313", record.meta
    verified = run_verify(record, repo)
    assert verified.returncode == 0, verified.stdout + verified.stderr
