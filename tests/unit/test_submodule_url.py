"""A submodule's relative URL resolves against its parent's, as git does."""

from __future__ import annotations

import pytest

from hpcbinder.seams.git import submodule_url


@pytest.mark.parametrize(
    ("parent", "url", "resolved"),
    [
        ("https://github.com/org/repo", "../data.git", "https://github.com/org/data.git"),
        ("https://github.com/org/repo/", "../../other/x", "https://github.com/other/x"),
        ("https://github.com/org/repo", "./sub", "https://github.com/org/repo/sub"),
        ("file:///var/tmp/r/analysis", "../data", "file:///var/tmp/r/data"),
        ("git@github.com:org/repo.git", "../data.git", "git@github.com:org/data.git"),
        ("https://github.com/org/repo", "https://gitlab.com/x/y", "https://gitlab.com/x/y"),
        ("https://github.com/org/repo", "file:///etc", "file:///etc"),  # judged by policy
    ],
)
def test_relative_urls_resolve_against_the_parent(parent: str, url: str, resolved: str) -> None:
    assert submodule_url(parent, url) == resolved
