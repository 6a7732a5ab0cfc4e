"""BinderHub's fields of a launch (the ``ready`` event's and the server's
``BINDER_*`` variables): computed as BinderHub computes them, carried to
the server's job by name from the launch's options only, each one line of
printable text whatever a researcher's API client sends."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hpcbinder.config import RepoPolicy
from hpcbinder.hub.options import LaunchOptions, LaunchOptionsError
from hpcbinder.jobs.servers import BINDER_ENV, SERVER_ENV
from hpcbinder.seams import apptainer
from hpcbinder.sources.providers import parse_spec
from hpcbinder.web.binderapi import launch_fields
from tests.unit.fakes import ScriptedSlurm
from tests.unit.test_spawner import spawner_for

COMMIT = "0123456789abcdef0123456789abcdef01234567"
HOST = "https://binder.example.org/"
POLICY = RepoPolicy(protocols=["https", "file"], local_roots=[Path("/srv/repos")])


@pytest.mark.parametrize(
    ("spec", "repo_url", "ref_url", "persistent"),
    [
        (
            "gh/org/repo/feature/x",  # a ref with a slash
            "https://github.com/org/repo",
            f"https://github.com/org/repo/tree/{COMMIT}",
            f"v2/gh/org/repo/{COMMIT}",
        ),
        (
            "gl/group%2Fsub%2Fproject/v1.0",
            "https://gitlab.com/group/sub/project.git",  # BinderHub's repo_url
            f"https://gitlab.com/group/sub/project/tree/{COMMIT}",
            f"v2/gl/group%2Fsub%2Fproject/{COMMIT}",
        ),
        (
            "git/https%3A%2F%2Fgit.example.org%2Frepo.git/main",
            "https://git.example.org/repo.git",
            "https://git.example.org/repo.git",  # no tree view for any git host
            f"v2/git/https%3A%2F%2Fgit.example.org%2Frepo.git/{COMMIT}",
        ),
    ],
)
def test_fields_are_binderhubs(spec: str, repo_url: str, ref_url: str, persistent: str) -> None:
    repo = parse_spec(spec, POLICY)
    assert launch_fields(spec, repo, COMMIT, HOST) == {
        "repo_url": repo_url,
        "binder_ref_url": ref_url,
        "binder_launch_host": HOST,
        "binder_request": f"v2/{spec}",
        "binder_persistent_request": persistent,
    }


def test_the_server_gets_the_launchs_binder_variables_and_none_of_the_hubs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From ``user_options`` (as the Binder service sends them), under their
    container names; a ``BINDER_*`` of the hub's own environment or its
    ``Spawner.environment`` never reaches the job."""
    monkeypatch.setenv("BINDER_REQUEST", "from-the-hubs-environment")
    fields = launch_fields("gh/org/repo/HEAD", parse_spec("gh/org/repo/HEAD", POLICY), COMMIT, HOST)
    spawner = spawner_for(tmp_path, ScriptedSlurm([]), {"image": "base:default", **fields})
    spawner.env_keep = [*spawner.env_keep, "BINDER_REQUEST"]
    spawner.environment = {"BINDER_LAUNCH_HOST": "https://evil.test/"}
    env = spawner.server_env()
    prefix = apptainer.CONTAINER_ENV_PREFIX
    assert {name: env[prefix + name] for name in BINDER_ENV} == {
        "BINDER_REPO_URL": "https://github.com/org/repo",
        "BINDER_REF_URL": f"https://github.com/org/repo/tree/{COMMIT}",
        "BINDER_LAUNCH_HOST": HOST,
        "BINDER_REQUEST": "v2/gh/org/repo/HEAD",
        "BINDER_PERSISTENT_REQUEST": f"v2/gh/org/repo/{COMMIT}",
    }
    bare = spawner_for(tmp_path, ScriptedSlurm([]))
    bare.env_keep = [*bare.env_keep, "BINDER_REQUEST"]
    bare.environment = {"BINDER_LAUNCH_HOST": "https://evil.test/"}
    assert not any(name.startswith(prefix + "BINDER_") for name in bare.server_env())
    assert set(BINDER_ENV) <= set(SERVER_ENV)


#: Characters that end or break a line somewhere (env files, logs, Slurm's
#: records, terminals): C0 and C1 controls, DEL, Unicode line separators.
_BREAKS = st.sampled_from(
    ["\n", "\r", "\x00", "\t", "\x0b", "\x0c", "\x1b", "\x7f", "\x85", "\u2028", "\u2029"]
)


@settings(max_examples=200)
@given(head=st.text(max_size=20), brk=_BREAKS, tail=st.text(max_size=20))
def test_a_value_with_a_line_break_or_control_is_refused(head: str, brk: str, tail: str) -> None:
    for name in ("repo_url", "binder_ref_url", "binder_launch_host", "binder_request"):
        with pytest.raises(LaunchOptionsError, match=f"{name}: expected one line"):
            LaunchOptions.parse({name: head + brk + tail})


@settings(max_examples=200)
@given(value=st.text(st.characters(categories=["L", "N", "P", "S"]), max_size=300))
def test_printable_text_travels_unchanged(value: str) -> None:
    options = LaunchOptions.parse({"binder_persistent_request": value, "repo_url": value})
    assert options.binder_env() == {
        "BINDER_PERSISTENT_REQUEST": value,
        "BINDER_REPO_URL": value,
    }


TOKEN_IN_URL = "JUPYTERHUB_ALLOW_TOKEN_IN_URL"  # noqa: S105 - a variable name


def test_servers_accept_exactly_the_listed_origins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server's CORS: the site's listed origins, each matched whole
    (jupyter_server's ``allow_origin_pat`` is a search), nothing when none."""
    listed = ["https://docs.example.org", "http://localhost:8080"]
    spawner = spawner_for(tmp_path, ScriptedSlurm([]), binder={"cors_allow_origins": listed})
    [arg] = [a for a in spawner.get_args() if "allow_origin" in a]
    pattern = arg.removeprefix("--ServerApp.allow_origin_pat=")
    for origin in listed:
        assert re.match(pattern, origin)
    for other in ("https://docs.example.org.evil.test", "https://docsXexample.org", "null"):
        assert not re.match(pattern, other), other
    plain = spawner_for(tmp_path, ScriptedSlurm([]))
    assert not any("allow_origin" in a for a in plain.get_args())
    # Their pages' kernel websockets carry the token in the URL, which the
    # bases' extension accepts on websockets alone: no server is told to
    # take tokens in every URL, whatever the site lists or the hub's
    # environment says.
    monkeypatch.setenv(TOKEN_IN_URL, "1")
    for each in (spawner, plain):
        each.env_keep = [*each.env_keep, TOKEN_IN_URL]
        each.environment = {TOKEN_IN_URL: "1"}
        assert not any(TOKEN_IN_URL in name for name in each.server_env())
