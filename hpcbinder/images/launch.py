"""What a researcher's job starts from an image: its ``apptainer exec``
argv and the entrypoint every command goes through.

repo2docker runs a repository's ``start`` as ``start CMD ARGS...`` around
every command (the start script ends with ``exec "$@"``), so a repository
whose ``start`` exports variables or prepares data behaves the same for the
notebook server and for anything else started in the image. hpcbinder
images are started with ``apptainer exec``, which does not run the image's
runscript: the build records the entrypoint in the image's metadata
(:func:`hpcbinder.render.definition.entrypoint`) and the server job, batch runs and
``hpcbinder build``'s "run it with" line put it in front of their command.

Jobs name their image in one of two ways: an env
key of the store or ``base:NAME`` (a site base, with no repository
environment and no entrypoint).
"""

from __future__ import annotations

from dataclasses import dataclass

from hpcbinder import textpatterns
from hpcbinder.config import Site
from hpcbinder.errors import UserError
from hpcbinder.images.store import ImageRecord, image_store
from hpcbinder.patterns import ENV_KEY, SITE_NAME
from hpcbinder.seams import apptainer

_PATH_IN_IMAGE = textpatterns.compile(r"/[A-Za-z0-9_.+-]+(?:/[A-Za-z0-9_.+-]+)*")
_BASE = textpatterns.compile(rf"base:({SITE_NAME.pattern})")


class UnknownImage(UserError):
    """A job names an image the site's store does not have."""


@dataclass(frozen=True)
class LaunchImage:
    """An image as a job starts it."""

    key: str | None  # the store's env key; None for a site base
    argv: list[str]  # ``apptainer exec ... IMAGE``; jobs add their options before IMAGE
    entrypoint: list[str]  # what the command runs through (the repository's start)


def image_entrypoint(record: ImageRecord | None) -> list[str]:
    """The argv prefix recorded for ``record`` (nothing for a site base,
    ``None``, or an image that has none)."""
    if record is None:
        return []
    words = record.meta.entrypoint
    if not all(_PATH_IN_IMAGE.fullmatch(word) and ".." not in word.split("/") for word in words):
        raise ValueError(f"image {record.key}: invalid entrypoint in its metadata: {words!r}")
    return list(words)


def launch_argv(record: ImageRecord) -> list[str]:
    """``apptainer exec`` of a published image, up to the command (an
    overlay image is its overlay on its base)."""
    if record.meta.strategy == "overlay":
        return apptainer.job_exec_argv(record.meta.base_image, overlay=record.path)
    return apptainer.job_exec_argv(record.path)


def launch_image(site: Site, name: str) -> LaunchImage:
    """The image ``name`` (an env key or ``base:NAME``) as a job starts it."""
    if ENV_KEY.fullmatch(name):
        record = image_store(site).lookup(name)
        if record is None:
            raise UnknownImage(f"image: {name} is not in this site's store (build it first)")
        return LaunchImage(name, launch_argv(record), image_entrypoint(record))
    base = _BASE.fullmatch(name)
    if base is None or base.group(1) not in site.bases:
        raise UnknownImage(
            f"image: {name!r} is neither an image of the store nor one of this site's bases "
            f"({', '.join(f'base:{b}' for b in sorted(site.bases))})"
        )
    path = site.base_image_path(base.group(1)).resolve()
    return LaunchImage(None, apptainer.job_exec_argv(path), [])
