"""Prometheus' token for /metrics and /versions comes from a file only the
service account may read (never from the site file), and a file that
protects nothing stops the service from starting, naming the setting."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hpcbinder.config import SiteConfigError, parse_site
from hpcbinder.web.metrics import is_scrape_token, scrape_token


def _token_file(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "metrics_token"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_the_metrics_token_comes_from_its_file(tmp_path: Path) -> None:
    token = "0123456789abcdef0123456789abcdef"  # noqa: S105 - a test's
    assert scrape_token(_token_file(tmp_path, f"{token}\n")) == token
    assert is_scrape_token(token, token)
    assert not is_scrape_token(token[:-1] + "0", token)
    assert not is_scrape_token("", token) and not is_scrape_token(token, None)


@pytest.mark.parametrize(
    ("text", "mode", "problem"),
    [
        ("0123456789abcdef0123", 0o644, "is mode 644: other accounts may read or change it"),
        ("0123456789abcdef0123", 0o602, "is mode 602"),
        ("short", 0o600, "at least 16 characters"),
        ("0123456789 abcdef0123", 0o600, "no spaces"),
        ("", 0o600, "at least 16 characters"),
    ],
)
def test_a_token_file_that_protects_nothing_stops_the_service(
    tmp_path: Path, text: str, mode: int, problem: str
) -> None:
    with pytest.raises(SiteConfigError) as caught:
        scrape_token(_token_file(tmp_path, text, mode))
    message = str(caught.value)
    assert message.startswith("binder.metrics_token_file: ") and problem in message, message
    assert "0123456789" not in message and "\n" not in message


def test_an_unreadable_token_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(SiteConfigError, match=r"cannot read .*missing: No such file"):
        scrape_token(tmp_path / "missing")
    if os.geteuid() != 0:  # root reads any file
        unreadable = _token_file(tmp_path, "0123456789abcdef0123", 0o000)
        with pytest.raises(SiteConfigError, match="Permission denied"):
            scrape_token(unreadable)


def test_the_site_file_names_a_token_file_not_a_token() -> None:
    site = parse_site("binder:\n  metrics_token_file: /etc/hpcbinder/metrics_token\n")
    assert site.binder.metrics_token_file == Path("/etc/hpcbinder/metrics_token")
    with pytest.raises(SiteConfigError, match=r"binder\.metrics_token: unknown setting"):
        parse_site("binder:\n  metrics_token: 0123456789abcdef\n")
