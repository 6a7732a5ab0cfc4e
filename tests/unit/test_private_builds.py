"""Private repositories (hpcbinder.images.private): the researcher's own
credentials reach git by environment only, the build server's refusal of
a repository it cannot fetch is one text whether it exists or not, and a
researcher's own store is a folder of hers alone."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from hpcbinder.config import RepoPolicy, Site
from hpcbinder.errors import NoAccess, RepoUnreachable, UserError
from hpcbinder.images import private, server
from hpcbinder.seams import git
from hpcbinder.sources import providers
from tests.repohelpers import local_spec

LIMITS = git.FetchLimits(10, 30.0, "repos.max_fetch_mb", "repos.fetch_timeout_seconds")

#: Tokens as hostile as text on one line gets: shell syntax, quotes, $, `.
TOKENS = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\n\r"),
    min_size=1,
    max_size=40,
)


@settings(max_examples=40, deadline=None)
@given(token=TOKENS)
@example(token="\\0")  # noqa: S106 - dash's echo read it as a NUL
@example(token="a\\nb\\c")  # noqa: S106
def test_a_token_reaches_git_only_through_its_helpers_variable(token: str) -> None:
    """git's credential helper (a constant: it holds no value) answers
    with exactly the token, and nothing the token spells runs."""
    work = Path(tempfile.mkdtemp(prefix="hpcbinder-token-"))
    try:
        with git.own_credentials(git.OwnCredentials(token, "alice", "https://git.example.org")):
            env = git._env(["https"], work)
        assert env["GIT_CONFIG_KEY_0"] == "credential.https://git.example.org.helper"
        assert env["GIT_CONFIG_VALUE_0"] == git._TOKEN_HELPER
        assert env[git.TOKEN_VARIABLE] == token
        # As git runs a "!" helper: through the shell, with "get".
        done = subprocess.run(
            ["/bin/sh", "-c", git._TOKEN_HELPER.removeprefix("!") + ' "$@"', "helper", "get"],
            env=env,
            cwd=work,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        assert done.stdout == f"username=alice\npassword={token}\n"
        assert list(work.iterdir()) == []
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_git_asks_the_helper_and_argv_holds_no_token(tmp_path: Path) -> None:
    token = "s3cr3t-$(touch pwned)-'\"`id`"  # noqa: S105
    with git.own_credentials(git.OwnCredentials(token, "alice", "https://git.example.org")):
        filled = git._git(
            ["credential", "fill"],
            "credential",
            protocols=["https"],
            limits=LIMITS,
            deadline=time.monotonic() + 30,
            cwd=tmp_path,
        )
    # stdin is /dev/null: git asks for nothing, but the call shows the argv.
    assert all(token not in arg for arg in filled.argv)
    assert not (tmp_path / "pwned").exists()


def test_outside_the_context_git_fetches_anonymously(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSH_AUTH_SOCK", "/run/agent")
    monkeypatch.setenv(git.TOKEN_VARIABLE, "from-the-environment")
    with git.own_credentials(git.OwnCredentials(None, "alice")):
        own = git._env(["ssh"], Path("/nonexistent"))
    anonymous = git._env(["ssh"], Path("/nonexistent"))
    assert own["SSH_AUTH_SOCK"] == "/run/agent" and own["HOME"] == os.environ["HOME"]
    assert git.TOKEN_VARIABLE not in own  # a token only when she gives one
    assert "SSH_AUTH_SOCK" not in anonymous and git.TOKEN_VARIABLE not in anonymous
    assert anonymous["HOME"] == "/nonexistent"


def test_the_build_servers_refusal_is_one_text_whether_the_repository_exists(
    tmp_path: Path,
) -> None:
    """A mode-700 repository and a path that names nothing, below the same
    local root, get the same answer (names aside), and so do the other ways
    the build account cannot fetch; it is the no-access kind, which the
    researcher's client builds as her. The old server said 'not readable
    by every account (... is mode 700)' for one and 'is not a git
    repository' for the other."""
    root = tmp_path / "home"
    repo = root / "secret" / "analysis"
    repo.mkdir(parents=True)
    (repo / ".git" / "objects").mkdir(parents=True)
    (root / "secret").chmod(0o700)
    policy = RepoPolicy(protocols=["file"], local_roots=[root])
    answers = []
    for path in (repo, root / "secret" / "nothing"):
        spec = local_spec(path, "main")
        with pytest.raises(providers.NotOpenToAll) as caught:
            providers.check_shareable(spec, policy)
        event = server._failure(spec, policy, caught.value)
        name = providers.parse_spec(spec, policy).readable_name()
        assert event.kind == "no-access"
        assert event.message == str(NoAccess.about(name))
        answers.append(event.message.replace(name, "NAME"))
    spec = local_spec(repo, "main")
    name = providers.parse_spec(spec, policy).readable_name()
    for other in (RepoUnreachable("cannot list refs: Permission denied"), PermissionError(13, "x")):
        answers.append(server._failure(spec, policy, other).message.replace(name, "NAME"))
    assert len(set(answers)) == 1


