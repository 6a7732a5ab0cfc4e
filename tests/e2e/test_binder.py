"""The Binder service end to end, as JupyterHub runs it: a hub login, the
/build event stream through every phase to a server in a Slurm job, builds
shared by viewers, launches reused, bad requests failing with their reason,
quotas, escaping, and the health, versions, metrics and badge routes."""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import threading
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from tornado.httpclient import HTTPClient

from tests.binderhelpers import (
    Binder,
    binder_repo,
    build_events,
    open_stream,
    phases,
    read_events,
    user_token,
)
from tests.conftest import SHARED_SCRATCH, DevCluster
from tests.e2e.conftest import running_binder
from tests.hubhelpers import execute
from tests.repohelpers import git
from tests.sshhelpers import running_sshd, sshd_log

pytestmark = [pytest.mark.e2e, pytest.mark.slurm, pytest.mark.apptainer]


def http_status(url: str, headers: dict[str, str], method: str = "GET") -> int:
    body = "{}" if method == "POST" else None
    response = HTTPClient().fetch(
        url, method=method, body=body, headers=headers, raise_error=False, request_timeout=30
    )
    return response.code


def test_a_launch_goes_through_every_phase_into_the_server(binder: Binder) -> None:
    repo, spec = binder_repo(binder.root, f"echo built {uuid.uuid4().hex} > built.txt")
    status, page, _ = binder.get(f"/v2/{spec}?labpath=index.ipynb", binder.token)
    assert status == 200
    config = re.search(r'<script id="launch-config" type="application/json">(.*?)</script>', page)
    assert config, page
    build_url = json.loads(config.group(1))["buildUrl"]
    assert build_url == f"/build/{spec}?labpath=index.ipynb"  # no token in a URL

    events = build_events(binder.url, spec, binder.token, "labpath=index.ipynb")
    seen = phases(events)
    assert seen[0] == "fetching" and seen[-3:] == ["built", "launching", "ready"], events[-1]
    assert "building" in seen
    # The repository by name, not the url-escaped spec.
    first = events[0]["message"].rstrip("\n")  # event messages are log lines
    assert first == f"Fetching {repo.parent.name}/{repo.name} @ HEAD…", events[0]
    built = next(e for e in events if e["phase"] == "built")
    ready = events[-1]
    assert ready["image"] == built["imageName"]
    name = ready["url"].split("/user/alice/", 1)[1].split("/", 1)[0]
    # On alice's own origin, not the hub's.
    server_url = f"{binder.hub.origin('alice')}/user/alice/{name}/"
    assert ready["url"] == f"{server_url}lab/tree/index.ipynb"
    # BinderHub's fields, and the same as the server's BINDER_* variables.
    commit = git(repo, "rev-parse", "HEAD")
    binder_fields = {
        "repo_url": f"file://{repo.resolve()}",
        "binder_ref_url": f"file://{repo.resolve()}",
        "binder_launch_host": f"{binder.url}/",
        "binder_request": f"v2/{spec}",
        "binder_persistent_request": f"v2/{spec.removesuffix('/HEAD')}/{commit}",
    }
    assert {key: ready[key] for key in binder_fields} == binder_fields, ready
    code = (
        "import os; print(open('built.txt').read().split()[0], 6 * 7); "
        "print(sorted((k, v) for k, v in os.environ.items() if k.startswith('BINDER_')))"
    )
    built_line, variables = execute(binder.hub, server_url, code).strip().splitlines()
    assert built_line == "built 42"
    assert ast.literal_eval(variables) == sorted(
        (key.upper() if key.startswith("binder_") else "BINDER_" + key.upper(), value)
        for key, value in binder_fields.items()
    )
    # BinderHub's token: the researcher's API client reaches the server with
    # it, and nothing else of hers (the hub's API, her other servers).
    assert ready["token"]
    server_token = {"Authorization": f"token {ready['token']}"}
    assert http_status(f"{server_url}api/status", server_token) == 200
    whoami = HTTPClient().fetch(f"{binder.hub.url}/hub/api/user", headers=server_token)
    scopes = json.loads(whoami.body)["scopes"]  # with the hub's own identity scopes
    assert [s for s in scopes if not s.startswith("read:users:")] == [
        f"access:servers!server=alice/{name}"
    ]
    hub_api = f"{binder.hub.url}/hub/api/users/alice"
    assert http_status(f"{hub_api}/tokens", server_token) in (403, 404)
    assert http_status(f"{hub_api}/servers/other", server_token, "POST") in (403, 404)

    again = build_events(binder.url, spec, binder.token)
    assert phases(again) == ["fetching", "built", "launching", "ready"]
    assert again[-1]["url"] == server_url
    servers = binder.hub.api("GET", "/users/alice")["servers"]
    assert list(servers) == [name]


