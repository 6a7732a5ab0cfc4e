"""A clone URL has one spelling: the text the site's trust, allow and ban
patterns match is the repository git fetches. git, curl and servers resolve
``..`` and ``.`` parts, ``//`` and %-escapes (of dots, slashes, backslashes),
so a URL or local path holding any of them, or ``?``, ``#``, a backslash, or
a part starting with ``-`` (an option to git or ssh), is refused with one
line, whichever provider names it and for submodule URLs too. The attack:
``git/https%3A%2F%2Fgithub.com%2Four-centre%2F..%2Fattacker%2Frepo/main``
was trusted by the example site (no confirmation) and fetched the
attacker's repository; ``our-centre/../known-bad/x`` passed the ban."""

from __future__ import annotations

import posixpath
import shlex
from pathlib import Path
from urllib.parse import quote, unquote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpcbinder.config import RepoPolicy, load_site
from hpcbinder.errors import UserError
from hpcbinder.jobs.batch import render_batch_script
from hpcbinder.seams import git
from hpcbinder.sources.providers import GitRepoProvider, check_clone_url, parse_spec
from hpcbinder.web.trust import Confirmations
from tests.repohelpers import git as run_git
from tests.unit.test_run_records import PLAIN, batch_run

ROOT = Path(__file__).resolve().parents[2]
SITE = load_site(ROOT / "configs" / "site.example.yaml")
POLICY = RepoPolicy(
    protocols=["https", "http", "git", "ssh", "file"],
    local_roots=[Path("/srv/trusted")],
    ban=[r"https://github\.com/known-bad/.*"],
)

#: A dot part, spelled as git, curl or a server may read it.
_DOTS = st.sampled_from(
    [".", "..", "%2e", "%2E", "%2e%2e", "%2E%2E", ".%2e", "%2E.", "%252e%252e", "%25%32%65"]
)
#: What separates parts, spelled likewise.
_SEPARATORS = st.sampled_from(["/", "\\", "%2f", "%2F", "%5c", "%5C", "%252f"])
_NAMES = st.sampled_from(["our-centre", "attacker", "repo", "known-bad", "x", "a.b", "v1"])


@st.composite
def _hostile_paths(draw: st.DrawFn) -> str:
    """A relative path of plain names with a dot part, an empty part or a
    ``?``/``#`` somewhere, joined by any spelling of a separator."""
    parts = draw(st.lists(_NAMES, min_size=1, max_size=4))
    at = draw(st.integers(0, len(parts)))
    kind = draw(st.sampled_from(["dot", "empty", "query"]))
    if kind == "dot":
        parts.insert(at, draw(_DOTS))
    elif kind == "empty":  # not first: a leading / starts an absolute scp-like path
        parts.insert(max(at, 1), "")
    path = parts[0]
    for part in parts[1:]:
        path += draw(_SEPARATORS) + part
    if kind == "query":
        path += draw(st.sampled_from(["?", "#", "%3F", "%23"])) + draw(_NAMES)
    if kind == "empty" and "" not in path.split("/"):
        path = path.replace(parts[0], parts[0] + "//", 1)  # an escaped separator hid it
    return path


def _one_line_refusal(spec: str) -> None:
    with pytest.raises(UserError) as caught:
        parse_spec(spec, POLICY)
    assert "\n" not in str(caught.value)


def _git_spec(url: str) -> str:
    return f"git/{quote(url, safe='')}/main"


@settings(max_examples=300, deadline=None)
@given(path=_hostile_paths(), form=st.sampled_from(["https", "git", "ssh", "scp", "file"]))
def test_git_urls_with_another_spelling_are_refused(path: str, form: str) -> None:
    url = {
        "https": f"https://github.com/{path}",
        "git": f"git://git.example.org:9418/{path}",
        "ssh": f"ssh://git@git.example.org/{path}",
        "scp": f"git@git.example.org:{path}",
        "file": f"file:///srv/trusted/{path}",
    }[form]
    _one_line_refusal(_git_spec(url))
    with pytest.raises(UserError):
        check_clone_url(url)


@settings(max_examples=200, deadline=None)
@given(path=_hostile_paths())
def test_gitlab_paths_with_another_spelling_are_refused(path: str) -> None:
    _one_line_refusal(f"gl/{quote(path, safe='')}/main")


@settings(max_examples=100, deadline=None)
@given(dots=_DOTS, name=_NAMES, org_first=st.booleans())
def test_github_names_that_are_dot_parts_are_refused(dots: str, name: str, org_first: bool) -> None:
    org, repo = (dots, name) if org_first else (name, dots)
    _one_line_refusal(f"gh/{org}/{repo}/main")


@settings(max_examples=200, deadline=None)
@given(path=_hostile_paths())
def test_local_paths_with_another_spelling_are_refused(path: str) -> None:
    _one_line_refusal(f"local/{quote(f'/srv/trusted/{path}', safe='')}/main")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=_hostile_paths(), base=st.sampled_from(["https://github.com/", "file:///srv/trusted/"]))
