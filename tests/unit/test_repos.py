"""Every fixture repository in tests/repos/ is detected and rendered as its
expected.yaml says (repo2docker's verify-folder pattern)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcbinder.errors import UserError
from hpcbinder.render import pipeline
from tests.repohelpers import cases, expected, local_spec, make_repo, site_for_tests


@pytest.mark.parametrize("case", cases())
def test_fixture_repository(case: str, tmp_path: Path) -> None:
    want = expected(case)
    repo = make_repo(case, tmp_path / "repo")
    site = site_for_tests(tmp_path, **want.get("site", {}))
    if "error" in want:
        with pytest.raises(UserError) as caught:
            pipeline.prepare(local_spec(repo), site)
        assert want["error"] in str(caught.value)
        assert "\n" not in str(caught.value)
        return
    prepared = pipeline.prepare(local_spec(repo), site)
    definition = prepared.rendered.definition
    assert prepared.plan.buildpack == want["buildpack"]
    if "base" in want:
        assert prepared.rendered.base.name == want["base"]
    if "reads_whole_repo" in want:
        assert prepared.plan.reads_whole_repo is want["reads_whole_repo"]
    for fragment in want.get("fragments", []):
        assert fragment in definition, f"{fragment!r} missing from:\n{definition}"
    for fragment in want.get("absent", []):
        assert fragment not in definition, f"{fragment!r} present in:\n{definition}"
    # What the build reads from files hpcbinder wrote (render/buildfiles.py), by name.
    for name, fragments in want.get("generated", {}).items():
        text = prepared.rendered.build_files[name]
        for fragment in fragments:
            assert fragment in text, f"{fragment!r} missing from {name}:\n{text}"
    warnings = prepared.rendered.warnings
    for warning in want.get("warnings", []):
        assert any(warning in w for w in warnings), (warning, warnings)


def test_every_configuration_type_has_a_fixture() -> None:
    buildpacks = {expected(c).get("buildpack") for c in cases()}
    assert {"python", "pipfile", "conda", "r", "julia", "nix", "dockerfile"} <= buildpacks
