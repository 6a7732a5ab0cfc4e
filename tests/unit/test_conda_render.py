"""environment.yml renders: pip: sections see the site's index and CA,
channel names resolve under the site's alias, and URLs from the site
stay one shell word however they are spelled."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest
from pydantic import ValidationError

from hpcbinder.config import Mirrors
from hpcbinder.images.buildlog import FailureReason
from hpcbinder.render import pipeline
from tests.repohelpers import expected, local_spec, make_repo, site_for_tests


def _definition(case: str, tmp_path: Path, **site: object) -> str:
    repo = make_repo(case, tmp_path / "repo")
    settings = site or expected(case).get("site", {})
    prepared = pipeline.prepare(local_spec(repo), site_for_tests(tmp_path, **settings))
    return prepared.rendered.definition


def test_pip_section_installs_with_the_sites_index_and_ca(tmp_path: Path) -> None:
    """micromamba runs pip for the pip: section with the build's environment:
    the %post lines before the conda step, run for real, leave PIP_INDEX_URL
    and PIP_CERT set for the commands that follow."""
    definition = _definition("conda/pip-section", tmp_path)
    post = definition.split("%post\n", 1)[1]
    before_conda = post.split("    # conda-env\n", 1)[0]
    assert "micromamba create" in post.split("    # conda-env\n", 1)[1]
    shown = subprocess.run(
        ["sh", "-c", before_conda + "\nprintenv PIP_INDEX_URL PIP_CERT\n"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert shown.stdout.split() == [
        "https://pypi.example.org/simple",
        "/etc/hpcbinder/ca-bundle.crt",
    ]


def test_channel_names_resolve_under_the_alias() -> None:
    mirrors = Mirrors(
        conda_channels=["conda-forge", "bioconda/label/dev", "https://conda.example.org/own/"],
        conda_channel_alias="https://mirror.example.org/conda/",
    )
    assert mirrors.conda_channel_urls == [
        "https://mirror.example.org/conda/conda-forge",
        "https://mirror.example.org/conda/bioconda/label/dev",
        "https://conda.example.org/own",
    ]
    assert Mirrors().conda_channel_urls == ["https://conda.anaconda.org/conda-forge"]


@pytest.mark.parametrize(
    ("channel", "problem"),
    [("defaults", "list their URLs"), ("conda forge", "expected a channel name")],
)
def test_bad_channels_are_refused(channel: str, problem: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Mirrors(conda_channels=[channel])
    assert "conda_channels" in str(caught.value) and problem in str(caught.value)


def test_site_urls_stay_one_shell_word(tmp_path: Path) -> None:
    hostile = "https://x.example.org/a;touch$IFS/tmp/x&b"
    definition = _definition(
        "conda/site-channels",
        tmp_path,
        network={"mirrors": {"micromamba_url": hostile, "conda_channels": [hostile]}},
    )
    download = next(line for line in definition.splitlines() if "curl -fsSL" in line)
    assert shlex.split(download)[-1] == hostile
    check = next(line for line in definition.splitlines() if "curl -fsS -r" in line)
    assert (
        shlex.split(check)[-1] == "https://x.example.org/a;touch$IFS/tmp/x&b/noarch/repodata.json"
    )


def test_a_preflight_line_is_the_failure_reason() -> None:
    """The build's own check names the URL and setting; Apptainer's closing
    lines after it do not replace it."""
    line = (
        "hpcbinder: cannot reach the conda channel https://conda.example.org/own "
        "(network.mirrors.conda_channels): curl: (22) The requested URL returned error: 404"
    )
    reason = FailureReason()
    for text in ["INFO:    Running post scriptlet", line, "FATAL:   exit status 1"]:
        reason.line(text)
    assert reason.reason == line
