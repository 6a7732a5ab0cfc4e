"""End to end with a hub that is not a Slurm submit host: Slurm commands go
to a login node over SSH (a real sshd on loopback, logging in as each
user) and the hub reaches the server through an SSH tunnel. And the site's
per-user server quota."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator

import pytest
from tornado.httpclient import HTTPClientError

from tests.conftest import DevCluster
from tests.hubhelpers import (
    Hub,
    close_hub,
    execute,
    new_hub,
    site_with,
    start_server,
    stop_server,
    wait_ready,
)
from tests.sshhelpers import running_sshd

pytestmark = [pytest.mark.e2e, pytest.mark.slurm, pytest.mark.apptainer]


@pytest.fixture
def remote_hub(devcluster: DevCluster) -> Iterator[Hub]:
    with running_sshd(["alice", "bob"], key_owner="hpcbinder") as login:
        hub = new_hub(site_with({"cluster": {"login": login, "tunnel": True}}))
        try:
            yield hub
        finally:
            close_hub(hub)


def listens(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_servers_run_through_a_login_node_and_a_tunnel(remote_hub: Hub) -> None:
    server = start_server(remote_hub, "alice", "remote", {"image": "base:default"})
    assert execute(remote_hub, server["url"], "import getpass; print(getpass.getuser())") == (
        "alice\n"
    )
    model = remote_hub.api("GET", "/users/alice")["servers"]["remote"]
    tunnel = model["state"]["tunnel"]
    node, node_port, local_port = tunnel
    assert node and node_port != local_port and listens(local_port), model
    log = remote_hub.log.read_text()
    assert f"Tunnel 127.0.0.1:{local_port} -> {node}:{node_port} for alice" in log
    assert f"=> http://127.0.0.1:{local_port}" in log  # the proxy goes through the tunnel

    # A restarted hub reopens the tunnel where the proxy's route points.
    remote_hub.stop()
    assert not listens(local_port)
    remote_hub.start()
    server = wait_ready(remote_hub, "alice", "remote")
    assert execute(remote_hub, server["url"], "print(6 * 7)").strip() == "42"

    job_id = model["state"]["job_id"]
    stop_server(remote_hub, "alice", "remote")
    assert not listens(local_port)
    queued = subprocess.run(["squeue", "-h", "-j", job_id], capture_output=True, text=True)
    assert job_id not in queued.stdout


@pytest.fixture
def quota_hub(devcluster: DevCluster) -> Iterator[Hub]:
    hub = new_hub(site_with({"quotas": {"max_servers_per_user": 1}}))
    try:
        yield hub
    finally:
        close_hub(hub)


def test_a_server_over_the_users_quota_is_refused(quota_hub: Hub) -> None:
    start_server(quota_hub, "bob", "first", {"image": "base:default"})
    with pytest.raises(HTTPClientError) as caught:
        quota_hub.api("POST", "/users/bob/servers/second", {"image": "base:default"})
        wait_ready(quota_hub, "bob", "second")
    assert caught.value.code == 403
    assert "bob already runs 1 servers, this site's limit" in caught.value.response.body.decode()
    jobs = subprocess.run(
        ["squeue", "-h", "-u", "bob", "-o", "%j"], capture_output=True, text=True, check=True
    )
    assert jobs.stdout.split() == ["hpcbinder-bob-first"]
