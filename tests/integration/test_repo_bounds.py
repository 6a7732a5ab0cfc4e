"""What a repository can make hpcbinder read or spend before any build.

- Links: a repository may hold a symlink to any path; a build that copies
  the repository would follow it and put the build account's file in the
  image. Links leading out of the checkout are refused before anything
  reads the checkout, naming the link; links inside it keep working.
- Fetch bounds: a repository may be any size (or check out to far more than
  its pack) and a server may never answer. Fetches stop while they run at
  the site's ``repos.max_fetch_mb`` and ``repos.fetch_timeout_seconds``,
  leave no checkout, and say which setting to change.

Repositories are real git repositories fetched through ``pipeline.prepare``
(or by the build server for a researcher), as a launch fetches them.
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import pytest

from hpcbinder.errors import RepoConfigError, RepoUnreachable
from hpcbinder.render import pipeline
from hpcbinder.seams import git
from tests.conftest import SHARED_SCRATCH, SITE_BIN, DevCluster, as_account, running_build_server
from tests.loopback import LOOPBACK_NETWORKS
from tests.repohelpers import GIT_IDENTITY, local_spec, site_for_tests
from tests.storehelpers import build_workspace, dev_cluster_base, workspace_site

BAIT = "a file only the build account reads\n"


def commit_repo(repo: Path, files: dict[str, str | bytes], links: dict[str, str]) -> Path:
    """A repository at ``repo`` with ``files`` and symlinks ``links`` (path
    → target, stored as git stores a link), in one commit."""
    for name, content in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            (repo / name).write_bytes(content)
        else:
            (repo / name).write_text(content)
    for name, target in links.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, repo / name)
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "repo"]):
        subprocess.run(["git", *GIT_IDENTITY, *args], cwd=repo, check=True, capture_output=True)
    return repo


@pytest.fixture
def secret() -> Iterator[Path]:
    """A file only the build account (and root) can read: what a link
    would smuggle into an image."""
    folder = SHARED_SCRATCH / f"secret-{uuid.uuid4().hex[:10]}"
    folder.mkdir(mode=0o755, parents=True)
    path = folder / "id_ed25519"
    path.write_text(BAIT)
    subprocess.run(["chown", "hpcbuild:hpcbuild", str(path)], check=True)
    path.chmod(0o600)
    yield path
    subprocess.run(["rm", "-rf", str(folder)], check=False)


# --- links -------------------------------------------------------------------


#: Links leading out ({secret}: the build account's file, {folder}: its
#: folder), and the link each error must name.
LINKS_OUT = {
    "absolute": ({"data/key": "{secret}"}, "data/key"),
    "relative": ({"data/key": "../../../../../../../../etc/hostname"}, "data/key"),
    "through-a-link": ({"data/a": "b", "data/b": "/etc"}, "data/a"),
    "dangling": ({"data/key": "/nonexistent/hpcbinder/key"}, "data/key"),
    "binder-folder": ({"binder": "{folder}"}, "binder"),
    "dot-binder-folder": ({".binder": "/etc"}, ".binder"),
    "configuration-file": ({"requirements.txt": "/etc/passwd"}, "requirements.txt"),
}


@pytest.mark.parametrize("case", sorted(LINKS_OUT))
def test_links_out_of_the_repository_are_refused(tmp_path: Path, secret: Path, case: str) -> None:
    templates, named = LINKS_OUT[case]
    links = {n: t.format(secret=secret, folder=secret.parent) for n, t in templates.items()}
    repo = commit_repo(tmp_path / "repo", {"postBuild": "#!/bin/sh\ntrue\n"}, links)
    with pytest.raises(RepoConfigError) as caught:
        pipeline.prepare(local_spec(repo), site_for_tests(tmp_path))
    message = str(caught.value)
    assert message.startswith(f"{named}: links to {links[named]}, outside the repository"), message
    assert "\n" not in message


def test_links_inside_the_repository_are_kept(tmp_path: Path) -> None:
    """A binder folder that is a link to another folder of the repository,
    and links between its files, are repository content like any other."""
    repo = commit_repo(
        tmp_path / "repo",
        {"envs/py/requirements.txt": "numpy\n", "data/real.txt": "real\n"},
        {"binder": "envs/py", "data/alias.txt": "real.txt", "docs": "data", "self": "self"},
    )
    prepared = pipeline.prepare(local_spec(repo), site_for_tests(tmp_path))
    assert prepared.plan.env_files == ["binder/requirements.txt"]
    assert "binder/requirements.txt" in prepared.rendered.definition


@pytest.fixture(scope="module")
def build_server(devcluster: DevCluster) -> Iterator[tuple[Path, Path]]:
    """(site file, repositories folder): a store on the dev base, a checkout
    cache, and a build server as the build account for them."""
    with build_workspace("bounds", dev_cluster_base()) as root:
        site_file = root / "site.yaml"
        site_file.write_text(workspace_site(root).model_dump_json())
        with running_build_server(site_file):
            yield site_file, root / "repos"


def build_as_alice(site_file: Path, repo: Path) -> subprocess.CompletedProcess[str]:
    argv = [str(SITE_BIN / "hpcbinder"), "--site", str(site_file), "build", local_spec(repo)]
    return as_account("alice", argv, timeout=600)


@pytest.mark.slurm
@pytest.mark.apptainer
def test_a_link_to_the_build_accounts_file_never_reaches_an_image(
    build_server: tuple[Path, Path], secret: Path
) -> None:
    """The build account can read the file; a repository linking to it is
    refused by the build server before any build, naming the link."""
    site_file, repos = build_server
    assert as_account("hpcbuild", ["cat", str(secret)]).stdout == BAIT  # the bait is real
    repo = commit_repo(
        repos / f"hostile-{uuid.uuid4().hex[:6]}",
        {"apt.txt": "less\n", "postBuild": "#!/bin/sh\ntrue\n", "data/real.txt": "real\n"},
        {"data/key": str(secret)},
    )
    done = build_as_alice(site_file, repo)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"data/key: links to {secret}, outside the repository" in done.stderr
    store = site_file.parent / "store"
    built = [p for p in store.rglob("*") if p.is_file() and "bases" not in p.parts]
    assert built == [], built


@pytest.mark.slurm
@pytest.mark.apptainer
def test_links_inside_the_repository_reach_the_image(build_server: tuple[Path, Path]) -> None:
    site_file, repos = build_server
    repo = commit_repo(
        repos / f"linked-{uuid.uuid4().hex[:6]}",
        {"postBuild": "#!/bin/sh\ntrue\n", "data/real.txt": "real\n"},
        {"data/alias.txt": "real.txt", "docs": "data"},
    )
    done = build_as_alice(site_file, repo)
    assert done.returncode == 0, done.stdout + done.stderr
    run_it = next(line for line in done.stderr.splitlines() if line.startswith("run it with: "))
    launch = shlex.split(run_it.removeprefix("run it with: ").removesuffix(" COMMAND"))
    shown = as_account("alice", [*launch, "cat", "/srv/repo/docs/alias.txt"], timeout=120)
    assert shown.stdout == "real\n", shown.stderr


# --- fetch bounds ------------------------------------------------------------


def no_checkout_left(cache: Path) -> None:
    """Nothing in the checkout cache but the empty folder of the repository
    (its checkouts go below it, one per commit)."""
    left = [p.relative_to(cache) for p in cache.rglob("*")]
    assert all(len(p.parts) == 1 and (cache / p).is_dir() for p in left), left


@pytest.mark.parametrize(
    ("kind", "megabytes"),
    [("random", 30), ("zeros", 100)],  # packs of 30 MB and of 100 KB
)
def test_a_fetch_over_the_size_limit_stops(tmp_path: Path, kind: str, megabytes: int) -> None:
    blob = os.urandom(megabytes << 20) if kind == "random" else bytes(megabytes << 20)
    repo = commit_repo(tmp_path / "repo", {"README.md": "big\n", "blob.bin": blob}, {})
    site = site_for_tests(tmp_path, repos={"max_fetch_mb": 5})
    started = time.monotonic()
    with pytest.raises(RepoUnreachable) as caught:
        pipeline.prepare(local_spec(repo), site)
    elapsed = time.monotonic() - started
    assert str(caught.value).endswith(
        "stopped after taking more than 5 MB (this site's limit, repos.max_fetch_mb)"
    ), caught.value
    no_checkout_left(tmp_path / "cache")
    print(f"size limit reached and cleaned up in {elapsed:.2f} s")


@contextmanager
def silent_git_server() -> Iterator[tuple[int, list[socket.socket]]]:
    """A git:// server on loopback that accepts connections and never
    answers: (its port, the connections it accepted)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.1)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], accepted
    finally:
        stop.set()
        thread.join()
        for connection in accepted:
            connection.close()
        listener.close()


