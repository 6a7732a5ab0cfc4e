"""A record's link built by the build server and run as a batch job.

Every provider's link is built and launched end to end, from its loopback
stand-in (:mod:`tests.recordservices`), through the Binder service and the
build server, by tests/e2e/test_record_launch.py; each provider's resolve,
fetch and checkout against its stand-in are unit tests
(tests/unit/test_record_providers.py). What is left here is what neither
does: the CLI's build through the build server, as the build account,
within the site's policy and bounds, and a batch job running the record's
script in that image from the checkout the build server keeps, as a launch
would place it.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import SITE_BIN, as_account, running_build_server
from tests.recordservices import record_services
from tests.storehelpers import build_workspace, dev_cluster_base, workspace_site

pytestmark = [pytest.mark.slurm, pytest.mark.apptainer]


def test_a_records_link_builds_and_runs_as_a_batch_job() -> None:
    with (
        build_workspace("records", dev_cluster_base()) as workspace,
        record_services(workspace / "services") as services,
    ):
        settings = workspace_site(workspace).model_dump(mode="json")
        settings["repos"]["protocols"] = ["https", "http", "file"]
        settings["repos"].update(services.repos_setting())
        site_file = workspace / "site.yaml"
        site_file.write_text(json.dumps(settings))
        site_file.chmod(0o644)
        cli = [str(SITE_BIN / "hpcbinder"), "--site", str(site_file)]
        spec = services.specs()["doi"]  # the DOI resolver, then Zenodo's API
        with running_build_server(site_file):
            built = as_account("alice", [*cli, "build", spec], timeout=900)
            assert built.returncode == 0, built.stderr
            assert any(x.startswith("run it with: ") for x in built.stderr.splitlines())
            ran = as_account(
                "alice", [*cli, "sbatch", spec, "--run", "hello.py", "--wait"], timeout=600
            )
        assert ran.returncode == 0, ran.stdout + ran.stderr
        assert "hello from an archived record" in ran.stdout + ran.stderr
        # The build server kept the record's checkout, named by its version,
        # without a .git; Zenodo was asked through its API.
        checkouts = [p.parent for p in (workspace / "checkouts").glob("*/*/hello.py")]
        assert len(checkouts) == 1, checkouts
        assert not (checkouts[0] / ".git").exists()
        assert any("/api" in r for r in services.zenodo.requests), services.zenodo.requests


def test_a_record_over_the_sites_bound_is_refused_by_the_build_server() -> None:
    """The build server's own site bounds hold for a researcher's link."""
    with (
        build_workspace("records-bound", dev_cluster_base()) as workspace,
        record_services(workspace / "services") as services,
    ):
        settings = workspace_site(workspace).model_dump(mode="json")
        settings["repos"].update(protocols=["http"], max_fetch_files=1, **services.repos_setting())
        site_file = workspace / "site.yaml"
        site_file.write_text(json.dumps(settings))
        site_file.chmod(0o644)
        cli = [str(SITE_BIN / "hpcbinder"), "--site", str(site_file)]
        with running_build_server(site_file):
            built = as_account("alice", [*cli, "build", services.specs()["dataverse"]], timeout=300)
        assert built.returncode != 0
        assert "repos.max_fetch_files" in built.stderr, built.stderr
        assert not list((workspace / "checkouts").rglob("hello.py"))