def test_viewers_share_one_build_and_leaving_cancels_nothing(binder: Binder) -> None:
    _, spec = binder_repo(binder.root, f"sleep 4; echo {uuid.uuid4().hex}")
    path = f"/build/{spec}?build_only=true"
    before = successful_builds(binder)
    leaver = open_stream(binder.url, path, binder.token)
    assert read_events(leaver, stop_after=1)[0]["phase"] == "fetching"
    leaver.close()  # the first viewer goes away at once
    results: dict[int, list[dict[str, Any]]] = {}

    def watch(index: int) -> None:
        results[index] = read_events(open_stream(binder.url, path, binder.token))

    viewers = [threading.Thread(target=watch, args=(i,)) for i in range(3)]
    for viewer in viewers:
        viewer.start()
    for viewer in viewers:
        viewer.join(timeout=300)
    images = {events[-1].get("imageName") for events in results.values()}
    assert len(results) == 3 and len(images) == 1 and None not in images, results
    for events in results.values():
        assert sum("Building image" in e["message"] for e in events) == 1
    assert successful_builds(binder) == before + 1


def successful_builds(binder: Binder) -> float:
    """The service's count of successful builds (its /metrics)."""
    _, metrics, _ = binder.get("/metrics", user_token(binder.hub, "hubadmin"))
    builds = re.search(r'hpcbinder_build_duration_seconds_count\{status="success"\} (\S+)', metrics)
    return float(builds.group(1)) if builds else 0.0


def test_builds_over_the_parallel_limit_wait_with_their_queue_position(binder: Binder) -> None:
    specs = [binder_repo(binder.root, f"sleep 3; echo {uuid.uuid4().hex}")[1] for _ in range(2)]
    results: dict[str, list[dict[str, Any]]] = {}

    def watch(spec: str) -> None:
        results[spec] = build_events(binder.url, spec, binder.token, "build_only=true")

    viewers = [threading.Thread(target=watch, args=(spec,)) for spec in specs]
    for viewer in viewers:
        viewer.start()
    for viewer in viewers:
        viewer.join(timeout=300)
    # build_only: BinderHub's ready with the image, and no launch.
    assert all(events[-1]["phase"] == "ready" for events in results.values()), results
    assert all(events[-1]["imageName"] for events in results.values()), results
    assert not any(e["phase"] == "launching" for events in results.values() for e in events)
    waited = [
        e for events in results.values() for e in events if e["phase"] == "waiting"
    ]  # the site allows one build at a time: the second in waits
    assert waited and waited[0]["queue_position"] == 1
    assert waited[0]["message"] == "Waiting for a build slot: number 1 in the queue\n"


@pytest.mark.parametrize(
    ("spec", "page_status", "reason"),
    [
        ("zz/org/repo/HEAD", 400, "unknown provider 'zz'"),
        ("gh/org/repo/bad..ref", 400, "bad..ref"),
        # The dev site lists no internal network: the build server's own loopback is refused.
        ("git/https%3A%2F%2F127.0.0.1%3A9%2Fnone.git/HEAD", 200, "is at 127.0.0.1, not a public"),
        ("LOCAL/banned-repo/HEAD", 200, "is banned on this site"),
        ("LOCAL/repo/no-such-branch", 200, "no-such-branch"),
    ],
)
def test_bad_requests_fail_with_their_reason(
    binder: Binder, spec: str, page_status: int, reason: str
) -> None:
    if spec.startswith("LOCAL/"):
        name, ref = spec.split("/")[1:]
        repo, _ = binder_repo(binder.root)
        target = repo.rename(repo.parent / f"{name}-{uuid.uuid4().hex[:6]}")
        spec = f"local/{quote(str(target), safe='')}/{ref}"
    status, page, _ = binder.get(f"/v2/{spec}", binder.token)
    assert status == page_status, page
    events = build_events(binder.url, spec, binder.token)
    assert events[-1]["phase"] == "failed", events
    assert reason in events[-1]["message"]
    if page_status == 400:
        assert reason in page.replace("&#39;", "'")
    assert binder.hub.api("GET", "/users/alice")["servers"] == {}


