"""A link's labpath, filepath and urlpath open something inside the
launched server, never another of the researcher's servers or the hub:
the ready redirect stays below the server's URL however the path is
escaped, and anything else is refused with a one-line reason."""

from __future__ import annotations

import posixpath
from urllib.parse import unquote, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hpcbinder.errors import UserError
from hpcbinder.web.handlers import launch_path, server_link

HUB = "https://hub.example.org/"
SERVER = "https://alice.hub.example.org/user/alice/rep-abc/"
NAMES = ("labpath", "filepath", "urlpath")

#: Pieces browsers and servers may read as a dot, a dot segment or a slash.
_PIECES = st.sampled_from(
    [
        ".", "..", "%2e", "%2E", "%2e%2e", ".%2E", "%252e", "%252e%252e", "%25252e",
        "/", "//", "\\", "%5c", "%5C", "%2f", "%2F", "%252f", "?", "#", "%3F",
        "a", "lab", "tree", "index.ipynb", "x y", "ü", "%", "%zz", "\t", "\n",
    ]
)  # fmt: skip
_VALUES = st.lists(_PIECES, min_size=1, max_size=8).map("".join)


def _readings(url: str) -> list[str]:
    """The path ``url`` may reach as a browser and then a server read it:
    dots and backslashes as browsers take them, after each decoding."""
    readings, layer = [], urlsplit(url).path
    for _ in range(6):
        path = layer.replace("\\", "/").replace("%2e", ".").replace("%2E", ".")
        readings.append(posixpath.normpath(path) + ("/" if path.endswith("/") else ""))
        if unquote(layer) == layer:
            break
        layer = unquote(layer)
    return readings


@settings(max_examples=500, deadline=None)
@given(name=st.sampled_from(NAMES), value=_VALUES)
def test_the_redirect_stays_inside_the_server(name: str, value: str) -> None:
    try:
        link = server_link(HUB, SERVER, {name: value})
    except UserError as exc:
        assert "\n" not in str(exc) and name in str(exc)
        return
    assert link.startswith(SERVER)
    prefix = urlsplit(SERVER).path
    for reading in _readings(link):
        assert (reading + "/").startswith(prefix), (value, link, reading)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("urlpath", "../../hub/token"),
        ("urlpath", "%2e%2e/%2E%2e/hub/token"),
        ("urlpath", "..%2frep-xyz/lab"),
        ("urlpath", "lab/..?x"),
        ("labpath", "../other/notebook.ipynb"),
        ("filepath", "..\\..\\hub"),
        ("filepath", "%252e%252e/x"),
        ("urlpath", "%2F%2Fevil.example"),
        ("labpath", "a/./b"),
    ],
)
def test_paths_leaving_the_server_are_refused(name: str, value: str) -> None:
    with pytest.raises(UserError, match=f"^{name}=.*leaves the server"):
        launch_path({name: value})


def test_ordinary_paths_still_open() -> None:
    assert launch_path({"labpath": "/notebooks/a b.ipynb"}) == "lab/tree/notebooks/a%20b.ipynb"
    assert launch_path({"filepath": "data/100%.csv"}) == "tree/data/100%25.csv"
    assert launch_path({"urlpath": "/lab/tree/x.ipynb?reset"}) == "lab/tree/x.ipynb?reset"
    assert launch_path({"urlpath": "voila/render/a.ipynb"}) == "voila/render/a.ipynb"
    assert launch_path({"labpath": "notes..md"}) == "lab/tree/notes..md"
    assert launch_path({}) == ""
