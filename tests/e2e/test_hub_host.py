"""The shipped hub config on the dev cluster's hub host (``hpcb-hub``, its
own network namespace, ``slurm/devcluster up``): JupyterHub, its proxy and
the Binder service listen on the hub host's address from the site file's
``hub`` section, a researcher's servers run on the compute hosts, call the
hub back across the bridge, and the proxy on the hub host reaches them."""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
from collections.abc import Iterator

import pytest
from tornado.httpclient import HTTPClientError

from tests.conftest import DevCluster
from tests.hubhelpers import HUB_ADDRESS, Hub, new_hub, wait_ready

pytestmark = [pytest.mark.e2e, pytest.mark.slurm, pytest.mark.apptainer]

COMPUTE = {"hpcb-c1": "10.79.13.21", "hpcb-c2": "10.79.13.22"}
SERVERS = ("mh1", "mh2")


@pytest.fixture
def host_hub(devcluster: DevCluster) -> Iterator[Hub]:
    """configs/jupyterhub_config.py as the service account on the hub host,
    with the site file the dev cluster writes for its hosts."""
    hub = new_hub(on_hub_host=True)
    try:
        yield hub
    finally:
        for name in SERVERS:
            with contextlib.suppress(HTTPClientError, OSError):
                hub.api("DELETE", f"/users/alice/servers/{name}")
        hub.stop()  # the hub stops its proxy and services
        names = ",".join(f"hpcbinder-alice-{name}" for name in SERVERS)
        subprocess.run(["scancel", "--user=alice", f"--name={names}"], check=False)
        shutil.rmtree(hub.state, ignore_errors=True)


def _through_proxy(hub: Hub, url: str) -> str:
    """GET ``url`` (on a researcher's subdomain of hub.test) through the
    proxy on the hub host's address, as a browser with DNS for it would."""
    host_port = url.split("/")[2]
    result = subprocess.run(
        ["curl", "-sS", "--fail", "--max-time", "20", "--resolve", f"{host_port}:{HUB_ADDRESS}",
         "-H", f"Authorization: token {hub.token}", url],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_servers_run_on_compute_hosts_not_the_hubs_and_outlive_a_hub_restart(
    host_hub: Hub,
) -> None:
    hub = host_hub
    for name in SERVERS:  # two servers of one researcher, each a whole node
        hub.api(
            "POST", f"/users/alice/servers/{name}", {"image": "base:default", "profile": "node"}
        )
    nodes = {}
    for name in SERVERS:
        server = wait_ready(hub, "alice", name)
        node = server["state"]["job_status"].split()[-1]
        assert node in COMPUTE, server["state"]
        nodes[name] = node
        # The proxy on the hub host forwards to the server on its compute host.
        assert '"started"' in _through_proxy(hub, f"{server['url']}api/status")
    assert sorted(nodes.values()) == sorted(COMPUTE), "two servers on one node"

    log = hub.log.read_text()
    for node in nodes.values():
        # Each job called the hub's API from its own host's address...
        assert f"POST /hub/api/batchspawner (alice@{COMPUTE[node]})" in log
        # ...and the hub reaches its server there, not on its own address.
        assert re.search(rf"Server of alice is up at {node}:\d+", log)
    assert f"Starting proxy @ http://{HUB_ADDRESS}:" in log

    # The hub host restarts (hub, proxy, Binder service): both servers stay.
    hub.stop()
    hub.start()
    for name in SERVERS:
        server = wait_ready(hub, "alice", name)
        assert server["state"]["job_status"].split()[-1] == nodes[name]
        assert '"started"' in _through_proxy(hub, f"{server['url']}api/status")
