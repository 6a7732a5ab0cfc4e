"""Private repositories, built as the researcher with her own credentials
(hpcbinder.images.private): a mode-700 repository in alice's home, a git
server over SSH that accepts alice's key and refuses bob's, and a git
server over HTTP with basic authentication (alice's token).

alice builds each and runs it as a batch job; everything it becomes is in
her own store (mode 700); bob is told "not found, or no access" in the
same words as for a repository that does not exist; the shared store and
the shared checkouts gain nothing. Every repository has the same tiny
content (no environment files), so alice's store builds one environment
and the rest find it."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
import yaml

from hpcbinder.config import load_site
from hpcbinder.errors import NoAccess
from hpcbinder.images import private
from hpcbinder.images.store import image_store
from hpcbinder.seams import proc
from tests.conftest import SHARED_SCRATCH, SITE_BIN, DevCluster, running_build_server
from tests.githttp import git_http_server
from tests.loopback import LOOPBACK_NETWORKS
from tests.repohelpers import local_spec
from tests.sshhelpers import running_sshd

pytestmark = pytest.mark.slurm

MARKER = "private run ok"
IDENTITY = ["-c", "user.name=alice", "-c", "user.email=alice@hpcbinder.invalid"]


@dataclass(frozen=True)
class Repo:
    """One private repository: its spec, one that names nothing of the same
    kind, and the environment each account's hpcbinder runs with."""

    spec: str
    missing: str
    env: dict[str, dict[str, str]]  # by account


@dataclass(frozen=True)
class World:
    site_file: Path
    server_log: Path
    repos: dict[str, Repo]
    urls: frozenset[str]
    stores: dict[str, Path]  # each account's private store
    token: str
    checkouts: Path  # the shared checkouts (repos.cache_dir)


