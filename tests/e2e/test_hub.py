"""End to end: JupyterHub 6 + configurable-http-proxy + ApptainerSlurmSpawner
on the dev cluster. A researcher's named server runs in a Slurm job inside
the base image, the hub proxies to it, a kernel executes code, and stopping
the server ends the job."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from tornado.httpclient import HTTPClient, HTTPClientError, HTTPRequest

from hpcbinder.images.store import IMAGE, ImageMeta, ImageStore
from hpcbinder.sources.providers import SHARED_CACHE
from tests.conftest import DevCluster, running_build_server
from tests.hubhelpers import (
    Hub,
    close_hub,
    execute,
    new_hub,
    singleuser_token,
    site_with,
    start_server,
    stop_server,
    wait_ready,
)
from tests.storehelpers import build_workspace, dev_cluster_base

pytestmark = [pytest.mark.e2e, pytest.mark.slurm, pytest.mark.apptainer]


def test_named_server_runs_in_slurm_and_executes_code(hub: Hub, devcluster: DevCluster) -> None:
    hub.api("POST", "/users/alice/servers/e2e", {"image": "base:default", "profile": "small"})
    server = wait_ready(hub, "alice", "e2e")
    assert server["url"] == f"{hub.origin('alice')}/user/alice/e2e/"  # not the hub's origin
    status = HTTPClient().fetch(
        HTTPRequest(f"{server['url']}api/status", headers={"Authorization": f"token {hub.token}"})
    )
    assert status.code == 200
    # JupyterLab's resource display (jupyter-resource-usage) shows the job's
    # allocation as the server's limits.
    metrics = HTTPClient().fetch(
        HTTPRequest(
            f"{server['url']}api/metrics/v1", headers={"Authorization": f"token {hub.token}"}
        )
    )
    limits = json.loads(metrics.body)["limits"]
    cpus, memory = allocation("hpcbinder-alice-e2e")
    assert limits["memory"]["rss"] == memory and limits["cpu"]["cpu"] == cpus, limits
    out = execute(hub, server["url"], "import os, getpass; print(getpass.getuser(), 6 * 7)")
    assert out.split() == ["alice", "42"]
    # The job's callback may set its port and nothing else; the server keeps working.
    server_token = singleuser_token("alice")
    for body in ({"port": 1234, "cmd": ["/bin/sh", "-c", "id"]}, {"ip": "192.0.2.1"}):
        with pytest.raises(HTTPClientError) as caught:
            HTTPClient().fetch(
                HTTPRequest(
                    f"{hub.url}/hub/api/batchspawner",
                    method="POST",
                    body=json.dumps(body),
                    headers={"Authorization": f"token {server_token}"},
                )
            )
        assert caught.value.code == 400
    assert "Rejected ['cmd'] from the server job of alice" in hub.log.read_text()
    assert execute(hub, server["url"], "print('still', 'here')").split() == ["still", "here"]
    assert server_token not in hub.log.read_text()

    jobs = subprocess.run(
        ["squeue", "-h", "-u", "alice", "-n", "hpcbinder-alice-e2e", "-o", "%i"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert len(jobs) == 1

    hub.api("DELETE", "/users/alice/servers/e2e")
    for _ in range(60):
        left = subprocess.run(["squeue", "-h", "-j", jobs[0]], capture_output=True, text=True)
        if not left.stdout.strip():
            break
        time.sleep(1)
    assert not left.stdout.strip(), left.stdout


def allocation(job_name: str) -> tuple[int, int]:
    """The CPUs and memory (bytes) Slurm allocated to alice's job ``job_name``."""
    shown = subprocess.run(
        ["squeue", "-h", "-u", "alice", "-n", job_name, "-o", "%C %m"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    return int(shown[0]), int(float(shown[1][:-1]) * units[shown[1][-1]])


@pytest.fixture
def served_checkout() -> Iterator[tuple[str, Path]]:
    """A commit and its checkout where the build server keeps them (the
    dev site's shared cache), as the build account wrote it."""
    commit = uuid.uuid4().hex + "b" * 8
    repo = SHARED_CACHE / f"e2e{uuid.uuid4().hex[:13]}"
    checkout = repo / commit
    checkout.mkdir(parents=True)
    (checkout / "analysis.ipynb").write_text("{}\n")
    subprocess.run(["chown", "-R", "hpcbuild:hpcbuild", str(repo)], check=True)
    subprocess.run(["chmod", "-R", "a+rX", str(repo)], check=True)
    yield commit, checkout
    shutil.rmtree(repo, ignore_errors=True)


def test_workspace_persists_and_is_private(hub: Hub, served_checkout: tuple[str, Path]) -> None:
    commit, _ = served_checkout
    slug = f"demo-{uuid.uuid4().hex[:6]}"
    options = {"image": "base:default", "workspace": {"slug": slug, "commit": commit}}
    server = start_server(hub, "alice", "ws", options)
    out = execute(
        hub,
        server["url"],
        "import os; open('result.txt', 'w').write('kept'); "
        "print(os.getcwd(), sorted(os.listdir('.')))",
    )
    assert out.startswith(f"/home/alice/binder/{slug} ")
    assert "analysis.ipynb" in out and "result.txt" in out
    stop_server(hub, "alice", "ws")

    server = start_server(hub, "alice", "ws", options)
    assert execute(hub, server["url"], "print(open('result.txt').read())").strip() == "kept"

    other = start_server(hub, "bob", "peek", {"image": "base:default"})
    peek = execute(
        hub,
        other["url"],
        f"try:\n    open('/home/alice/binder/{slug}/result.txt').read()\n"
        "    print('READ')\nexcept OSError as exc:\n    print('DENIED', exc.errno)",
    )
    assert peek.split()[0] == "DENIED", peek
    # Nor from the cluster's own shell (a login node), where homes are readable by all.
    host = subprocess.run(
        ["sudo", "-n", "-u", "bob", "cat", f"/home/alice/binder/{slug}/result.txt"],
        capture_output=True,
        text=True,
    )
    assert host.returncode != 0 and "Permission denied" in host.stderr


def test_hub_restart_keeps_servers_reachable(hub: Hub) -> None:
    server = start_server(hub, "alice", "restart", {"image": "base:default"})
    hub.stop()
    hub.start()
    server = wait_ready(hub, "alice", "restart")
    assert execute(hub, server["url"], "print(1 + 1)").strip() == "2"


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"cpus": "64"}, "cpus: 64 is over partition interactive's max_cpus (4)"),
        ({"cpus": ["8"]}, "cpus: "),
        ({"command": "id"}, "command: not an option a launch can set"),
        ({"image": "../../etc/shadow"}, "image: not a valid value"),
        ({"image": "f" * 32}, f"image: {'f' * 32} is not in this site's store"),
        ({"workspace": {"slug": "x", "commit": "HEAD"}}, "workspace.commit"),
        # No path: this server's job would copy alice's home into a
        # workspace that the (anyone's) image sees.
        (
            {"workspace": {"slug": "x", "checkout": "/home/alice", "commit": "b" * 40}},
            "workspace.checkout: not an option a launch can set",
        ),
        ({"workspace": {"slug": "x", "commit": "d" * 40}}, f"no checkout of {'d' * 40}"),
    ],
)
def test_bad_launch_options_are_refused_before_a_job(
    module_hub: Hub, options: dict[str, object], reason: str
) -> None:
    """Options a client of the hub's API sends are checked before anything
    is submitted: a 400 naming the bad one (not the hub's 500)."""
    with pytest.raises(HTTPClientError) as caught:
        module_hub.api("POST", "/users/alice/servers/bad", {"image": "base:default", **options})
    assert caught.value.code == 400
    assert caught.value.response is not None
    assert reason in json.loads(caught.value.response.body)["message"]
    jobs = subprocess.run(
        ["squeue", "-h", "-u", "alice", "-n", "hpcbinder-alice-bad"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert jobs.stdout.strip() == ""


def server_jobs(user: str, name: str) -> str:
    """Slurm's jobs of ``user``'s server ``name``, pending or running."""
    return subprocess.run(
        ["squeue", "-h", "-u", user, "-n", f"hpcbinder-{user}-{name}", "-o", "%i"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def test_an_image_only_another_researcher_may_launch_is_refused_before_a_job(
    devcluster: DevCluster,
) -> None:
    """bob asks the hub's API for a server in an image of alice's repository
    on this host (its key is in her job's comment for all to see): the
    build server says he may not launch it, and the hub answers 403 with
    that reason; no job of bob's, no use of his recorded (his job's comment
    would have pinned it against gc). alice's own request is not refused."""
    with build_workspace("launch", dev_cluster_base()) as root:
        store = ImageStore(root / "store", owner="hpcbuild")
        key = uuid.uuid4().hex
        lock = store.try_lock(key)
        assert lock is not None
        with lock:  # an image of a repository on this host: no network URL
            staging = store.new_staging(key)
            store.write(staging / IMAGE, "not really a SIF")
            store.publish(lock, staging, ImageMeta(key=key, spec="alice's local repository"))
        store.record_use(key, "alice")
        site = site_with({"image_store": str(root / "store")})
        with running_build_server(site):
            hub = new_hub(site)
            try:
                with pytest.raises(HTTPClientError) as caught:
                    hub.api("POST", "/users/bob/servers/peek", {"image": key})
                assert caught.value.code == 403 and caught.value.response is not None
                message = json.loads(caught.value.response.body)["message"]
                assert message == f"image: no image {key} that bob may launch"
                assert server_jobs("bob", "peek") == ""
                assert store.users(key) == {"alice"}

                try:  # her fake image's job fails later; it was submitted
                    hub.api("POST", "/users/alice/servers/own", {"image": key})
                except HTTPClientError as exc:
                    assert exc.code != 403, exc
                assert re.search(r"Submitted server job \d+ for alice\n", hub.log.read_text())
            finally:
                close_hub(hub)


def test_spawn_page_offers_the_site_profiles(module_hub: Hub) -> None:
    hub = module_hub
    session = HTTPClient()
    login = session.fetch(f"{hub.url}/hub/login", follow_redirects=False)
    cookies = "; ".join(c.split(";", 1)[0] for c in login.headers.get_list("Set-Cookie"))
    xsrf = next(c.split("=", 1)[1] for c in cookies.split("; ") if c.startswith("_xsrf="))
    body = f"username=alice&password=hpcbinder-demo&_xsrf={xsrf}"
    with pytest.raises(HTTPClientError) as redirect:  # a successful login redirects
        session.fetch(
            f"{hub.url}/hub/login",
            method="POST",
            body=body,
            headers={"Cookie": cookies},
            follow_redirects=False,
        )
    assert redirect.value.code == 302 and redirect.value.response is not None
    cookies += "; " + "; ".join(
        c.split(";", 1)[0] for c in redirect.value.response.headers.get_list("Set-Cookie")
    )
    page = session.fetch(f"{hub.url}/hub/spawn/alice/formtest", headers={"Cookie": cookies})
    html = page.body.decode()
    assert '<select name="profile">' in html
    assert '<option value="small" selected>small — 1 CPU, 2 GB, 2 hours</option>' in html
    assert '<option value="medium">' in html
