"""The Binder service driven by real clients: BinderHub's own published
JavaScript client (@jupyterhub/binderhub-client) to ready, a Binder link
opened in headless Chromium, through the hub login and the launch page,
into JupyterLab with the file open, and Thebe on a documentation site of
another origin (screenshots kept under test-output/)."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from tornado.httpclient import HTTPClient

from hpcbinder.sources.providers import PROVIDERS
from hpcbinder.web.launcher import server_name
from tests.binderhelpers import Binder, binder_repo
from tests.conftest import REPO, DevCluster, free_port
from tests.e2e.conftest import running_binder
from tests.hubhelpers import process_hub_token

pytestmark = [pytest.mark.e2e, pytest.mark.slurm, pytest.mark.apptainer]

WEB = Path(sys.prefix) / "web" / "node_modules"
THEBE = Path(sys.prefix) / "web" / "thebe" / "lib"
OUTPUT = REPO / "test-output"


def node(
    script: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run one of tests/web's scripts; ``env``: variables added for it."""
    if not (WEB / "playwright-core").is_dir():
        pytest.fail(f"the web test clients are missing in {WEB} (make venv installs them)")
    return subprocess.run(
        ["node", str(REPO / "tests" / "web" / script), *args],
        capture_output=True,
        text=True,
        timeout=400,
        env={**os.environ, **(env or {})},
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
    assert "X-XSRFToken header or a page of an origin" in summary["unconfirmedBuild"], summary
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
    assert (summary["firstOutput"] or "").strip() == "hello from binder", summary
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


def _docs_site(folder: Path, binder_url: str, repo_url: str, other_build_url: str) -> None:
    """A documentation page with Thebe (its npm bundle) and a cell, and a
    page of another site that tries the Binder API with the login."""
    folder.mkdir()
    (folder / "thebe").symlink_to(THEBE)
    config = {
        "bootstrap": True,
        "requestKernel": True,
        "useBinder": True,
        "binderOptions": {
            "binderUrl": binder_url,
            "repoProvider": "git",
            "repo": repo_url,
            "ref": "HEAD",
        },
        "savedSessionOptions": {"enabled": False},
        "mountActivateWidget": False,
    }
    (folder / "index.html").write_text(
        "<!doctype html><html><head><meta charset='utf-8'>\n"
        # Thebe opens its EventSource without credentials; a page whose
        # Binder needs the researcher's login asks for them.
        "<script>const Native = window.EventSource;\n"
        "window.EventSource = class extends Native {\n"
        "  constructor(url, init) { super(url, { ...(init || {}), withCredentials: true }); }\n"
        "};</script>\n"
        f"<script type='text/x-thebe-config'>{json.dumps(config)}</script>\n"
        "<script src='thebe/index.js'></script></head>\n"
        "<body><pre data-executable='true' data-language='python'>"
        "print(6 * 7, 'from thebe')</pre></body></html>\n"
    )
    (folder / "other.html").write_text(
        "<!doctype html><html><head><meta charset='utf-8'><script>\n"
        f"const url = {json.dumps(other_build_url)};\n"
        "window.attempt = new Promise((resolve) => {\n"
        "  const seen = { messages: [] };\n"
        "  const stream = new EventSource(url, { withCredentials: true });\n"
        "  stream.onmessage = (event) => seen.messages.push(event.data);\n"
        "  const done = () => { stream.close(); resolve(seen); };\n"
        "  stream.onerror = () => { seen.streamError = true; done(); };\n"
        "  setTimeout(done, 10000);\n"
        "}).then((seen) => fetch(url, { credentials: 'include' })\n"
        "  .then((response) => response.text()).then((text) => 'read: ' + text,\n"
        "    (error) => 'blocked: ' + error)\n"
        "  .then((fetched) => ({ ...seen, fetched })));\n"
        "</script></head><body>another site</body></html>\n"
    )


@contextmanager
def serving(folder: Path, port: int) -> Iterator[None]:
    handler = functools.partial(QuietFiles, directory=str(folder))
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


def status_of(url: str, headers: dict[str, str] | None = None) -> int:
    response = HTTPClient().fetch(
        url, headers=headers, follow_redirects=False, raise_error=False, request_timeout=30
    )
    return response.code


class QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_thebe_on_a_listed_documentation_site_runs_a_cell_as_the_researcher(
    devcluster: DevCluster,
) -> None:
    """Thebe (npm, pinned) on a page of a second loopback origin that the
    site lists starts alice's server through the Binder service with her
    login (no token of hers in the page) and runs a cell on it; a page of
    an origin the site does not list, with the same login, starts nothing
    and reads nothing. Before that, the home page's link generator offers
    every provider of /api/repoproviders, with links and badges, escaping
    what is typed."""
    if not (THEBE / "index.js").is_file():
        pytest.fail(f"Thebe is missing in {THEBE} (make venv installs it)")
    docs_port, other_port = free_port(), free_port()
    docs = f"http://127.0.0.1:{docs_port}"
    site = {
        "binder": {
            "max_parallel_builds": 1,
            "max_launches_per_user": 1,
            "confirm_untrusted": False,
            "cors_allow_origins": [docs],
        }
    }
    with running_binder(site) as binder:
        repo, _ = binder_repo(binder.root)  # no environment files: no build of its own
        other_repo, _ = binder_repo(binder.root)
        other_spec = f"git/{quote(f'file://{other_repo}', safe='')}/HEAD"
        folder = binder.root / "docs"
        _docs_site(folder, binder.url, f"file://{repo}", f"{binder.url}/build/{other_spec}")
        OUTPUT.mkdir(exist_ok=True)
        screenshot = OUTPUT / "thebe-on-docs-site.png"
        with serving(folder, docs_port), serving(folder, other_port):
            done = node(
                "binder_from_docs.mjs",
                str(WEB / "playwright-core"),
                binder.url,
                "alice",
                "hpcbinder-demo",
                f"{docs}/index.html",
                f"http://127.0.0.1:{other_port}/other.html",
                str(screenshot),
            )
        assert done.returncode == 0, done.stderr
        summary = json.loads(done.stdout.splitlines()[-1])
        (OUTPUT / "thebe-on-docs-site.json").write_text(json.dumps(summary, indent=1))
        assert "error" not in summary, summary

        # The generator: every provider, a link of this service and its badges.
        listed = json.loads(binder.get("/api/repoproviders")[1])
        assert [entry["provider"] for entry in summary["generator"]] == [e["id"] for e in listed]
        assert [e["id"] for e in listed] == list(PROVIDERS)
        badge = f"{binder.url}/badge_logo.svg"
        for entry, provider in zip(summary["generator"], listed, strict=True):
            url = entry["url"]
            assert url.startswith(f"{binder.url}/v2/{provider['id']}/"), entry
            assert entry["label"] == provider["repo"]["label"]
            assert entry["refDisabled"] is not provider["ref"]["enabled"], entry
            assert entry["markdown"] == f"[![Binder]({badge})]({url})"
            assert entry["rst"] == f".. image:: {badge}\n   :target: {url}"
        gh = summary["generator"][0]
        assert gh["url"] == f"{binder.url}/v2/gh/jupyterhub/binderhub/HEAD"
        assert summary["withPath"] == (
            f"{binder.url}/v2/gh/org/repo/feature%2Fx?urlpath=%2Fdoc%2Ftree%2Fnotebooks%2Fa+b.ipynb"
        )
        hostile = summary["hostile"]
        assert hostile["injected"] is False and hostile["images"] == 0, hostile
        assert not set('"<>() ') & set(hostile["url"]), hostile
        assert hostile["markdown"].count(")") == 2, hostile  # only the badge's own

        # Thebe ran the cell on alice's server, started by this service.
        assert "42 from thebe" in summary["thebeOutput"], summary
        assert screenshot.stat().st_size > 5_000
        servers = binder.hub.api("GET", "/users/alice")["servers"]
        assert server_name(f"file://{repo}") in servers
        # Thebe's websocket took the token from its URL; a page or an API
        # call never does: a link with her token logs nobody in to her server.
        name = server_name(f"file://{repo}")
        server_url = f"{binder.hub.origin('alice')}/user/alice/{name}/"
        token = process_hub_token(
            lambda proc, _: (
                f"JUPYTERHUB_SERVER_NAME={name}".encode()
                in (proc / "environ").read_bytes().split(b"\0")
            ),
            f"alice's server {name}",
        )
        assert status_of(f"{server_url}api/status", {"Authorization": f"token {token}"}) == 200
        assert status_of(f"{server_url}api/status?token={token}") == 403
        assert status_of(f"{server_url}lab?token={token}") == 302  # to the hub's login
        # The other origin, with the same login: refused (the hub's own check
        # drops a cookie whose request shows no XSRF token and no listed
        # origin), nothing started, and nothing of the answer readable.
        other = summary["other"]
        assert other["messages"] == [] and other["fetched"].startswith("blocked: "), other
        assert server_name(f"file://{other_repo}") not in servers
        assert f"403 GET /build/{other_spec}" in binder.hub.log.read_text()
