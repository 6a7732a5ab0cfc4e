"""The shapes of the identifiers that pass between components.

Each is checked with ``fullmatch`` (in RE2: :mod:`hpcbinder.textpatterns`)
wherever one arrives from outside the process (a request, a job comment, a
site file, a template's value), and all
those places read the one definition here, so a change of shape cannot leave
one check behind.
"""

from __future__ import annotations

from hpcbinder import textpatterns

#: A full git commit id (what a repository resolves to; a checkout's name).
COMMIT = textpatterns.compile(r"[0-9a-f]{40}")
#: An image's env key: the store's folder name, a job comment's image.
ENV_KEY = textpatterns.compile(r"[0-9a-f]{32}")
#: A name in the site file or in Slurm: a base, a profile, a partition.
SITE_NAME = textpatterns.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
#: A repository's absolute path on this host, in characters git and argv
#: take as is: git decodes %-escapes in file:// URLs, and ? and # are not
#: part of a path to urlsplit but are to git, so none of them.
LOCAL_PATH = textpatterns.compile(r"/[A-Za-z0-9._~/+=@-]*")
