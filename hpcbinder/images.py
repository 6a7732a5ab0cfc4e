"""The image store: immutable images laid out by env key, built once.

Layout (a directory, on a shared filesystem at a site)::

    envs/<key>/image.sif      published image (never modified afterwards), or
    envs/<key>/env.sqfs       an overlay on a base (meta.json names the base)
    envs/<key>/meta.json      spec, commit, key, definition, base, seconds, size, ...
    envs/<key>/build.log      the build's log
    bases/<name>.sif|.json    site base images, same rules
    locks/<key>.lock          who builds <key> now: host, pid, token (mtime = heartbeat)
    locks/<key>.events        that build's progress, one JSON event per line
    failures/<key>.json       the last failed build of <key>
    staging/                  builds in progress; renamed into envs/ to publish

Exactly one process builds a key: the one that creates its lock file with
O_EXCL. Others follow its events file and get its image or its failure. A
holder refreshes its lock's mtime while it builds; a lock whose holder is a
dead process on this host, or whose heartbeat is older than
:data:`STALE_AFTER` seconds (any host), is taken over. Lock files carry no
secret and need no special filesystem support beyond atomic O_EXCL create
and rename, which NFS v3+ provide.

Everything here writes as the current process. When that is root (a
sysadmin's CLI), what it creates is handed to the build account, so the
store stays writable by that account alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcbinder import proc
from hpcbinder.slurm import SlurmCLI, SlurmError

STALE_AFTER = 60.0  # seconds without a heartbeat before a lock is taken over
HEARTBEAT = 5.0
IMAGE = "image.sif"
META = "meta.json"
LOG = "build.log"


@dataclass(frozen=True)
class ImageRecord:
    """A published image and what is known about it."""

    key: str
    path: Path
    meta: dict[str, Any]


class ImageStore:
    """One store directory. ``owner`` is the build account."""

    def __init__(self, root: Path, owner: str | None = None) -> None:
        self.root = root
        self.owner = owner

    # --- paths and ownership -------------------------------------------------

    def _dir(self, name: str) -> Path:
        path = self.root / name
        if not path.is_dir():
            path.mkdir(parents=True, exist_ok=True)
            self.own(path)
        return path

    def own(self, path: Path) -> None:
        """Hand ``path`` (not its contents) to the build account when running as root."""
        if self.owner is None or os.geteuid() != 0:
            return
        entry = pwd.getpwnam(self.owner)
        os.chown(path, entry.pw_uid, entry.pw_gid, follow_symlinks=False)

    def write(self, path: Path, text: str) -> Path:
        """Write a file into the store, owned by the build account."""
        path.write_text(text)
        self.own(path)
        return path

    def own_tree(self, path: Path) -> None:
        self.own(path)
        for parent, dirs, files in os.walk(path):
            for name in dirs + files:
                self.own(Path(parent) / name)

    def image_dir(self, key: str) -> Path:
        return self.root / "envs" / key

    def lock_path(self, key: str) -> Path:
        return self.root / "locks" / f"{key}.lock"

    def events_path(self, key: str) -> Path:
        return self.root / "locks" / f"{key}.events"

    def started_path(self, key: str) -> Path:
        return self.root / "locks" / f"{key}.started"

    def failure_path(self, key: str) -> Path:
        return self.root / "failures" / f"{key}.json"

    # --- reading ---------------------------------------------------------------

    def lookup(self, key: str) -> ImageRecord | None:
        """The published image for ``key``, if any."""
        folder = self.image_dir(key)
        meta_file = folder / META
        if not meta_file.is_file():
            return None
        meta = json.loads(meta_file.read_text())
        artifact = folder / str(meta.get("artifact", IMAGE))
        return ImageRecord(key, artifact, meta) if artifact.is_file() else None

    def records(self) -> list[ImageRecord]:
        envs = self.root / "envs"
        if not envs.is_dir():
            return []
        found = (self.lookup(folder.name) for folder in sorted(envs.iterdir()))
        return [record for record in found if record is not None]

    def failure(self, key: str) -> dict[str, Any] | None:
        path = self.failure_path(key)
        return json.loads(path.read_text()) if path.is_file() else None

    # --- locking ---------------------------------------------------------------

    def try_lock(self, key: str) -> BuildLock | None:
        """The lock for ``key`` if this process now holds it, else None
        (someone else is building). A stale lock is taken over."""
        locks = self._dir("locks")
        path = self.lock_path(key)
        for _ in range(3):
            token = uuid.uuid4().hex
            holder = {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "token": token,
                "started": time.time(),
            }
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self._take_over_if_stale(path, locks):
                    return None
                continue
            with os.fdopen(fd, "w") as handle:
                json.dump(holder, handle)
            self.own(path)
            return BuildLock(self, key, token)
        return None

    def lock_holder(self, key: str) -> dict[str, Any] | None:
        try:
            data = json.loads(self.lock_path(key).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return data if isinstance(data, dict) else None

    def is_stale(self, path: Path) -> bool:
        try:
            holder = json.loads(path.read_text())
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return False
        except json.JSONDecodeError:  # being written right now, or a torn write long ago
            return time.time() - path.stat().st_mtime > STALE_AFTER
        if holder.get("host") == socket.gethostname() and not _alive(int(holder.get("pid", 0))):
            return True
        return age > STALE_AFTER

    def _take_over_if_stale(self, path: Path, locks: Path) -> bool:
        """Remove ``path`` if it is stale; True if the caller may retry."""
        if not self.is_stale(path):
            return False
        try:
            judged = json.loads(path.read_text()).get("token")
        except (FileNotFoundError, json.JSONDecodeError):
            judged = None
        self._stop_leftovers(path)
        tombstone = locks / f".{path.name}.stale-{uuid.uuid4().hex}"
        try:
            path.rename(tombstone)
        except FileNotFoundError:
            return True  # someone else removed it first
        try:
            taken = json.loads(tombstone.read_text()).get("token")
        except json.JSONDecodeError:
            taken = None
        if judged is not None and taken != judged:
            # A fresh lock replaced the stale one between our read and rename: put it back.
            with contextlib.suppress(FileExistsError):
                os.link(tombstone, path)
        tombstone.unlink(missing_ok=True)
        return True

    def _stop_leftovers(self, lock: Path) -> None:
        """End what a dead build started: its process sessions (same host)
        and its Slurm jobs, as recorded next to its lock."""
        started = lock.with_suffix(".started")
        try:
            holder = json.loads(lock.read_text())
            lines = started.read_text().splitlines()
        except (FileNotFoundError, json.JSONDecodeError):
            return
        for line in lines:
            kind, _, ident = line.partition(" ")
            if kind == "session" and ident.isdigit() and holder.get("host") == socket.gethostname():
                proc.kill_session(int(ident))
            elif kind == "slurm-job":
                with contextlib.suppress(SlurmError, ValueError, proc.CommandError):
                    SlurmCLI().cancel(ident, user=self.owner)
        started.unlink(missing_ok=True)

    # --- writing ---------------------------------------------------------------

    def new_staging(self, key: str) -> Path:
        """A fresh folder to build ``key`` in. Call with the key's lock held:
        older folders of the key are a dead build's leftovers and go."""
        root = self._dir("staging")
        for leftover in root.glob(f"{key}-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=f"{key}-", dir=root))
        staging.chmod(0o755)
        self.own(staging)
        return staging

    def publish(self, key: str, staging: Path, meta: dict[str, Any]) -> ImageRecord:
        """Make the staged image the published one, atomically."""
        (staging / META).write_text(json.dumps(meta, indent=2, sort_keys=True))
        self.own_tree(staging)
        target = self.image_dir(key)
        self._dir("envs")
        staging.rename(target)
        self.failure_path(key).unlink(missing_ok=True)
        record = self.lookup(key)
        if record is None:
            raise RuntimeError(f"published {key} but cannot read it back")
        return record

    def record_failure(self, key: str, failure: dict[str, Any]) -> None:
        path = self.failure_path(key)
        self._dir("failures")
        partial = path.with_suffix(f".{uuid.uuid4().hex}.tmp")
        partial.write_text(json.dumps(failure, indent=2, sort_keys=True))
        self.own(partial)
        partial.rename(path)

    def remove(self, key: str) -> bool:
        """Delete a published image; running containers keep their open file."""
        folder = self.image_dir(key)
        if not folder.is_dir():
            return False
        doomed = self._dir("staging") / f".rm-{key}-{uuid.uuid4().hex}"
        folder.rename(doomed)
        shutil.rmtree(doomed)
        return True

    def gc(self, older_than_days: float, keep: int) -> list[str]:
        """Remove images last used longer ago than ``older_than_days``,
        keeping at least the ``keep`` most recently used; the removed keys."""
        records = sorted(self.records(), key=_last_used, reverse=True)
        cutoff = time.time() - older_than_days * 86400
        doomed = [r.key for r in records[keep:] if _last_used(r) < cutoff]
        for key in doomed:
            self.remove(key)
        self._clean_staging()
        return doomed

    def _clean_staging(self) -> None:
        """Staging folders whose build lock is gone are leftovers of a crash."""
        staging = self.root / "staging"
        if not staging.is_dir():
            return
        for folder in staging.iterdir():
            key = folder.name.lstrip(".").split("-", 1)[0]
            if not self.lock_path(key).exists():
                shutil.rmtree(folder, ignore_errors=True)

    def touch(self, record: ImageRecord) -> None:
        """Note that ``record`` was just used (gc keeps recently used images)."""
        with contextlib.suppress(PermissionError):
            os.utime(record.path.parent / META)


def _last_used(record: ImageRecord) -> float:
    return (record.path.parent / META).stat().st_mtime


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class BuildLock:
    """The right to build one key. Refreshes its heartbeat until released."""

    def __init__(self, store: ImageStore, key: str, token: str) -> None:
        self.store = store
        self.key = key
        self.token = token
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()
        events = store.events_path(key)
        events.write_text("")
        store.own(events)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT):
            with contextlib.suppress(FileNotFoundError):
                os.utime(self.store.lock_path(self.key))

    def held(self) -> bool:
        holder = self.store.lock_holder(self.key)
        return holder is not None and holder.get("token") == self.token

    def note_started(self, what: str) -> None:
        """Record a process session or job this build started (see _stop_leftovers)."""
        path = self.store.started_path(self.key)
        with path.open("a") as handle:
            handle.write(what + "\n")

    def emit(self, event: dict[str, Any]) -> None:
        """Append ``event`` to the key's events file for followers."""
        with self.store.events_path(self.key).open("a") as handle:
            handle.write(json.dumps(event) + "\n")

    def release(self) -> None:
        self._stop.set()
        self._thread.join()
        if self.held():
            self.store.events_path(self.key).unlink(missing_ok=True)
            self.store.started_path(self.key).unlink(missing_ok=True)
            self.store.lock_path(self.key).unlink(missing_ok=True)

    def __enter__(self) -> BuildLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def follow_events(store: ImageStore, key: str, poll: float = 0.5) -> Iterator[dict[str, Any]]:
    """Events of the build of ``key`` that another process runs, until its
    lock is gone (then the caller checks :meth:`ImageStore.lookup` and
    :meth:`ImageStore.failure`) or turns stale."""
    offset = 0
    while True:
        path = store.events_path(key)
        with contextlib.suppress(FileNotFoundError), path.open("rb") as handle:
            handle.seek(offset)
            for line in handle:
                if not line.endswith(b"\n"):
                    break  # half-written: read it whole next time
                offset += len(line)
                with contextlib.suppress(json.JSONDecodeError):
                    yield json.loads(line)
        lock = store.lock_path(key)
        if not lock.exists() or store.is_stale(lock):
            return
        time.sleep(poll)
