"""The command line ends every error a user or sysadmin can cause in one
place: a site file's problems one a line, bad input in one line with exit
status 2, an outside system's failure with 1; never a traceback."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest


def run(cli: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*cli, *args], capture_output=True, text=True, timeout=120)


def test_a_bad_site_file_lists_its_problems(tmp_path: Path, hpcbinder_cli: list[str]) -> None:
    site = tmp_path / "site.yaml"
    site.write_text("partitions: {interactive: {max_cpus: lots}}\nno_such_setting: 1\n")
    for command in (["render", "gh/org/repo/HEAD"], ["images", "ls"], ["jobs", "ls"]):
        done = run(hpcbinder_cli, "--site", str(site), *command)
        assert done.returncode == 2, (command, done.stderr)
        lines = done.stderr.splitlines()
        assert lines[0] == f"{site}: invalid site file"
        assert any("no_such_setting: unknown setting" in line for line in lines)
        assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["render", "nosuch/org/repo/HEAD"], "error: "),
        (["images", "rm", "0" * 32], "error: run this as the build account"),
        (["jobs", "logs", "999999999"], "error: "),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, hpcbinder_cli: list[str], args: list[str], reason: str
) -> None:
    site = tmp_path / "site.yaml"
    site.write_text(f"repos: {{cache_dir: {tmp_path / 'cache'}}}\n")
    done = run(hpcbinder_cli, "--site", str(site), *args)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(reason)
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
