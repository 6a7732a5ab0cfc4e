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
        "runtime.txt: Python 3.12 is not offered by this site "
        "(it offers 3.11, 3.13; python_policy: exact)"
    )


def test_offered_versions_are_listed_in_version_order(tmp_path: Path) -> None:
    """3.9 before 3.10, as a researcher reads versions (text order swaps them)."""
    bases = {"default": {"python": "3.10"}, "old": {"python": "3.9"}}
    site = Site.model_validate({"bases": bases, "python_policy": "exact"})
    with pytest.raises(RepoConfigError, match=r"\(it offers 3\.9, 3\.10; python_policy: exact\)"):
        choose_base(site, plan_for(tmp_path, "python-3.12"))


def test_requires_python_under_exact_names_the_policy(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\nrequires-python = ">=3.14"\n')
    site = Site.model_validate({"bases": BASES, "python_policy": "exact"})
    with pytest.raises(RepoConfigError) as caught:
        choose_base(site, buildpacks.detect(tmp_path))
    assert str(caught.value) == (
        "pyproject.toml: pyproject.toml requires-python '>=3.14' matches no Python of this "
        "site (3.11, 3.13) (python_policy: exact)"
    )


def test_of_bases_with_the_nearest_python_the_default_wins_then_the_first_name(
    tmp_path: Path,
) -> None:
    """The same tie-break as for exact matches and for R: a site's default
    base first, else the first by name, whatever order the site file lists
    them in (the image's env key depends on it)."""
    bases = {"zeta": {"python": "3.11"}, "alpha": {"python": "3.11"}}
    site = Site.model_validate({"bases": bases, "default_base": "zeta"})
    assert choose_base(site, plan_for(tmp_path, "python-3.10")).name == "zeta"
    site = Site.model_validate({"bases": {**bases, "default": {"python": "3.13"}}})
    assert choose_base(site, plan_for(tmp_path, "python-3.10")).name == "alpha"
