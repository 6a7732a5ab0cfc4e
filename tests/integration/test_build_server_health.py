"""The build server keeps answering while it reads a hostile repository.

It is one process for everyone. A Pipfile version of 64 '!' held it (and
its interpreter lock, in ``re``'s C code) for days: no ``/health``, no
other build's events. Now patterns are linear and the repository is read in
a child process with a deadline: ``/health`` answers within a second all
along, and the requester gets the repository's one-line error.
"""

from __future__ import annotations

import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import SITE_BIN, running_build_server
from tests.repohelpers import git, local_spec

pytestmark = pytest.mark.slurm

HOSTILE = {
    # Days in the old specifier pattern, with the interpreter lock held.
    "Pipfile": '[packages]\nsix = "' + "!" * 64 + '#"\n',
    # ~5 s of YAML parsing (1 MB, the most read), then an error at its end.
    "environment.yml": "dependencies:\n" + "  - a\n" * 170_000 + "  - [\n",
}


@pytest.mark.parametrize("name", HOSTILE)
def test_health_answers_within_a_second_while_a_hostile_repository_is_read(
    name: str, shared_dir: Path
) -> None:
    repo = shared_dir / "hostile"
    repo.mkdir()
    (repo / name).write_text(HOSTILE[name])
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "hostile")
    subprocess.run(["chmod", "-R", "a+rX", str(repo)], check=True)
    site = yaml.safe_load(Path("/etc/hpcbinder/site.yaml").read_text())
    site["repos"] = {
        **site.get("repos", {}),
        "local_roots": [str(shared_dir)],
        "cache_dir": str(shared_dir / "checkouts"),
    }
    site_file = shared_dir / "site.yaml"
    site_file.write_text(yaml.safe_dump(site))
    with running_build_server(site_file):
        health = yaml.safe_load(site_file.read_text())["build"]["server_url"] + "/health"
        argv = [str(SITE_BIN / "hpcbinder"), "--site", str(site_file), "build"]
        build = subprocess.Popen(
            ["sudo", "-n", "-u", "alice", "--", *argv, local_spec(repo, "main")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd="/",
        )
        slowest, answers, started = 0.0, 0, time.monotonic()
        try:
            while build.poll() is None and time.monotonic() - started < 120:
                asked = time.monotonic()
                try:
                    with urllib.request.urlopen(health, timeout=5) as response:  # noqa: S310
                        assert response.status == 200
                except OSError as exc:
                    pytest.fail(f"/health did not answer in 5 s while reading {name}: {exc}")
                slowest, answers = max(slowest, time.monotonic() - asked), answers + 1
                time.sleep(0.1)
        finally:
            if build.poll() is None:
                build.terminate()
    _, stderr = build.communicate(timeout=60)  # the server is gone: the client ends
    assert slowest < 1, f"/health took {slowest:.2f} s"
    assert answers >= 1
    assert build.returncode == 2, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {name}"), stderr
    assert "Traceback" not in stderr and "internal error" not in stderr
