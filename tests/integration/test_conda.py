"""environment.yml builds against the site's installer and channels, with a
conda channel built in the test and served on loopback (conda-forge and
micro.mamba.pm cannot be reached here, and no micromamba binary exists on
this machine, so none is faked).

Real builds (the dev cluster's base, the build account, Apptainer) show
that an unreachable installer or channel fails in one first line naming
the URL and the site setting, with no image or lock left; that the
pre-flight passes against a real channel (the build then stops at the
installer, which is not micromamba: the honest end of what runs here);
and, outside the build, py-rattler solves and installs the fixture's
environment.yml from the served channel, proving it is a conda channel
that micromamba's solver would read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from hpcbinder.config import Site
from hpcbinder.images.builder import Builder, ImageBuildError
from hpcbinder.images.store import BuildEvent
from hpcbinder.render import pipeline
from tests.condahelpers import Package, Served, make_channel, serve
from tests.conftest import free_port
from tests.integration import test_build as builds
from tests.integration.test_build import no_leftovers
from tests.repohelpers import REPOS, local_spec, make_repo, site_for_tests
from tests.storehelpers import workspace_site

#: The build tests' fixtures (a store, checkout cache and repos folder on
#: the dev cluster's base), found by pytest under these names.
dev_base = builds.dev_base
workspace = builds.workspace

CASE = "conda/site-channels"
CHANNEL = "hpcbinder-test"
PACKAGES = [
    Package("hpcbinder-probe", "1.0"),
    Package("hpcbinder-probe", "2.0"),
    Package("hpcbinder-probe-app", "1.0", ("hpcbinder-probe <2",)),
]
#: A real bzip2 tarball without bin/micromamba, where the installer should be.
NOT_MICROMAMBA = f"{CHANNEL}/noarch/{PACKAGES[0].filename}"
#: What curl says (after -sS) for a closed port and a 404.
CLOSED = "curl: (7) Failed to connect to 127.0.0.1 port"
MISSING = "curl: (22) The requested URL returned error: 404"


@pytest.fixture
def channel(tmp_path: Path) -> Iterator[Served]:
    """The test's channel (two probe versions, an app pinning the older)
    served on loopback under the name ``hpcbinder-test``."""
    make_channel(tmp_path / "served" / CHANNEL, PACKAGES)
    with serve(tmp_path / "served") as served:
        yield served


def _site(workspace: Path, **mirrors: object) -> Site:
    settings = workspace_site(workspace).model_dump()
    settings["network"]["mirrors"].update(mirrors)
    return Site.model_validate(settings)


def _failed_build(workspace: Path, site: Site) -> tuple[ImageBuildError, list[BuildEvent]]:
    """The fixture's build under ``site``, which must fail cleanly."""
    repo = make_repo(CASE, workspace / "repos" / "repo")
    repo.chmod(0o755)
    events: list[BuildEvent] = []
    prepared = pipeline.prepare(local_spec(repo), site)
    with pytest.raises(ImageBuildError) as caught:
        Builder(site).build_image(prepared, events.append)
    key = prepared.rendered.env_key
    assert Builder(site).store.lookup(key) is None
    no_leftovers(site, key)
    return caught.value, events


def _fails_with(workspace: Path, site: Site, first_line: str) -> None:
    """The failure and the failed event start with ``first_line``."""
    failure, events = _failed_build(workspace, site)
    assert failure.step == "install environment", failure.step
    assert failure.reason is not None and failure.reason.startswith(first_line), str(failure)
    assert str(failure).startswith(first_line)
    assert events[-1].phase == "failed" and events[-1].message.startswith(first_line)


