"""Per-researcher disk limits: what a researcher's requests made the build
account keep (images built and repositories fetched for them), within the
site's ``build.max_user_disk_mb``.

Without a limit one researcher could fill the image store and the checkout
cache that everyone shares, one repository or commit at a time. The build
server is the only writer: it adds an image when it publishes one for a
researcher and a checkout when it fetches one for them, and before each new
request it sums what of that researcher's is still kept (gc removes images
and checkouts; they then no longer count). The ledger is a record per
researcher in the store (``quota/<hash of the name>.json``), read and
written through :mod:`hpcbinder.images.safefs` like every record.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

from hpcbinder import foldertree
from hpcbinder.config import Site
from hpcbinder.errors import UserError
from hpcbinder.images import safefs
from hpcbinder.images.store import ImageStore

FOLDER = "quota"
_MB = 1 << 20


class DiskLimitReached(UserError):
    """A researcher's kept images and checkouts are at the site's limit."""


def tree_bytes(folder: Path) -> int:
    """The bytes of the regular files below ``folder`` (links not followed)."""
    total = 0
    for parent, _, files in foldertree.walk(folder):
        for name in files:
            try:
                info = os.lstat(os.path.join(parent, name))
            except OSError:
                continue
            total += info.st_size if stat.S_ISREG(info.st_mode) else 0
    return total


class DiskLedger:
    """What each researcher's requests keep, in one store."""

    def __init__(self, site: Site, store: ImageStore) -> None:
        self.limit = site.build.max_user_disk_mb * _MB
        self.store = store
        self.folder = store.root / FOLDER

    def _name(self, user: str) -> str:
        return hashlib.sha256(user.encode()).hexdigest()[:32] + ".json"

    def _entries(self, user: str) -> dict[str, int]:
        try:
            data = json.loads(self.store.read(self.folder / self._name(user)))
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, int)}

    def _kept(self, entry: str) -> bool:
        kind, _, what = entry.partition(":")
        if kind == "image":
            return (self.store.image_dir(what) / "meta.json").is_file()
        return kind == "checkout" and os.path.isdir(what)

    def usage(self, user: str) -> int:
        """Bytes of ``user``'s images and checkouts still kept."""
        return sum(size for entry, size in self._entries(user).items() if self._kept(entry))

    def check(self, user: str) -> None:
        """DiskLimitReached if ``user`` may not start another request."""
        used = self.usage(user)
        if used >= self.limit:
            raise DiskLimitReached(
                f"{user}'s builds and checkouts take {used // _MB} MB, this site's limit "
                f"of {self.limit // _MB} MB (site file: build.max_user_disk_mb); "
                "images and checkouts nobody used for a while are removed by images gc"
            )

    def add(self, user: str, entry: str, size: int) -> None:
        """Count ``entry`` (``image:KEY`` or ``checkout:PATH``) for ``user``."""
        if not user:
            return
        entries = {k: v for k, v in self._entries(user).items() if self._kept(k)}
        entries[entry] = size
        self.folder.mkdir(parents=True, exist_ok=True)
        self.store.own(self.folder)
        safefs.replace(self.folder, self._name(user), json.dumps(entries), self.store.owner_ids)
        self.store.own(self.folder / self._name(user))
