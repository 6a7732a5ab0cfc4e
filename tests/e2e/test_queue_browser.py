"""A queued launch as a researcher sees it in headless Chromium: with the
only node filled by bob's job, the launch page says which partition the
server waits in and why, with the time waited going up; "Cancel this
launch" leaves no job and says so; a launch left waiting reaches
JupyterLab once the node is free. One blocker serves both launches
(tests/web/queued_launch.mjs drives the browser; the pending page's
screenshot is kept under test-output/)."""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

import pytest

from hpcbinder.web.launcher import server_name
from tests.binderhelpers import binder_repo, build_events
from tests.conftest import REPO, DevCluster
from tests.e2e.conftest import running_binder
from tests.e2e.test_binder_clients import OUTPUT, WEB
from tests.e2e.test_queue import job_states, node_filled_by_bob

pytestmark = [pytest.mark.e2e, pytest.mark.slurm, pytest.mark.apptainer]

SCREENSHOT = OUTPUT / "queued-launch-pending.png"
#: The dev site vouches for the test repositories: no confirmation page.
TRUSTING = {"max_parallel_builds": 1, "max_launches_per_user": 1, "trusted_repos": [".*"]}
#: What the page's status line says while the job waits, as the spawner words it.
WAITING = re.compile(
    r"^Waiting in partition interactive: (waiting for free nodes|other jobs are ahead)"
)


class Browser:
    """tests/web/queued_launch.mjs as it runs: its steps read as they come."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self._steps: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, args=(process.stdout,), daemon=True).start()

    def _read(self, stdout: IO[str] | None) -> None:
        assert stdout is not None
        for line in stdout:
            self._steps.put(json.loads(line))
        self._steps.put(None)

    def step(self, name: str, seconds: float) -> dict[str, Any]:
        """The script's next step, which must be ``name``."""
        try:
            step = self._steps.get(timeout=seconds)
        except queue.Empty:
            pytest.fail(f"the browser reported no {name!r} step within {seconds} s")
        assert step is not None, f"the browser ended before {name!r}"
        assert step["step"] == name, step
        return step

    def proceed(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("next\n")
        self.process.stdin.flush()


@contextmanager
def browser(cancel_link: str, queue_link: str) -> Iterator[Browser]:
    if not (WEB / "playwright-core").is_dir():
        pytest.fail(f"the web test clients are missing in {WEB} (make venv installs them)")
    OUTPUT.mkdir(exist_ok=True)
    with tempfile.TemporaryFile("w+") as errors:
        argv = [
            "node", str(REPO / "tests" / "web" / "queued_launch.mjs"),
            str(WEB / "playwright-core"), "alice", "hpcbinder-demo",
            cancel_link, queue_link, str(SCREENSHOT),
        ]  # fmt: skip
        process = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors, text=True
        )
        try:
            yield Browser(process)
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=30)
            errors.seek(0)
            print(errors.read())


def wait_gone(user: str, job_name: str, seconds: float = 20) -> list[str]:
    """The job's states once it has left the queue, or what is left after ``seconds``."""
    deadline = time.monotonic() + seconds
    while (states := job_states(user, job_name)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return states


def launching(events: list[dict[str, Any]]) -> list[str]:
    return [e["message"].strip() for e in events if e["phase"] == "launching"]


def waited(message: str) -> int:
    """The time waited that the service ends a launching event with."""
    found = re.search(r"\((\d+) s\)$", message)
    assert found, message
    return int(found[1])


def seconds_in(elapsed: str) -> int:
    """The page's elapsed time (``1 min 05 s`` or ``42 s``) in seconds."""
    found = re.fullmatch(r"(?:(\d+) min )?(\d+) s", elapsed)
    assert found, elapsed
    return int(found[1] or 0) * 60 + int(found[2])


def test_a_queued_launch_in_the_browser_waits_cancels_and_reaches_jupyterlab(
    devcluster: DevCluster,
) -> None:
    started = time.monotonic()
    with running_binder({"binder": TRUSTING}) as binder:
        cancel_repo, cancel_spec = binder_repo(binder.root)
        queue_repo, queue_spec = binder_repo(binder.root)
        build_events(binder.url, queue_spec, binder.token, "build_only=true")  # the image first
        cancel_job = f"hpcbinder-alice-{server_name(f'file://{os.path.realpath(cancel_repo)}')}"
        queue_server = server_name(f"file://{os.path.realpath(queue_repo)}")
        queue_job = f"hpcbinder-alice-{queue_server}"
        with (
            node_filled_by_bob() as blocker,
            browser(f"{binder.url}/v2/{cancel_spec}", f"{binder.url}/v2/{queue_spec}") as page,
        ):
            # 1. Waiting, then "Cancel this launch": the job goes, the page says so.
            shown = page.step("queued", 180)
            assert WAITING.match(shown["status"]), shown
            assert shown["cancelVisible"], shown
            assert job_states("alice", cancel_job) == ["PENDING"]
            shown = page.step("cancelled", 90)
            assert shown["phase"] == "cancelled" and shown["status"].startswith("Cancelled:"), shown
            assert not shown["cancelVisible"], shown
            assert wait_gone("alice", cancel_job) == []
            assert binder.hub.api("GET", "/users/alice")["servers"] == {}
            page.proceed()

            # 2. Waiting: the partition, the reason and the time waited, going up.
            shown = page.step("queued", 120)
            assert WAITING.match(shown["status"]), shown
            assert "Waiting in partition interactive" in shown["log"], shown
            assert shown["phase"] == "launching" and shown["cancelVisible"], shown
            assert seconds_in(shown["later"]["elapsed"]) > seconds_in(shown["elapsed"]), shown
            assert SCREENSHOT.stat().st_size > 10_000
            assert job_states("alice", queue_job) == ["PENDING"]
            # The queue shows as soon as the job waits, not only once the hub
            # answers the spawn request (its slow_spawn_timeout, 10 s).
            waiting = next(m for m in launching(shown["events"]) if WAITING.match(m))
            assert waited(waiting) < 10, launching(shown["events"])

            # ...then on to JupyterLab once bob's job ends.
            subprocess.run(["scancel", blocker], check=True)
            lab = page.step("lab", 300)
    print("\n".join(launching(lab["events"])))  # what a researcher reads, for the record
    assert re.search(rf"/user/alice/{queue_server}/lab", lab["url"]), lab
    phases = [e["phase"] for e in lab["events"]]
    assert phases[-1] == "ready", lab["events"]
    assert any(" started on node " in m for m in launching(lab["events"])), lab["events"]
    print(f"wall time {time.monotonic() - started:.0f} s")
