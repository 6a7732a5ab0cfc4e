"""The image store: immutable images laid out by env key, built once.

Layout (a directory, on a shared filesystem at a site)::

    envs/<key>/image.sif      published image (never modified afterwards), or
    envs/<key>/env.sqfs       an overlay on a base (meta.json names the base)
    envs/<key>/meta.json      spec, commit, key, definition, base, seconds, size, ...
    envs/<key>/build.log      the build's log
    used/<key>.json           when <key> was last used, and by whom (see record_use)
    bases/<name>.sif|.json    site base images, same rules
    locks/<key>.lock          who builds <key> now: host, token and the holder's
                              process identity (mtime = heartbeat)
    locks/<key>.events        that build's progress, one JSON event per line
    locks/<key>.started       what that build started (process sessions, Slurm jobs)
    failures/<key>.json       the last failed build of <key>
    staging/<key>@<random>    builds in progress; renamed into envs/ to publish
    staging/<key>@<random>.work  that build's scratch space and overlay: the
                              only folder of the store a container writes
                              (see work_dir); never read, never published

A key is an env key (32 hex digits) or ``base-NAME``; neither holds ``@``,
so a staging folder names its key unambiguously (``base-default`` and
``base-default-gpu`` are different builds).

Exactly one process builds a key: the one that creates its lock file with
O_EXCL. Others follow its events file and get its image or its failure. A
holder refreshes its lock's mtime while it builds; a lock whose holder is
no longer running on this host (the same boot, pid, start time and command
line: see :mod:`hpcbinder.seams.processid`), or whose heartbeat is older than
:data:`STALE_AFTER` seconds (any host), is taken over, and what its build
started is stopped, each process session only after checking it is still
the one the build started. A build publishes only while it still holds its
lock. Lock files carry no secret and need no special filesystem support
beyond atomic O_EXCL create and rename, which NFS v3+ provide.

Only the store owner (the build account) writes here; launching accounts
record use through the build server. When the writer is root (tests drive
builds in-process as root), what it creates is handed to the build account,
so the store stays writable by that account alone.
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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from hpcbinder.config import Site
from hpcbinder.growingfile import GrowingFile
from hpcbinder.images import safefs
from hpcbinder.seams import proc
from hpcbinder.seams.processid import ProcessIdentity
from hpcbinder.sources.providers import reaches_local_files

STALE_AFTER = 60.0  # seconds without a heartbeat before a lock is taken over
HEARTBEAT = 5.0
IMAGE = "image.sif"
META = "meta.json"
LOG = "build.log"
#: Between a key and the random part of its staging folder's name.
STAGING_SEP = "@"
#: Prefix of a folder being removed (in staging/, so that gc finishes a crashed removal).
DOOMED = ".rm" + STAGING_SEP
#: After a staging folder's name: the folder of that build containers may write.
WORK = ".work"
#: The most the build server reads of one record (meta.json holds the definition).
RECORD_BYTES = 16 << 20


#: Held while a use record is read and replaced (who used an image accumulates).
_USES = threading.Lock()


def work_dir(staging: Path) -> Path:
    """The one folder of a build that containers may write (its /tmp, home
    and overlay), next to its staging folder, never inside it: the build
    server reads, writes and publishes the staging folder, and a container
    that could write there could plant links for it to follow. The work
    folder itself is never read by name, only removed (``shutil.rmtree``
    removes links, it does not follow them)."""
    return staging.with_name(staging.name + WORK)


class LockLost(OSError):
    """This build no longer holds its key's lock (it was taken over): it
    must not publish. An OSError, as any other failure to write the store."""


class ImageMeta(BaseModel):
    """What the store records of a published image (its ``meta.json``).

    Written by the builder at publish time; fields a newer hpcbinder adds
    are kept when an older one reads the file (``extra="allow"``)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    key: str
    spec: str = ""
    url: str = ""
    commit: str = ""
    buildpack: str = ""
    base: str = ""  # the site base it was built on
    base_image: str = ""  # that base's SIF (an overlay is started on it)
    #: ``overlay``: a squashfs overlay started on ``base_image``; ``sif``: a whole SIF.
    strategy: Literal["overlay", "sif"] = "sif"
    artifact: str = IMAGE  # the file in the image's folder
    definition: str = ""
    build_seconds: float = 0.0
    size_bytes: int = 0
    build_log: str = ""
    created: str = ""
    backend: str = ""
    #: What every command in the image runs through (the repository's start);
    #: see :mod:`hpcbinder.images.launch`.
    entrypoint: list[str] = []