def processes_naming(text: str) -> list[int]:
    """Pids of processes whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and text in (entry / "cmdline").read_text(errors="replace"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.mark.parametrize("ref", ["main", "0123456789abcdef0123456789abcdef01234567"])
def test_a_fetch_over_the_time_limit_stops(tmp_path: Path, ref: str) -> None:
    """A branch is listed first (ls-remote), a full commit id fetched at
    once: either way the silent server costs the time limit, no more."""
    site = site_for_tests(
        tmp_path, repos={"fetch_timeout_seconds": 2, "internal_networks": LOOPBACK_NETWORKS}
    )
    with silent_git_server() as (port, accepted):
        url = f"git://127.0.0.1:{port}/repo.git"
        started = time.monotonic()
        with pytest.raises(RepoUnreachable) as caught:
            pipeline.prepare(f"git/{quote(url, safe='')}/{ref}", site)
        elapsed = time.monotonic() - started
        assert accepted, "git never reached the server"
        assert processes_naming(f"127.0.0.1:{port}") == []
    assert str(caught.value).endswith(
        "stopped after 2 s (this site's time limit, repos.fetch_timeout_seconds)"
    ), caught.value
    assert 2 <= elapsed < 5, elapsed
    no_checkout_left(tmp_path / "cache")


def test_what_git_starts_is_stopped_with_it(tmp_path: Path) -> None:
    """The limits hold for git's helpers too (upload-pack, remote-https,
    index-pack): the whole process group goes. Here git runs an alias that
    starts a writer without end in the background."""
    limits = git.FetchLimits(2, 30, "repos.max_fetch_mb", "repos.fetch_timeout_seconds")
    alias = "alias.flood=!yes > flood & echo $! > writer; wait"
    with pytest.raises(git.FetchLimitExceeded, match=r"more than 2 MB .*repos\.max_fetch_mb"):
        git._git(
            ["-c", alias, "flood"],
            "flooding",
            protocols=["file"],
            limits=limits,
            deadline=time.monotonic() + limits.seconds,
            cwd=tmp_path,
            watch=[tmp_path],
        )
    writer = int((tmp_path / "writer").read_text())
    time.sleep(0.2)
    assert not Path(f"/proc/{writer}").exists() or "yes" not in Path(
        f"/proc/{writer}/cmdline"
    ).read_text(errors="replace")