@pytest.mark.slurm
@pytest.mark.apptainer
@pytest.mark.parametrize("where", ["closed-port", "404"])
def test_unreachable_installer_fails_in_one_line(
    workspace: Path, channel: Served, where: str
) -> None:
    url = (
        f"http://127.0.0.1:{free_port()}/micromamba.tar.bz2"
        if where == "closed-port"
        else f"{channel.url}/no-such-installer.tar.bz2"
    )
    site = _site(
        workspace, micromamba_url=url, conda_channels=[CHANNEL], conda_channel_alias=channel.url
    )
    _fails_with(
        workspace,
        site,
        f"hpcbinder: cannot download the conda installer from {url} "
        f"(network.mirrors.micromamba_url): {CLOSED if where == 'closed-port' else MISSING}",
    )
    assert not any("repodata" in path for path in channel.requested), channel.requested


@pytest.mark.slurm
@pytest.mark.apptainer
@pytest.mark.parametrize("where", ["closed-port", "404"])
def test_unreachable_channel_fails_in_one_line(
    workspace: Path, channel: Served, where: str
) -> None:
    """The installer downloads (a real tarball); the site's first channel
    is reached; the second is not and is named, resolved as micromamba
    would resolve it."""
    unreachable, reason = (
        (f"http://127.0.0.1:{free_port()}/conda", CLOSED)
        if where == "closed-port"
        else ("no-such-channel", MISSING)
    )
    resolved = unreachable if "://" in unreachable else f"{channel.url}/{unreachable}"
    site = _site(
        workspace,
        micromamba_url=f"{channel.url}/{NOT_MICROMAMBA}",
        conda_channels=[CHANNEL, unreachable],
        conda_channel_alias=channel.url,
    )
    _fails_with(
        workspace,
        site,
        f"hpcbinder: cannot reach the conda channel {resolved} "
        f"(network.mirrors.conda_channels): {reason}",
    )
    assert f"/{NOT_MICROMAMBA}" in channel.requested
    assert f"/{CHANNEL}/noarch/repodata.json" in channel.requested


@pytest.mark.slurm
@pytest.mark.apptainer
def test_reachable_channel_passes_the_preflight(workspace: Path, channel: Served) -> None:
    """With the installer and the channel reachable the pre-flight passes
    and the build stops where this machine ends: the installer it fetched
    is not micromamba (there is none to serve), named in one line."""
    installer = f"{channel.url}/{NOT_MICROMAMBA}"
    site = _site(
        workspace,
        micromamba_url=installer,
        conda_channels=[CHANNEL],
        conda_channel_alias=channel.url,
    )
    _fails_with(
        workspace,
        site,
        f"hpcbinder: the conda installer from {installer} (network.mirrors.micromamba_url) "
        "is not a micromamba archive: tar: bin/micromamba: Not found in archive",
    )
    assert channel.requested[:2] == [f"/{NOT_MICROMAMBA}", f"/{CHANNEL}/noarch/repodata.json"]


def test_the_served_channel_solves_the_fixtures_environment(
    tmp_path: Path, channel: Served
) -> None:
    """py-rattler (the solver library micromamba's successors share) solves
    the fixture's environment.yml against the site's channels as the build
    resolves them, picks the probe version the app pins, and installs it."""
    import rattler

    site = site_for_tests(
        tmp_path,
        network={"mirrors": {"conda_channels": [CHANNEL], "conda_channel_alias": channel.url}},
    )
    specs = yaml.safe_load((REPOS / CASE / "environment.yml").read_text())["dependencies"]
    prefix = tmp_path / "env"

    async def solve_and_install() -> dict[str, str]:
        records = await rattler.solve(
            [rattler.Channel(url) for url in site.network.mirrors.conda_channel_urls],
            specs,
            platforms=["linux-64", "noarch"],
            virtual_packages=[],
        )
        await rattler.install(records, prefix, cache_dir=tmp_path / "pkgs", show_progress=False)
        return {record.name.normalized: str(record.version) for record in records}

    assert asyncio.run(solve_and_install()) == {
        "hpcbinder-probe-app": "1.0",
        "hpcbinder-probe": "1.0",
    }
    assert (prefix / PACKAGES[0].payload).read_text() == "1.0\n"
    assert (prefix / PACKAGES[2].payload).read_text() == "1.0\n"
