"""Repositories on this host: only below the site's ``repos.local_roots``,
whichever provider names them and however the URL is spelled; git's error
messages, readable."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import pytest

from hpcbinder.config import RepoPolicy
from hpcbinder.errors import RepoNotAllowed, RepoUnreachable, SpecError
from hpcbinder.seams import git, proc
from hpcbinder.sources.providers import (
    GitRepoProvider,
    ResolvedRepo,
    local_repo_path,
    parse_spec,
    reaches_local_files,
)
from tests.repohelpers import git as run_git


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A local root holding one repository, ``repo`` (main, one commit)."""
    path = tmp_path / "root"
    (path / "repo").mkdir(parents=True)
    run_git(path / "repo", "init", "-q", "-b", "main")
    (path / "repo" / "a.txt").write_text("one\n")
    run_git(path / "repo", "add", "-A")
    run_git(path / "repo", "commit", "-q", "-m", "one")
    return path


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A repository outside the root."""
    path = tmp_path / "elsewhere"
    path.mkdir()
    run_git(path, "init", "-q", "-b", "main")
    return path


def policy(root: Path, **more: object) -> RepoPolicy:
    return RepoPolicy.model_validate(
        {"protocols": ["https", "git", "file"], "local_roots": [str(root)], **more}
    )


def git_spec(url: str, ref: str = "main") -> str:
    return f"git/{quote(url, safe='')}/{quote(ref, safe='')}"


def refused(spec: str, site: RepoPolicy) -> str:
    """The one-line message a spec is refused with (at parse or resolve)."""
    with pytest.raises(RepoNotAllowed) as caught:
        parse_spec(spec, site).resolve()
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_file_url_outside_the_roots_is_refused(root: Path, outside: Path) -> None:
    message = refused(git_spec(f"file://{outside}"), policy(root))
    assert "not below this site's local repository roots (repos.local_roots)" in message
    message = refused(git_spec(f"file://{outside}"), policy(root, local_roots=[]))
    assert "(repos.local_roots is empty)" in message


def test_file_url_inside_a_root_is_allowed(root: Path) -> None:
    provider = parse_spec(git_spec(f"file://{root}/repo"), policy(root))
    assert isinstance(provider, GitRepoProvider)
    assert provider.check_allowed() == root / "repo"
    resolved = provider.resolve()
    assert resolved.url == f"file://{root}/repo"
    assert resolved.commit == run_git(root / "repo", "rev-parse", "main")


def test_dotdot_and_symlinks_cannot_leave_a_root(root: Path, outside: Path) -> None:
    (root / "link").symlink_to(outside)
    site = policy(root)
    for spec in (
        git_spec(f"file://{root}/link"),
        f"local/{quote(str(root / 'link'), safe='')}/main",
    ):
        message = refused(spec, site)
        assert "repos.local_roots" in message, spec
    for spec in (  # refused as written, before any path is resolved
        git_spec(f"file://{root}/../elsewhere"),
        git_spec(f"file://{root}/repo/../../elsewhere"),
        f"local/{quote(f'{root}/repo/../../elsewhere', safe='')}/main",
    ):
        with pytest.raises(SpecError, match=r"no \. or \.\. part"):
            parse_spec(spec, site)


def test_symlink_within_a_root_resolves_to_its_real_path(root: Path) -> None:
    (root / "alias").symlink_to(root / "repo")
    provider = parse_spec(git_spec(f"file://{root}/alias"), policy(root))
    assert provider.resolve().url == f"file://{root}/repo"  # what git is given
    banned = policy(root, ban=[f"file://{root}/repo"])
    assert "is banned" in refused(git_spec(f"file://{root}/alias"), banned)
    allowed_alias_only = policy(root, allow=[f"file://{root}/alias"])
    message = refused(git_spec(f"file://{root}/alias"), allowed_alias_only)
    assert "allow list" in message


def test_git_directory_must_be_below_a_root_too(root: Path, outside: Path) -> None:
    site = policy(root)
    dot_link = root / "dotlink"
    dot_link.mkdir()
    (dot_link / ".git").symlink_to(outside / ".git")
    gitfile = root / "gitfile"
    gitfile.mkdir()
    (gitfile / ".git").write_text(f"gitdir: {outside / '.git'}\n")
    (root / "fallback.git").symlink_to(outside / ".git")  # git tries PATH.git for PATH
    for name in ("dotlink", "gitfile", "fallback"):
        assert "its git directory" in refused(git_spec(f"file://{root}/{name}"), site), name


@pytest.mark.parametrize(
    "spelling",
    [
        "file://localhost{path}",  # git ignores the host part
        "file://{path}/%2E%2E/%2E%2E/elsewhere",  # git decodes %-escapes
        "file://{path}%20",
        "file://{path}?x",
        "file://{path}#x",
        "FILE://{path}",
        "File://{path}",
        "file:{path}",
        "file:/{path}",
        "file::{path}",
        "file://",
        "file:",
        "{path}",  # a plain path is local to git
        "./repo",
        "repo",
    ],
)
def test_file_variants_are_refused(root: Path, spelling: str) -> None:
    url = spelling.format(path=root / "repo")
    assert reaches_local_files(url)
    with pytest.raises(RepoNotAllowed, match=r"repos\.local_roots"):
        local_repo_path(url, [root])


@pytest.mark.parametrize(
    "url",
    [
        "https://example.org/a/b.git",
        "git://127.0.0.1:9418/repo",
        "ssh://host/srv/repo",
        "git@example.org:org/repo.git",
        "http://localhost/file:/x",
    ],
)
def test_remote_urls_are_not_local(root: Path, url: str) -> None:
    assert not reaches_local_files(url)
    assert local_repo_path(url, [root]) is None


def test_git_specs_with_file_variants_are_refused(root: Path) -> None:
    site = policy(root)
    for url in (
        f"file://localhost{root}/repo",
        f"file://{root}/repo/%2E%2E/%2E%2E/x",
        f"file://{root}/repo?x",
    ):
        try:
            provider = parse_spec(git_spec(url), site)
        except SpecError:
            continue  # refused at once: not a clone URL at all
        with pytest.raises(RepoNotAllowed, match=r"repos\.local_roots"):
            provider.resolve()


def test_local_specs_share_the_check(root: Path, outside: Path) -> None:
    site = policy(root)
    inside = parse_spec(f"local/{quote(str(root / 'repo'), safe='')}/main", site)
    assert inside.url == f"file://{root}/repo"
    with pytest.raises(RepoNotAllowed, match=r"repos\.local_roots"):
        parse_spec(f"local/{quote(str(outside), safe='')}/main", site)
    with pytest.raises(SpecError, match="invalid local repository path"):
        parse_spec("local/repo/main", site)  # relative: not resolved against our cwd
    with pytest.raises(SpecError, match="no %-escapes"):
        parse_spec(f"local/{quote(str(root / 'a%2Fb'), safe='')}/main", site)


def test_fetch_checks_the_resolved_url_again(root: Path, outside: Path, tmp_path: Path) -> None:
    provider = parse_spec(git_spec(f"file://{root}/repo"), policy(root))
    forged = ResolvedRepo(provider.spec, f"file://{outside}", "main", "0" * 40)
    with pytest.raises(RepoNotAllowed, match=r"repos\.local_roots"):
        provider.fetch(forged, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_file_protocol_still_needs_the_site_protocol(root: Path) -> None:
    with pytest.raises(RepoNotAllowed, match="protocol 'file' is not allowed"):
        parse_spec(git_spec(f"file://{root}/repo"), RepoPolicy(local_roots=[root])).resolve()


def test_safe_directory_goes_to_upload_pack_for_that_path_only(root: Path) -> None:
    assert git._upload_pack(None) == []
    (option,) = git._upload_pack(root / "repo")
    assert option == (
        f"--upload-pack=git -c safe.directory={root}/repo "
        f"-c safe.directory={root}/repo/.git upload-pack"
    )
    for bad in ("relative", "/a/../b", "/a b", "/a;b", "*", "/a/*"):
        with pytest.raises(ValueError):
            git._upload_pack(Path(bad))


def failed(stderr: str, status: int = 128) -> str:
    return git.error_message(proc.CommandResult(("git",), status, "", stderr))


def test_git_errors_name_the_cause() -> None:
    dubious = (
        "fatal: detected dubious ownership in repository at '/r/repo/.git'\n"
        "To add an exception for this directory, call:\n"
        "\n"
        "\tgit config --global --add safe.directory /r/repo/.git\n"
        "fatal: Could not read from remote repository.\n"
        "\n"
        "Please make sure you have the correct access rights\n"
        "and the repository exists.\n"
    )
    assert failed(dubious) == "detected dubious ownership in repository at '/r/repo/.git'"
    missing = (
        "fatal: '/r/nope' does not appear to be a git repository\n"
        "fatal: Could not read from remote repository.\n\n"
        "Please make sure you have the correct access rights\nand the repository exists.\n"
    )
    assert failed(missing) == "'/r/nope' does not appear to be a git repository"
    refused_port = (
        "fatal: unable to connect to 127.0.0.1:\n"
        "127.0.0.1[0: 127.0.0.1]: errno=Connection refused\n"
    )
    assert failed(refused_port) == (
        "unable to connect to 127.0.0.1: 127.0.0.1[0: 127.0.0.1]: errno=Connection refused"
    )
    long_tail = "error: short first line\n" + "x" * 400 + "\n"
    assert failed(long_tail) == "short first line"
    assert failed("warning: something\nsome last line\n") == "some last line"
    assert failed("", 5) == "git exit status 5"


def test_missing_local_repository_error_is_readable(root: Path) -> None:
    with pytest.raises(RepoUnreachable) as caught:
        parse_spec(git_spec(f"file://{root}/missing"), policy(root)).resolve()
    assert str(caught.value) == (
        f"cannot list refs of file://{root}/missing: "
        f"'{root}/missing' does not appear to be a git repository"
    )
