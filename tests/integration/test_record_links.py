"""mybinder.org-style links of every provider, built through the build server.

Each archive service and the gist host is a loopback stand-in speaking its
real API (:mod:`tests.recordservices`); the build server, as the build
account, resolves and fetches each link's record within the site's policy
and bounds and builds it. Every record holds the same tiny repository
without environment files, so all links share one image: one build, then
store hits. A batch job then runs the record's script in that image from
the checkout the build server keeps, as a launch would place it.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import SITE_BIN, as_account, running_build_server
from tests.recordservices import record_services
from tests.storehelpers import build_workspace, dev_cluster_base, workspace_site

pytestmark = [pytest.mark.slurm, pytest.mark.apptainer]


def test_every_providers_link_builds_and_runs_from_its_loopback_service() -> None:
    with (
        build_workspace("records", dev_cluster_base()) as workspace,
        record_services(workspace / "services") as services,
    ):
        settings = workspace_site(workspace).model_dump(mode="json")
        settings["repos"]["protocols"] = ["https", "http", "file"]
        settings["repos"]["records"] = services.records_setting()
        site_file = workspace / "site.yaml"
        site_file.write_text(json.dumps(settings))
        site_file.chmod(0o644)
        cli = [str(SITE_BIN / "hpcbinder"), "--site", str(site_file)]
        images = {}
        with running_build_server(site_file):
            for name, spec in services.specs().items():
                built = as_account("alice", [*cli, "build", spec], timeout=900)
                assert built.returncode == 0, f"{name}: {built.stderr}"
                runs = [x for x in built.stderr.splitlines() if x.startswith("run it with: ")]
                assert runs, f"{name}: {built.stderr}"
                images[name] = runs[0]
            ran = as_account(
                "alice",
                [*cli, "sbatch", services.specs()["doi"], "--run", "hello.py", "--wait"],
                timeout=600,
            )
        assert ran.returncode == 0, ran.stdout + ran.stderr
        assert "hello from an archived record" in ran.stdout + ran.stderr
        # One environment: every link's build is the same image.
        assert len(set(images.values())) == 1, images
        # The build server kept a checkout of each link's record, named by its
        # version (doi/ of the concept DOI and zenodo/ of its latest version
        # name one), none with a .git but the gist's.
        checkouts = [p.parent for p in (workspace / "checkouts").glob("*/*/hello.py")]
        assert len(checkouts) == 8, checkouts
        assert len({c.name for c in checkouts}) == 7, checkouts
        assert sum((c / ".git").exists() for c in checkouts) == 1
        # Every service was asked through its own API.
        for service in (services.zenodo, services.figshare, services.dataverse):
            assert any("/api" in r or "/v2/" in r for r in service.requests), service.name
        assert any(r.startswith("GET /hsapi/resource/") for r in services.hydroshare.requests)
        assert any("package_show" in r for r in services.ckan.requests)
        assert any(r.startswith("POST /api/1/vault/") for r in services.swh.requests)


def test_a_record_over_the_sites_bound_is_refused_by_the_build_server() -> None:
    """The build server's own site bounds hold for a researcher's link."""
    with (
        build_workspace("records-bound", dev_cluster_base()) as workspace,
        record_services(workspace / "services") as services,
    ):
        settings = workspace_site(workspace).model_dump(mode="json")
        settings["repos"].update(
            protocols=["http"], records=services.records_setting(), max_fetch_files=1
        )
        site_file = workspace / "site.yaml"
        site_file.write_text(json.dumps(settings))
        site_file.chmod(0o644)
        cli = [str(SITE_BIN / "hpcbinder"), "--site", str(site_file)]
        with running_build_server(site_file):
            built = as_account("alice", [*cli, "build", services.specs()["dataverse"]], timeout=300)
        assert built.returncode != 0
        assert "repos.max_fetch_files" in built.stderr, built.stderr
        assert not list((workspace / "checkouts").rglob("hello.py"))
