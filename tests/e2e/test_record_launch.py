"""mybinder.org-style links of every provider launch, end to end.

Each link (``/build/<provider>/<spec>``, as BinderHub's clients ask) goes
through the Binder service, the build server, the hub, Slurm and
Apptainer: the DOI resolver, Zenodo, Figshare, Dataverse, HydroShare, CKAN,
Software Heritage and a git host (the gist host's ``git http-backend``,
which also serves a ``git/`` link's repository) are loopback stand-ins
speaking their APIs (:mod:`tests.recordservices`); the site's GitHub and
GitLab (``repos.github_host``, ``repos.gitlab_host``, which ``gh/`` and
``gl/`` links clone over HTTPS) are one loopback HTTPS git host whose
certificate the site's CA bundle (``network.ca_bundle``) holds, as a site's
own GitLab's would be. Every record holds the
same tiny repository without environment files, so every build is
code-only on one environment image, and all links launch at once, as
alice's named servers, each with 1 GB so that all fit on the one
interactive host. Each server must serve its record's file to the ready
event's token.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tornado.httpclient import HTTPClient, HTTPRequest

from tests.binderhelpers import build_events, phases
from tests.conftest import SHARED_SCRATCH, DevCluster
from tests.e2e.conftest import running_binder
from tests.githttp import git_https_server
from tests.hubhelpers import execute
from tests.recordservices import CONTENT, GIST, ZENODO_CONCEPT, record_services

SYSTEM_CAS = Path("/etc/ssl/certs/ca-certificates.crt")
#: Each server's memory: the small profile's 2 GB would not let all of them
#: share the interactive partition's one host (18 GB).
LINK_QUERY = "labpath=hello.py&mem=1G"
#: A second repository on the gist host, for the ``git/`` link: the same
#: clone URL as the gist's would be the same named server.
GIT_REPO = "lab/records.git"


def _contents(ready: dict[str, Any], path: str) -> str:
    """``path`` in the ready server's workspace, read through its contents
    API with the ready event's token, as a BinderHub client would."""
    server = ready["url"].split("lab/tree/")[0]
    request = HTTPRequest(
        f"{server}api/contents/{path}?content=1",
        headers={"Authorization": f"token {ready['token']}"},
        request_timeout=60,
    )
    return str(json.loads(HTTPClient().fetch(request).body)["content"])


def test_every_providers_link_launches_from_its_loopback_service(devcluster: DevCluster) -> None:
    scratch = SHARED_SCRATCH / f"records-{uuid.uuid4().hex[:8]}"
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, scratch, ignore_errors=True)
        services = cleanup.enter_context(record_services(scratch))
        gists = scratch / "gists"
        subprocess.run(
            ["git", "clone", "-q", "--bare", str(gists / f"{GIST}.git"), str(gists / GIT_REPO)],
            check=True,
        )
        specs = services.specs()
        specs["git"] = f"git/{quote(f'{services.gist.url}/{GIT_REPO}', safe='')}/HEAD"
        hosted = scratch / "git-hosts"
        for name in ("org/repo", "group/project.git"):  # gh/'s and gl/'s clone URLs
            subprocess.run(
                ["git", "clone", "-q", "--bare", str(gists / f"{GIST}.git"), str(hosted / name)],
                check=True,
            )
        git_host, cert = cleanup.enter_context(git_https_server(hosted, scratch))
        ca_bundle = scratch / "ca-bundle.pem"  # the system's CAs and the site's own
        ca_bundle.write_bytes(SYSTEM_CAS.read_bytes() + cert.read_bytes())
        ca_bundle.chmod(0o644)
        specs["gh"], specs["gl"] = "gh/org/repo/HEAD", "gl/group%2Fproject/HEAD"
        settings = {
            "repos": {
                "protocols": ["https", "http", "file"],
                "local_roots": [str(SHARED_SCRATCH)],
                **services.repos_setting(),
                "github_host": git_host.removeprefix("https://"),
                "gitlab_host": git_host.removeprefix("https://"),
            },
            "network": {"ca_bundle": str(ca_bundle)},
            "binder": {
                "max_parallel_builds": 3,
                "max_launches_per_user": len(specs),
                "confirm_untrusted": False,
            },
            "quotas": {"max_servers_per_user": len(specs)},
            "build": {"max_builds_per_user": len(specs)},
        }
        with running_binder(settings) as binder:

            def launch(spec: str) -> list[dict[str, Any]]:
                return build_events(binder.url, spec, binder.token, LINK_QUERY, timeout=600)

            with ThreadPoolExecutor(len(specs)) as pool:
                launched = dict(zip(specs, pool.map(launch, specs.values()), strict=True))
            for name, events in launched.items():
                assert phases(events)[-1] == "ready", f"{name}: {events[-1]}"
                ready = events[-1]
                assert ready["url"].endswith("lab/tree/hello.py"), f"{name}: {ready}"
                assert _contents(ready, "hello.py") == CONTENT["hello.py"], name
            # One environment image for every link: each build was code-only.
            assert len({events[-1]["image"] for events in launched.values()}) == 1
            doi = launched["doi"]
            assert doi[0]["message"].startswith(f"Fetching DOI {ZENODO_CONCEPT}"), doi[0]
            # The record's files are the kernel's working folder.
            server = doi[-1]["url"].split("lab/tree/")[0]
            code = "print(open('hello.py').read().strip()); print(open('data/numbers.csv').read())"
            output = execute(binder.hub, server, code)
            assert "hello from an archived record" in output and "1,2" in output, output
            servers = binder.hub.api("GET", "/users/alice")["servers"]
            assert len(servers) == len(specs), sorted(servers)
