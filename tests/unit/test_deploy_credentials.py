"""Deploy credentials (hpcbinder.images.deploy): a file only root writes and
others cannot read, each credential offered by git and ssh to its own host
only, and no value in argv, config text or a refusal."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from hpcbinder.config import Site
from hpcbinder.images import deploy
from hpcbinder.seams import git

TOKEN = "glpat-not-for-elsewhere"  # noqa: S105


def site_with(path: Path) -> Site:
    return Site.model_validate({"build": {"deploy_credentials": str(path)}})


def write(path: Path, data: object, mode: int = 0o640) -> Path:
    path.write_text(yaml.safe_dump(data))
    path.chmod(mode)
    return path


def test_the_file_is_roots_and_closed_to_others(tmp_path: Path) -> None:
    good = write(tmp_path / "deploy.yaml", {"git.example.org": {"token": TOKEN}})
    (credential,) = deploy.load(site_with(good))
    assert credential.host == "git.example.org" and credential.token == TOKEN
    for mode in (0o644, 0o660, 0o604):
        good.chmod(mode)
        with pytest.raises(deploy.DeployCredentialsError, match=r"build\.deploy_credentials"):
            deploy.load(site_with(good))
    good.chmod(0o640)
    os.chown(good, 65534, 0)  # not root's
    with pytest.raises(deploy.DeployCredentialsError, match="uid 65534"):
        deploy.load(site_with(good))
    link = tmp_path / "link.yaml"
    link.symlink_to(good)
    with pytest.raises(deploy.DeployCredentialsError, match="cannot read"):
        deploy.load(site_with(link))


@pytest.mark.parametrize(
    "data",
    [
        {"bad host!": {"token": TOKEN}},
        {"git.example.org": {"token": TOKEN + " with space"}},
        {"git.example.org": {"token": TOKEN, "password": TOKEN}},
        {"git.example.org": {"ssh_key": "relative/key"}},
        [TOKEN],
    ],
)
def test_a_bad_entry_is_one_line_that_repeats_no_value(tmp_path: Path, data: object) -> None:
    path = write(tmp_path / "deploy.yaml", data)
    with pytest.raises(deploy.DeployCredentialsError) as caught:
        deploy.load(site_with(path))
    assert TOKEN not in str(caught.value) and "\n" not in str(caught.value)


def fill(env: dict[str, str], host: str, cwd: Path) -> str:
    """What git's credential machinery answers for ``host`` (http)."""
    done = subprocess.run(
        ["git", "credential", "fill"],
        input=f"protocol=http\nhost={host}\n\n",
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
    )
    return done.stdout


def test_a_token_is_offered_to_its_own_host_only(tmp_path: Path) -> None:
    vouched = git.DeployCredential("127.0.0.1:8443", "deploy-bot", TOKEN)
    with git.deploy_credentials([vouched]):
        env = git._env(["http", "https"], tmp_path)
    assert all(TOKEN not in value for key, value in env.items() if "TOKEN" not in key)
    assert f"password={TOKEN}" in fill(env, "127.0.0.1:8443", tmp_path)
    for other in ("127.0.0.1:8444", "127.0.0.1", "evil.example.org"):
        assert TOKEN not in fill(env, other, tmp_path)
    assert git.TOKEN_VARIABLE not in git._env(["https"], tmp_path)  # outside: none


def test_an_ssh_key_is_offered_to_its_own_host_only(tmp_path: Path) -> None:
    key = git.DeployCredential(
        "git.example.org", ssh_key=Path("/etc/deploy/key"), known_hosts=Path("/etc/deploy/kh")
    )
    with git.deploy_credentials([key]):
        env = git._env(["ssh"], tmp_path)
    config = (tmp_path / "ssh_config").read_text()
    assert config.splitlines() == [
        "Host git.example.org",
        "  IdentityFile /etc/deploy/key",
        "  UserKnownHostsFile /etc/deploy/kh",
        "Host *",
        "  IdentityFile none",
    ]
    assert f"-F {tmp_path / 'ssh_config'}" in env["GIT_SSH_COMMAND"]
    assert "IdentityAgent=none" in env["GIT_SSH_COMMAND"]

    def identity_lines(host: str) -> list[str]:
        """The key files ssh, as git runs it, would offer ``host``."""
        resolved = subprocess.run(
            [*shlex.split(env["GIT_SSH_COMMAND"]), "-G", host],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
        files = [line.split(" ", 1)[1] for line in resolved.splitlines()]
        return [
            name
            for line, name in zip(resolved.splitlines(), files, strict=True)
            if line.lower().startswith("identityfile ") and name != "none"
        ]

    # Elsewhere, none: not the deploy key, nor the build account's own
    # ~/.ssh/id_* (ssh reads ~ from passwd), which the old command offered.
    assert identity_lines("elsewhere.example.org") == []
    assert identity_lines("git.example.org") == ["/etc/deploy/key"]