def test_a_second_launch_at_once_is_over_the_quota(binder: Binder) -> None:
    _, first = binder_repo(binder.root)
    _, second = binder_repo(binder.root)
    results: dict[str, list[dict[str, Any]]] = {}
    started = threading.Event()

    def launch() -> None:
        response = open_stream(binder.url, f"/build/{first}", binder.token)
        events = read_events(response, stop_after=None)
        results["first"] = events

    thread = threading.Thread(target=launch)
    thread.start()
    for _ in range(600):  # until the first launch is under way
        servers = binder.hub.api("GET", "/users/alice")["servers"]
        if servers:
            started.set()
            break
        threading.Event().wait(0.05)
    assert started.is_set()
    refused = build_events(binder.url, second, binder.token)
    thread.join(timeout=300)
    assert refused[-1]["phase"] == "failed"
    assert (
        "You already have 1 launches in progress; this site allows 1 at once."
        in (refused[-1]["message"])
    )
    assert results["first"][-1]["phase"] == "ready"


def test_pages_keep_hostile_text_as_text(binder: Binder) -> None:
    hostile = quote("<script>alert(1)</script>", safe="")
    status, page, _ = binder.get(f"/v2/gh/org/repo/{hostile}", binder.token)
    assert status == 400
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # the reason names the ref…
    assert "<script>alert" not in page  # …as text
    events = build_events(binder.url, f"gh/org/repo/{hostile}", binder.token)
    assert events[-1]["phase"] == "failed" and "<script>alert(1)</script>" in events[-1]["message"]


def test_service_routes(binder: Binder) -> None:
    # Anonymous callers and researchers learn only whether it is healthy…
    for token in (None, binder.token):
        status, body, _ = binder.get("/health", token)
        assert status == 200 and json.loads(body) == {"ok": True}, body
    # …the hub's admins also what was checked and how it went.
    admin = user_token(binder.hub, "hubadmin")
    status, body, _ = binder.get("/health", admin)
    health = json.loads(body)
    assert status == 200 and health["ok"], health
    assert {c["service"] for c in health["checks"]} == {
        "slurm",
        "hub",
        "image store",
        "build server",
    }
    # Versions and metrics: the hub's admins only (and Prometheus, see
    # test_binder_monitoring.py).
    status, body, _ = binder.get("/versions", admin)
    versions = json.loads(body)
    assert status == 200 and versions["binderhub"].startswith("hpcbinder ")
    assert versions["jupyterhub"].startswith("6.") and "apptainer" in versions["builder"]
    status, body, _ = binder.get("/metrics", admin)
    assert status == 200 and "hpcbinder_builds_in_progress 0.0" in body
    for path in ("/versions", "/metrics"):
        assert binder.get(path)[0] == 401 and binder.get(path, binder.token)[0] == 403
    status, body, headers = binder.get("/badge_logo.svg")
    assert status == 200 and headers["Content-Type"] == "image/svg+xml" and "<svg" in body
    status, _, headers = binder.get("/")
    assert status == 302 and "/hub/api/oauth2/authorize" in headers["Location"]
    assert open_stream(binder.url, "/build/gh/org/repo/HEAD", None).status == 403
    status, page, _ = binder.get("/", binder.token)
    assert status == 200 and 'id="badge-markdown"' in page and "small" in page
    # What the researcher may use, and how busy it is (sinfo's CPUs of the
    # dev node); not the build partition, which is not for researchers.
    cpus = (
        subprocess.run(
            ["sinfo", "-h", "-p", "interactive", "-o", "%C"], capture_output=True, text=True
        )
        .stdout.strip()
        .split("/")[-1]
    )
    row = re.search(r'<tr data-partition="interactive">(.*?)</tr>', page)
    assert row and f"of {cpus}</td>" in row.group(1), page
    assert 'data-partition="build"' not in page


