"""Path settings name one place for every process (an absolute path);
``network.ca_bundle`` decides whom every fetch and build trusts, and doctor warns when
anyone but root could change it or a folder above it (review of issue 23)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hpcbinder.cli import doctor
from hpcbinder.config import SiteConfigError, parse_site
from tests.repohelpers import site_for_tests


@pytest.mark.parametrize(
    ("yaml", "setting"),
    [
        ("network: {ca_bundle: certs/site-ca.pem}", "network.ca_bundle"),
        ("image_store: images", "image_store"),
        ("build: {cache_dir: cache}", "build.cache_dir"),
        ("build: {deploy_credentials: ./deploy.yaml}", "build.deploy_credentials"),
        ("repos: {cache_dir: ../checkouts}", "repos.cache_dir"),
        ("repos: {local_roots: [/srv/repos, srv/more]}", "repos.local_roots.1"),
        ("binder: {metrics_token_file: metrics.token}", "binder.metrics_token_file"),
        (
            "build: {backend: ssh, ssh: {host: b1, key_file: id, known_hosts: /k}}",
            "build.ssh.key_file",
        ),
    ],
)
def test_a_relative_path_setting_is_one_line_naming_it(yaml: str, setting: str) -> None:
    """Review (session 11): only the bundle had to be absolute; a relative
    store or cache was read from each process's own working folder (the
    build server's, a job's), so they silently used different places."""
    with pytest.raises(SiteConfigError) as caught:
        parse_site(yaml + "\n", "site.yaml")
    assert caught.value.problems == [f"{setting}: expected an absolute path (starting with /)"]


def _check(tmp_path: Path, bundle: Path | None) -> doctor.CheckResult:
    network = {} if bundle is None else {"ca_bundle": str(bundle)}
    return doctor.check_ca_bundle(site_for_tests(tmp_path, network=network))


def test_doctor_warns_when_others_could_change_the_bundle(tmp_path: Path) -> None:
    assert os.geteuid() == 0  # the tests run as root here: files are root's
    folder = tmp_path / "certs"
    folder.mkdir(mode=0o755)
    bundle = folder / "site-ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    bundle.chmod(0o644)
    assert _check(tmp_path, None).status is doctor.Status.OK
    assert _check(tmp_path, bundle).status is doctor.Status.OK
    bundle.chmod(0o664)
    writable = _check(tmp_path, bundle)
    assert writable.status is doctor.Status.WARN
    assert "network.ca_bundle" in writable.line() and "mode 664" in writable.line()
    bundle.chmod(0o644)
    os.chown(bundle, 1000, 0)
    assert "uid 1000's" in _check(tmp_path, bundle).line()
    os.chown(bundle, 0, 0)
    folder.chmod(0o777)  # anyone could put another file in its place
    assert f"its folder {folder}" in _check(tmp_path, bundle).line()
    folder.chmod(0o755)
    assert _check(tmp_path, bundle).status is doctor.Status.OK
    missing = _check(tmp_path, folder / "gone.pem")
    assert missing.status is doctor.Status.FAIL and "network.ca_bundle" in missing.line()
