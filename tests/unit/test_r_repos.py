"""R repositories' render-level choices: the base runtime.txt's R version
picks (r_policy exact|nearest over the bases that declare ``r``), the
site file's ``r`` setting, the failure line the R build prints being
the reason a failed build starts with (before R CMD INSTALL's own lines),
and an R notebook's parameters cell read as R for ``hpcbinder sbatch``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hpcbinder.buildpacks.base import BuildPlan
from hpcbinder.config import Site, SiteConfigError, parse_site
from hpcbinder.errors import RepoConfigError
from hpcbinder.images.buildlog import FailureReason
from hpcbinder.jobs.notebooks import NotebookError, check_parameters, declared_parameters
from hpcbinder.render.definition import base_identity, choose_base


def plan(r_version: str | None) -> BuildPlan:
    return BuildPlan(
        buildpack="r",
        binder_dir="",
        python_version=None,
        python_requires=None,
        apt_packages=[],
        env_files=[],
        env_steps=[],
        repo_steps=[],
        environment={},
        path=[],
        start=None,
        reads_whole_repo=False,
        warnings=[],
        r_version=r_version,
    )


def site(bases: dict[str, dict[str, Any]], **settings: Any) -> Site:
    return Site.model_validate({"bases": bases, **settings})


TWO = {"default": {"python": "3.11", "r": "4.2"}, "trixie": {"python": "3.13", "r": "4.5"}}


@pytest.mark.parametrize(
    ("wanted", "base", "warning"),
    [
        ("4.5", "trixie", None),
        ("4.2", "default", None),
        (
            "4.4",
            "trixie",
            "R 4.4 is not offered by this site; using the nearest, 4.5 (base trixie)",
        ),
        (
            "3.6",
            "default",
            "R 3.6 is not offered by this site; using the nearest, 4.2 (base default)",
        ),
        (None, "default", None),  # r-YYYY-MM-DD: the default base, whatever R it has
    ],
)
def test_the_r_version_picks_a_base(wanted: str | None, base: str, warning: str | None) -> None:
    chosen = choose_base(site(TWO), plan(wanted))
    assert chosen.name == base
    assert chosen.warnings == ([warning] if warning else [])
    assert chosen.r == TWO[base]["r"]


def test_between_two_equally_near_the_newer_r_is_picked() -> None:
    bases = {"default": {"r": "4.2"}, "b": {"r": "4.4"}}
    assert choose_base(site(bases), plan("4.3")).name == "b"


def test_the_default_base_wins_among_bases_with_the_same_r() -> None:
    bases = {"a": {"r": "4.2"}, "default": {"r": "4.2"}}
    assert choose_base(site(bases), plan("4.2")).name == "default"


def test_exact_policy_refuses_an_r_no_base_declares() -> None:
    with pytest.raises(RepoConfigError) as caught:
        choose_base(site(TWO, r_policy="exact"), plan("4.3"))
    message = str(caught.value)
    assert "runtime.txt" in message and "(it offers 4.2, 4.5; r_policy: exact)" in message


def test_without_declared_r_versions_the_default_base_is_used_with_a_warning() -> None:
    chosen = choose_base(site({"default": {}, "other": {"python": "3.12"}}), plan("4.1"))
    assert chosen.name == "default" and chosen.r is None
    assert "declare no R version (site: bases.NAME.r)" in chosen.warnings[0]


def test_declaring_r_keeps_every_other_images_key() -> None:
    """``r`` is read by the choice, not built: a site that declares it does
    not rebuild its Python images."""
    plain, declared = site({"default": {}}), site({"default": {"r": "4.2"}})
    python_plan = plan(None)
    assert base_identity(plain, choose_base(plain, python_plan)) == base_identity(
        declared, choose_base(declared, python_plan)
    )


@pytest.mark.parametrize("value", ["4", "4.2.1", "R 4.2", "4.x"])
def test_a_bad_r_version_names_the_setting(value: str) -> None:
    with pytest.raises(SiteConfigError) as caught:
        parse_site(f"bases:\n  default:\n    r: '{value}'\n")
    assert any(p.startswith("bases.default.r: ") for p in caught.value.problems)


def test_the_r_builds_own_line_is_the_reason_over_r_cmd_installs() -> None:
    lines = [
        "* installing *source* package 'hpcbinderneedy' ...",
        "ERROR: dependency 'hpcbindermissingdep' is not available for package 'hpcbinderneedy'",
        "hpcbinder: R package 'hpcbindermissingdep' could not be installed from "
        "http://127.0.0.1:9/2024-01-15 (network.mirrors.cran; date from runtime.txt): "
        "dependency 'hpcbindermissingdep' is not available",
        "hpcbinder: R package 'hpcbinderneedy' could not be installed from ...",
        "Error: the R packages above could not be installed",
        "FATAL:   While performing build: while running engine: exit status 1",
    ]
    reason = FailureReason()
    for line in lines:
        reason.line(line)
    assert reason.reason == lines[2]


def r_notebook(tmp_path: Path, source: str) -> Path:
    notebook = tmp_path / "analysis.ipynb"
    cell = {"cell_type": "code", "metadata": {"tags": ["parameters"]}, "source": source}
    kernel = {"name": "ir", "language": "R", "display_name": "R"}
    notebook.write_text(json.dumps({"cells": [cell], "metadata": {"kernelspec": kernel}}))
    return notebook


def test_an_r_notebooks_parameters_are_its_assignments(tmp_path: Path) -> None:
    source = 'alpha <- 1\nn = 3L\nlabel <-"x"  # a label\nif (n == 3) print(n)\n'
    notebook = r_notebook(tmp_path, source)
    assert declared_parameters(notebook, "analysis.ipynb") == {"alpha", "n", "label"}
    with pytest.raises(NotebookError, match="does not declare parameter 'beta'"):
        check_parameters(notebook, "analysis.ipynb", {"alpha", "beta"})
