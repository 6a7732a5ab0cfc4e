"""Reaching a cluster from a hub that is not on it: SSH tunnels through a
login node to a server on a compute node the hub has no route to. The
login node and the compute node are network namespaces made here: the host
reaches the login node over one veth pair, the login node reaches the
compute node over another, and nothing forwards between them."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest

from hpcbinder.config import LoginNode
from hpcbinder.seams.remote import LoginNodeCommands, Tunnel, env_lines
from tests.conftest import SHARED_SCRATCH, free_port
from tests.sshhelpers import running_sshd

LOGIN_ADDRESS = "10.231.1.2"
NODE_ADDRESS = "10.231.2.2"


@dataclass(frozen=True)
class Networks:
    login: str
    node: str


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True)


@pytest.fixture
def networks() -> Iterator[Networks]:
    tag = uuid.uuid4().hex[:6]
    nets = Networks(f"hpcb-login-{tag}", f"hpcb-node-{tag}")
    ip("netns", "add", nets.login)
    ip("netns", "add", nets.node)
    try:
        ip("link", "add", f"hl{tag}", "type", "veth", "peer", "name", f"lh{tag}")
        ip("link", "set", f"lh{tag}", "netns", nets.login)
        ip("addr", "add", "10.231.1.1/24", "dev", f"hl{tag}")
        ip("link", "set", f"hl{tag}", "up")
        ip("link", "add", f"ln{tag}", "type", "veth", "peer", "name", f"nl{tag}")
        ip("link", "set", f"ln{tag}", "netns", nets.login)
        ip("link", "set", f"nl{tag}", "netns", nets.node)
        for net, device, address in (
            (nets.login, f"lh{tag}", f"{LOGIN_ADDRESS}/24"),
            (nets.login, f"ln{tag}", "10.231.2.1/24"),
            (nets.node, f"nl{tag}", f"{NODE_ADDRESS}/24"),
        ):
            ip("-n", net, "addr", "add", address, "dev", device)
            ip("-n", net, "link", "set", device, "up")
            ip("-n", net, "link", "set", "lo", "up")
        yield nets
    finally:
        # Deleting a namespace deletes the veth ends in it, and so their peers.
        subprocess.run(["ip", "netns", "del", nets.login], check=False)
        subprocess.run(["ip", "netns", "del", nets.node], check=False)
        subprocess.run(["ip", "link", "del", f"hl{tag}"], check=False, capture_output=True)


@pytest.fixture
def node_server(networks: Networks) -> Iterator[int]:
    """An HTTP server on the compute node serving one file; its port."""
    folder = SHARED_SCRATCH / f"node-{uuid.uuid4().hex[:8]}"
    folder.mkdir(parents=True)
    (folder / "hello.txt").write_text("hello from the compute node\n")
    port = free_port()
    in_node = ["ip", "netns", "exec", networks.node]
    server = subprocess.Popen(
        [*in_node, sys.executable, "-m", "http.server", "--bind", NODE_ADDRESS, str(port)],
        cwd=folder,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield port
    finally:
        server.terminate()
        server.wait(timeout=10)
        subprocess.run(["rm", "-rf", str(folder)], check=False)


def wait_reachable(tunnel: Tunnel) -> None:
    for _ in range(100):
        if tunnel.reaches_target():
            return
        time.sleep(0.1)
    pytest.fail(f"{tunnel.target} never became reachable from the login node")


def test_tunnel_reaches_a_server_only_the_login_node_can_route_to(
    networks: Networks, node_server: int
) -> None:
    with running_sshd(["alice"], address=LOGIN_ADDRESS, netns=networks.login) as host:
        commands = LoginNodeCommands(LoginNode.model_validate(host))
        route = subprocess.run(
            ["ip", "netns", "exec", networks.node, "ip", "route", "get", "10.231.1.1"],
            capture_output=True,
            text=True,
        )
        assert route.returncode != 0, "the compute node must have no way back to the hub"
        tunnel = Tunnel(partial(commands.transport, "alice"), (NODE_ADDRESS, node_server))
        try:
            wait_reachable(tunnel)
            url = f"http://127.0.0.1:{tunnel.local_port}/hello.txt"
            for _ in range(3):  # one connection after another through one transport
                with urllib.request.urlopen(url, timeout=10) as response:
                    assert response.read() == b"hello from the compute node\n"
            closed = Tunnel(partial(commands.transport, "alice"), (NODE_ADDRESS, free_port()))
            assert not closed.reaches_target()
            closed.close()
        finally:
            tunnel.close()
        with pytest.raises(OSError):
            urllib.request.urlopen(url, timeout=5)


def test_a_tunnel_reopens_on_its_old_port(networks: Networks, node_server: int) -> None:
    """What a restarted hub does: the proxy still routes to the old port."""
    with running_sshd(["alice"], address=LOGIN_ADDRESS, netns=networks.login) as host:
        commands = LoginNodeCommands(LoginNode.model_validate(host))
        first = Tunnel(partial(commands.transport, "alice"), (NODE_ADDRESS, node_server))
        wait_reachable(first)
        port = first.local_port
        first.close()
        again = Tunnel(partial(commands.transport, "alice"), (NODE_ADDRESS, node_server), port)
        try:
            url = f"http://127.0.0.1:{port}/hello.txt"
            with urllib.request.urlopen(url, timeout=10) as response:
                assert response.read() == b"hello from the compute node\n"
        finally:
            again.close()


def test_environment_values_that_cannot_travel_are_refused() -> None:
    assert (
        env_lines({"A": "1", "JUPYTERHUB_API_TOKEN": "x y"}) == "A=1\nJUPYTERHUB_API_TOKEN=x y\n\n"
    )
    with pytest.raises(ValueError, match="'EVIL'"):
        env_lines({"EVIL": "a\nPATH=/tmp"})
    with pytest.raises(ValueError, match="'BAD NAME'"):
        env_lines({"BAD NAME": "1"})


def test_a_login_node_with_an_unknown_host_key_is_refused() -> None:
    with running_sshd(["alice"]) as host:
        Path(host["known_hosts"]).write_text("")
        commands = LoginNodeCommands(LoginNode.model_validate(host))
        result = commands.run(["true"], user="alice")
    assert result.returncode == 255
    assert "127.0.0.1" in result.stderr
