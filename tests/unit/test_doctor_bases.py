"""``hpcbinder doctor``'s base images check on a site with several bases:
each must be built, from the definition the site file gives it now."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

from hpcbinder.cli.doctor import Status, check_base_images
from hpcbinder.config import Site
from hpcbinder.render.definition import render_base

MIRROR = "http://deb.debian.org/debian"
HUB_MAJOR = int(importlib.metadata.version("jupyterhub").split(".")[0])


def two_bases(store: Path, py313_mirror: str | None = MIRROR) -> Site:
    return Site.model_validate(
        {
            "image_store": str(store),
            "bases": {
                "default": {"python": "3.11", "source": "bookworm", "mirror": MIRROR},
                "py313": {"python": "3.13", "source": "trixie", "mirror": py313_mirror},
            },
        }
    )


def publish(site: Site, name: str, definition: str | None = None) -> None:
    """A base as ``base build`` leaves it: the image, its metadata, the link."""
    bases = site.image_store / "bases"
    bases.mkdir(parents=True, exist_ok=True)
    kept = bases / f"{name}-20261123T000000.sif"
    kept.write_bytes(b"SIF")
    built_from = render_base(site, name, HUB_MAJOR) if definition is None else definition
    kept.with_suffix(".json").write_text(json.dumps({"definition": built_from}))
    (bases / f"{name}.sif").symlink_to(kept.name)


def test_every_base_built_from_the_site_file_passes(tmp_path: Path) -> None:
    site = two_bases(tmp_path)
    publish(site, "default")
    publish(site, "py313")
    result = check_base_images(site)
    assert result.status is Status.OK, result.line()
    assert "default (Python 3.11), py313 (Python 3.13)" in result.detail


def test_a_base_not_built_is_named(tmp_path: Path) -> None:
    site = two_bases(tmp_path)
    publish(site, "default")
    result = check_base_images(site)
    assert result.status is Status.WARN
    assert result.line() == (
        "✱ base images: not built yet: py313 — fix: hpcbinder base build --missing (as hpcbuild)"
    )


def test_a_base_built_from_an_older_site_file_is_named(tmp_path: Path) -> None:
    site = two_bases(tmp_path)
    publish(site, "default", definition="Bootstrap: debootstrap\nOSVersion: bullseye\n")
    publish(site, "py313")
    result = check_base_images(site)
    assert result.status is Status.WARN
    assert "built from another definition than the site file's: default" in result.detail


def test_a_base_that_cannot_be_built_fails_naming_the_setting(tmp_path: Path) -> None:
    site = two_bases(tmp_path, py313_mirror=None)
    publish(site, "default")
    (tmp_path / "bases" / "py313.sif").symlink_to("default.sif")
    result = check_base_images(site)
    assert result.status is Status.FAIL
    assert "bases.py313.mirror: required for debootstrap" in result.detail
