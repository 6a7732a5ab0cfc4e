"""A researcher's confirmations of repositories the site does not vouch
for: asked once per repository, per researcher, kept across restarts."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from hpcbinder.config import BinderService
from hpcbinder.web.service import page_environment
from hpcbinder.web.trust import Confirmations, credential_host

REPO = "https://github.com/someone/analysis"


def test_an_untrusted_repository_is_confirmed_once_per_researcher(tmp_path: Path) -> None:
    confirmations = Confirmations(BinderService(), tmp_path)
    assert confirmations.needs_confirmation("alice", REPO, "main")
    confirmations.confirm("alice", REPO, "main")
    assert not confirmations.needs_confirmation("alice", REPO, "main")
    assert confirmations.needs_confirmation("bob", REPO, "main")  # alice cannot agree for bob
    assert confirmations.needs_confirmation("alice", REPO + "-fork", "main")
    # A restarted service remembers; nobody but the service account reads it.
    again = Confirmations(BinderService(), tmp_path)
    assert not again.needs_confirmation("alice", REPO, "main")
    assert (tmp_path / "confirmed").stat().st_mode & 0o077 == 0


def test_the_sites_trusted_repositories_ask_nothing(tmp_path: Path) -> None:
    policy = BinderService(trusted_repos=[r"https://github\.com/our-centre/.*"])
    confirmations = Confirmations(policy, tmp_path)
    assert not confirmations.needs_confirmation("alice", "https://github.com/our-centre/demo", "v1")
    # Whole-URL matches: a look-alike host is not the centre's.
    assert confirmations.needs_confirmation(
        "alice", "https://github.com.evil.example/our-centre/demo", "main"
    )
    assert confirmations.needs_confirmation(
        "alice", "https://github.com/someone/our-centre/x", "main"
    )
    off = Confirmations(BinderService(confirm_untrusted=False), tmp_path)
    assert not off.needs_confirmation("alice", REPO, "main")


def test_a_broken_record_asks_again(tmp_path: Path) -> None:
    confirmations = Confirmations(BinderService(), tmp_path)
    confirmations.confirm("alice", REPO, "main")
    for record in (tmp_path / "confirmed").glob("*.json"):
        record.write_text("{not json")
    assert confirmations.needs_confirmation("alice", REPO, "main")
    confirmations.confirm("alice", REPO, "main")
    assert not confirmations.needs_confirmation("alice", REPO, "main")


def test_the_site_vouches_for_branches_and_tags_not_for_any_commit(tmp_path: Path) -> None:
    """Anyone can open a pull request against a trusted repository, and its
    host serves a fork's commits through the parent's URL: those ask."""
    policy = BinderService(trusted_repos=[r"https://github\.com/our-centre/.*"])
    confirmations = Confirmations(policy, tmp_path)
    url = "https://github.com/our-centre/demo"
    for ref in ("main", "v1.0", "refs/heads/main", "refs/tags/v1.0", "HEAD"):
        assert not confirmations.needs_confirmation("alice", url, ref), ref
    for ref in ("refs/pull/42/head", "refs/remotes/x", "0123abc", "a" * 40):
        assert confirmations.needs_confirmation("alice", url, ref), ref


def test_a_confirmation_covers_the_ref_it_was_given_for(tmp_path: Path) -> None:
    confirmations = Confirmations(BinderService(), tmp_path)
    confirmations.confirm("alice", REPO, "main")
    assert not confirmations.needs_confirmation("alice", REPO, "main")
    assert confirmations.needs_confirmation("alice", REPO, "refs/pull/7/head")


def test_a_trusted_name_spelled_to_reach_another_repository_asks(tmp_path: Path) -> None:
    """The site's pattern matches text; git resolves ``..``, ``.``, ``//``
    and %-escapes, so a URL holding them is never the site's word."""
    policy = BinderService(trusted_repos=[r"https://github\.com/our-centre/.*"])
    confirmations = Confirmations(policy, tmp_path)
    for url in (
        "https://github.com/our-centre/../attacker/repo",
        "https://github.com/our-centre/%2e%2e/attacker/repo",
        "https://github.com/our-centre/./x/../../attacker/repo",
        "https://github.com/our-centre//attacker",
        "https://github.com/our-centre/x?y",
    ):
        assert confirmations.needs_confirmation("alice", url, "main"), url


def _confirm_page(clone_url: str) -> str:
    return (
        page_environment()
        .get_template("confirm.html")
        .render(
            service=SimpleNamespace(base_url="/services/binder/"),
            repo_name="x",
            clone_url=clone_url,
            credential_host=credential_host(clone_url),
            confirm_url="/services/binder/confirm/x",
            xsrf="t",
            user="alice",
        )
    )


def test_the_confirm_page_names_the_host_her_credentials_would_answer() -> None:
    """A repository the site cannot fetch is fetched as her, and a git
    credential helper not limited to hosts answers whichever host a link
    names: the page she confirms on says which. Fails on the old code."""
    for url, host in (
        ("https://evil.example:8443/x/y.git", "https://evil.example:8443"),
        ("git@Evil.Example:x/y.git", "ssh://evil.example"),
        ("ssh://alice@evil.example/x.git", "ssh://evil.example"),
    ):
        assert f'<code id="credential-host">{host}</code>' in _confirm_page(url), url
    # Her own files on the cluster: no host gets anything.
    assert "credential-host" not in _confirm_page("file:///home/alice/repo")
