"""The shipped hub config makes the hub's cookies ``__Host-`` cookies over
HTTPS: a repository's JavaScript on a researcher's subdomain cannot set a
login or session cookie for the hub (cookie tossing, GHSA-7r3h-4ph8-w38g)."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
from traitlets.config import Config

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "jupyterhub_config.py"


def _load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, public_url: str) -> Config:
    monkeypatch.setenv("HPCBINDER_HUB_STATE", str(tmp_path))
    monkeypatch.setenv("HPCBINDER_HUB_PUBLIC_URL", public_url)
    config = Config()
    runpy.run_path(str(CONFIG), init_globals={"get_config": lambda: config})
    return config


@pytest.mark.parametrize(
    ("public_url", "prefixed"),
    [("https://hub.example.org", True), ("http://localhost:8000", False)],
)
def test_host_prefixed_cookies_over_https(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, public_url: str, prefixed: bool
) -> None:
    config = _load(tmp_path, monkeypatch, public_url)
    assert config.JupyterHub.subdomain_host == public_url
    assert config.JupyterHub.cookie_host_prefix_enabled is prefixed
