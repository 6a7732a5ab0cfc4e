"""Where the launch page sends the browser once a server is ready."""

from __future__ import annotations

from hpcbinder.web.handlers import server_link

HUB = "https://hub.example.org/"


def test_a_server_on_its_own_origin_keeps_it() -> None:
    """With subdomain_host the hub gives the server's absolute URL: the
    browser goes there, not to the same path on the hub's origin."""
    url = "https://alice.hub.example.org/user/alice/repo-x/"
    assert server_link(HUB, url, {"labpath": "a b.ipynb"}) == f"{url}lab/tree/a%20b.ipynb"


def test_a_server_path_is_on_the_hubs_origin() -> None:
    assert server_link(HUB, "/user/alice/repo-x/", {}) == f"{HUB}user/alice/repo-x/"