def test_submodule_urls_with_another_spelling_are_refused(path: str, base: str) -> None:
    """A submodule's URL (``.gitmodules``, resolved against its parent's)
    meets the same check before git sees it."""
    provider = parse_spec("gh/our-centre/repo/main", POLICY)
    assert isinstance(provider, GitRepoProvider)
    with pytest.raises(UserError):
        # (a leading ./ or ../ is git's own relative URL, resolved: not here)
        provider.check_allowed(git.submodule_url(provider.url, f"../x/{path}"))
    with pytest.raises(UserError):
        provider.check_allowed(base + path)


@settings(max_examples=300, deadline=None)
@given(path=_hostile_paths())
def test_nothing_the_site_would_trust_spells_another_repository(path: str) -> None:
    """The site's own patterns: whatever the link, a URL that is trusted or
    passes the ban is the repository its text names (git's own normal form)."""
    confirmations = Confirmations(SITE.binder, Path("/nonexistent-never-written"))
    url = f"https://github.com/our-centre/{path}"
    assert not confirmations.trusted(url, "main")
    try:
        provider = parse_spec(_git_spec(url), SITE.repos)
    except UserError:
        return
    normal = posixpath.normpath(unquote(unquote(provider.url)).replace("\\", "/"))
    assert provider.url == normal  # unreachable for these paths: each is refused


def test_the_reviewers_links_are_refused() -> None:
    """The reproduction: trusted without confirmation, and past the ban."""
    for url in (
        "https://github.com/our-centre/../attacker/repo",
        "https://github.com/our-centre/../known-bad/x",
        "https://github.com/our-centre/%2e%2e/known-bad/x",
        "https://github.com/our-centre//x",
        "https://github.com/known-bad/./x",
        "file:///srv/trusted/../../etc",
    ):
        with pytest.raises(UserError, match="repository URL") as caught:
            parse_spec(_git_spec(url), SITE.repos)
        assert "\n" not in str(caught.value)
    with pytest.raises(UserError):
        parse_spec("gl/our-centre%2F.%2Fx/main", SITE.repos)


@pytest.mark.parametrize(
    "url",
    [
        "-ush@x.org:y",
        "-oProxyCommand@x.org:y",
        "git@-oProxyCommand=x:y",
        "git@host:-y",
        "ssh://-oProxyCommand=x/y",
        "ssh://git@-oProxyCommand=x/y",
        "https://github.com/-x/y",
        "file:///srv/trusted/-x",
    ],
)
def test_no_part_of_a_url_starts_like_an_option(url: str) -> None:
    _one_line_refusal(_git_spec(url))
    provider = parse_spec("gh/our-centre/repo/main", POLICY)
    assert isinstance(provider, GitRepoProvider)
    with pytest.raises(UserError, match="option"):
        provider.check_allowed(url)


@pytest.mark.parametrize(
    ("spec", "url"),
    [
        ("gh/our-centre/repo.x/main", "https://github.com/our-centre/repo.x"),
        ("gl/a%2Fb.c%2Fd/v1", "https://gitlab.com/a/b.c/d.git"),
        (_git_spec("https://example.org/a/b.git"), "https://example.org/a/b.git"),
        (_git_spec("git@example.org:org/repo.git"), "git@example.org:org/repo.git"),
        (_git_spec("git@example.org:/srv/git/repo"), "git@example.org:/srv/git/repo"),
        (_git_spec("ssh://git@example.org:22/~u/r"), "ssh://git@example.org:22/~u/r"),
        (_git_spec("git://127.0.0.1:9418/repo"), "git://127.0.0.1:9418/repo"),
    ],
)
def test_plain_urls_still_parse(spec: str, url: str) -> None:
    assert parse_spec(spec, POLICY).url == url


def test_every_git_call_ends_options_before_the_url_and_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A URL or commit reaches git only after ``--end-of-options``, where
    no leading ``-`` can be read as an option."""
    repo = tmp_path / "root" / "repo"
    repo.mkdir(parents=True)
    run_git(repo, "init", "-q", "-b", "main")
    (repo / "a.txt").write_text("one\n")
    run_git(repo, "add", "-A")
    run_git(repo, "commit", "-q", "-m", "one")
    site = RepoPolicy(protocols=["file"], local_roots=[tmp_path / "root"])
    calls: list[list[str]] = []
    real = git._git

    def recording(args: list[str], *rest: object, **options: object) -> object:
        calls.append(list(args))
        return real(args, *rest, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(git, "_git", recording)
    provider = parse_spec(_git_spec(f"file://{repo}"), site)
    resolved = provider.resolve()
    provider.fetch(resolved, tmp_path / "dest")
    assert (tmp_path / "dest" / "a.txt").read_text() == "one\n"
    for args in calls:
        for value in (resolved.url, resolved.commit):
            if value in args:
                assert "--end-of-options" in args[: args.index(value)], args
    assert any(resolved.commit in args for args in calls)


def test_the_batch_jobs_own_clone_ends_options_before_the_url(tmp_path: Path) -> None:
    """The job script's fallback clone (no checkout to copy) gives git the
    URL and commit after ``--end-of-options`` too."""
    run = batch_run(tmp_path, PLAIN)
    script = render_batch_script(run).replace("\\\n", " ")
    line = next(x for x in script.splitlines() if "git clone" in x)
    words = shlex.split(line.replace("&&", " && "))
    for value in (run.repo.url, run.repo.commit):
        at = words.index(value)
        assert words[at - 1] == "--end-of-options", line
