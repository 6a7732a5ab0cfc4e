"""What a Slurm job needs from the image store and the checkout cache,
written into the job's comment so that ``images gc`` keeps it.

gc runs as the build account, which may list every job (``squeue``) but
cannot read researchers' job scripts: the comment is the one field of a
job that says which image it starts and, for a server seeding a workspace
or a batch run copying the repository, which commit's checkout it copies
when it starts. The form is ``hpcbinder-image=KEY[,hpcbinder-commit=SHA]``
(``#SBATCH --comment=...`` in slurm/server.sbatch.j2 and
slurm/batch.sbatch.j2); a job with neither carries ``hpcbinder``.

A researcher can write such a comment on any job of theirs: that keeps an
image or checkout for as long as the job waits or runs, as launching it
would, and nothing more. So a comment counts only as its job's owner's
word: gc keeps an image a job names only if that job's owner may launch it
(:meth:`hpcbinder.images.store.ImageStore.may_launch`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from hpcbinder import textpatterns
from hpcbinder.errors import UserError
from hpcbinder.patterns import COMMIT, ENV_KEY
from hpcbinder.seams.slurm import JobComment

#: The most of a comment read (Slurm keeps any length; ours are ~100 characters).
COMMENT_CHARS = 4096
#: Each takes the whole run of hex digits: a longer run is not an id (checked after).
_IMAGE_REF = textpatterns.compile(r"hpcbinder-image=([0-9a-f]+)")
_COMMIT_REF = textpatterns.compile(r"hpcbinder-commit=([0-9a-f]+)")


class JobReferenceError(UserError):
    """An image key or commit id that cannot go into a job's comment."""


def job_comment(image_key: str | None, commit: str | None, *, private: bool = False) -> str:
    """The comment of a job that starts image ``image_key`` (None for a
    site base, which gc never removes) and copies the checkout of
    ``commit`` (None when it copies none). Both are checked in full: the
    result goes onto an #SBATCH line. A ``private`` run's (her own store's
    image and checkout, :mod:`hpcbinder.images.private`) names neither:
    every account may list every job's comment (squeue, unless the site
    sets PrivateData=jobs), gc does not keep her store, and its key and
    commit would tell others of her private repository."""
    if private:
        return "hpcbinder"
    if image_key is not None and not ENV_KEY.fullmatch(image_key):
        raise JobReferenceError(f"not an image key: {image_key!r}")
    if commit is not None and not COMMIT.fullmatch(commit):
        raise JobReferenceError(f"not a commit id: {commit!r}")
    parts = [f"hpcbinder-image={image_key}"] if image_key else []
    parts += [f"hpcbinder-commit={commit}"] if commit else []
    return ",".join(parts) or "hpcbinder"


@dataclass(frozen=True)
class JobReferences:
    """Image keys, each with the owner of the job naming it, and commits
    that pending or running jobs name."""

    images: frozenset[tuple[str, str]]  # (user, key)
    commits: frozenset[str]


def references(comments: Iterable[JobComment]) -> JobReferences:
    """What the comments of jobs (any text, any number of references) name."""
    images: set[tuple[str, str]] = set()
    commits: set[str] = set()
    for job in comments:
        comment = job.comment[:COMMENT_CHARS]
        keys = _IMAGE_REF.findall(comment)
        images.update((job.user, k) for k in keys if ENV_KEY.fullmatch(k))
        commits.update(c for c in _COMMIT_REF.findall(comment) if COMMIT.fullmatch(c))
    return JobReferences(frozenset(images), frozenset(commits))
