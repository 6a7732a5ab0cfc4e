"""The shipped hub config on the dev cluster's hub host (``hpcb-hub``, its
own network namespace, ``slurm/devcluster up``): JupyterHub, its proxy and
the Binder service listen on the hub host's address from the site file's
``hub`` section, a researcher's servers run on the compute hosts, call the
hub back across the bridge, and the proxy on the hub host reaches them."""

from __future__ import annotations

import contextlib
import re
import secrets
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from tornado.httpclient import HTTPClientError

from tests.conftest import DEVCLUSTER, SHARED_SCRATCH, SITE_BIN, DevCluster, free_port_block
from tests.hubhelpers import CHP, HUB_CONFIG, SERVICE_ACCOUNT, Hub, wait_ready

pytestmark = [pytest.mark.e2e, pytest.mark.slurm, pytest.mark.apptainer]

HUB_HOST, HUB_ADDRESS = "hpcb-hub", "10.79.13.10"
COMPUTE = {"hpcb-c1": "10.79.13.21", "hpcb-c2": "10.79.13.22"}
SERVERS = ("mh1", "mh2")
#: The dev site as its hosts see it (slurm/devcluster): the hub on the hub
#: host's address, profile ``node`` a whole compute host.
HOSTS_SITE = Path("/etc/hpcbinder/site-hosts.yaml")


class HostHub(Hub):
    """A hub started on the hub host (``slurm/devcluster host``)."""

    def start(self) -> None:
        account = [f"--reuid={SERVICE_ACCOUNT}", f"--regid={SERVICE_ACCOUNT}", "--init-groups"]
        with self.log.open("a") as handle:
            self.process = subprocess.Popen(
                [str(DEVCLUSTER), "host", HUB_HOST, "setpriv", *account, "env", "-i",
                 *(f"{name}={value}" for name, value in self.env.items()),
                 str(SITE_BIN / "python"), "-m", "jupyterhub", "-f", str(HUB_CONFIG)],
                cwd=self.state, stdout=handle, stderr=subprocess.STDOUT, text=True,
            )  # fmt: skip
        for _ in range(120):
            if self.process.poll() is not None:
                pytest.fail(f"the hub on {HUB_HOST} exited; log:\n{self.log.read_text()[-3000:]}")
            with contextlib.suppress(HTTPClientError, OSError):
                self.api("GET", "/")
                return
            time.sleep(0.5)
        pytest.fail(f"the hub on {HUB_HOST} did not answer; log:\n{self.log.read_text()[-3000:]}")


@pytest.fixture
def host_hub(devcluster: DevCluster) -> Iterator[Hub]:
    """configs/jupyterhub_config.py as the service account on the hub host,
    with the site file the dev cluster writes for its hosts."""
    port = free_port_block(4)
    state = SHARED_SCRATCH / f"hub-{uuid.uuid4().hex[:8]}"
    state.mkdir(parents=True)
    shutil.chown(state, SERVICE_ACCOUNT, SERVICE_ACCOUNT)
    token = secrets.token_hex(16)
    env = {
        "PATH": f"{SITE_BIN}:/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "HOME": "/var/lib/hpcbinder/service",
        "HPCBINDER_HUB_STATE": str(state),
        "HPCBINDER_ADMIN_TOKEN": token,
        "HPCBINDER_CHP": str(CHP),
        "HPCBINDER_SITE": str(HOSTS_SITE),
        "HPCBINDER_HUB_PORT": str(port),
        "HPCBINDER_HUB_PUBLIC_URL": f"http://hub.test:{port}",
    }
    hub = HostHub(f"http://{HUB_ADDRESS}:{port}", token, state / "hub.log", env, state)
    try:
        hub.start()
        yield hub
    finally:
        for name in SERVERS:
            with contextlib.suppress(HTTPClientError, OSError):
                hub.api("DELETE", f"/users/alice/servers/{name}")
        hub.stop()  # the hub stops its proxy and services
        names = ",".join(f"hpcbinder-alice-{name}" for name in SERVERS)
        subprocess.run(["scancel", "--user=alice", f"--name={names}"], check=False)
        shutil.rmtree(state, ignore_errors=True)


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