@dataclass(frozen=True)
class ImageRecord:
    """A published image and what is known about it."""

    key: str
    path: Path
    meta: ImageMeta


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

    @property
    def owner_ids(self) -> tuple[int, ...]:
        """Whose files the store's reads accept, besides this process's own."""
        return (pwd.getpwnam(self.owner).pw_uid,) if self.owner is not None else ()

    def write(self, path: Path, text: str) -> Path:
        """Write a new file into the store, owned by the build account
        (never through a link, never over an existing file)."""
        safefs.create(path.parent, path.name, text, self.owner_ids)
        self.own(path)
        return path

    def read(self, path: Path) -> str:
        """A record of the store's (see :mod:`safefs`): FileNotFoundError if
        missing, UnsafeFile if it is not the build account's regular file."""
        return safefs.read_text(path.parent, path.name, RECORD_BYTES, self.owner_ids)

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

    def use_path(self, key: str) -> Path:
        return self.root / "used" / f"{key}.json"

    # --- reading ---------------------------------------------------------------

    def lookup(self, key: str) -> ImageRecord | None:
        """The published image for ``key``, if any."""
        folder = self.image_dir(key)
        try:
            meta = ImageMeta.model_validate_json(self.read(folder / META))
        except FileNotFoundError:
            return None
        artifact = folder / meta.artifact
        return ImageRecord(key, artifact, meta) if artifact.is_file() else None

    def records(self) -> list[ImageRecord]:
        envs = self.root / "envs"
        if not envs.is_dir():
            return []
        found = (self.lookup(folder.name) for folder in sorted(envs.iterdir()))
        return [record for record in found if record is not None]

    def failure(self, key: str) -> dict[str, Any] | None:
        try:
            failure = json.loads(self.read(self.failure_path(key)))
        except FileNotFoundError:
            return None
        return failure if isinstance(failure, dict) else None

    # --- locking ---------------------------------------------------------------

    def try_lock(self, key: str) -> BuildLock | None:
        """The lock for ``key`` if this process now holds it, else None
        (someone else is building). A stale lock is taken over."""
        locks = self._dir("locks")
        path = self.lock_path(key)
        me = ProcessIdentity.current().to_json()
        leftovers: list[str] = []
        for _ in range(3):
            token = uuid.uuid4().hex
            holder = {"host": socket.gethostname(), "token": token, "started": time.time(), **me}
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self._take_over_if_stale(path, locks, leftovers):
                    return None
                continue
            with os.fdopen(fd, "w") as handle:
                json.dump(holder, handle)
            self.own(path)
            return BuildLock(self, key, token, leftovers)
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
        if holder.get("host") == socket.gethostname() and not _holder_running(holder):
            return True
        return age > STALE_AFTER

    def _take_over_if_stale(self, path: Path, locks: Path, leftovers: list[str]) -> bool:
        """Remove ``path`` if it is stale; True if the caller may retry.
        What the dead build's backend started is added to ``leftovers``."""
        if not self.is_stale(path):
            return False
        try:
            judged = json.loads(path.read_text()).get("token")
        except (FileNotFoundError, json.JSONDecodeError):
            judged = None
        leftovers.extend(self._stop_sessions(path))
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

    def _stop_sessions(self, lock: Path) -> list[str]:
        """End the process sessions a dead build started on this host, as
        recorded next to its lock; the rest of what it recorded (its
        backend's Slurm jobs) for the new holder's backend to stop."""
        started = lock.with_suffix(".started")
        try:
            holder = json.loads(lock.read_text())
            lines = started.read_text().splitlines()
        except (FileNotFoundError, json.JSONDecodeError):
            return []
        others = []
        for line in lines:
            kind, _, ident = line.partition(" ")
            if kind != "session":
                others.append(line)
            elif holder.get("host") == socket.gethostname():
                session = _recorded_session(ident)
                if session is not None and session.leads_its_group():
                    proc.kill_session(session.pid)
        started.unlink(missing_ok=True)
        return others

    # --- writing ---------------------------------------------------------------

    def new_staging(self, key: str) -> Path:
        """A fresh folder to build ``key`` in. Call with the key's lock held:
        older folders of the key (and only of that key) are a dead build's
        leftovers and go."""
        root = self._dir("staging")
        for leftover in root.glob(f"{key}{STAGING_SEP}*"):
            shutil.rmtree(leftover, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=f"{key}{STAGING_SEP}", dir=root))
        staging.chmod(0o755)
        self.own(staging)
        work = work_dir(staging)
        work.mkdir(0o700)
        self.own(work)
        return staging

    def discard_work(self, staging: Path) -> None:
        """Remove what containers wrote for the build in ``staging`` (what
        subordinate ids own and cannot go stays for gc's clean_staging)."""
        shutil.rmtree(work_dir(staging), ignore_errors=True)

    def publish(
        self, lock: BuildLock, staging: Path, meta: ImageMeta, user: str = ""
    ) -> ImageRecord:
        """Make the staged image the published one, atomically, if ``lock``
        is still held (:class:`LockLost` otherwise), its use by ``user`` (who
        asked for the build) recorded. An image already published for the
        key is never replaced (the rename fails)."""
        key = lock.key
        if not lock.held():
            raise LockLost(f"the build lock of {key} was taken over; not publishing")
        self.discard_work(staging)
        self.write(staging / META, meta.model_dump_json(indent=2))
        self.own_tree(staging)
        target = self.image_dir(key)
        self._dir("envs")
        staging.rename(target)
        self.failure_path(key).unlink(missing_ok=True)
        self.record_use(key, user)
        record = self.lookup(key)
        if record is None:
            raise RuntimeError(f"published {key} but cannot read it back")
        return record

    def find(self, key: str, user: str = "") -> ImageRecord | None:
        """The published image of ``key``, its use by ``user`` recorded: the
        one way a build, the build server and a launch find an existing
        image, so that gc keeps every image people use."""
        record = self.lookup(key)
        if record is not None:
            self.record_use(key, user)
        return record

    def record_use(self, key: str, user: str = "", at: float | None = None) -> None:
        """Note that ``key`` was used (by ``user``, who is added to those who
        used it) now, or at ``at``: gc keeps images used within its limit.
        Atomic: a reader sees the old record or the new one."""
        path = self.use_path(key)
        with _USES:  # the build server records uses from several threads
            users = sorted(self.users(key) | ({user} if user else set()))
            record = {"time": time.time() if at is None else at, "user": user, "users": users}
            folder = self._dir("used")
            safefs.replace(folder, path.name, json.dumps(record), self.owner_ids)
        self.own(path)

    def users(self, key: str) -> frozenset[str]:
        """Who built or used image ``key`` (as recorded)."""
        try:
            record = json.loads(self.read(self.use_path(key)))
        except (OSError, ValueError):
            return frozenset()
        if not isinstance(record, dict):
            return frozenset()
        users = record.get("users", [])
        names = [*(users if isinstance(users, list) else []), record.get("user", "")]
        return frozenset(name for name in names if isinstance(name, str) and name)

    def may_launch(self, key: str, user: str) -> bool:
        """Whether ``user`` may launch image ``key``, and so keep it from gc
        (``POST /used``, a job's comment): an image of a repository anyone
        may fetch over the network, or one ``user`` built or used. Anyone
        else could pin every image in the store forever."""
        record = self.lookup(key)
        if record is None:
            return False
        public = bool(record.meta.url) and not reaches_local_files(record.meta.url)
        return public or user in self.users(key)

    def last_used(self, record: ImageRecord) -> float:
        """When ``record`` was last used: its use record, else (an image
        published before use was recorded) its publication."""
        with contextlib.suppress(FileNotFoundError, json.JSONDecodeError, TypeError, ValueError):
            return float(json.loads(self.use_path(record.key).read_text())["time"])
        return (record.path.parent / META).stat().st_mtime

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
        doomed = self._dir("staging") / f"{DOOMED}{key}{STAGING_SEP}{uuid.uuid4().hex}"
        folder.rename(doomed)
        self.use_path(key).unlink(missing_ok=True)
        shutil.rmtree(doomed)
        return True

    def gc(self, older_than_days: float, keep: int, in_use: frozenset[str]) -> list[str]:
        """Remove images last used longer ago than ``older_than_days`` that
        no job uses (``in_use``: keys that pending or running jobs name),
        keeping at least the ``keep`` most recently used; the removed keys.

        Each image's use is read again right before it goes, so a launch
        recorded while gc runs keeps its image."""
        records = sorted(self.records(), key=self.last_used, reverse=True)
        cutoff = time.time() - older_than_days * 86400
        removed = []
        for record in records[keep:]:
            if record.key in in_use or self.last_used(record) >= cutoff:
                continue
            fresh = self.lookup(record.key)
            if fresh is not None and self.last_used(fresh) < cutoff and self.remove(record.key):
                removed.append(record.key)
        return removed

    def clean_staging(self) -> list[str]:
        """Remove what crashed builds and removals left in staging/: folders
        of keys that no build holds (a live build's lock protects its
        folder; a stale lock's folder goes when its key is next built). The
        removed names."""
        staging = self.root / "staging"
        if not staging.is_dir():
            return []
        held = {p.name.removesuffix(".lock") for p in (self.root / "locks").glob("*.lock")}
        removed = []
        for folder in sorted(staging.iterdir()):
            name = folder.name
            if not os.path.lexists(folder) or (
                name.endswith(WORK) and folder.with_name(name.removesuffix(WORK)).exists()
            ):
                continue  # went, or goes, with its staging folder
            if name.startswith((DOOMED, ".rm-")):
                pass  # a removal that did not finish
            elif STAGING_SEP in name:
                if name.partition(STAGING_SEP)[0] in held:
                    continue
            elif any(name.startswith(f"{key}-") for key in held):
                continue  # named before STAGING_SEP: any build holding a prefix may own it
            shutil.rmtree(folder, ignore_errors=True)
            shutil.rmtree(work_dir(folder), ignore_errors=True)
            removed.append(name)
        return removed


