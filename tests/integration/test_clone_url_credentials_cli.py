"""A researcher's `hpcbinder build` and `hpcbinder render` with a link whose
clone URL carries credentials: refused in one line that does not repeat
the token, and the build server's log does not hold it either (it logs a
request before parsing its spec)."""

from __future__ import annotations

import secrets
from pathlib import Path
from urllib.parse import quote

import pytest
import yaml

from tests.conftest import SITE_BIN, DevCluster, as_account, running_build_server

pytestmark = pytest.mark.slurm


@pytest.mark.parametrize("command", ["build", "render"])
def test_a_spec_with_credentials_is_refused_and_shown_nowhere(
    devcluster: DevCluster, shared_dir: Path, command: str
) -> None:
    token = f"glpat-{secrets.token_hex(10)}"
    url = f"https://oauth2:{token}@gitlab.example.org/group/project.git"
    spec = f"git/{quote(url, safe='')}/main"
    site_file = shared_dir / "site.yaml"
    site = yaml.safe_load(Path("/etc/hpcbinder/site.yaml").read_text())
    site_file.write_text(yaml.safe_dump(site))
    argv = [str(SITE_BIN / "hpcbinder"), "--site", str(site_file), command, spec]
    with running_build_server(site_file):
        done = as_account("alice", argv, timeout=120)
    server_log = site_file.with_suffix(".build-server.log").read_text()
    assert done.returncode == 2, (done.stdout, done.stderr)
    error = done.stderr.strip().splitlines()
    assert len(error) == 1 and "may not carry credentials" in error[0], done.stderr
    assert token not in done.stdout + done.stderr
    if command == "build":  # render asks no build server
        assert "was (not repeated: it may hold credentials)" in server_log
    assert token not in server_log, server_log
