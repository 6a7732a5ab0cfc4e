"""The shipped hub config is a site's: its addresses, public URL and
authenticator come from the site file's ``hub`` section, PAM by default,
and Dummy (or shared-password) authentication, which logs anyone in as
anyone, only where the site file says it is the dev cluster."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
import yaml
from jupyterhub.auth import DummyAuthenticator, PAMAuthenticator
from traitlets.config import Config

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "jupyterhub_config.py"
EVERY_ADDRESS = "0.0.0.0"  # noqa: S104 - what a site's hub listens on


def _load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hub: dict[str, object]) -> Config:
    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump({"hub": hub} if hub else {}))
    monkeypatch.setenv("HPCBINDER_SITE", str(site))
    monkeypatch.setenv("HPCBINDER_HUB_STATE", str(tmp_path / "state"))
    for name in ("HPCBINDER_HUB_PORT", "HPCBINDER_HUB_PUBLIC_URL", "HPCBINDER_BINDER_PORT"):
        monkeypatch.delenv(name, raising=False)
    config = Config()
    runpy.run_path(str(CONFIG), init_globals={"get_config": lambda: config})
    return config


def test_a_site_without_hub_settings_gets_pam_for_its_researchers_on_loopback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _load(tmp_path, monkeypatch, {})
    assert config.JupyterHub.authenticator_class is PAMAuthenticator
    assert config.LocalAuthenticator.allowed_groups == {"hpcusers"}
    assert config.Authenticator.allowed_users == set()
    assert (config.JupyterHub.ip, config.JupyterHub.hub_ip) == ("127.0.0.1", "127.0.0.1")
    assert config.JupyterHub.subdomain_host == "http://localhost:8000"


@pytest.mark.parametrize("name", ["dummy", "jupyterhub.auth.DummyAuthenticator", "shared-password"])
def test_shared_password_authentication_is_refused_outside_the_dev_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    with pytest.raises(SystemExit) as refused:
        _load(tmp_path, monkeypatch, {"authenticator": name})
    message = str(refused.value.code)
    assert message.startswith("jupyterhub_config.py: hub.authenticator: ")
    assert "hub.dev_cluster: true" in message and "\n" not in message


def test_the_dev_cluster_may_use_dummy_authentication(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = {"authenticator": "dummy", "dev_cluster": True, "allowed_users": ["alice"]}
    config = _load(tmp_path, monkeypatch, hub)
    assert config.JupyterHub.authenticator_class is DummyAuthenticator
    assert config.Authenticator.allowed_users == {"alice"}


def test_an_unknown_authenticator_is_one_line_naming_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(SystemExit) as refused:
        _load(tmp_path, monkeypatch, {"authenticator": "no-such-authenticator"})
    assert "hub.authenticator: no-such-authenticator is not an installed" in str(refused.value)


def test_addresses_and_public_urls_come_from_the_site_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = {
        "public_url": "https://hub.example.org",
        "ip": EVERY_ADDRESS,
        "port": 443,
        "hub_ip": EVERY_ADDRESS,
        "hub_connect_ip": "hub1.cluster.example.org",
        "binder_ip": "10.1.2.3",
        "binder_public_url": "https://binder.example.org",
    }
    config = _load(tmp_path, monkeypatch, hub)
    assert config.JupyterHub.subdomain_host == "https://hub.example.org"
    assert config.JupyterHub.cookie_host_prefix_enabled is True
    assert (config.JupyterHub.ip, config.JupyterHub.port) == (EVERY_ADDRESS, 443)
    # What every server job calls back from its compute node.
    assert config.JupyterHub.hub_ip == EVERY_ADDRESS
    assert config.JupyterHub.hub_connect_ip == "hub1.cluster.example.org"
    (binder,) = [s for s in config.JupyterHub.services if s["name"] == "binder"]
    assert binder["url"] == "http://10.1.2.3:446"
    assert binder["oauth_redirect_uri"] == "https://binder.example.org/oauth_callback"
    command = binder["command"]
    assert command[command.index("--ip") + 1] == "10.1.2.3"
    assert command[command.index("--public-url") + 1] == "https://binder.example.org/"
    assert binder["environment"]["HPCBINDER_HUB_PUBLIC_URL"] == "https://hub.example.org/"


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("ip", "localhost"),
        ("hub_ip", "hub.example.org"),
        ("port", 70000),
        ("public_url", "file:///etc"),
        ("public_url", "https://hub.example.org/not-an-origin"),
        ("hub_connect_ip", "hub:8081"),
    ],
)
def test_bad_addresses_are_one_line_naming_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setting: str, value: object
) -> None:
    with pytest.raises(SystemExit) as refused:
        _load(tmp_path, monkeypatch, {setting: value})
    message = str(refused.value.code)
    assert f"hub.{setting}: " in message and "\n" not in message