def image_store(site: Site) -> ImageStore:
    """The site's store (``image_store``), written only by the build account."""
    return ImageStore(site.image_store, owner=site.build.account)


def _holder_running(holder: dict[str, Any]) -> bool:
    """Whether the process a lock on this host names still runs: its
    recorded identity if the lock has one, else (a lock written before
    identities were recorded, or /proc hiding other accounts' processes)
    any process with its pid, until its heartbeat is stale."""
    identity = ProcessIdentity.from_json(holder)
    if identity is not None and ProcessIdentity.of(identity.pid) is not None:
        return identity.alive_unchanged()
    pid = holder.get("pid", 0)
    return _alive(pid) if isinstance(pid, int) else False


def _recorded_session(ident: str) -> ProcessIdentity | None:
    """The session leader a ``session PID BOOT_ID START_TICKS`` line names;
    None if the line lacks its identity or names a pid a build cannot
    have started (0 and 1 would signal this process's group or init's).
    The command line is not compared: apptainer replaces its own program
    ("Apptainer runtime parent") right after it starts."""
    parts = ident.split()
    if len(parts) != 3 or not parts[0].isdigit() or not parts[2].isdigit():
        return None
    pid = int(parts[0])
    return ProcessIdentity(pid, parts[1], int(parts[2]), ()) if pid > 1 else None


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