def test_her_store_is_a_folder_of_hers_alone(tmp_path: Path) -> None:
    site = Site.model_validate({"build": {"private_store": f"{tmp_path}/{{user}}/store"}})
    user = "root"
    store = private.open_store(site, user)
    assert store.root == tmp_path / "root" / "store"
    assert store.root.stat().st_mode & 0o777 == 0o700
    store.root.chmod(0o755)
    assert private.open_store(site, user).root.stat().st_mode & 0o777 == 0o700
    shutil.rmtree(store.root)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    store.root.symlink_to(elsewhere)
    with pytest.raises(private.PrivateStoreError, match=r"build\.private_store"):
        private.open_store(site, user)
    store.root.unlink()
    store.root.mkdir()
    os.chown(store.root, 65534, 65534)
    with pytest.raises(private.PrivateStoreError, match="not a folder of root's"):
        private.open_store(site, user)
    dotted = Site.model_validate({"build": {"private_store": "{home}/../shared"}})
    with pytest.raises(private.PrivateStoreError, match=r"no \.\."):
        private.private_root(dotted, user)


def test_private_builds_use_her_store_for_everything_they_write(tmp_path: Path) -> None:
    """Checkouts and download caches in her store, builds as her in Slurm
    jobs; the site's image store (its base images) unchanged."""
    site = Site.model_validate({"build": {"private_store": f"{tmp_path}/{{user}}"}})
    store = private.open_store(site, "root")
    mine = private.private_site(site, store, "root")
    assert mine.build.account == "root" and mine.build.backend == "slurm"
    assert mine.build.cache_dir == store.root / private.CACHES
    assert mine.repos.cache_dir == store.root / private.CHECKOUTS
    assert mine.image_store == site.image_store


def test_her_store_is_refused_below_a_folder_another_account_could_replace(
    tmp_path: Path,
) -> None:
    """bob made /scratch/alice before her (or /scratch lost its sticky bit):
    he could swap her store for a folder of his after every check."""
    scratch = tmp_path / "scratch"
    scratch.mkdir(mode=0o1777)
    scratch.chmod(0o1777)  # sticky, as /tmp: others' names cannot be swapped
    site = Site.model_validate({"build": {"private_store": f"{scratch}/{{user}}/hpcbinder"}})
    assert private.open_store(site, "root").root == scratch / "root" / "hpcbinder"
    shutil.rmtree(scratch / "root")
    (scratch / "root").mkdir()
    os.chown(scratch / "root", 65534, 65534)  # bob's, made first
    with pytest.raises(private.PrivateStoreError, match="could be replaced"):
        private.open_store(site, "root")
    shutil.rmtree(scratch / "root")
    scratch.chmod(0o777)  # not sticky: anyone may rename her folder away
    with pytest.raises(private.PrivateStoreError, match="could be replaced"):
        private.open_store(site, "root")
    scratch.chmod(0o755)
    assert private.open_store(site, "root").root.is_dir()
    (tmp_path / "file").write_text("")
    unmakeable = Site.model_validate({"build": {"private_store": f"{tmp_path}/file/{{user}}"}})
    with pytest.raises(private.PrivateStoreError, match=r"cannot make root's private store"):
        private.open_store(unmakeable, "root")


def test_private_builds_may_have_a_partition_of_their_own(tmp_path: Path) -> None:
    site = Site.model_validate(
        {"build": {"private_store": f"{tmp_path}/{{user}}", "private_partition": "batch"}}
    )
    mine = private.private_site(site, private.open_store(site, "root"), "root")
    assert mine.build.partition == "batch"


