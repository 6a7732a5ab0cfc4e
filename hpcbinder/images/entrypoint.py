"""What every command run in a repository's image goes through.

repo2docker runs a repository's ``start`` as ``start CMD ARGS...`` around
every command (the start script ends with ``exec "$@"``), so a repository
whose ``start`` exports variables or prepares data behaves the same for the
notebook server and for anything else started in the image. hpcbinder
images are started with ``apptainer exec``, which does not run the image's
runscript: the build records the entrypoint in the image's metadata
(:func:`hpcbinder.render.definition.entrypoint`) and the server job, batch runs and
``hpcbinder build``'s "run it with" line put it in front of their command.
"""

from __future__ import annotations

import re

from hpcbinder.images.store import ImageRecord

#: The image metadata field that holds the entrypoint (an argv prefix).
META_FIELD = "entrypoint"
_PATH_IN_IMAGE = re.compile(r"/[A-Za-z0-9_.+-]+(?:/[A-Za-z0-9_.+-]+)*")


def image_entrypoint(record: ImageRecord | None) -> list[str]:
    """The argv prefix recorded for ``record`` (nothing for a site base,
    ``None``, or an image that has none)."""
    if record is None:
        return []
    words = record.meta.get(META_FIELD) or []
    if not isinstance(words, list) or not all(
        isinstance(word, str) and _PATH_IN_IMAGE.fullmatch(word) and ".." not in word.split("/")
        for word in words
    ):
        raise ValueError(f"image {record.key}: invalid {META_FIELD} in its metadata: {words!r}")
    return list(words)