@dataclass(frozen=True)
class BuildEvent:
    """One step of a build's progress: ``phase`` is waiting, building, log,
    smoke, publishing, ready or failed. The build that holds a key's lock
    appends each to the key's events file, for every process following it."""

    phase: str
    message: str
    elapsed: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, line: str) -> BuildEvent | None:
        """The event on one line of an events file; None for a line that is not one."""
        try:
            data = json.loads(line)
            return cls(str(data["phase"]), str(data["message"]), float(data.get("elapsed", 0)))
        except (ValueError, TypeError, KeyError):
            return None


class BuildLock:
    """The right to build one key. Refreshes its heartbeat until released."""

    def __init__(
        self, store: ImageStore, key: str, token: str, leftovers: list[str] | None = None
    ) -> None:
        self.store = store
        self.key = key
        self.token = token
        #: What a dead build of this key had started that is not a process
        #: of this host (``slurm-job ID``): the builder's backend stops it.
        self.leftovers = leftovers or []
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
        """Record a process session (``session PID``, written down with the
        process's boot id and start time, so that a take-over signals it
        only while it is still that process) or a Slurm job
        (``slurm-job ID``) this build started (see _stop_sessions)."""
        kind, _, ident = what.partition(" ")
        if kind == "session" and ident.isdigit():
            leader = ProcessIdentity.of(int(ident))
            if leader is None:
                return  # already gone: nothing to stop later
            what = f"session {leader.pid} {leader.boot_id} {leader.start_ticks}"
        path = self.store.started_path(self.key)
        with path.open("a") as handle:
            handle.write(what + "\n")

    def emit(self, event: BuildEvent) -> None:
        """Append ``event`` to the key's events file for followers."""
        with self.store.events_path(self.key).open("a") as handle:
            handle.write(event.to_json() + "\n")

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


def follow_events(store: ImageStore, key: str, poll: float = 0.5) -> Iterator[BuildEvent]:
    """Events of the build of ``key`` that another process runs, until its
    lock is gone (then the caller checks :meth:`ImageStore.lookup` and
    :meth:`ImageStore.failure`) or turns stale."""
    events = GrowingFile(store.events_path(key))
    while True:
        for line in events.new_lines():
            event = BuildEvent.from_json(line)
            if event is not None:
                yield event
        lock = store.lock_path(key)
        if not lock.exists() or store.is_stale(lock):
            return
        time.sleep(poll)
