"""Private repositories through the Binder link, after login: alice's are
fetched and built by her own Slurm job, into her own store, and launched
from there (as servers and as a batch run); bob's build stream for any of
them is the one he gets for a repository that does not exist (the old
build server said "is mode 700" of a mode-700 repository in a folder he
may pass through, and "is not a git repository" of a missing one), and
nothing is built or launched for him."""

from __future__ import annotations

import functools
import html
import pwd
import re
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import pytest
import yaml
from tornado.httpclient import HTTPClientError

from hpcbinder.config import Site, load_site
from hpcbinder.errors import NoAccess
from hpcbinder.images import private
from hpcbinder.images.store import image_store
from hpcbinder.jobs.serverscript import workspace_for
from hpcbinder.seams import proc
from hpcbinder.sources import providers
from hpcbinder.web.launcher import server_name, workspace_slug
from tests.binderhelpers import Binder, build_events, phases, user_token
from tests.conftest import SHARED_SCRATCH, DevCluster
from tests.e2e.conftest import running_binder
from tests.githttp import git_http_server
from tests.hubhelpers import DEV_SITE, Hub, execute
from tests.loopback import LOOPBACK_NETWORKS
from tests.repohelpers import local_spec
from tests.sshhelpers import running_sshd

T = TypeVar("T")
K = TypeVar("K")

pytestmark = pytest.mark.e2e


# --- alice's private repositories through the Binder link ---------------------------
#
# Three real private servers: a mode-700 repository in alice's home, a git
# server over SSH (on loopback) that takes alice's key only, and a git server
# over HTTP with basic authentication. alice's credentials are where she
# keeps them (her ~/.ssh/config for that port, her git credential helper for
# that origin), not in any environment of the service's: her own job fetches
# and builds (hpcbinder.web.privatebuilds). One hub and one Binder service
# serve every test here; each repository holds only run.py (a code-only build).

MARKER = "private binder ok"
IDENTITY = ["-c", "user.name=alice", "-c", "user.email=alice@hpcbinder.invalid"]


@dataclass(frozen=True)
class Privates:
    binder: Binder
    site: Site
    specs: dict[str, str]  # by kind: alice's repository
    #: What bob asks for, by kind: alice's repository, and one that is not there.
    bobs: dict[str, tuple[str, str]]
    urls: frozenset[str]
    stores: dict[str, Path]
    launched: dict[str, str]  # kind -> image key alice launched (filled by the launch test)


def _as(user: str, *argv: str, cwd: Path | None = None, text: str | None = None) -> str:
    result = proc.run(list(argv), user=user, cwd=cwd or Path("/"), input_text=text, timeout=60)
    return proc.check(result).stdout.strip()


@contextmanager
def _alices_own_config(ssh: dict[str, Any], http: str, token: str, folder: Path) -> Iterator[None]:
    """Her ssh config for the test server's port only, her git credential
    helper for the HTTP server's origin only; both gone afterwards."""
    home = Path("/home/alice")
    _as("alice", "mkdir", "-p", "-m", "700", str(home / ".ssh"))
    config = home / ".ssh" / "config"
    block = (
        f"# hpcbinder-test {folder.name}\n"
        f'Match host 127.0.0.1 exec "test %p = {ssh["port"]}"\n'
        f"  IdentityFile {ssh['key_file']}\n  IdentitiesOnly yes\n"
        f"  UserKnownHostsFile {ssh['known_hosts']}\n# end {folder.name}\n"
    )
    _as("alice", "tee", "-a", str(config), text=block)
    _as("alice", "chmod", "600", str(config))
    store = folder / "git-credentials"
    host = http.removeprefix("http://")
    _as("alice", "tee", str(store), text=f"http://alice:{token}@{host}\n")
    key = f"credential.{http}.helper"
    _as("alice", "git", "config", "--global", key, f"store --file={store}", cwd=home)
    try:
        yield
    finally:
        proc.run(["git", "config", "--global", "--unset-all", key], user="alice", cwd=home)
        text = config.read_text()
        start, end = text.find(f"# hpcbinder-test {folder.name}\n"), f"# end {folder.name}\n"
        if start >= 0:
            kept = text[:start] + text[text.index(end, start) + len(end) :]
            _as("alice", "tee", str(config), text=kept)


