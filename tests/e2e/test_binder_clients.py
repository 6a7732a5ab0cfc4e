"""The Binder service driven by real clients: BinderHub's own published
JavaScript client (@jupyterhub/binderhub-client) to ready, and a Binder
link opened in headless Chromium, through the hub login and the launch
page, into JupyterLab with the file open (screenshot kept under
test-output/)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.binderhelpers import Binder, binder_repo
from tests.conftest import REPO

pytestmark = [pytest.mark.e2e, pytest.mark.slurm, pytest.mark.apptainer]

WEB = Path(sys.prefix) / "web" / "node_modules"
OUTPUT = REPO / "test-output"


def node(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    if not (WEB / "playwright-core").is_dir():
        pytest.fail(f"the web test clients are missing in {WEB} (make venv installs them)")
    return subprocess.run(
        ["node", str(REPO / "tests" / "web" / script), *args],
        capture_output=True,
        text=True,
        timeout=400,
    )


def test_binderhubs_own_client_drives_a_launch_to_ready(binder: Binder) -> None:
    _, spec = binder_repo(binder.root, f"echo {uuid.uuid4().hex}")
    client = WEB / "@jupyterhub" / "binderhub-client" / "lib" / "client.js"
    done = node("binderhub_client.mjs", str(client), f"{binder.url}/build/", spec, binder.token)
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    phases = [event["phase"] for event in events]
    assert phases[0] == "fetching" and phases[-1] == "ready", events
    assert {"building", "built", "launching"} <= set(phases)
    assert events[-1]["url"].startswith(f"{binder.hub.origin('alice')}/user/alice/")


def test_a_link_opens_jupyterlab_in_a_browser(binder: Binder) -> None:
    _, spec = binder_repo(binder.root, f"echo {uuid.uuid4().hex}")
    OUTPUT.mkdir(exist_ok=True)
    screenshot = OUTPUT / "binder-link-in-jupyterlab.png"
    link = f"{binder.url}/v2/{spec}?labpath=index.ipynb"
    playwright = str(WEB / "playwright-core")
    done = node(
        "launch_in_browser.mjs",
        playwright,
        link,
        "alice",
        "hpcbinder-demo",
        "index.ipynb",
        str(screenshot),
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.splitlines()[-1])
    assert summary["failed"] is None, summary
    # First asked to confirm (the dev site vouches for no repository); a
    # /build link opened meanwhile with the same login (a navigation, as
    # another site's link would be: no X-XSRFToken header) started nothing.
    assert summary["confirmPageTitle"].startswith("Run "), summary
    assert "X-XSRFToken header: open the link" in summary["unconfirmedBuild"], summary
    assert '"phase"' not in summary["unconfirmedBuild"], summary
    # The repository by name and ref, not the url-escaped spec.
    assert summary["launchPageTitle"].startswith("Launching "), summary
    assert " @ HEAD — hpcbinder" in summary["launchPageTitle"], summary
    assert "%2F" not in summary["launchPageTitle"], summary
    assert "ready" in summary["phases"] or "launching" in summary["phases"], summary
    assert summary["url"].startswith(f"{binder.hub.origin('alice')}/user/alice/")
    assert "/lab/tree/index.ipynb" in summary["url"]
    assert summary["currentTab"] == "index.ipynb"
    assert summary["firstCell"] == "print('hello from binder')"
    assert screenshot.stat().st_size > 10_000
    # No token in any URL the browser asked for, nor in the service's
    # access log: the page sends its XSRF token in a header.
    assert any("/build/" in url for url in summary["requestedUrls"]), summary
    tokens = {summary["launchXsrf"], *(v for v in summary["cookieValues"] if len(v) >= 16)}
    for url in summary["requestedUrls"]:
        assert "_xsrf=" not in url and "token=" not in url, url
        assert not any(token in url for token in tokens), url
    log = binder.hub.log.read_text()
    assert summary["launchXsrf"] not in log and "_xsrf=" not in log