def run_as(
    user: str, argv: list[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``argv`` as ``user`` (sudo), with ``env`` passed by name, not in argv."""
    env = env or {}
    keep = [f"--preserve-env={','.join(sorted(env))}"] if env else []
    return subprocess.run(
        ["sudo", "-n", *keep, "-u", user, "--", *argv],
        capture_output=True,
        text=True,
        cwd="/",
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", **env},
        timeout=600,
    )


def as_alice(*argv: str, cwd: Path | None = None, text: str | None = None) -> str:
    result = proc.run(list(argv), user="alice", cwd=cwd, input_text=text, timeout=60)
    return proc.check(result).stdout.strip()


@pytest.fixture(scope="module")
def world(devcluster: DevCluster) -> Iterator[World]:
    tag = uuid.uuid4().hex[:8]
    scratch = SHARED_SCRATCH / f"private-{tag}"
    scratch.mkdir(parents=True)
    scratch.chmod(0o755)
    folder = Path("/home/alice") / f"hpcbinder-private-{tag}"
    as_alice("mkdir", "-m", "700", str(folder))
    repo = folder / "analysis"
    as_alice("git", "init", "-q", "-b", "main", str(repo))
    as_alice("tee", str(repo / "run.py"), text=f"print({MARKER!r})\n")
    as_alice("git", *IDENTITY, "add", "-A", cwd=repo)
    as_alice("git", *IDENTITY, "commit", "-q", "-m", "one", cwd=repo)
    as_alice("git", "clone", "-q", "--bare", str(repo), str(folder / "served.git"))
    # A folder others may pass through but not list, holding a mode-700
    # repository: the old server told bob "is mode 700" of it and "is not a
    # git repository" of a name that is not there.
    passable = Path("/home/alice") / f"hpcbinder-passable-{tag}"
    as_alice("mkdir", "-m", "711", str(passable))
    as_alice("cp", "-a", str(repo), str(passable / "analysis"))
    as_alice("chmod", "700", str(passable / "analysis"))
    served = scratch / "http"  # root's: served by the HTTP server, read by no one else
    served.mkdir(mode=0o700)
    subprocess.run(["cp", "-a", str(folder / "served.git"), str(served / "served.git")], check=True)
    subprocess.run(["chown", "-R", "root:root", str(served)], check=True)
    bob_key = scratch / "bob-key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(bob_key)], check=True)
    subprocess.run(["chown", "bob:bob", str(bob_key)], check=True)
    token = f"tok-{uuid.uuid4().hex}"
    stores = {user: Path(f"/home/{user}/.cache/hpcbinder-test-{tag}") for user in ("alice", "bob")}
    site = yaml.safe_load(Path("/etc/hpcbinder/site.yaml").read_text())
    site["repos"] = {
        **site.get("repos", {}),
        "protocols": ["https", "http", "ssh", "file"],
        "local_roots": [str(folder), str(passable)],
        "cache_dir": str(scratch / "checkouts"),
        "internal_networks": LOOPBACK_NETWORKS,  # the git servers: the site's own forges
    }
    site.setdefault("build", {})["private_store"] = f"{{home}}/.cache/hpcbinder-test-{tag}"
    site_file = scratch / "site.yaml"
    site_file.write_text(yaml.safe_dump(site))
    try:
        with (
            running_sshd(["alice"], key_owner="alice") as ssh,
            git_http_server(served, "alice", token) as http,
            running_build_server(site_file),
        ):
            known = f"-o UserKnownHostsFile={ssh['known_hosts']} -o IdentitiesOnly=yes"
            base = f"ssh://alice@127.0.0.1:{ssh['port']}{folder}"
            repos = {
                "local": Repo(local_spec(repo, "main"), local_spec(folder / "nothing", "main"), {}),
                "passable": Repo(
                    local_spec(passable / "analysis", "main"),
                    local_spec(passable / "nothing", "main"),
                    {},
                ),
                "ssh": Repo(
                    f"git/{quote(f'{base}/served.git', safe='')}/main",
                    f"git/{quote(f'{base}/nothing.git', safe='')}/main",
                    {
                        "alice": {"GIT_SSH_COMMAND": f"ssh -i {ssh['key_file']} {known}"},
                        "bob": {"GIT_SSH_COMMAND": f"ssh -i {bob_key} {known}"},
                    },
                ),
                "http": Repo(
                    f"git/{quote(f'{http}/served.git', safe='')}/main",
                    f"git/{quote(f'{http}/nothing.git', safe='')}/main",
                    {
                        "alice": {
                            "HPCBINDER_GIT_TOKEN": token,
                            "HPCBINDER_GIT_TOKEN_HOST": http,
                        },
                        "bob": {
                            "HPCBINDER_GIT_TOKEN": "not-alices",
                            "HPCBINDER_GIT_TOKEN_HOST": http,
                            "HPCBINDER_GIT_USERNAME": "alice",
                        },
                    },
                ),
            }
            urls = frozenset({f"file://{repo}", f"{base}/served.git", f"{http}/served.git"})
            yield World(
                site_file,
                site_file.with_suffix(".build-server.log"),
                repos,
                urls,
                stores,
                token,
                scratch / "checkouts",
            )
    finally:
        subprocess.run(
            ["rm", "-rf", str(folder), str(passable), str(scratch), *map(str, stores.values())]
        )


def hpcbinder(world: World, user: str, kind: str, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [str(SITE_BIN / "hpcbinder"), "--site", str(world.site_file), *args]
    return run_as(user, argv, world.repos[kind].env.get(user, {}))


def shared_images_of(world: World) -> list[str]:
    site = load_site(world.site_file)
    return [r.key for r in image_store(site).records() if r.meta.url in world.urls]


KINDS = ["local", "ssh", "http"]


@pytest.mark.parametrize("kind", KINDS)
def test_alice_builds_and_runs_her_private_repository(world: World, kind: str) -> None:
    spec = world.repos[kind].spec
    built = hpcbinder(world, "alice", kind, "build", spec)
    assert built.returncode == 0, built.stderr
    image = Path(built.stdout.strip().splitlines()[-1])
    store = world.stores["alice"]
    assert image.is_relative_to(store / "envs"), built.stdout
    assert store.stat().st_mode & 0o777 == 0o700
    ran = hpcbinder(world, "alice", kind, "sbatch", spec, "--run", "run.py", "--wait")
    assert ran.returncode == 0, ran.stderr
    assert MARKER in ran.stdout, (ran.stdout, ran.stderr)
    # Nothing of it in the shared store or the shared checkouts.
    assert shared_images_of(world) == []
    assert not world.checkouts.exists() or not any(world.checkouts.rglob("run.py"))
    # The token reached git's helper only: no log, record or file of hers holds it.
    assert world.token not in world.server_log.read_text()
    assert world.token not in built.stderr + ran.stderr + ran.stdout
    grep = subprocess.run(["grep", "-rlF", world.token, str(store)], capture_output=True)
    assert grep.returncode == 1, grep.stdout


@pytest.mark.parametrize("kind", [*KINDS, "passable"])
def test_bob_is_told_what_he_would_be_told_of_a_repository_that_does_not_exist(
    world: World, kind: str
) -> None:
    """Whether alice's repository exists or not, bob's build and batch run
    end with the same one line (its name aside); nothing is built for him."""
    repo = world.repos[kind]
    site = load_site(world.site_file)
    for command in (["build"], ["sbatch", "--run", "run.py"]):
        answers = []
        for spec in (repo.spec, repo.missing):
            done = hpcbinder(world, "bob", kind, *command[:1], spec, *command[1:])
            name = private.readable_name(site, spec)
            assert done.returncode == 2, (done.stdout, done.stderr)
            assert done.stderr.strip().splitlines()[-1] == f"error: {NoAccess.about(name)}"
            # Each line without its elapsed time ("[   0.1s]"), which load varies.
            lines = done.stderr.replace(name, "NAME").splitlines()
            answers.append([line.split("s] ", 1)[-1] for line in lines])
        assert answers[0] == answers[1]
    # The build server's log (a site's admins') says no more than bob was told.
    log = world.server_log.read_text()
    assert "mode 700" not in log and "not a git repository" not in log
    # Nor which repositories were asked for: a keyed hash of each (the old
    # log said "bob asks for SPEC" and "no anonymous access to SPEC").
    for spec in (repo.spec, repo.missing):
        assert spec not in log and private.readable_name(site, spec) not in log
    assert "Permission denied" not in log and "Authentication" not in log
    bobs = world.stores["bob"]
    assert not (bobs / "envs").exists() or not any((bobs / "envs").iterdir())
    assert shared_images_of(world) == []


def test_bob_reads_nothing_of_alices_store(world: World) -> None:
    """After alice's build: her store (images, checkouts, logs) is hers."""
    built = hpcbinder(world, "alice", "local", "build", world.repos["local"].spec)
    assert built.returncode == 0, built.stderr
    store = world.stores["alice"]
    assert any((store / "envs").iterdir())
    for path in (store, store / "envs", store / "repos"):
        listed = run_as("bob", ["ls", str(path)])
        assert listed.returncode != 0 and "Permission denied" in listed.stderr
    assert os.stat(store).st_uid == os.stat("/home/alice").st_uid


@dataclass(frozen=True)
class Vouched:
    site_file: Path
    server_log: Path
    spec: str
    token: str


@pytest.fixture(scope="module")
def vouched(world: World) -> Iterator[Vouched]:
    """A build server whose site vouches for a second HTTP git server (its
    deploy credentials, in a file root's and the build account's group's
    alone); the first, alice's, is not vouched for."""
    scratch = world.site_file.parent
    token = f"deploy-{uuid.uuid4().hex}"
    served = scratch / "http"
    credentials = scratch / "deploy.yaml"
    site = yaml.safe_load(world.site_file.read_text())
    with git_http_server(served, "deploy-bot", token) as http:
        host = http.removeprefix("http://")
        credentials.write_text(yaml.safe_dump({host: {"username": "deploy-bot", "token": token}}))
        subprocess.run(["chown", "root:hpcbuild", str(credentials)], check=True)
        credentials.chmod(0o640)
        site["build"]["deploy_credentials"] = str(credentials)
        site["repos"]["cache_dir"] = str(scratch / "vouched-checkouts")
        (scratch / "vouched-checkouts").mkdir()
        subprocess.run(["chown", "hpcbuild:hpcbuild", str(scratch / "vouched-checkouts")])
        site_file = scratch / "vouched.yaml"
        site_file.write_text(yaml.safe_dump(site))
        with running_build_server(site_file):
            spec = f"git/{quote(f'{http}/served.git', safe='')}/main"
            yield Vouched(site_file, site_file.with_suffix(".build-server.log"), spec, token)


def test_a_vouched_hosts_repository_is_built_once_for_all_with_its_deploy_credentials(
    world: World, vouched: Vouched
) -> None:
    """Fetched by the build server with the site's deploy token, built into
    the shared store, one image for bob and alice; the token in no log,
    record or checkout; it is not offered to another host."""
    argv = [str(SITE_BIN / "hpcbinder"), "--site", str(vouched.site_file), "build"]
    images = []
    for user in ("bob", "alice"):
        done = run_as(user, [*argv, vouched.spec])
        assert done.returncode == 0, done.stderr
        images.append(done.stdout.strip().splitlines()[-1])
    shared = load_site(vouched.site_file).image_store
    assert images[0] == images[1] and Path(images[0]).is_relative_to(shared), images
    checkouts = vouched.site_file.parent / "vouched-checkouts"
    assert any(checkouts.rglob("run.py"))
    for place in (vouched.server_log, checkouts, Path(images[0]).parent):
        grep = subprocess.run(["grep", "-rlF", vouched.token, str(place)], capture_output=True)
        assert grep.returncode == 1, grep.stdout
    # alice's own server (another port) is not vouched for: bob is told no access.
    other = run_as("bob", [*argv, world.repos["http"].spec], {})
    assert other.returncode == 2 and "no access" in other.stderr, other.stderr
