"""A JupyterHub on the dev cluster for tests and benchmarks: started from
configs/jupyterhub_config.py with an admin service token, driven through
its REST API, with kernels run through the proxy over WebSocket.

The hub is at ``http://localhost:PORT`` and each researcher's servers at
``http://USER.localhost:PORT`` (JupyterHub's ``subdomain_host``). Chromium
resolves every ``*.localhost`` name to loopback; glibc does not, so Tornado
clients in tests resolve them with :class:`LoopbackSubdomains`.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import secrets
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import pytest
import yaml
from tornado.httpclient import HTTPClient, HTTPClientError, HTTPRequest
from tornado.ioloop import IOLoop
from tornado.netutil import DefaultLoopResolver, Resolver
from tornado.websocket import websocket_connect

from tests.conftest import (
    DEVCLUSTER,
    REPO,
    SHARED_SCRATCH,
    SITE_BIN,
    free_port,
    free_port_block,
    wait_for_port,
)

#: The hub runs as the service account from the site-wide install.
SERVICE_ACCOUNT = "hpcbinder"
CHP = SITE_BIN.parent / "chp" / "node_modules" / ".bin" / "configurable-http-proxy"
HUB_CONFIG = REPO / "configs" / "jupyterhub_config.py"
READY_SECONDS = 240
DEV_SITE = Path("/etc/hpcbinder/site.yaml")


class LoopbackSubdomains(DefaultLoopResolver):
    """``*.localhost`` to loopback, as browsers resolve it (RFC 6761)."""

    async def resolve(
        self, host: str, port: int, family: socket.AddressFamily = socket.AF_UNSPEC
    ) -> list[tuple[int, Any]]:
        if host.endswith(".localhost"):
            host = "127.0.0.1"
        return await super().resolve(host, port, family)


Resolver.configure(LoopbackSubdomains)


@dataclass
class Hub:
    url: str
    token: str
    log: Path
    env: dict[str, str]
    state: Path
    process: subprocess.Popen[str] | None = None

    @property
    def binder_url(self) -> str:
        """The Binder service the hub runs (hpcbinder serve)."""
        return f"http://127.0.0.1:{self.env['HPCBINDER_BINDER_PORT']}"

    def origin(self, user: str) -> str:
        """Where ``user``'s servers are: their own origin, not the hub's."""
        address = urlsplit(self.url)
        return f"{address.scheme}://{user}.{address.netloc}"

    def start(self) -> None:
        with self.log.open("a") as handle:
            self.process = subprocess.Popen(
                [str(SITE_BIN / "python"), "-m", "jupyterhub", "-f", str(HUB_CONFIG)],
                cwd=self.state,
                env=self.env,
                user=SERVICE_ACCOUNT,
                group=SERVICE_ACCOUNT,
                extra_groups=[],
                stdout=handle,
                stderr=subprocess.STDOUT,
                text=True,
            )
        wait_for_port(int(self.url.rsplit(":", 1)[1]), "JupyterHub's proxy", seconds=60)
        for _ in range(120):  # the proxy listens before the hub has added its route
            try:
                self.api("GET", "/")
                return
            except (HTTPClientError, OSError):
                time.sleep(0.5)
        pytest.fail(f"the hub API did not answer; log:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        """The hub stopped, and its proxy, which the hub stops only if it
        ends in time (with many servers it may not, and a proxy left
        behind keeps its port and its host's network)."""
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        port = self.url.rsplit(":", 1)[1]
        subprocess.run(["pkill", "-f", f"configurable-http-proxy.*--port {port}"], check=False)

    def api(self, method: str, path: str, body: Any = None) -> Any:
        request = HTTPRequest(
            f"{self.url}/hub/api{path}",
            method=method,
            headers={"Authorization": f"token {self.token}"},
            body=None if body is None else json.dumps(body),
            allow_nonstandard_methods=True,
            request_timeout=60,
        )
        response = HTTPClient().fetch(request)
        return json.loads(response.body) if response.body else None


#: The dev cluster's hub host (slurm/devcluster up) and the site as its
#: hosts see it: the hub on the hub host's address, servers on the compute hosts.
HUB_HOST, HUB_ADDRESS = "hpcb-hub", "10.79.13.10"
HOSTS_SITE = Path("/etc/hpcbinder/site-hosts.yaml")


class HostHub(Hub):
    """A hub started on the hub host (``slurm/devcluster host``)."""

    @property
    def binder_url(self) -> str:
        """Its Binder service, on the hub host's address (the hub's port + 3)."""
        return f"http://{HUB_ADDRESS}:{int(self.url.rsplit(':', 1)[1]) + 3}"

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


def new_hub(site: Path | None = None, *, on_hub_host: bool = False) -> Hub:
    """A hub with its own state folder, started: on free loopback ports, its
    spawners reading ``site`` (default: the dev cluster's site file); or
    ``on_hub_host``, on the hub host's address with the hosts' site file
    (``site``: another one), its public URL ``http://hub.test:PORT``."""
    if not CHP.exists():
        pytest.fail(f"configurable-http-proxy missing at {CHP} (make venv installs it)")
    # The proxy, the hub, the proxy's API (and, from the site file's hub
    # section on the hub host, the Binder service).
    port = free_port_block(4 if on_hub_host else 3)
    state = SHARED_SCRATCH / f"hub-{uuid.uuid4().hex[:8]}"
    state.mkdir(parents=True)
    shutil.chown(state, SERVICE_ACCOUNT, SERVICE_ACCOUNT)
    token = secrets.token_hex(16)
    env = {
        "PATH": f"{SITE_BIN}:/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "HOME": "/var/lib/hpcbinder/service",
        "HPCBINDER_HUB_PORT": str(port),
        "HPCBINDER_HUB_STATE": str(state),
        "HPCBINDER_ADMIN_TOKEN": token,
        "HPCBINDER_CHP": str(CHP),
    }
    hub: Hub
    if on_hub_host:
        env["HPCBINDER_SITE"] = str(site or HOSTS_SITE)
        env["HPCBINDER_HUB_PUBLIC_URL"] = f"http://hub.test:{port}"
        hub = HostHub(f"http://{HUB_ADDRESS}:{port}", token, state / "hub.log", env, state)
    else:
        env["HPCBINDER_BINDER_PORT"] = str(free_port())
        if site is not None:
            env["HPCBINDER_SITE"] = str(site)
        hub = Hub(f"http://localhost:{port}", token, state / "hub.log", env, state)
    hub.start()
    return hub


def close_hub(hub: Hub) -> None:
    """Stop every server, the hub and its proxy, and cancel the servers'
    jobs it knew of (only its own: another test's hub may run at once)."""
    jobs = []
    for user in ("alice", "bob"):
        try:
            for name, server in hub.api("GET", f"/users/{user}")["servers"].items():
                jobs.append(str(server.get("state", {}).get("job_id", "")))
                hub.api("DELETE", f"/users/{user}/servers/{name}")
        except (HTTPClientError, OSError):
            pass
    hub.stop()
    if ids := [job for job in jobs if job.isdigit()]:
        subprocess.run(["scancel", *ids], check=False)


def wait_ready(hub: Hub, user: str, name: str, poll: float = 1.0) -> dict[str, Any]:
    """The server's model once ready; fails early if the spawn failed."""
    deadline = time.monotonic() + READY_SECONDS
    seen = False
    while time.monotonic() < deadline:
        server = hub.api("GET", f"/users/{user}")["servers"].get(name)
        if server and server["ready"]:
            return dict(server)
        if server:
            seen = True
        elif seen:
            break  # the spawn failed and the hub dropped the server
        time.sleep(poll)
    pytest.fail(f"server {user}/{name} not ready; hub log:\n{hub.log.read_text()[-4000:]}")


def execute(hub: Hub, server_url: str, code: str) -> str:
    """Run ``code`` in a new kernel through the proxy; its stdout.
    ``server_url``: the hub's for the server (on its own origin), or a path."""
    headers = {"Authorization": f"token {hub.token}"}
    server = urljoin(hub.url, server_url)
    kernel = json.loads(
        HTTPClient()
        .fetch(
            HTTPRequest(
                f"{server}api/kernels",
                method="POST",
                body="{}",
                headers=headers,
                request_timeout=60,
            )
        )
        .body
    )

    async def run() -> str:
        connection = await websocket_connect(
            HTTPRequest(
                f"{server.replace('http', 'ws', 1)}api/kernels/{kernel['id']}/channels",
                headers=headers,
                request_timeout=60,
            )
        )
        msg_id = uuid.uuid4().hex
        connection.write_message(
            json.dumps(
                {
                    "header": {
                        "msg_id": msg_id,
                        "msg_type": "execute_request",
                        "username": "test",
                        "session": uuid.uuid4().hex,
                        "version": "5.3",
                    },
                    "parent_header": {},
                    "metadata": {},
                    "channel": "shell",
                    "content": {
                        "code": code,
                        "silent": False,
                        "store_history": False,
                        "user_expressions": {},
                        "allow_stdin": False,
                    },
                }
            )
        )
        output = []
        for _ in range(200):
            message = await connection.read_message()
            if message is None:
                break
            data = json.loads(message)
            if data.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            if data["msg_type"] == "stream":
                output.append(data["content"]["text"])
            if data["msg_type"] == "error":
                output.append(f"{data['content']['ename']}: {data['content']['evalue']}\n")
            if data["msg_type"] == "status" and data["content"]["execution_state"] == "idle":
                break
        connection.close()
        return "".join(output)

    return IOLoop.current().run_sync(run, timeout=120)


class ProgressStream:
    """A spawn's progress events (``/hub/api/users/U/servers/S/progress``),
    read in a thread as they come, until the stream's final event."""

    def __init__(self, hub: Hub, user: str, name: str) -> None:
        self.events: list[dict[str, Any]] = []
        address = urlsplit(hub.url)
        self._connection = http.client.HTTPConnection(
            address.hostname or "", address.port, timeout=READY_SECONDS
        )
        self._connection.request(
            "GET",
            f"/hub/api/users/{user}/servers/{name}/progress",
            headers={"Authorization": f"token {hub.token}"},
        )
        response = self._connection.getresponse()
        assert response.status == 200, response.read()
        self._thread = threading.Thread(target=self._read, args=(response,), daemon=True)
        self._thread.start()

    def _read(self, response: http.client.HTTPResponse) -> None:
        for line in response:
            if line.startswith(b"data:"):
                self.events.append(json.loads(line[5:]))

    @property
    def messages(self) -> list[str]:
        return [str(event.get("message", "")) for event in self.events]

    def wait_for(self, pattern: str, seconds: float = 120) -> str:
        """The first message matching ``pattern`` (a regular expression)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            found = next((m for m in self.messages if re.search(pattern, m)), None)
            if found is not None:
                return found
            if not self._thread.is_alive():
                break
            time.sleep(0.2)
        pytest.fail(f"no progress event matching {pattern!r}; events: {self.messages}")

    def final(self, seconds: float = READY_SECONDS) -> dict[str, Any]:
        """The stream's last event, once it has ended."""
        self._thread.join(seconds)
        self._connection.close()
        assert self.events, "the progress stream sent no event"
        return self.events[-1]


def start_server(hub: Hub, user: str, name: str, options: dict[str, Any]) -> dict[str, Any]:
    hub.api("POST", f"/users/{user}/servers/{name}", options)
    return wait_ready(hub, user, name)


def site_with(changes: dict[str, Any]) -> Path:
    """The dev cluster's site file with ``changes`` at its top level, written
    where the hub can read it."""
    site = yaml.safe_load(DEV_SITE.read_text())
    site.update(changes)
    path = SHARED_SCRATCH / f"site-{uuid.uuid4().hex[:8]}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(site))
    return path


def stop_server(hub: Hub, user: str, name: str) -> None:
    hub.api("DELETE", f"/users/{user}/servers/{name}")
    for _ in range(60):
        if name not in hub.api("GET", f"/users/{user}")["servers"]:
            return
        time.sleep(1)
    pytest.fail(f"server {user}/{name} did not stop")


def process_hub_token(matches: Callable[[Path, list[bytes]], bool], what: str) -> str:
    """``JUPYTERHUB_API_TOKEN`` from the environment of the first process
    that ``matches`` (its /proc folder and argv); fails naming ``what``."""
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit():
                continue
            if not matches(proc, (proc / "cmdline").read_bytes().split(b"\0")):
                continue
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for item in environ:
            if item.startswith(b"JUPYTERHUB_API_TOKEN="):
                return item.split(b"=", 1)[1].decode()
    pytest.fail(f"no {what}")


def singleuser_token(user: str) -> str:
    """The hub token of ``user``'s running server, read from its process."""
    uid = int(subprocess.run(["id", "-u", user], capture_output=True, text=True).stdout)
    return process_hub_token(
        lambda proc, argv: (
            proc.stat().st_uid == uid and b"jupyterhub-singleuser" in b"\0".join(argv)
        ),
        f"running jupyterhub-singleuser of {user}",
    )
