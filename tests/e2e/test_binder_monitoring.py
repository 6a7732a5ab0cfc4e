"""What the Binder service keeps from anonymous callers and out of its
log, as JupyterHub runs it: /versions and /metrics answer the hub's admins
and Prometheus' token (from the site's token file) only; a link whose clone
URL carries credentials is refused, and the token reaches no page, event or
log line."""

from __future__ import annotations

import json
import secrets
import shutil
import uuid
from collections.abc import Iterator
from urllib.parse import quote

import pytest

from tests.binderhelpers import Binder, build_events, user_token
from tests.conftest import SHARED_SCRATCH, DevCluster
from tests.e2e.conftest import running_binder
from tests.hubhelpers import SERVICE_ACCOUNT

pytestmark = [pytest.mark.e2e, pytest.mark.slurm]


@pytest.fixture
def monitored(devcluster: DevCluster) -> Iterator[tuple[Binder, str]]:
    """The service with a Prometheus token file; (service, token)."""
    token = secrets.token_hex(24)
    folder = SHARED_SCRATCH / f"metrics-{uuid.uuid4().hex[:8]}"
    folder.mkdir(parents=True)
    token_file = folder / "metrics_token"
    token_file.write_text(f"{token}\n")
    token_file.chmod(0o600)
    shutil.chown(token_file, SERVICE_ACCOUNT, SERVICE_ACCOUNT)
    settings = {"max_parallel_builds": 1, "metrics_token_file": str(token_file)}
    try:
        with running_binder({"binder": settings}) as service:
            yield service, token
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_versions_and_metrics_are_for_admins_and_prometheus(
    monitored: tuple[Binder, str],
) -> None:
    binder, token = monitored
    admin = user_token(binder.hub, "hubadmin")
    wrong = token[:-1] + ("1" if token.endswith("0") else "0")
    # Binder.get sends "Authorization: Bearer TOKEN", as Prometheus does.
    for path, shows in (("/versions", '"slurm"'), ("/metrics", "hpcbinder_builds_in_progress")):
        status, body, headers = binder.get(path)  # anonymous
        assert status == 401 and shows not in body and "slurm" not in body.lower(), body
        challenge = {name.lower(): value for name, value in headers.items()}["www-authenticate"]
        assert challenge.startswith("Bearer")
        status, body, _ = binder.get(path, binder.token)  # a researcher
        assert status == 403 and shows not in body, body
        status, body, _ = binder.get(path, wrong)
        assert status == 401 and shows not in body, body
        for allowed in (admin, token):
            status, body, _ = binder.get(path, allowed)
            assert status == 200 and shows in body, (path, body)
    versions = json.loads(binder.get("/versions", token)[1])
    assert versions["binderhub"].startswith("hpcbinder ") and "slurm" in versions
    # The site's token is checked by the service itself, never sent to the hub.
    assert token not in binder.hub.log.read_text()


def test_a_link_with_credentials_is_refused_and_its_token_shown_nowhere(
    monitored: tuple[Binder, str],
) -> None:
    binder, _ = monitored
    secret = f"ghp_{secrets.token_hex(12)}"
    spec = f"git/{quote(f'https://alice:{secret}@github.com/org/repo', safe='')}/HEAD"
    status, page, _ = binder.get(f"/v2/{spec}", binder.token)
    assert status == 400 and "may not carry credentials" in page, page
    assert secret not in page
    events = build_events(binder.url, spec, binder.token)
    assert events[-1]["phase"] == "failed" and "may not carry credentials" in events[-1]["message"]
    assert secret not in json.dumps(events)
    assert binder.hub.api("GET", "/users/alice")["servers"] == {}
    log = binder.hub.log.read_text()
    assert "[not logged: may hold credentials]" in log  # the requests were logged…
    assert secret not in log  # …without the token
