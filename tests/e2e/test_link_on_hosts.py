"""A Binder link through the dev cluster's hub host, in headless Chromium:
the browser on this machine reaches the hub, its proxy and the Binder
service at the addresses the hub host publishes (``hub.test`` and its
researchers' subdomains, mapped to the hub host's address as a site's DNS
would map them), and the notebook runs on a compute host."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid

import pytest

from tests.binderhelpers import binder_repo
from tests.conftest import SHARED_SCRATCH, DevCluster
from tests.e2e.test_binder_clients import OUTPUT, WEB, node
from tests.hubhelpers import HUB_ADDRESS, close_hub, new_hub

pytestmark = [pytest.mark.e2e, pytest.mark.slurm, pytest.mark.apptainer]

COMPUTE = ("hpcb-c1", "hpcb-c2")


def test_a_binder_link_on_the_hub_host_runs_its_notebook_on_a_compute_host(
    devcluster: DevCluster,
) -> None:
    root = SHARED_SCRATCH / f"hosts-link-{uuid.uuid4().hex[:8]}"  # a local root of the site
    _, spec = binder_repo(root)
    hub = new_hub(on_hub_host=True)
    try:
        OUTPUT.mkdir(exist_ok=True)
        screenshot = OUTPUT / "binder-link-on-hosts.png"
        link = f"{hub.binder_url}/v2/{spec}?labpath=index.ipynb"
        rules = f"MAP hub.test {HUB_ADDRESS}, MAP *.hub.test {HUB_ADDRESS}"
        done = node(
            "launch_in_browser.mjs",
            str(WEB / "playwright-core"),
            link,
            "alice",
            "hpcbinder-demo",
            "index.ipynb",
            str(screenshot),
            env={"HPCBINDER_TEST_HOST_RULES": rules},
        )
        assert done.returncode == 0, done.stderr
        summary = json.loads(done.stdout.splitlines()[-1])
        assert summary["failed"] is None, summary
        # JupyterLab on alice's subdomain of the hub's public name...
        assert summary["url"].startswith("http://alice.hub.test:"), summary
        assert summary["firstOutput"].strip() == "hello from binder", summary
        # ...served by a job on a compute host, not the hub host.
        [server] = hub.api("GET", "/users/alice")["servers"].values()
        assert server["state"]["job_status"].split()[-1] in COMPUTE, server["state"]
        assert f"Starting proxy @ http://{HUB_ADDRESS}:" in hub.log.read_text()
    finally:
        close_hub(hub)
        shutil.rmtree(hub.state, ignore_errors=True)
        subprocess.run(["rm", "-rf", str(root)], check=False)
