"""Each researcher's servers on their own origin (JupyterHub's
``subdomain_host``), seen from headless Chromium: JupyterLab, where a
repository's extensions and scripts run with the researcher's cookies, is not
on the hub's origin, so its code can neither read the hub's pages and API nor
mint a hub token as the researcher (tests/web/server_origin.mjs)."""

from __future__ import annotations

import json
import uuid
from urllib.parse import urljoin, urlsplit

import pytest

from tests.e2e.test_binder_clients import WEB, node
from tests.hubhelpers import Hub, start_server

pytestmark = [pytest.mark.e2e, pytest.mark.slurm, pytest.mark.apptainer]


def test_code_in_jupyterlab_cannot_read_hub_pages_or_mint_tokens(hub: Hub) -> None:
    server = start_server(hub, "alice", "origin", {"image": "base:default", "profile": "small"})
    note = f"minted by a page on the server {uuid.uuid4().hex[:8]}"
    done = node(
        "server_origin.mjs",
        str(WEB / "playwright-core"),
        hub.url,
        urljoin(hub.url, server["url"]) + "lab",
        "alice",
        "hpcbinder-demo",
        note,
    )
    summary = json.loads(done.stdout.splitlines()[-1])
    assert done.returncode == 0, (summary, done.stderr)
    # Logged in at the hub, back in JupyterLab on alice's own origin.
    assert urlsplit(summary["loginUrl"]).netloc == urlsplit(hub.url).netloc, summary
    assert summary["labOrigin"] == hub.origin("alice") != hub.url, summary
    assert summary["labUrl"].startswith(f"{hub.origin('alice')}/user/alice/origin/lab"), summary
    # Its code reads nothing of the hub's, with alice's cookies: the browser
    # blocks each answer (the hub allows no other origin), the hub is up.
    blocked = [line for line in summary["console"] if "blocked by CORS policy" in line]
    for path, result in summary["reads"].items():
        assert not result["readable"], (path, result)
        assert any(f"{hub.url}{path}'" in line for line in blocked), (path, summary["console"])
    assert not summary["mint"]["readable"], summary["mint"]
    tokens = hub.api("GET", "/users/alice/tokens")["api_tokens"]
    assert note not in [token["note"] for token in tokens]
