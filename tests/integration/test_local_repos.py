"""A repository below a local root, owned by one account (alice), resolved
and fetched by others: this process, the build account, another researcher.

git refuses a repository another account owns ("dubious ownership");
hpcbinder tells it that exactly this repository, checked to be below the
site's ``repos.local_roots``, is safe to read. The project venv's python
cannot run as the other accounts: they fetch with the site install's.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from urllib.parse import quote

import pytest
import yaml

from hpcbinder.config import RepoPolicy
from hpcbinder.errors import NoAccess, RepoNotAllowed
from hpcbinder.seams import git, proc
from hpcbinder.sources.providers import parse_spec
from tests.conftest import SITE_BIN, DevCluster, as_account, running_build_server
from tests.repohelpers import local_spec

pytestmark = pytest.mark.slurm

OWNER = "alice"
IDENTITY = ["-c", "user.name=alice", "-c", "user.email=alice@hpcbinder.invalid"]


def as_owner(*argv: str, cwd: Path | None = None, text: str | None = None) -> str:
    result = proc.run(list(argv), user=OWNER, cwd=cwd, input_text=text, timeout=60)
    return proc.check(result).stdout.strip()


@pytest.fixture
def alices_repo(shared_dir: Path, devcluster: DevCluster) -> tuple[Path, Path]:
    """(local root, repository below it), both alice's, folders mode 755:
    main with two commits, tag v1.0 on the first."""
    assert OWNER in devcluster.users
    root = shared_dir / "repos"
    as_owner("mkdir", "-m", "755", str(root))
    repo = root / "analysis"
    as_owner("git", "init", "-q", "-b", "main", str(repo))
    as_owner("tee", str(repo / "notebook.py"), text="print('one')\n")
    as_owner("git", *IDENTITY, "add", "-A", cwd=repo)
    as_owner("git", *IDENTITY, "commit", "-q", "-m", "one", cwd=repo)
    as_owner("git", *IDENTITY, "tag", "-a", "v1.0", "-m", "release", cwd=repo)
    as_owner("tee", str(repo / "notebook.py"), text="print('two')\n")
    as_owner("git", *IDENTITY, "commit", "-q", "-am", "two", cwd=repo)
    as_owner("chmod", "-R", "u=rwX,go=rX", str(root))
    assert repo.owner() == OWNER and (repo.stat().st_mode & 0o777) == 0o755
    return root, repo


def snapshot(folder: Path) -> list[tuple[str, int, int]]:
    """Every path below ``folder`` with its size and modification time."""
    entries = []
    for path in sorted(folder.rglob("*")):
        info = path.lstat()
        entries.append((str(path.relative_to(folder)), info.st_size, info.st_mtime_ns))
    return entries


#: Run as a fetcher with the site install's python: resolve each spec
#: (printing url and commit), then check the last one out into the cache.
FETCH = """
import sys
from pathlib import Path
from hpcbinder.sources import providers
from hpcbinder.config import RepoPolicy
root, cache, *specs = sys.argv[1:]
policy = RepoPolicy(protocols=["https", "file"], local_roots=[root])
for spec in specs:
    provider = providers.parse_spec(spec, policy)
    resolved = provider.resolve()
    print(resolved.url, resolved.commit)
