"""A launch's ``user_options`` parsed once: what the Binder service and the
options form send is accepted as it is; anything else an API client could
send is one line naming the key, before the spawner uses it."""

from __future__ import annotations

import pytest

from hpcbinder.hub.options import LaunchOptions, LaunchOptionsError

WORKSPACE = {"slug": "org-repo-1a2b3c", "commit": "a" * 40}


def test_binder_options_round_trip() -> None:
    sent = {"image": "0" * 32, "profile": "gpu", "cpus": "8", "time": "02:00:00"}
    options = LaunchOptions.parse({**sent, "workspace": WORKSPACE})
    assert options.resource_overrides() == {"cpus": "8", "time": "02:00:00"}
    assert options.workspace is not None and options.workspace.from_image is False
    assert LaunchOptions.parse(options.user_options()) == options


def test_the_form_and_no_options_are_valid() -> None:
    assert LaunchOptions.parse({"profile": "small"}).image is None
    assert LaunchOptions.parse(None) == LaunchOptions()


@pytest.mark.parametrize(
    ("sent", "named"),
    [
        ({"cmd": ["/bin/sh"]}, "cmd: not an option a launch can set"),
        ({"image": "docker://evil"}, "image: not a valid value"),
        ({"image": "base:../x"}, "image: not a valid value"),
        ({"cpus": 8.5}, "cpus: "),
        ({"gpus": True}, "gpus: "),
        ({"time": "x" * 500}, "time"),
        # No path: bob's server would copy any folder of his (his home)
        # into a workspace another's image sees.
        (
            {"workspace": {**WORKSPACE, "checkout": "/home/bob"}},
            "workspace.checkout: not an option a launch can set",
        ),
        ({"workspace": {**WORKSPACE, "slug": "../home"}}, "workspace.slug"),
        ({"workspace": {**WORKSPACE, "extra": 1}}, "workspace.extra"),
        ({"workspace": "x"}, "workspace"),
    ],
)
def test_bad_options_name_the_key(sent: dict[str, object], named: str) -> None:
    with pytest.raises(LaunchOptionsError) as caught:
        LaunchOptions.parse(sent)
    assert str(caught.value).startswith(named)
    assert "\n" not in str(caught.value)


def test_counts_come_as_numbers_or_text() -> None:
    assert LaunchOptions.parse({"cpus": 8}).resource_overrides() == {"cpus": "8"}
    assert LaunchOptions.parse({"gpus": "2"}).resource_overrides() == {"gpus": "2"}
