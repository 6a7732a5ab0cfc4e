"""git runs as the build account for every researcher: its own credentials
and config (a credential helper, ~/.netrc, ~/.ssh keys, an SSH agent) must
never serve a repository someone asked for. git gets an environment of its
own, built name by name, whatever this process's holds."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from hpcbinder.seams import git

LIMITS = git.FetchLimits(10, 30.0, "repos.max_fetch_mb", "repos.fetch_timeout_seconds")


def git_config(name: str) -> str:
    result = git._git(
        ["config", "--get", name],
        "config",
        protocols=["https"],
        limits=LIMITS,
        deadline=time.monotonic() + 30,
    )
    return result.stdout.strip()


def test_git_reads_none_of_the_accounts_config_or_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".gitconfig").write_text("[credential]\n\thelper = store\n")
    (tmp_path / ".netrc").write_text("machine example.org login me password secret\n")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("SSH_AUTH_SOCK", str(tmp_path / "agent"))
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / ".gitconfig"))
    monkeypatch.setenv("HPCBINDER_SERVICE_TOKEN", "service-secret")
    assert git_config("credential.helper") == ""
    env = git._env(["https"], tmp_path / "empty")
    assert "SSH_AUTH_SOCK" not in env and "HPCBINDER_SERVICE_TOKEN" not in env
    assert env["HOME"] == str(tmp_path / "empty")
    assert "IdentityAgent=none" in env["GIT_SSH_COMMAND"]
