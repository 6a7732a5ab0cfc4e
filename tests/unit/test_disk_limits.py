"""Per-researcher disk limits: what a researcher's requests made the build
account keep (checkouts fetched, images built for them) is counted, and a
new request over ``build.max_user_disk_mb`` is refused in one line naming
the setting; what gc removes no longer counts."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from hpcbinder.images.quota import DiskLedger, DiskLimitReached
from hpcbinder.images.server import BuildQueue
from hpcbinder.images.store import ImageStore
from tests.repohelpers import git, local_spec, site_for_tests
from tests.unit.fakes import publish_fake_image


def big_repo(path: Path, megabytes: int) -> Path:
    path.mkdir(parents=True)
    (path / "data.bin").write_bytes(b"\0" * (megabytes << 20))
    git(path, "init", "-q", "-b", "main")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "data")
    return path


def test_a_researcher_over_the_limit_is_refused_until_gc_frees_space(tmp_path: Path) -> None:
    site = site_for_tests(
        tmp_path, image_store=str(tmp_path / "store"), build={"max_user_disk_mb": 2}
    )
    queue = BuildQueue(site)
    spec = local_spec(big_repo(tmp_path / "repo", 3))
    checkout = queue.prepare(spec, "alice").checkout  # under the limit when asked
    with pytest.raises(DiskLimitReached) as refused:
        queue.prepare(spec, "alice")
    message = str(refused.value)
    assert "\n" not in message and "build.max_user_disk_mb" in message
    assert "alice's builds and checkouts take 3 MB" in message
    assert queue.prepare(spec, "bob").checkout == checkout  # bob's own limit
    shutil.rmtree(checkout)  # gc removed it
    queue.prepare(spec, "alice")


def test_images_built_for_a_researcher_count_while_kept(tmp_path: Path) -> None:
    site = site_for_tests(
        tmp_path, image_store=str(tmp_path / "store"), build={"max_user_disk_mb": 1}
    )
    store = ImageStore(site.image_store)
    ledger = DiskLedger(site, store)
    key = "1" * 32
    publish_fake_image(store, key)
    ledger.add("alice", f"image:{key}", 2 << 20)
    with pytest.raises(DiskLimitReached):
        ledger.check("alice")
    ledger.check("bob")
    store.remove(key)
    ledger.check("alice")