print(providers.checkout(provider, resolved, Path(cache)))
"""


@pytest.mark.parametrize("fetcher", ["root", "hpcbuild", "bob"])
def test_anyone_fetches_a_repository_below_a_local_root(
    alices_repo: tuple[Path, Path], shared_dir: Path, fetcher: str
) -> None:
    root, repo = alices_repo
    head = as_owner("git", "rev-parse", "main", cwd=repo)
    first = as_owner("git", "rev-parse", "v1.0^{commit}", cwd=repo)
    before = snapshot(repo)
    cases = [
        (local_spec(repo, "main"), head),
        (f"git/{quote(f'file://{repo}', safe='')}/v1.0", first),
        (local_spec(repo, first[:9]), first),  # a short SHA: fetched to look it up
    ]
    cache = shared_dir / f"cache-{fetcher}"
    specs = [spec for spec, _ in cases]
    python = str(SITE_BIN / "python")
    done = as_account(fetcher, [python, "-c", FETCH, str(root), str(cache), *specs], timeout=120)
    assert done.returncode == 0, done.stderr
    *resolved, last = done.stdout.splitlines()
    assert resolved == [f"file://{repo} {commit}" for _, commit in cases]
    checkout = Path(last)
    assert (checkout / "notebook.py").read_text() == "print('one')\n"
    assert checkout.owner() == fetcher
    in_checkout = proc.run(["git", "rev-parse", "HEAD"], user=fetcher, cwd=checkout, timeout=30)
    assert proc.check(in_checkout).stdout.strip() == first
    assert snapshot(repo) == before  # read, never written


def test_other_accounts_repositories_need_the_check(alices_repo: tuple[Path, Path]) -> None:
    """Without ``local_repo`` git refuses (and says why, in one line); a
    repository outside the roots never gets that far."""
    root, repo = alices_repo
    url = f"file://{repo}"
    limits = git.FetchLimits(64, 60, "repos.max_fetch_mb", "repos.fetch_timeout_seconds")
    with pytest.raises(git.GitError) as caught:
        git.ls_remote(url, protocols=["file"], limits=limits)
    assert str(caught.value) == (
        f"cannot list refs of {url}: detected dubious ownership in repository at '{repo}/.git'"
    )
    assert git.ls_remote(url, protocols=["file"], limits=limits, local_repo=repo)
    private = root.parent / "private"  # alice's too, but not below the root
    as_owner("git", "init", "-q", "-b", "main", str(private))
    as_owner("ln", "-s", str(private), str(root / "link"))
    site = RepoPolicy(protocols=["file"], local_roots=[root])
    for spec in (
        f"git/{quote(f'file://{private}', safe='')}/main",
        f"git/{quote(f'file://{root}/link', safe='')}/main",
        local_spec(root / "link", "main"),
    ):
        with pytest.raises(RepoNotAllowed, match=r"repos\.local_roots"):
            parse_spec(spec, site).resolve()


def test_the_build_server_lends_nobody_its_rights_to_read_a_repository(
    alices_repo: tuple[Path, Path], shared_dir: Path
) -> None:
    """alice's repository is open to the build account (its group) but not
    to bob: the build server fetches it for nobody, as its checkout and
    image would be readable by all. bob is told it is not there (or not
    his to read); alice fetches it as herself, into her own store (and goes
    on to the next check: the file she names does not exist); once it is
    open to all, the build server fetches it."""
    root, repo = alices_repo
    shutil.chown(repo, "alice", "hpcbuild")
    repo.chmod(0o750)
    site = yaml.safe_load(Path("/etc/hpcbinder/site.yaml").read_text())
    site["repos"] = {**site.get("repos", {}), "local_roots": [str(root)]}
    site["repos"]["cache_dir"] = str(shared_dir / "checkouts")
    site.setdefault("build", {})["private_store"] = str(shared_dir / "{user}-store")
    site_file = shared_dir / "site.yaml"
    site_file.write_text(yaml.safe_dump(site))
    spec = local_spec(repo, "main")

    def sbatch(user: str, run: str) -> subprocess.CompletedProcess[str]:
        argv = [str(SITE_BIN / "hpcbinder"), "--site", str(site_file), "sbatch", spec]
        return as_account(user, [*argv, "--run", run], timeout=300)

    checkouts = shared_dir / "checkouts"
    with running_build_server(site_file):
        bob = sbatch("bob", "notebook.py")
        alice = sbatch("alice", "no-such-file.py")
        assert not checkouts.exists() or not any(checkouts.rglob("notebook.py"))
        assert any((shared_dir / "alice-store" / "repos").rglob("notebook.py"))
        repo.chmod(0o755)
        opened = sbatch("alice", "no-such-file.py")
    assert bob.returncode == 2, bob.stderr
    assert bob.stderr.strip() == f"error: {NoAccess.about(f'{root.name}/analysis @ main')}"
    assert alice.returncode == 2, alice.stderr
    assert "no-such-file.py" in alice.stderr and "no access" not in alice.stderr
    assert opened.returncode == 2, opened.stderr
    assert "no access" not in opened.stderr and "no-such-file.py" in opened.stderr
    assert any(checkouts.rglob("notebook.py"))


def test_a_repository_borrowing_objects_from_elsewhere_is_refused(
    alices_repo: tuple[Path, Path], shared_dir: Path
) -> None:
    """git would read the objects an ``alternates`` file names from any
    folder, past the roots and the requester's rights."""
    root, repo = alices_repo
    borrower = root / "borrower"
    as_owner("git", "clone", "-q", "--shared", str(repo), str(borrower))
    assert (borrower / ".git" / "objects" / "info" / "alternates").is_file()
    site = RepoPolicy(protocols=["file"], local_roots=[root])
    with pytest.raises(RepoNotAllowed, match=r"objects/info/alternates"):
        parse_spec(local_spec(borrower, "main"), site).resolve()