@pytest.fixture(scope="module")
def privates(devcluster: DevCluster) -> Iterator[Privates]:
    tag = uuid.uuid4().hex[:8]
    folder = Path("/home/alice") / f"hpcbinder-pbinder-{tag}"
    _as("alice", "mkdir", "-m", "700", str(folder))
    repo = folder / "analysis"
    _as("alice", "git", "init", "-q", "-b", "main", str(repo))
    _as("alice", "tee", str(repo / "run.py"), text=f"print({MARKER!r})\n")
    _as("alice", "git", *IDENTITY, "add", "-A", cwd=repo)
    _as("alice", "git", *IDENTITY, "commit", "-q", "-m", "one", cwd=repo)
    _as("alice", "git", "clone", "-q", "--bare", str(repo), str(folder / "served.git"))
    # A folder others may pass through but not list, holding a mode-700 repository.
    passable = Path("/home/alice") / f"hpcbinder-pbinder-{tag}-711"
    _as("alice", "mkdir", "-m", "711", str(passable))
    _as("alice", "cp", "-a", str(repo), str(passable / "analysis"))
    _as("alice", "chmod", "700", str(passable / "analysis"))
    scratch = SHARED_SCRATCH / f"pbinder-{tag}"
    served = scratch / "http"  # root's: the HTTP server reads it, no one else
    served.mkdir(parents=True, mode=0o700)
    subprocess.run(["cp", "-a", str(folder / "served.git"), str(served)], check=True)
    subprocess.run(["chown", "-R", "root:root", str(served)], check=True)
    token = f"tok-{uuid.uuid4().hex}"
    stores = {u: Path(f"/home/{u}/.cache/hpcbinder-pbinder-{tag}") for u in ("alice", "bob")}
    dev = yaml.safe_load(DEV_SITE.read_text())
    build = {
        **dev.get("build", {}),
        "private_store": f"{{home}}/.cache/hpcbinder-pbinder-{tag}",
        "max_builds_per_user": 3,  # her three at once
    }
    try:
        with (
            running_sshd(["alice"], key_owner="alice") as ssh,
            git_http_server(served, "alice", token) as http,
            _alices_own_config(ssh, http, token, folder),
        ):
            base = f"ssh://alice@127.0.0.1:{ssh['port']}{folder}"
            specs = {
                "local": local_spec(repo, "main"),
                "ssh": f"git/{quote(f'{base}/served.git', safe='')}/main",
                "http": f"git/{quote(f'{http}/served.git', safe='')}/main",
            }
            missing = {
                "local": local_spec(folder / "nothing", "main"),
                "ssh": f"git/{quote(f'{base}/nothing.git', safe='')}/main",
                "http": f"git/{quote(f'{http}/nothing.git', safe='')}/main",
            }
            repos = {
                "local_roots": [str(folder), str(passable)],
                "protocols": ["https", "http", "ssh", "file"],
                "internal_networks": LOOPBACK_NETWORKS,  # the git servers: the site's forges
            }
            limits = {"max_parallel_builds": 3, "max_launches_per_user": 3}
            with running_binder({"repos": repos, "build": build, "binder": limits}) as binder:
                site = load_site(Path(binder.hub.env["HPCBINDER_SITE"]))
                urls = frozenset({f"file://{repo}", f"{base}/served.git", f"{http}/served.git"})
                bobs = {
                    **{kind: (specs[kind], missing[kind]) for kind in specs},
                    "passable": (
                        local_spec(passable / "analysis", "main"),
                        local_spec(passable / "nothing", "main"),
                    ),
                }
                yield Privates(binder, site, specs, bobs, urls, stores, {})
    finally:
        subprocess.run(
            ["rm", "-rf", str(folder), str(passable), str(scratch), *map(str, stores.values())]
        )


def _shared_images_of(privates: Privates) -> list[str]:
    return [r.key for r in image_store(privates.site).records() if r.meta.url in privates.urls]


def _concurrently(calls: dict[K, Callable[[], T]]) -> dict[K, T]:
    with ThreadPoolExecutor(len(calls)) as pool:
        futures = {name: pool.submit(call) for name, call in calls.items()}
        return {name: future.result() for name, future in futures.items()}


