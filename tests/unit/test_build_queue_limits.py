"""The build server's per-researcher limit counts fetch-only requests
(``hpcbinder sbatch`` asks for a checkout first) like builds: neither can be
used to run more fetches at once than the site allows."""

from __future__ import annotations

from pathlib import Path

import pytest
from tornado import web

from hpcbinder.images.server import BuildQueue, _on_behalf
from tests.repohelpers import site_for_tests


def test_fetch_only_requests_count_against_the_limit(tmp_path: Path) -> None:
    site = site_for_tests(tmp_path, build={"max_builds_per_user": 2})
    queue = BuildQueue(site)
    with queue.preparing("alice"), queue.preparing("alice"):
        refusal = queue.over_limit("alice")
        assert refusal is not None and refusal.kind == "user"
        assert "build.max_builds_per_user" in refusal.message
        assert queue.over_limit("bob") is None
    assert queue.over_limit("alice") is None


def test_a_service_account_asks_only_for_real_accounts(tmp_path: Path) -> None:
    site = site_for_tests(tmp_path)
    assert _on_behalf(site, "hpcbinder", "nobody") == "nobody"  # any researcher's account
    with pytest.raises(web.HTTPError) as unknown:
        _on_behalf(site, "hpcbinder", "no-such-researcher")
    assert unknown.value.status_code == 400
    for privileged in ("root", site.build.account):
        # root's rights (and the build account's) would read any repository here.
        with pytest.raises(web.HTTPError) as lent:
            _on_behalf(site, "hpcbinder", privileged)
        assert lent.value.status_code == 403
    with pytest.raises(web.HTTPError) as other:
        _on_behalf(site, "bob", "alice")
    assert other.value.status_code == 403
