"""The shipped hub config on the dev cluster's hub host (``hpcb-hub``, its
own network namespace, ``slurm/devcluster up``): JupyterHub, its proxy and
the Binder service listen on the hub host's address from the site file's
``hub`` section, its Slurm commands go through the login node
(``cluster.login``), a researcher's servers run on the compute hosts, call
the hub back across the bridge, and the proxy on the hub host reaches them.
A compute node lost under a server, and the build node down."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import yaml
from tornado.httpclient import HTTPClientError

from tests.binderhelpers import build_events, user_token
from tests.conftest import DEVCLUSTER, SHARED_SCRATCH, DevCluster
from tests.hubhelpers import HOSTS_SITE, HUB_ADDRESS, Hub, new_hub, wait_ready
from tests.sshhelpers import running_sshd

pytestmark = [pytest.mark.e2e, pytest.mark.slurm, pytest.mark.apptainer]

COMPUTE = {"hpcb-c1": "10.79.13.21", "hpcb-c2": "10.79.13.22"}
HOSTS = {"hpcb-hub": "10.79.13.10", "hpcb-login": "10.79.13.11"}
SERVERS = ("mh1", "mh2")
LOST = "lost"  # the server whose node is lost
BUILT = "built"  # the server of an image built, launched with the build node down


#: The hosts' site with a profile for each compute host (its name is a
#: node feature), so that a test places a server and a batch run on one host.
PINNED = {f"on-{host}": {"partition": "interactive-multi", "constraint": host} for host in COMPUTE}


@pytest.fixture(scope="module")
def hosts_site() -> Iterator[Path]:
    """The hosts' site file with :data:`PINNED`, as researchers on the login
    node use it."""
    site = yaml.safe_load(HOSTS_SITE.read_text())
    site["profiles"].update(PINNED)
    path = SHARED_SCRATCH / f"site-hosts-{uuid.uuid4().hex[:8]}.yaml"
    path.write_text(yaml.safe_dump(site))
    path.chmod(0o644)
    yield path
    path.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def host_hub(devcluster: DevCluster, hosts_site: Path) -> Iterator[Hub]:
    """configs/jupyterhub_config.py as the service account on the hub host,
    with :func:`hosts_site`, shared by this module's tests. The hub host is
    not a submit host here: its Slurm commands go over SSH to the login node
    (``cluster.login``, an sshd on hpcb-login's address letting the hub's
    key in as each researcher); the servers it reaches directly."""
    with running_sshd(
        ["alice", "bob"], address=HOSTS["hpcb-login"], netns="hpcb-login", key_owner="hpcbinder"
    ) as login:
        site = yaml.safe_load(hosts_site.read_text())
        site["cluster"] = {"login": login}
        hub_site = hosts_site.with_name(f"site-hub-{uuid.uuid4().hex[:8]}.yaml")
        hub_site.write_text(yaml.safe_dump(site))
        hub_site.chmod(0o644)
        hub = new_hub(hub_site, on_hub_host=True)
        try:
            yield hub
        finally:
            hub.stop()  # the hub stops its proxy and services
            shutil.rmtree(hub.state, ignore_errors=True)
            hub_site.unlink(missing_ok=True)


def _delete_servers(hub: Hub, names: tuple[str, ...]) -> None:
    """Stop these servers of alice's and cancel their jobs by name."""
    for name in names:
        with contextlib.suppress(HTTPClientError, OSError):
            hub.api("DELETE", f"/users/alice/servers/{name}")
    jobs = ",".join(f"hpcbinder-alice-{name}" for name in names)
    subprocess.run(["scancel", "--user=alice", f"--name={jobs}"], check=False)