def test_her_token_leaves_the_process_environment_at_first_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Nothing the CLI starts after it (sbatch, a build step) inherits it;
    git's helper still gets it on every fetch."""
    private._given_token.cache_clear()
    monkeypatch.setenv(git.TOKEN_VARIABLE, "her-token")
    monkeypatch.setenv(git.TOKEN_ORIGIN_VARIABLE, "https://GitLab.example.org:8443/")
    try:
        first = private.credentials("alice")
        assert git.TOKEN_VARIABLE not in os.environ
        expected = git.OwnCredentials("her-token", "alice", "https://gitlab.example.org:8443")
        assert first == private.credentials("alice") == expected
    finally:
        private._given_token.cache_clear()


@pytest.mark.parametrize(
    "origin", ["", "gitlab.example.org", "https://*.example.org", "https://h/path", "ssh://h"]
)
def test_a_token_without_the_one_host_it_is_for_is_refused(
    monkeypatch: pytest.MonkeyPatch, origin: str
) -> None:
    """Given for whatever host she asks for, a link bob gives her (his
    host answering 401) would collect it: one line naming the variable."""
    private._given_token.cache_clear()
    monkeypatch.setenv(git.TOKEN_VARIABLE, "her-token")
    monkeypatch.setenv(git.TOKEN_ORIGIN_VARIABLE, origin)
    try:
        with pytest.raises(UserError, match=git.TOKEN_ORIGIN_VARIABLE) as caught:
            private.credentials("alice")
        assert "her-token" not in str(caught.value) and "\n" not in str(caught.value)
    finally:
        private._given_token.cache_clear()


def test_a_fetch_that_reached_a_site_limit_says_so_and_is_not_no_access(tmp_path: Path) -> None:
    """Its data was flowing, so it tells nothing of whether a repository
    exists: the researcher hears which limit (site file setting) stopped it,
    not 'no access' (which would also send her to build it herself)."""
    policy = RepoPolicy(protocols=["https"])
    spec = "git/https%3A%2F%2Fgit.example.org%2Fbig.git/main"
    try:
        raise git.FetchLimitExceeded("stopped after taking more than 5 MB (repos.max_fetch_mb)")
    except git.FetchLimitExceeded as cause:
        limited = RepoUnreachable(str(cause))
        limited.__cause__ = cause
    event = server._failure(spec, policy, limited)
    assert event.kind == "user" and "repos.max_fetch_mb" in event.message
    assert private.no_access(RepoUnreachable("cannot list refs: Permission denied"))
    assert not private.no_access(limited)


def test_the_build_servers_log_names_no_spec_it_may_not_read(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Its log (readable by a site's admins, world-readable in the old dev
    cluster) said 'no anonymous access to SPEC': the names of others'
    private repositories. Now a hash keyed with the server's own secret,
    which a reader can neither reverse nor check a guess against."""
    policy = RepoPolicy(protocols=["https"])
    spec = "git/https%3A%2F%2Fgitlab.example.org%2Falice%2Fthesis.git/main"
    with caplog.at_level(logging.INFO, logger=server.log.name):
        event = server._failure(spec, policy, RepoUnreachable("Authentication failed"))
    assert event.kind == "no-access"
    assert "thesis" not in caplog.text and "gitlab" not in caplog.text
    assert server.request_id(spec) in caplog.text
    assert server.request_id(spec) == server.request_id(spec) != server.request_id(spec + "x")
    assert hashlib.sha256(spec.encode()).hexdigest()[:16] not in server.request_id(spec)


def test_a_folder_another_account_makes_while_her_store_is_made_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bob makes /scratch/alice between open_store's check (which skips a
    folder not there yet) and its mkdir (exist_ok accepts it): her store
    would be below his folder. The old code accepted it."""
    shared = tmp_path / "scratch"
    shared.mkdir(mode=0o777)
    shared.chmod(0o1777)  # sticky, as /scratch is
    site = Site.model_validate({"build": {"private_store": f"{shared}/{{user}}/store"}})
    bobs = shared / "root"
    real_mkdir = Path.mkdir

    def racing_mkdir(
        self: Path, mode: int = 0o777, parents: bool = False, exist_ok: bool = False
    ) -> None:
        if self == bobs and not bobs.exists():
            real_mkdir(bobs, mode=0o777)
            os.chown(bobs, 65534, 65534)  # bob's, made first
        real_mkdir(self, mode=mode, parents=parents, exist_ok=exist_ok)

    monkeypatch.setattr(Path, "mkdir", racing_mkdir)
    with pytest.raises(private.PrivateStoreError, match=r"build\.private_store"):
        private.open_store(site, "root")
