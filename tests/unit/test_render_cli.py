"""`hpcbinder render`: the definition, the plan as JSON, and one-line errors
with exit code 2 for bad input."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml

from tests.repohelpers import git, local_spec, make_repo


def run_render(cli: list[str], site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*cli, "--site", str(site), "render", *args], capture_output=True, text=True, timeout=120
    )


def write_site(tmp_path: Path) -> Path:
    site = tmp_path / "site.yaml"
    site.write_text(
        yaml.safe_dump(
            {
                "repos": {"local_roots": [str(tmp_path)], "cache_dir": str(tmp_path / "cache")},
            }
        )
    )
    return site


def test_render_prints_definition_and_plan(tmp_path: Path, hpcbinder_cli: list[str]) -> None:
    repo = make_repo("python/requirements", tmp_path / "repo")
    site = write_site(tmp_path)
    spec = local_spec(repo).rsplit("/", 1)[0]

    definition = run_render(hpcbinder_cli, site, spec, "--ref", "main")
    assert definition.returncode == 0, definition.stderr
    assert definition.stdout.startswith("Bootstrap: localimage\n")
    assert "-r /opt/hpcbinder/env/requirements.txt" in definition.stdout

    plan = run_render(hpcbinder_cli, site, spec, "--ref", "main", "--plan")
    document = json.loads(plan.stdout)
    assert document["commit"] == git(repo, "rev-parse", "main")
    assert len(document["env_key"]) == 32
    assert document["plan"]["buildpack"] == "python"
    assert document["plan"]["env_files"] == ["requirements.txt"]


def test_render_plan_shows_the_files_generated_for_the_build(
    tmp_path: Path, hpcbinder_cli: list[str]
) -> None:
    """apt.txt's names reach the build as a file: the plan shows it."""
    repo = make_repo("base/apt", tmp_path / "repo")
    plan = run_render(hpcbinder_cli, write_site(tmp_path), local_spec(repo), "--plan")
    assert plan.returncode == 0, plan.stderr
    assert json.loads(plan.stdout)["generated"] == {"apt-packages.txt": "cowsay\nfiglet\n"}


def test_render_warnings_go_to_stderr(tmp_path: Path, hpcbinder_cli: list[str]) -> None:
    repo = make_repo("python/requirements3", tmp_path / "repo")
    result = run_render(hpcbinder_cli, write_site(tmp_path), local_spec(repo))
    assert result.returncode == 0
    assert "warning: requirements3.txt is ignored" in result.stderr
    assert "warning" not in result.stdout


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, hpcbinder_cli: list[str]) -> None:
    site = write_site(tmp_path)
    bad_apt = make_repo("base/apt-bad-name", tmp_path / "apt")
    cases = {
        "zz/org/repo/main": "error: unknown provider 'zz'",
        local_spec(tmp_path / "repo-missing"): "error: cannot list refs of file://",
        local_spec(bad_apt, "no-such-branch"): "error: file://",
        local_spec(bad_apt): "error: apt.txt:2: 'curl; rm -rf /' is not a package name",
    }
    for spec, message in cases.items():
        result = run_render(hpcbinder_cli, site, spec)
        assert result.returncode == 2, (spec, result.stderr)
        assert result.stderr.startswith(message), (spec, result.stderr)
        assert "Traceback" not in result.stderr
        assert result.stderr.count("\n") == 1
