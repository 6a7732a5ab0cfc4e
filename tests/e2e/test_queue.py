"""Launches on a busy cluster, end to end: with the only node filled by
another researcher's job, a spawn's progress events say where and why it
waits, then where it starts; the queue limit cancels a wait with its
message and leaves no job; a launch link's resources over the limits are
refused before anything is built or submitted, and those within them
reach the job."""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from hpcbinder.web.launcher import server_name
from tests.binderhelpers import binder_repo, build_events, open_stream, read_events
from tests.conftest import DevCluster
from tests.e2e.conftest import running_binder
from tests.hubhelpers import Hub, ProgressStream, close_hub, new_hub, site_with

pytestmark = [pytest.mark.e2e, pytest.mark.slurm, pytest.mark.apptainer]

#: Longest wait for the blocker to get the node (other tests' jobs may hold it).
BLOCKER_START_SECONDS = 180


def job_states(user: str, name: str) -> list[str]:
    return subprocess.run(
        ["squeue", "-h", "-u", user, "-n", name, "-o", "%T"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()


@contextmanager
def node_filled_by_bob() -> Iterator[str]:
    """bob's job holding the whole node (``--exclusive``) until the block
    ends or the test cancels it; its job id."""
    submitted = subprocess.run(
        [
            "sudo", "-n", "-u", "bob", "sbatch", "--parsable", "--partition=interactive",
            "--exclusive", "--time=00:15:00", "--job-name=hpcbinder-test-blocker",
            "--output=/dev/null", "--chdir=/tmp", "--wrap=sleep 900",
        ],
        capture_output=True,
        text=True,
        check=True,
    )  # fmt: skip
    job = submitted.stdout.strip().split(";")[0]
    try:
        deadline = time.monotonic() + BLOCKER_START_SECONDS
        while time.monotonic() < deadline:
            state = subprocess.run(
                ["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True
            ).stdout.strip()
            if state == "RUNNING":
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"bob's blocker {job} did not get the node: {state}")
        yield job
    finally:
        subprocess.run(["scancel", job], check=False)


def test_a_queued_spawn_says_where_and_why_it_waits_then_starts(hub: Hub) -> None:
    with node_filled_by_bob() as blocker:
        hub.api("POST", "/users/alice/servers/queued", {"image": "base:default"})
        stream = ProgressStream(hub, "alice", "queued")
        waiting = stream.wait_for(
            r"^Waiting in partition interactive: (waiting for free nodes|other jobs are ahead)"
        )
        # Its place among the partition's pending jobs (other tests' may be there too).
        assert re.search(r"; position [1-9]\d* of [1-9]\d* pending jobs there", waiting), waiting
        # Slurm's backfill pass (every 5 s here) estimates the start: the blocker's end.
        stream.wait_for(r"; expected to start at \d\d:\d\d$", seconds=75)
        assert job_states("alice", "hpcbinder-alice-queued") == ["PENDING"]
        subprocess.run(["scancel", blocker], check=True)
        final = stream.final()
    print("\n".join(stream.messages))  # what a researcher reads, for the record
    assert final.get("ready") is True, stream.messages
    messages = stream.messages
    assert messages[0] == "Server requested"
    assert messages[1].startswith("Submitted Slurm job ")
    started = next(i for i, m in enumerate(messages) if " started on node " in m)
    starting = next(i for i, m in enumerate(messages) if m.startswith("Starting JupyterLab on "))
    assert messages.index(waiting) < started < starting
    assert not any("Unknown status" in m for m in messages), messages


def test_the_queue_limit_cancels_the_wait_and_says_so(devcluster: DevCluster) -> None:
    # 15 s: longer than the hub waits before answering a spawn request
    # (10 s), so the end comes through the progress stream, as for a browser.
    hub = new_hub(site_with({"launch": {"max_queue_minutes": 0.25}}))
    try:
        with node_filled_by_bob():
            started = time.monotonic()
            hub.api("POST", "/users/alice/servers/limited", {"image": "base:default"})
            stream = ProgressStream(hub, "alice", "limited")
            final = stream.final(seconds=60)
            waited = time.monotonic() - started
            assert final.get("failed") is True, stream.messages
            assert final["message"] == (
                "Spawn failed: no node became free within 0.25 minutes "
                "(site file: launch.max_queue_minutes); the job was cancelled"
            )
            assert any(m.startswith("Waiting in partition interactive") for m in stream.messages)
            assert 15 <= waited < 40, waited
            assert job_states("alice", "hpcbinder-alice-limited") == []
            assert "limited" not in hub.api("GET", "/users/alice")["servers"]
        assert "Traceback" not in hub.log.read_text()
    finally:
        close_hub(hub)


def test_link_resources_are_checked_before_anything_is_submitted(devcluster: DevCluster) -> None:
    # The dev site vouches for every test repository (no confirmation page).
    trusting = {"max_parallel_builds": 1, "max_launches_per_user": 1, "trusted_repos": [".*"]}
    with running_binder({"binder": trusting}) as binder:
        repo, spec = binder_repo(binder.root)
        for query, reason in (
            ("cpus=64", "cpus: 64 is over partition interactive's max_cpus (4)"),
            ("profile=medium&time=09:00:00", "time: 09:00:00 is over partition interactive's"),
            ("gpus=1", "gpus: 1 is over partition interactive's max_gpus (0)"),
            ("mem=0", "mem: must be more than 0"),
        ):
            status, page, _ = binder.get(f"/v2/{spec}?{query}", binder.token)
            assert status == 400 and reason in page.replace("&#39;", "'"), (query, page)
            events = build_events(binder.url, spec, binder.token, query)
            assert [e["phase"] for e in events] == ["failed"], events
            assert reason in events[0]["message"]
        assert binder.hub.api("GET", "/users/alice")["servers"] == {}
        server = server_name(f"file://{os.path.realpath(repo)}")
        assert job_states("alice", f"hpcbinder-alice-{server}") == []

        # Within the limits: the launch page names the repository readably...
        status, page, _ = binder.get(f"/v2/{spec}?cpus=2&time=00:30:00", binder.token)
        assert status == 200
        assert f"<title>Launching {repo.parent.name}/{repo.name} @ HEAD — hpcbinder" in page

        # ...and the server's job gets them.
        events = build_events(binder.url, spec, binder.token, "cpus=2&time=00:30:00")
        assert events[-1]["phase"] == "ready", events[-1]
        assert events[-1]["url"].startswith(f"{binder.hub.origin('alice')}/user/alice/{server}/")
        limits = subprocess.run(
            ["squeue", "-h", "-u", "alice", "-n", f"hpcbinder-alice-{server}", "-o", "%C %l"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert limits.split() == ["2", "30:00"], limits


def test_the_binder_stream_relays_the_queue_then_reaches_the_server(
    devcluster: DevCluster,
) -> None:
    """A launch through the Binder service while the node is full: its
    ``launching`` events say where and why it waits, with the time waited,
    as the hub's progress changes; it ends ready once the node is free."""
    with running_binder() as binder:
        _, spec = binder_repo(binder.root)
        build_events(binder.url, spec, binder.token, "build_only=true")  # the image first
        with node_filled_by_bob() as blocker:
            response = open_stream(binder.url, f"/build/{spec}", binder.token, timeout=300)
            events: list[dict[str, Any]] = []
            try:
                while not any(
                    e["phase"] == "launching" and "Waiting in partition interactive" in e["message"]
                    for e in events
                ):
                    events += read_events(response, stop_after=1)
                    assert events and events[-1]["phase"] not in ("failed", "ready"), events
                subprocess.run(["scancel", blocker], check=True)
                events += read_events(response)
            finally:
                response.close()
    launching = [e["message"].strip() for e in events if e["phase"] == "launching"]
    print("\n".join(launching))  # what a researcher reads, for the record
    assert events[-1]["phase"] == "ready", events[-1]
    waiting = next(m for m in launching if m.startswith("Waiting in partition interactive"))
    assert re.search(r"\(\d+ s\)$", waiting), waiting
    assert any(" started on node " in m for m in launching), launching


def test_a_queued_launch_cancelled_from_the_page_leaves_no_job(devcluster: DevCluster) -> None:
    with running_binder() as binder:
        repo, spec = binder_repo(binder.root)
        build_events(binder.url, spec, binder.token, "build_only=true")
        server = server_name(f"file://{os.path.realpath(repo)}")
        with node_filled_by_bob():
            response = open_stream(binder.url, f"/build/{spec}", binder.token, timeout=300)
            events: list[dict[str, Any]] = []
            try:
                while not any("Waiting in partition" in e["message"] for e in events):
                    events += read_events(response, stop_after=1)
                    assert events and events[-1]["phase"] not in ("failed", "ready"), events
                assert job_states("alice", f"hpcbinder-alice-{server}") == ["PENDING"]
                status, body, _ = binder.get(f"/cancel/{spec}", binder.token, {})
                assert status == 200 and '"cancelled": true' in body, body
                events += read_events(response)
            finally:
                response.close()
            assert events[-1]["phase"] == "failed", events[-1]
            assert job_states("alice", f"hpcbinder-alice-{server}") == []
        assert server not in binder.hub.api("GET", "/users/alice")["servers"]
