"""What a command run as another account gets of the caller's environment:
nothing but the variables the caller names (the command runner, sbatch's
export list, the server job's variables, the SSH runner's lines).

The hub's and the Binder service's own secrets (their hub tokens, the
cookie secret, an admin token) sat in their processes' environments; the
runner passed the whole environment to sudo, whose ``env_keep`` patterns
kept every ``JUPYTERHUB_*``/``JPY_*``/``HPCBINDER_*`` of it, and sbatch
exported it into researchers' jobs."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hpcbinder.jobs.servers import SERVER_ENV
from hpcbinder.seams import apptainer, proc
from hpcbinder.seams.remote import env_lines
from hpcbinder.seams.slurm import SlurmCLI, SubmitOptions
from tests.unit.fakes import Replies, ScriptedSlurm
from tests.unit.test_spawner import TOKEN, spawner_for

#: What the hub's and the Binder service's processes hold of their own.
SECRETS = {
    "JUPYTERHUB_API_TOKEN": "marker-service-token",
    "JPY_COOKIE_SECRET": "marker-cookie-secret",
    "HPCBINDER_ADMIN_TOKEN": "marker-admin-token",
    "CONFIGPROXY_AUTH_TOKEN": "marker-proxy-token",
    "LANG": "marker-lang",
    "LC_ALL": "marker-lc",
}

NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,30}", fullmatch=True).filter(
    lambda name: name != "PATH"
)
VALUES = st.text(st.characters(codec="utf-8", exclude_characters="\0\n"), max_size=40)


class Captured:
    """subprocess.run as proc calls it: the argv and the whole environment."""

    def __init__(self) -> None:
        self.argv: list[str] = []
        self.env: dict[str, str] | None = None

    def __call__(self, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        self.argv = list(argv)
        self.env = kwargs["env"]
        return subprocess.CompletedProcess(argv, 0, "", "")


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> Iterator[Captured]:
    capture = Captured()
    monkeypatch.setattr(subprocess, "run", capture)
    monkeypatch.setattr(proc, "current_user", lambda: "hpcbinder")
    yield capture


def _preserved(argv: list[str]) -> set[str]:
    keep = [word for word in argv if word.startswith("--preserve-env=")]
    return set(keep[0].removeprefix("--preserve-env=").split(",")) if keep else set()


def test_another_account_gets_exactly_the_passed_names(
    captured: Captured, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    proc.run(["sbatch"], user="alice", env={"APPTAINERENV_JUPYTERHUB_API_TOKEN": "own"})
    assert captured.env == {"PATH": proc.SAFE_PATH, "APPTAINERENV_JUPYTERHUB_API_TOKEN": "own"}
    assert captured.argv == [
        "sudo", "-n", "--preserve-env=APPTAINERENV_JUPYTERHUB_API_TOKEN", "-u", "alice", "--",
        "sbatch",
    ]  # fmt: skip
    proc.run(["squeue"], user="alice")
    assert captured.env == {"PATH": proc.SAFE_PATH}
    assert _preserved(captured.argv) == set()


def test_this_account_keeps_its_own_environment(
    captured: Captured, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HPCBINDER_SITE", "/etc/hpcbinder/site.yaml")
    proc.run(["git", "status"], user="hpcbinder", env={"GIT_DIR": "/x"})
    assert captured.env is not None and captured.env["HPCBINDER_SITE"] == "/etc/hpcbinder/site.yaml"
    assert captured.argv == ["git", "status"]


@settings(max_examples=200, deadline=None)
@given(
    own=st.dictionaries(NAMES, VALUES.filter(bool), max_size=8),
    passed=st.dictionaries(NAMES, VALUES, max_size=8),
)
def test_nothing_of_the_callers_environment_reaches_another_account(
    own: dict[str, str], passed: dict[str, str]
) -> None:
    """Whatever the caller's variables are called and hold, the command's
    environment is the passed names and the fixed PATH, and sudo is asked
    to keep exactly the passed names."""
    capture = Captured()
    saved = dict(os.environ)
    original_run, original_user = subprocess.run, proc.current_user
    subprocess.run = capture  # type: ignore[assignment]
    proc.current_user = lambda: "hpcbinder"
    try:
        os.environ.update({f"OWN_{name}": value for name, value in own.items()})
        os.environ.update(own)
        proc.run(["sbatch"], user="alice", env=passed)
    finally:
        subprocess.run, proc.current_user = original_run, original_user
        os.environ.clear()
        os.environ.update(saved)
    assert capture.env == {"PATH": proc.SAFE_PATH, **passed}
    assert _preserved(capture.argv) == set(passed)


@pytest.mark.parametrize(
    "env",
    [{"PATH": "/var/tmp/evil:/usr/bin"}, {"BAD NAME": "1"}, {"A,B": "1"}, {"X": "a\nB=2"}],
)
def test_names_and_values_that_cannot_travel_are_refused(
    captured: Captured, env: dict[str, str]
) -> None:
    with pytest.raises(ValueError, match=r"cannot be passed|NUL byte or a line break"):
        proc.run(["sbatch"], user="alice", env=env)
    with pytest.raises(ValueError):
        env_lines(env)


def test_builds_as_another_account_stream_with_an_empty_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen: dict[str, Any] = {}

    class Child:
        pid = 1
        stdout = None

        def __init__(self, argv: list[str], **kwargs: Any) -> None:
            seen.update(argv=argv, env=kwargs["env"])

        def wait(self) -> int:
            return 0

        def poll(self) -> int:
            return 0

    monkeypatch.setattr(subprocess, "Popen", Child)
    monkeypatch.setattr(proc, "current_user", lambda: "root")
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "marker")
    proc.stream(["apptainer", "build"], on_line=print, user="hpcbuild", timeout=5)
    assert seen["env"] == {"PATH": proc.SAFE_PATH}
    assert seen["argv"][:4] == ["sudo", "-n", "-u", "hpcbuild"]


def test_sbatch_exports_exactly_the_passed_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """Another account's job gets the environment its sbatch runs with,
    which is exactly the passed names on a fixed PATH (account_env); the
    own account's job the passed names only, on its login environment."""
    monkeypatch.setattr(proc, "current_user", lambda: "hpcbinder")
    slurm = Replies(*[(0, "4242\n", "")] * 4)
    cli = SlurmCLI(slurm)
    cli.submit("#!/bin/sh\n", SubmitOptions(), user="alice", env={"B": "2", "A": "1"})
    cli.submit("#!/bin/sh\n", SubmitOptions(), user="alice")
    cli.submit("#!/bin/sh\n", SubmitOptions(), env={"B": "2", "A": "1"})
    cli.submit("#!/bin/sh\n", SubmitOptions(), user="hpcbinder")
    exports = [call[0][2] for call in slurm.calls]
    assert exports == ["--export=ALL", "--export=ALL", "--export=A,B", "--export=NONE"]


def test_a_server_job_gets_its_own_hub_variables_and_nothing_of_the_hubs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """JupyterHub's get_env() copies ``env_keep`` names from the hub's own
    environment and adds ``Spawner.environment``: none of that reaches the
    job, only the server's own variables, under their container names."""
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    spawner = spawner_for(tmp_path, ScriptedSlurm([]))
    spawner.env_keep = [*spawner.env_keep, "JPY_COOKIE_SECRET", "HPCBINDER_ADMIN_TOKEN", "LANG"]
    spawner.environment = {"HPCBINDER_ADMIN_TOKEN": "marker-admin-token"}
    env = spawner.server_env()
    assert env["APPTAINERENV_JUPYTERHUB_API_TOKEN"] == TOKEN
    assert set(env) <= {apptainer.CONTAINER_ENV_PREFIX + name for name in SERVER_ENV}
    assert not any(value in SECRETS.values() for value in env.values())