def _through_proxy(hub: Hub, url: str, *curl: str, token: str = "") -> str:
    """GET ``url`` (on a researcher's subdomain of hub.test) through the
    proxy on the hub host's address, as a browser with DNS for it would
    (``curl``: more of curl's options)."""
    host_port = url.split("/")[2]
    result = subprocess.run(
        ["curl", "-sS", "--fail", "--max-time", "20", "--resolve", f"{host_port}:{HUB_ADDRESS}",
         "-H", f"Authorization: token {token or hub.token}", *curl, url],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture
def servers(host_hub: Hub) -> Iterator[Hub]:
    """The module's hub; every server a test names in SERVERS is deleted after it."""
    try:
        yield host_hub
    finally:
        _delete_servers(host_hub, (*SERVERS, LOST, BUILT))


def test_servers_run_on_compute_hosts_not_the_hubs_and_outlive_a_hub_restart(
    servers: Hub,
) -> None:
    hub = servers
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
    # The hub host submitted nothing itself: the jobs came from the login node.
    submitted = subprocess.run(
        ["squeue", "-h", "-u", "alice", "-n", ",".join(f"hpcbinder-alice-{n}" for n in SERVERS),
         "-O", "AllocNodes:40"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert len(submitted) == 2 and "hpcb-hub" not in submitted, submitted

    # The hub host restarts (hub, proxy, Binder service): both servers stay.
    hub.stop()
    hub.start()
    for name in SERVERS:
        server = wait_ready(hub, "alice", name)
        assert server["state"]["job_status"].split()[-1] == nodes[name]
        assert '"started"' in _through_proxy(hub, f"{server['url']}api/status")


#: alice on the login node, with the module's site file.
def _as_alice_on_login(site: Path, argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    alice = ["setpriv", "--reuid=alice", "--regid=alice", "--init-groups", "env", "-i"]
    env = [
        "HOME=/home/alice", "USER=alice", "LOGNAME=alice", "LANG=C.UTF-8",
        "PATH=/opt/hpcbinder/venv/bin:/usr/bin:/bin", f"HPCBINDER_SITE={site}",
    ]  # fmt: skip
    return subprocess.run(
        [str(DEVCLUSTER), "host", "hpcb-login", *alice, *env, *argv],
        cwd=cwd, capture_output=True, text=True, timeout=180,
    )  # fmt: skip


def _code_only_repo(folder: Path) -> str:
    """A repository of one script that sleeps (no environment: its image is
    the code-only one the other tests' builds made)."""
    repo = folder / "sleeper"
    repo.mkdir()
    (repo / "sleep.py").write_text("import time\ntime.sleep(600)\n")
    for argv in (["init", "-q"], ["add", "."], ["commit", "-qm", "sleeper"]):
        subprocess.run(
            ["git", "-c", "user.email=t@example.org", "-c", "user.name=t", *argv],
            cwd=repo, check=True,
        )  # fmt: skip
    subprocess.run(["chmod", "-R", "a+rX", str(folder)], check=True)
    return f"local/{quote(str(repo), safe='')}/HEAD"


def _node_of(server: dict[str, object]) -> str:
    state = server["state"]
    assert isinstance(state, dict)
    return str(state["job_status"]).split()[-1]


def test_a_compute_node_lost_mid_session(servers: Hub, hosts_site: Path, shared_dir: Path) -> None:
    """A compute host's link goes down under a running server and a batch
    run: within a minute the hub has the server stopped, its page and
    `jobs ls` name the node, the workspace is intact and the next launch
    runs on the other node. The host is back (link up, node idle) after."""
    hub, lost, other = servers, "hpcb-c1", "hpcb-c2"
    hub.api(
        "POST", f"/users/alice/servers/{LOST}", {"image": "base:default", "profile": f"on-{lost}"}
    )
    spec = _code_only_repo(shared_dir)
    batch = _as_alice_on_login(
        hosts_site,
        ["hpcbinder", "sbatch", spec, "--run", "sleep.py", "--profile", f"on-{lost}"],
        shared_dir,
    )
    assert batch.returncode == 0, batch.stdout + batch.stderr
    job_id = batch.stdout.split()[-1]  # stdout is the job's id alone
    assert job_id.isdigit(), batch.stdout
    try:
        server = wait_ready(hub, "alice", LOST)
        assert _node_of(server) == lost
        # The researcher saves a file in the server's workspace.
        url = f"{server['url']}api/contents/lost-node.txt"
        body = json.dumps({"type": "file", "format": "text", "content": "kept"})
        _through_proxy(hub, url, "-X", "PUT", "--data", body)
        for _ in range(120):  # the batch run has started on the same host
            listed = _as_alice_on_login(hosts_site, ["hpcbinder", "jobs", "ls"], shared_dir).stdout
            if re.search(rf"^{job_id}\s+RUNNING\b", listed, re.M):
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"batch job {job_id} did not start: {listed}")

        lost_at = time.monotonic()
        subprocess.run([str(DEVCLUSTER), "link", lost, "down"], check=True, timeout=30)
        while LOST in hub.api("GET", "/users/alice")["servers"]:
            assert time.monotonic() - lost_at < 60, "the hub still has the server a minute on"
            time.sleep(1)
        print(f"server seen stopped {time.monotonic() - lost_at:.1f} s after its node was lost")

        # The hub's page for the server (where the researcher's JupyterLab
        # sends her) says which node was lost and where her files are.
        alice = hub.api("POST", "/users/alice/tokens", {"expires_in": 600})["token"]
        page = subprocess.run(
            ["curl", "-sS", "--max-time", "20", "-H", f"Authorization: token {alice}",
             "-H", "Accept: text/html", f"{hub.url}/hub/user/alice/{LOST}/lab"],
            capture_output=True, text=True, check=False,
        ).stdout  # fmt: skip
        reason = re.search(r'id="hpcbinder-stop-reason">([^<]*)<', page)
        assert reason, hub.log.read_text()[-6000:]
        assert f"ended NODE_FAIL on node {lost} (the node was lost)" in reason.group(1)
        workspace = Path(re.search(r"kept in (/\S+);", reason.group(1)).group(1))  # type: ignore[union-attr]
        assert (workspace / "lost-node.txt").read_text() == "kept"
        listed = _as_alice_on_login(hosts_site, ["hpcbinder", "jobs", "ls"], shared_dir).stdout
        assert re.search(rf"^{job_id}\s+NODE_FAIL on {lost}\b", listed, re.M), listed

        # The next launch runs on the other node, on the same files.
        hub.api("POST", f"/users/alice/servers/{LOST}", {"image": "base:default"})
        server = wait_ready(hub, "alice", LOST)
        assert _node_of(server) == other
        saved = json.loads(_through_proxy(hub, f"{server['url']}api/contents/lost-node.txt"))
        assert saved["content"] == "kept"
    finally:
        subprocess.run([str(DEVCLUSTER), "link", lost, "up"], check=True, timeout=90)
        subprocess.run(["scancel", job_id], check=False)


BUILD_NODE, BUILD_URL = "hpcb-build", "http://hpcb-build:8590"


def test_with_the_build_node_down_built_images_launch_and_builds_fail_in_one_line(
    servers: Hub, hosts_site: Path, shared_dir: Path
) -> None:
    """The build node's link goes down: a server of an image already built
    starts through the hub; a build from the login node and one through the
    Binder service each fail in one line naming build.server_url, with no
    traceback, no 500 and no job left. The link is back after."""
    hub = servers
    spec = _code_only_repo(shared_dir)
    built = _as_alice_on_login(hosts_site, ["hpcbinder", "build", spec], shared_dir)
    assert built.returncode == 0, built.stderr
    key = Path(built.stdout.split()[-1]).parent.name
    other = shared_dir / "other"
    other.mkdir()
    unbuilt = _code_only_repo(other)
    token = user_token(hub, "alice")
    binder = f"http://{HUB_ADDRESS}:{int(hub.url.rsplit(':', 1)[1]) + 3}"
    one_line = f"cannot reach the build server at {BUILD_URL} (site file: build.server_url)"
    since = time.time()
    subprocess.run([str(DEVCLUSTER), "link", BUILD_NODE, "down"], check=True, timeout=30)
    try:
        hub.api("POST", f"/users/alice/servers/{BUILT}", {"image": key})
        # While the server starts, alice tries two builds.
        cli = _as_alice_on_login(hosts_site, ["hpcbinder", "build", unbuilt], shared_dir)
        assert cli.returncode == 1 and cli.stdout == "", cli.stdout
        [line] = cli.stderr.splitlines()
        assert one_line in line
        events = build_events(binder, unbuilt, token, timeout=120)
        assert [e["phase"] for e in events][-1] == "failed", events
        message = events[-1]["message"].strip()
        assert "\n" not in message and "Traceback" not in message and one_line in message

        server = wait_ready(hub, "alice", BUILT)
        assert _node_of(server) in COMPUTE
        assert f"Image {key} admitted for alice by the store's records" in hub.log.read_text()
    finally:
        subprocess.run([str(DEVCLUSTER), "link", BUILD_NODE, "up"], check=True, timeout=30)
    # No job was submitted for the failed builds (a private build job, say),
    # from the hub host or the login node (other hubs submit from this machine).
    left = subprocess.run(
        ["squeue", "-h", "-u", "alice", "-p", "build", "--states=all",
         "-O", "JobID:12,AllocNodes:24,SubmitTime:24"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    ours = [
        line for line in left.splitlines()
        if line.split()[1] in ("hpcb-hub", "hpcb-login")
        and time.mktime(time.strptime(line.split()[2], "%Y-%m-%dT%H:%M:%S")) >= since - 1
    ]  # fmt: skip
    assert not ours, left
