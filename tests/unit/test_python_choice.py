"""runtime.txt's Python among bases on two Debian releases (the dev
cluster's 3.11 and 3.13): which base a version gets, by the site's policy."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcbinder import buildpacks
from hpcbinder.config import Site
from hpcbinder.errors import RepoConfigError
from hpcbinder.render.definition import choose_base

BASES = {"default": {"python": "3.11"}, "py313": {"python": "3.13", "source": "trixie"}}


def plan_for(tmp_path: Path, runtime: str) -> buildpacks.BuildPlan:
    (tmp_path / "runtime.txt").write_text(f"{runtime}\n")
    return buildpacks.detect(tmp_path)


@pytest.mark.parametrize(
    ("runtime", "base"), [("python-3.13", "py313"), ("python-3.11", "default")]
)
def test_an_offered_version_gets_its_base_without_warning(
    tmp_path: Path, runtime: str, base: str
) -> None:
    choice = choose_base(Site.model_validate({"bases": BASES}), plan_for(tmp_path, runtime))
    assert (choice.name, choice.warnings) == (base, [])


def test_nearest_takes_the_newer_of_two_equally_near_versions(tmp_path: Path) -> None:
    choice = choose_base(Site.model_validate({"bases": BASES}), plan_for(tmp_path, "python-3.12"))
    assert choice.name == "py313"
    assert choice.warnings == ["Python 3.12 is not offered by this site; using the nearest, 3.13"]


def test_exact_refuses_naming_runtime_txt_and_the_offered_versions(tmp_path: Path) -> None:
    site = Site.model_validate({"bases": BASES, "python_policy": "exact"})
    with pytest.raises(RepoConfigError) as caught:
        choose_base(site, plan_for(tmp_path, "python-3.12"))
    assert str(caught.value) == (
        "runtime.txt: Python 3.12 is not offered by this site (it offers 3.11, 3.13; policy: exact)"
    )