def test_the_launch_page_runs_a_file_as_a_batch_job(binder: Binder, devcluster: DevCluster) -> None:
    _, spec = binder_repo(binder.root)
    status, page, _ = binder.get(f"/v2/{spec}?labpath=index.ipynb", binder.token)
    assert status == 200 and 'name="path" value="index.ipynb"' in page
    refusals = [
        ({"path": "index.ipynb", "time": "99:00:00"}, "over partition interactive's max_time"),
        ({"path": "index.ipynb", "parameters": "alpha=1"}, "no cell tagged 'parameters'"),
        ({"path": "missing.py"}, "missing.py is not a file in"),
    ]
    for form, reason in refusals:
        status, page, _ = binder.get(f"/batch/{spec}", binder.token, form)
        assert status == 400 and reason in page.replace("&#39;", "'"), page
    status, page, _ = binder.get(f"/batch/{spec}", binder.token, {"path": "index.ipynb"})
    assert status == 200, page
    job_id = re.search(r'id="job-id">(\d+)<', page)
    run_dir = re.search(r'id="run-dir">([^<]+)<', page)
    assert job_id and run_dir, page
    assert devcluster.slurm.wait(job_id.group(1), timeout=300).state == "COMPLETED"
    task = Path(run_dir.group(1)) / "task-0"
    record = json.loads((task / "provenance.json").read_text())
    assert record["complete"] is True and record["run"]["spec"] == spec
    assert "hello from binder" in (task / "index.ipynb").read_text()


def test_a_batch_run_from_the_launch_page_goes_through_the_login_node(
    devcluster: DevCluster,
) -> None:
    """With cluster.login set the hub host is no submit host: the service
    submits the researcher's batch run on the login node, over SSH as them."""
    with running_sshd(["alice", "bob"], key_owner="hpcbinder") as login:
        with running_binder({"cluster": {"login": login}}) as service:
            _, spec = binder_repo(service.root)
            form = {"path": "index.ipynb"}
            status, page, _ = service.get(f"/batch/{spec}", service.token, form)
            assert status == 200, page
            job_id = re.search(r'id="job-id">(\d+)<', page)
            assert job_id, page
            assert devcluster.slurm.wait(job_id.group(1), timeout=300).state == "COMPLETED"
        logins = sshd_log(login)
    assert "Accepted publickey for alice from 127.0.0.1" in logins, logins


def test_planted_symlinks_in_a_home_meet_only_the_researchers_rights(
    binder: Binder, devcluster: DevCluster
) -> None:
    """alice points ~/hpcbinder-runs and ~/.hpcbinder at a folder of root's;
    a batch run from the launch page writes nothing there (the service used
    to write the job script and index through them as root)."""
    target = SHARED_SCRATCH / f"root-owned-{uuid.uuid4().hex[:8]}"
    target.mkdir(mode=0o755)
    home = Path("/home/alice")
    planted = [home / "hpcbinder-runs", home / ".hpcbinder"]
    saved = [path.with_name(path.name + ".saved") for path in planted]
    for path, backup in zip(planted, saved, strict=True):
        if path.exists() or path.is_symlink():
            path.rename(backup)
        subprocess.run(
            ["sudo", "-n", "-u", "alice", "ln", "-s", str(target), str(path)], check=True
        )
    try:
        _, spec = binder_repo(binder.root)
        status, page, _ = binder.get(f"/batch/{spec}", binder.token, {"path": "index.ipynb"})
        assert status == 200, page
        job_id = re.search(r'id="job-id">(\d+)<', page)
        assert job_id, page
        info = devcluster.slurm.wait(job_id.group(1), timeout=300)
        assert info.state == "FAILED"  # alice's own job cannot write there either
        assert list(target.iterdir()) == []
        assert target.stat().st_uid == 0
    finally:
        for path, backup in zip(planted, saved, strict=True):
            path.unlink(missing_ok=True)
            if backup.exists():
                backup.rename(path)
        shutil.rmtree(target, ignore_errors=True)
