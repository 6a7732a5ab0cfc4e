"""Which download cache a build gets: its env key's, never its
repository's. Repository code writes the cache and package managers trust
it, so a cache written by one key's build must never serve another key."""

from __future__ import annotations

import os
import time
from pathlib import Path

from hpcbinder.images.builder import cache_dir
from hpcbinder.images.gc import clean_build_caches
from tests.repohelpers import site_for_tests


def test_a_build_gets_the_cache_of_its_env_key_only(tmp_path: Path) -> None:
    site = site_for_tests(tmp_path, build={"cache_dir": str(tmp_path / "cache")})
    # A repository's branch with a postBuild (key "a-poisoner") fills its
    # cache; another branch with a victim's environment files has the
    # victim's key, and with it the victim's cache, not the first one's.
    poisoner, victim = cache_dir(site, "a-poisoner"), cache_dir(site, "victim-key")
    assert poisoner is not None and victim is not None
    assert poisoner != victim
    assert cache_dir(site, "victim-key") == victim
    assert poisoner.parent == victim.parent == tmp_path / "cache" / "envs"
    assert cache_dir(site, None) == tmp_path / "cache" / "bases"
    assert cache_dir(site_for_tests(tmp_path, build={"cache_dir": None}), "victim-key") is None


def test_gc_removes_the_caches_of_images_that_are_gone(tmp_path: Path) -> None:
    """A cache is repository code's output: it lives only as long as its
    image (or a build that may still use it)."""
    site = site_for_tests(tmp_path, build={"cache_dir": str(tmp_path / "cache")})
    kept, gone, fresh = (cache_dir(site, key) for key in ("kept-key", "gone-key", "fresh-key"))
    assert kept and gone and fresh
    for cache in (kept, gone, fresh):
        (cache / "wheels").mkdir(parents=True)
        (cache / "wheels" / "big.whl").write_bytes(b"x" * 1024)
    long_ago = time.time() - 86400
    for cache in (kept, gone):
        os.utime(cache, (long_ago, long_ago))
    removed = clean_build_caches(site, {"kept-key"}, unused_since=time.time() - 3600)
    assert removed == [gone]
    assert kept.is_dir() and fresh.is_dir() and not gone.exists()
