"""A repository's named server and workspace are found by a digest of its
clone URL that nobody can match with another URL: a launch of a look-alike
repository would otherwise stop the researcher's server and start the
attacker's image on her workspace."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st
from jupyterhub.slugs import is_valid_safe_slug

from hpcbinder.hub.options import WorkspaceOptions
from hpcbinder.web.launcher import server_name, workspace_slug

#: The workspace pattern the spawner accepts (hpcbinder.jobs.serverscript._SLUG).
_SLUG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")

_URLS = st.one_of(
    st.builds(
        "https://{}/{}/{}{}".format,
        st.sampled_from(["github.com", "gitlab.com", "git.example.org:8443"]),
        st.text(min_size=0, max_size=80),
        st.text(min_size=0, max_size=80),
        st.sampled_from(["", ".git", "/"]),
    ),
    st.text(max_size=300).map(lambda path: f"file:///{path}"),
)


def _digest_bits(name: str) -> int:
    """The bits of base32 digest after the name's last hyphen."""
    return len(name.rsplit("-", 1)[1]) * 5


@settings(max_examples=300, deadline=None)
@given(url=_URLS)
def test_names_carry_128_bits_within_the_hubs_and_the_spawners_limits(url: str) -> None:
    name, slug = server_name(url), workspace_slug(url)
    assert is_valid_safe_slug(name), name  # what JupyterHub 6 takes as a server name
    assert _SLUG.fullmatch(slug), slug
    WorkspaceOptions(slug=slug, commit="a" * 40)  # the options model takes it too
    assert _digest_bits(name) >= 128 and _digest_bits(slug) >= 128
    assert name.rsplit("-", 1)[1] == slug.rsplit("-", 1)[1]


def test_each_url_has_its_own_names_and_a_readable_workspace() -> None:
    url = "https://github.com/Some_Org/Very.Long.Repository.Name-With-Stuff.git"
    assert server_name(url) == server_name(url) and server_name(url + "x") != server_name(url)
    assert workspace_slug(url + "x") != workspace_slug(url)
    assert workspace_slug(url).startswith("some-org-very-long-repository-name-with")
    assert server_name(url).startswith("som-")
