"""Pipfile.lock and Pipfile as uv requirements: every pinned package with
its hashes and markers, paths and VCS entries apart (they carry no hash),
extra indexes; anything else refused naming the entry."""

from __future__ import annotations

import json
from typing import Any

import pytest

from hpcbinder.buildpacks.pipfile import lock_requirements, pipfile_requirements
from hpcbinder.errors import RepoConfigError

SIX = "sha256:1e61c37477a1626458e36f7b1d82aa5c9b094fa4802892072e49de9c60c4c926"
SIX_WHEEL = "sha256:8abb2f1d86890a2dfb989f9a77cfcfd3e47c2a354b01111771326f8aa26e0254"


def lock(default: dict[str, Any], develop: dict[str, Any] | None = None, **meta: Any) -> str:
    return json.dumps({"_meta": meta, "default": default, "develop": develop or {}})


def test_a_lock_pins_every_package_with_its_hashes_and_markers() -> None:
    text = lock(
        {
            "six": {
                "hashes": [SIX, SIX_WHEEL],
                "markers": "python_version >= '2.7'",
                "version": "==1.16.0",
            },
            "requests": {"extras": ["socks"], "hashes": [SIX], "version": "==2.31.0"},
        },
        {"pytest": {"hashes": [SIX], "version": "==8.0.0"}},
    )
    result = lock_requirements(text, "Pipfile.lock")
    assert result.requirements == [
        f"pytest==8.0.0 --hash={SIX}",
        f"requests[socks]==2.31.0 --hash={SIX}",
        f'six==1.16.0 ; python_version >= "2.7" --hash={SIX} --hash={SIX_WHEEL}',
    ]
    assert result.paths == [] and result.vcs == [] and result.indexes == []


def test_a_package_in_both_sections_is_installed_once_at_develops_pin() -> None:
    text = lock(
        {"six": {"hashes": [SIX], "version": "==1.15.0"}},
        {"six": {"hashes": [SIX_WHEEL], "version": "==1.16.0"}},
    )
    assert lock_requirements(text, "Pipfile.lock").requirements == [
        f"six==1.16.0 --hash={SIX_WHEEL}"
    ]


def test_editable_paths_and_vcs_entries_are_installed_apart() -> None:
    text = lock(
        {
            "demo": {"editable": True, "path": "."},
            "tool": {"path": "tools/tool"},
            "lib": {"git": "https://example.org/lib.git", "ref": "0123abcd", "editable": True},
        }
    )
    result = lock_requirements(text, "Pipfile.lock")
    assert result.requirements == []
    assert result.paths == [(".", True), ("./tools/tool", False)]
    assert result.vcs == ["lib @ git+https://example.org/lib.git@0123abcd"]


def test_sources_other_than_pypi_become_extra_indexes() -> None:
    sources = [
        {"name": "pypi", "url": "https://pypi.org/simple", "verify_ssl": True},
        {"name": "internal", "url": "https://pkgs.example.org/simple", "verify_ssl": True},
    ]
    text = lock(
        {
            "six": {"hashes": [SIX], "version": "==1.16.0", "index": "pypi"},
            "private": {"hashes": [SIX], "version": "==1.0", "index": "internal"},
        },
        sources=sources,
    )
    assert lock_requirements(text, "Pipfile.lock").indexes == ["https://pkgs.example.org/simple"]


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ({"version": "==1.0"}, "no valid hashes"),
        ({"version": "==1.0", "hashes": ["md5:abc"]}, "no valid hashes"),
        ({"version": ">=1.0", "hashes": [SIX]}, "not pinned"),
        ({"version": "==1.0", "hashes": [SIX], "markers": "python_version >>> '3'"}, "markers"),
        ({"path": "../outside"}, "inside the repository"),
        ({"git": "file:///etc", "ref": "x"}, "URL"),
        ({"file": "https://example.org/x.tar.gz"}, "'file' entries"),
    ],
)
def test_bad_lock_entries_are_refused_naming_them(entry: dict[str, Any], problem: str) -> None:
    with pytest.raises(RepoConfigError) as caught:
        lock_requirements(lock({"pkg": entry}), "binder/Pipfile.lock")
    message = str(caught.value)
    assert message.startswith("binder/Pipfile.lock: ") and problem in message, message
    assert "\n" not in message


def test_a_lock_that_is_not_json_is_refused() -> None:
    with pytest.raises(RepoConfigError, match=r"Pipfile\.lock: not valid JSON"):
        lock_requirements("{", "Pipfile.lock")


def test_a_pipfile_becomes_requirements_to_resolve() -> None:
    pipfile = {
        "source": [{"name": "pypi", "url": "https://pypi.org/simple"}],
        "packages": {
            "six": "*",
            "numpy": ">=1.20, <2",
            "requests": {"version": "==2.31.0", "extras": ["socks"]},
            "colorama": {"version": "*", "markers": "sys_platform == 'win32'"},
            "demo": {"path": ".", "editable": True},
        },
        "dev-packages": {"pytest": "*"},
    }
    result = pipfile_requirements(pipfile, "Pipfile")
    assert result.requirements == [
        'colorama ; sys_platform == "win32"',
        "numpy>=1.20,<2",
        "pytest",
        "requests[socks]==2.31.0",
        "six",
    ]
    assert result.paths == [(".", True)]


def test_a_pipfile_version_with_shell_syntax_is_refused() -> None:
    with pytest.raises(RepoConfigError, match="invalid version"):
        pipfile_requirements({"packages": {"six": "$(reboot)"}}, "Pipfile")