def test_alice_launches_her_three_private_repositories_through_the_binder_link(
    privates: Privates,
) -> None:
    binder = privates.binder
    answers = _concurrently(
        {
            kind: functools.partial(build_events, binder.url, spec, binder.token)
            for kind, spec in privates.specs.items()
        }
    )
    home = Path("/home/alice")
    names = set()
    for kind, events in answers.items():
        assert events[-1]["phase"] == "ready", (kind, events)
        assert phases(events)[-5:] == ["waiting", "building", "built", "launching", "ready"], (
            kind,
            events,
        )
        key = events[-1]["image"]
        privates.launched[kind] = key
        # Her image, in her store; the server's workspace holds her repository's file.
        assert (privates.stores["alice"] / "envs").is_dir()
        repo_url = providers.parse_spec(privates.specs[kind], privates.site.repos).url
        names.add(server_name(repo_url))
        workspace = workspace_for(privates.site, "alice", home, workspace_slug(repo_url))
        assert MARKER in (workspace / "run.py").read_text(), kind
    # The container itself sees it (one kernel: the three start alike).
    ready = answers["ssh"][-1]["message"].removeprefix("Server ready at ").strip()
    assert MARKER in execute(binder.hub, ready, "print(open('run.py').read())")
    # What every account lists of her jobs (squeue's names and comments)
    # names nothing derived from the URLs (a server's name is a digest of one).
    listed = subprocess.run(
        ["squeue", "-h", "--states=all", "-u", "alice", "-o", "%j|%k"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "hpcbinder-alice-private|hpcbinder\n" in listed, listed
    assert not any(name.split("-")[-1] in listed for name in names), (names, listed)
    assert privates.stores["alice"].stat().st_mode & 0o777 == 0o700
    assert _shared_images_of(privates) == []


def test_a_private_batch_run_from_the_launch_page_runs_as_alice_from_her_store(
    privates: Privates, devcluster: DevCluster
) -> None:
    binder = privates.binder
    status, page, _ = binder.get(
        f"/batch/{privates.specs['local']}", binder.token, {"path": "run.py"}
    )
    assert status == 200, page
    job_id = re.search(r'id="job-id">(\d+)<', page)
    run_dir = re.search(r'id="run-dir">([^<]+)<', page)
    assert job_id and run_dir, page
    assert devcluster.slurm.wait(job_id.group(1), timeout=300).state == "COMPLETED"
    folder = Path(html.unescape(run_dir.group(1)))
    assert (
        folder.is_relative_to("/home/alice")
        and folder.stat().st_uid == pwd.getpwnam("alice").pw_uid
    )
    outputs = subprocess.run(["grep", "-rlF", MARKER, str(folder)], capture_output=True, text=True)
    assert outputs.stdout.strip(), outputs
    assert _shared_images_of(privates) == []


def _normalised(events: list[dict[str, Any]], name: str) -> list[tuple[str, str]]:
    """An answer without what differs between any two requests whatever the
    repository: its name and the number of the job."""
    return [
        (e["phase"], re.sub(r"\b\d+\b", "N", e["message"].replace(name, "NAME"))) for e in events
    ]


def test_bob_is_answered_as_for_a_repository_that_does_not_exist(privates: Privates) -> None:
    binder = privates.binder
    bob = user_token(binder.hub, "bob")
    asked = {
        (kind, which): spec
        for kind, pair in privates.bobs.items()
        for which, spec in zip(("alices", "missing"), pair, strict=True)
    }
    answers: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for kind in privates.bobs:  # two at a time: the build server's limit per researcher
        pair = {key: spec for key, spec in asked.items() if key[0] == kind}
        answers |= _concurrently(
            {
                key: functools.partial(build_events, binder.url, spec, bob)
                for key, spec in pair.items()
            }
        )
    for kind in privates.bobs:
        normalised = []
        for which in ("alices", "missing"):
            events = answers[(kind, which)]
            name = private.readable_name(privates.site, asked[(kind, which)])
            assert events[-1]["phase"] == "failed", events
            assert events[-1]["message"].strip() == str(NoAccess.about(name)), events
            normalised.append(_normalised(events, name))
        assert normalised[0] == normalised[1], kind
    assert binder.hub.api("GET", "/users/bob")["servers"] == {}
    bobs = privates.stores["bob"]
    assert not (bobs / "envs").exists() or not any((bobs / "envs").iterdir())
    assert _shared_images_of(privates) == []


def _spawn(hub: Hub, user: str, name: str, options: dict[str, Any]) -> int:
    try:
        hub.api("POST", f"/users/{user}/servers/{name}", options)
    except HTTPClientError as exc:
        return exc.code
    return 201


def test_bob_cannot_launch_alices_private_image_by_its_key(privates: Privates) -> None:
    if not privates.launched:
        pytest.skip("needs alice's launch (the test above)")
    hub = privates.binder.hub
    key = next(iter(privates.launched.values()))
    # Named as a private image: his job looks in his own store, and refuses.
    _spawn(hub, "bob", "stolen", {"image": key, "private": True})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        server = hub.api("GET", "/users/bob")["servers"].get("stolen")
        assert not (server and server["ready"]), server
        if server is None:
            break
        time.sleep(0.5)
    else:
        pytest.fail("bob's launch of alice's key did not end")
    # His job looked in his own store, and said so in its one line.
    refused = subprocess.run(
        [
            "sh",
            "-c",
            'grep -lF "$1" /home/bob/.hpcbinder-server-*.log',
            "sh",
            f"image {key} is not",
        ],
        capture_output=True,
        text=True,
    )
    assert refused.stdout.strip(), "bob's server job did not refuse alice's key"
    # As a shared image: the build server has no such image for him. (An
    # image key is the environment's: a public repository of the same
    # environment, built by another test, has one in the shared store,
    # public and not hers; he may launch that.)
    shared = image_store(privates.site).lookup(key)
    assert shared is None or shared.meta.url not in privates.urls
    if shared is None:
        assert _spawn(hub, "bob", "stolen2", {"image": key}) == 403
    # Never a path, a base or anything else as a private image.
    for image in ("/home/alice", f"../{key}", "base:py313"):
        assert _spawn(hub, "bob", "stolen3", {"image": image, "private": True}) == 400
    assert hub.api("GET", "/users/bob")["servers"] == {}
