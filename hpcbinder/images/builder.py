"""Definition to published image, once per env key.

:func:`build_image` is the one entry point: it returns the image for a
prepared repository, building it only if no image has the same env key.
Concurrent calls for one key (any process, any host sharing the store)
build once: the first takes the key's lock, the others follow its progress
events and get its image or its failure. Every outcome is a stream of
:class:`BuildEvent`s for the CLI and the web service.

Two ways to build, chosen per image:

- **overlay** (repositories on a site base): the environment is installed
  into a writable overlay on the base SIF under ``--fakeroot`` and squashed
  into ``env.sqfs``. The image is the pair (base SIF, overlay). This avoids
  unpacking and re-squashing the whole base for every repository.
- **sif** (Dockerfile repositories and site bases): a full
  ``apptainer build --fakeroot`` of the definition.

Every step that runs repository code is contained (see
:mod:`hpcbinder.seams.apptainer`): it sees the checkout, its own download cache
and the site's CA bundle, nothing else of the host, and whatever it starts
ends with it. Download caches are per repository: a build can write its
cache (package managers must), so a shared one would let one repository's
postBuild change what every later build of every other repository installs.

What a container may write (its /tmp, home and overlay) is the build's work
folder (:func:`~hpcbinder.images.store.work_dir`), never its staging folder:
the build server writes the definition, the log and the record into the
staging folder and publishes it, so a container that could write there
(the repository's own image runs in a SIF build's cleanup) could plant
links for the build account to follow. The build log comes from the
commands' output as it streams, never read back from a file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from hpcbinder.config import Site
from hpcbinder.images import buildlog, safefs
from hpcbinder.images.backends import Backend, BuildCommands, BuildFailed, BuildStep, backend_for
from hpcbinder.images.store import (
    IMAGE,
    LOG,
    BuildEvent,
    BuildLock,
    ImageMeta,
    ImageRecord,
    ImageStore,
    follow_events,
    image_store,
    work_dir,
)
from hpcbinder.render import buildfiles
from hpcbinder.render import definition as render
from hpcbinder.render.pipeline import Prepared
from hpcbinder.seams import apptainer
from hpcbinder.seams.apptainer import Bind

OVERLAY = "env.sqfs"
DEFINITION = "definition.def"
OVERLAY_SCRIPT = "overlay-build.sh"
#: In a staging folder: the renderer's generated files (render/buildfiles.py),
#: which the build sees read-only at buildfiles.GENERATED_IN_IMAGE.
GENERATED = "generated"
#: The environment files an overlay build reads, copied out of the checkout.
CONTEXT = "context"
#: In a build's work folder: its /tmp, /var/tmp and home.
SCRATCH = "scratch"
#: In a build's work folder: the overlay an overlay build installs into.
OVERLAY_DIR = "overlay"
#: Where the cleanup step sees the build's work folder.
WORK_IN_IMAGE = "/mnt/hpcbinder-work"
#: In a staging folder: where a backend that cannot stream (a Slurm job) has
#: the output written; removed before publishing.
JOB_OUTPUT = "job-output.log"
#: Lines of output a failure keeps.
TAIL_LINES = 30


Emit = Callable[[BuildEvent], None]


class ImageBuildError(RuntimeError):
    """The build of an image failed: where, why, and the last log lines.

    ``reason`` is the first log line that says why (see
    :class:`buildlog.FailureReason`): the message starts with it, so the
    failure a researcher sees names the package or file to change before
    the step that failed and the tail."""

    def __init__(
        self, key: str, step: str, message: str, tail: list[str], reason: str | None = None
    ) -> None:
        self.key = key
        self.step = step
        self.message = message
        self.tail = tail
        self.reason = reason
        where = f"build of {key} failed at {step}: {message}"
        super().__init__(f"{reason} ({where})" if reason else where)


def _message(failed: BuildFailed) -> str:
    """A failed command's message without the step it names first."""
    return str(failed).removeprefix(f"{failed.step}: ")


def _file_digest(path: Path) -> str:
    """``sha256:<hex>`` of the file at ``path``."""
    with path.open("rb") as image:
        return f"sha256:{hashlib.file_digest(image, 'sha256').hexdigest()}"


def base_is_current(site: Site, name: str, hub_major: int) -> bool:
    """Base ``name`` exists and was built from the definition the site file
    gives it now (``base build --missing`` and ``doctor`` ask)."""
    current = site.base_image_path(name)
    meta = current.resolve().with_suffix(".json")
    if not current.is_file() or not meta.is_file():
        return False
    built_from = json.loads(meta.read_text()).get("definition")
    return bool(built_from == render.render_base(site, name, hub_major))


#: The folder of ``build.cache_dir`` holding one download cache per env key.
ENV_CACHES = "envs"


def cache_dir(site: Site, env_key: str | None) -> Path | None:
    """The download cache of the builds of one env key (``None``: the
    site's bases), or None if the site keeps none.

    Repository code (postBuild, setup.py) writes the cache it is given, and
    package managers trust what they find there. Keyed by the image's env
    key, a cache is only ever written by the code that key stands for: no
    build can change what a build of another key installs (keyed by
    repository, one repository could fill it and then claim another's key
    with the same environment files, or a pull request's ref could fill
    the maintainers')."""
    if site.build.cache_dir is None:
        return None
    if env_key is None:
        return site.build.cache_dir / "bases"
    return site.build.cache_dir / ENV_CACHES / hashlib.sha256(env_key.encode()).hexdigest()[:32]


def _cache_binds(cache: Path | None) -> list[Bind]:
    return [Bind(str(cache), render.BUILD_CACHE_IN_IMAGE)] if cache else []


def _prepare(staging: Path, cache: Path | None, *more: str) -> BuildStep:
    """Folders the build account makes before the build, in the work
    folder (its scratch space, ``more``) and its cache (not the builder:
    it may run as root)."""
    work = work_dir(staging)
    folders = [work / SCRATCH, *(work / name for name in more), *([cache] if cache else [])]
    return BuildStep("prepare", ["mkdir", "-p", *(str(folder) for folder in folders)])


def _cleanup(staging: Path, image: str, *names: str) -> BuildStep:
    """Remove build files in a fakeroot container: what the build's
    fakeroot created belongs to subordinate ids the build account cannot
    remove from outside. The container sees the work folder only: ``image``
    may be the repository's own, whose ``rm`` does what the repository likes."""
    return BuildStep(
        "remove build files",
        apptainer.contained_exec(
            image,
            ["rm", "-rf", *(f"{WORK_IN_IMAGE}/{name}" for name in names)],
            binds=[Bind(str(work_dir(staging)), WORK_IN_IMAGE)],
            fakeroot=True,
        ),
    )


class _Output:
    """A build's output, line by line as the backend streams it: the
    failure reason, the capped log (as events, and as ``build.log`` in the
    staging folder, opened through :mod:`safefs`) and the last lines."""

    def __init__(self, store: ImageStore, staging: Path, emit: Emit, started: float) -> None:
        self.reason = buildlog.FailureReason()
        self.recent: deque[str] = deque(maxlen=TAIL_LINES)
        self._file = os.fdopen(safefs.append(staging, LOG, store.owner_ids), "w")
        store.own(staging / LOG)

        def write(line: str) -> None:
            emit(BuildEvent("log", line, time.monotonic() - started))
            self._file.write(line + "\n")

        self._log = buildlog.LogCap(write)

    def line(self, text: str) -> None:
        text = buildlog.visible(text)
        self.reason.line(text)
        self.recent.append(text)
        self._log.line(text)

    def close(self) -> None:
        """Write the kept tail, close the log (again: nothing)."""
        if not self._file.closed:
            self._log.finish()
            self._file.close()


def _relay(lock: BuildLock, emit: Emit) -> Emit:
    """``emit`` that also records each event for processes following the build."""

    def relay(event: BuildEvent) -> None:
        lock.emit(event)
        emit(event)

    return relay


class Builder:
    """Builds images for one site, into its store, with its backend."""

    def __init__(
        self, site: Site, store: ImageStore | None = None, backend: Backend | None = None
    ) -> None:
        self.site = site
        self.store = store or image_store(site)
        self.backend = backend or backend_for(site)

    # --- the entry point -----------------------------------------------------

    def _try_lock(self, key: str) -> BuildLock | None:
        """The store's lock for ``key``; what a dead build's backend left
        running (its Slurm job) is stopped through this builder's backend."""
        lock = self.store.try_lock(key)
        for started in lock.leftovers if lock is not None else []:
            self.backend.stop_leftover(started)
        return lock

    def build_image(self, prepared: Prepared, emit: Emit, user: str = "") -> ImageRecord:
        """The image of ``prepared``: found in the store (its use by ``user``
        recorded), followed while another process builds it, or built."""
        key = prepared.rendered.env_key
        started = time.monotonic()
        while True:
            record = self.store.find(key, user)
            if record is not None:
                emit(BuildEvent("ready", str(record.path), time.monotonic() - started))
                return record
            lock = self._try_lock(key)
            if lock is None:
                record = self._follow(key, started, emit, user)
                if record is not None:
                    return record
                continue  # the holder vanished: try to take the build over
            with lock:
                if self.store.lookup(key) is None:
                    return self._build_locked(prepared, lock, _relay(lock, emit), started, user)

    def _follow(self, key: str, started: float, emit: Emit, user: str) -> ImageRecord | None:
        holder = self.store.lock_holder(key) or {}
        emit(
            BuildEvent(
                "waiting",
                f"another build of {key} is running on "
                f"{holder.get('host', '?')} (pid {holder.get('pid', '?')}); following it",
                time.monotonic() - started,
            )
        )
        waited_since = time.time()
        for event in follow_events(self.store, key):
            emit(BuildEvent(event.phase, event.message, time.monotonic() - started))
        record = self.store.find(key, user)
        if record is not None:
            return record
        failure = self.store.failure(key)
        if failure is not None and failure.get("finished", 0) >= waited_since - 1:
            raise ImageBuildError(
                key, failure["step"], failure["message"], failure["tail"], failure.get("reason")
            )
        return None

    # --- building, lock held ---------------------------------------------------

    def _build_locked(
        self, prepared: Prepared, lock: BuildLock, emit: Emit, started: float, user: str
    ) -> ImageRecord:
        key = prepared.rendered.env_key
        staging: Path | None = None
        output: _Output | None = None
        try:
            staging = self.store.new_staging(key)
            output = _Output(self.store, staging, emit, started)
            self._check_repo_size(prepared)
            commands, strategy = self._commands(prepared, staging)
            emit(
                BuildEvent(
                    "building",
                    f"building {key} ({strategy}, {self.backend.name} backend)",
                    time.monotonic() - started,
                )
            )
            self._run(commands, staging, lock, output)
            artifact = staging / (OVERLAY if strategy == "overlay" else IMAGE)
            self._check_image_size(artifact)
            emit(BuildEvent("publishing", "publishing", time.monotonic() - started))
            meta = self._meta(prepared, strategy, staging, time.monotonic() - started)
            record = self.store.publish(lock, staging, meta, user)
        except BuildFailed as exc:
            reason = output.reason.reason if output else None
            failed = ImageBuildError(key, exc.step, _message(exc), exc.tail, reason)
            raise self._fail(failed, staging, output, emit, started) from exc
        except OSError as exc:
            failed = ImageBuildError(key, "store", str(exc), [])
            raise self._fail(failed, staging, output, emit, started) from exc
        finally:
            if output is not None:
                output.close()
        emit(BuildEvent("ready", str(record.path), time.monotonic() - started))
        return record

    def _run(
        self, commands: BuildCommands, staging: Path, lock: BuildLock, output: _Output
    ) -> None:
        """Run the build's commands, their output to ``output``; then what
        containers wrote goes (see :func:`work_dir`)."""
        try:
            self.backend.run(commands, output.line, lock.note_started)
        finally:
            output.close()
            self.store.discard_work(staging)
            (staging / JOB_OUTPUT).unlink(missing_ok=True)

    def _fail(
        self,
        error: ImageBuildError,
        staging: Path | None,
        output: _Output | None,
        emit: Emit,
        started: float,
    ) -> ImageBuildError:
        """Record the failure for followers (best effort: the store may be
        full), remove the partial build; the error to raise (with the
        output's last lines where the backend kept none)."""
        if output is not None and not error.tail:
            tail = list(output.recent)
            error = ImageBuildError(error.key, error.step, error.message, tail, error.reason)
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
            self.store.discard_work(staging)
        with contextlib.suppress(OSError):
            self.store.record_failure(
                error.key,
                {
                    "step": error.step,
                    "message": error.message,
                    "reason": error.reason,
                    "tail": error.tail,
                    "finished": time.time(),
                },
            )
        emit(BuildEvent("failed", str(error), time.monotonic() - started))
        return error

    def _check_repo_size(self, prepared: Prepared) -> None:
        if not prepared.plan.reads_whole_repo:
            return
        # lstat: a link's size, not its target's (links are never followed).
        sizes = (p.lstat() for p in prepared.checkout.rglob("*"))
        size = sum(info.st_size for info in sizes if stat.S_ISREG(info.st_mode))
        limit = self.site.build.max_repo_mb * 1024 * 1024
        if size > limit:
            raise BuildFailed(
                "check repository size",
                f"the repository is {size >> 20} MB, "
                f"over this site's limit of {self.site.build.max_repo_mb} MB",
                [],
            )

    def _check_image_size(self, artifact: Path) -> None:
        size = artifact.stat().st_size if artifact.exists() else 0
        if size > self.site.build.max_image_mb * 1024 * 1024:
            raise BuildFailed(
                "check image size",
                f"the image is {size >> 20} MB, over this "
                f"site's limit of {self.site.build.max_image_mb} MB",
                [],
            )

    def _commands(self, prepared: Prepared, staging: Path) -> tuple[BuildCommands, str]:
        timeout = self.site.build.timeout_minutes * 60.0
        rendered = prepared.rendered
        if rendered.overlay_script is not None:
            return self._overlay_commands(prepared, staging, timeout), "overlay"
        definition = self.store.write(staging / DEFINITION, rendered.definition)
        cache = cache_dir(self.site, prepared.rendered.env_key)
        generated = self._generated(staging, rendered.build_files)
        steps = self._sif_steps(staging, definition, cache, "build image", ["true"], [generated])
        return BuildCommands(steps, prepared.checkout, staging / JOB_OUTPUT, timeout), "sif"

    def _generated(self, staging: Path, files: dict[str, str]) -> Bind:
        """The renderer's generated files, written into a folder of the
        (fresh) staging folder, bound read-only where the definition and
        the overlay script read them: what a repository supplies reaches
        the build as these files, never as definition text."""
        folder = staging / GENERATED
        folder.mkdir(0o755)
        self.store.own(folder)
        for name, text in files.items():
            self.store.write(folder / name, text)
        return Bind(str(folder), buildfiles.GENERATED_IN_IMAGE, read_only=True)

    def _context(self, prepared: Prepared, staging: Path) -> Bind:
        """What an overlay build sees of the repository: the checkout where
        the build reads it whole (its tree is in the env key), else a copy
        of exactly the environment files the key covers. A requirement that
        names the checkout's mount point (``-e /mnt/...``) then installs
        nothing the key does not cover: no image stands for code it lacks."""
        if prepared.plan.reads_whole_repo:
            return Bind(str(prepared.checkout), render.CONTEXT_IN_IMAGE, read_only=True)
        folder = staging / CONTEXT
        folder.mkdir(0o755)
        self.store.own(folder)
        for relative in prepared.plan.env_files:
            target = folder / relative
            for parent in reversed(target.relative_to(folder).parents[:-1]):
                if not (folder / parent).is_dir():
                    (folder / parent).mkdir(0o755)
                    self.store.own(folder / parent)
            self.store.write(target, (prepared.checkout / relative).read_text(encoding="utf-8"))
        return Bind(str(folder), render.CONTEXT_IN_IMAGE, read_only=True)

    @staticmethod
    def _sif_steps(
        staging: Path,
        definition: Path,
        cache: Path | None,
        name: str,
        smoke: list[str],
        binds: list[Bind] | None = None,
    ) -> list[BuildStep]:
        """A full SIF build: contained %post, a contained smoke test of the
        image, then its scratch space removed."""
        image = staging / IMAGE
        return [
            _prepare(staging, cache),
            BuildStep(
                name,
                apptainer.contained_build(
                    image,
                    definition,
                    binds=[*_cache_binds(cache), *(binds or [])],
                    workdir=work_dir(staging) / SCRATCH,
                ),
            ),
            BuildStep("smoke test", apptainer.contained_exec(str(image), smoke)),
            _cleanup(staging, str(image), SCRATCH),
        ]

    # --- site base images --------------------------------------------------------

    def build_base(self, name: str, hub_major: int, emit: Emit) -> Path:
        """Build site base ``name`` and make it current.

        Each build is kept under its own name (``bases/NAME-<time>.sif``) and
        ``bases/NAME.sif`` is switched to it atomically, so images built on
        the previous base keep working until they are rebuilt.
        """
        definition_text = render.render_base(self.site, name, hub_major)
        key = f"base-{name}"
        started = time.monotonic()
        lock = self._try_lock(key)
        if lock is None:
            raise ImageBuildError(key, "lock", "another build of this base is running", [])
        with lock:
            emit = _relay(lock, emit)
            staging = self.store.new_staging(key)
            definition = self.store.write(staging / DEFINITION, definition_text)
            image = staging / IMAGE
            steps = self._sif_steps(
                staging,
                definition,
                cache_dir(self.site, None),
                "build base image",
                ["python3", "-c", "import jupyterhub, batchspawner"],
            )
            commands = BuildCommands(
                steps, staging, staging / JOB_OUTPUT, self.site.build.timeout_minutes * 60.0
            )
            emit(BuildEvent("building", f"building base {name} ({self.backend.name} backend)"))
            output = _Output(self.store, staging, emit, started)
            try:
                self._run(commands, staging, lock, output)
            except BuildFailed as exc:
                reason = output.reason.reason
                failed = ImageBuildError(key, exc.step, _message(exc), exc.tail, reason)
                raise self._fail(failed, staging, output, emit, started) from exc
            finally:
                output.close()
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
            current = self.site.base_image_path(name)
            kept = current.with_name(f"{name}-{stamp}.sif")
            current.parent.mkdir(parents=True, exist_ok=True)
            self.store.own(current.parent)
            meta = {
                "name": name,
                "python": self.site.bases[name].python,
                "image": str(kept),
                "definition": definition_text,
                "created": stamp,
                "build_seconds": round(time.monotonic() - started, 2),
                "size_bytes": image.stat().st_size,
                # What env keys know the base by (render.recorded_digest).
                "sha256": _file_digest(image),
            }
            if not lock.held():  # taken over meanwhile: the other build switches the base
                raise ImageBuildError(key, "publish", "this build's lock was taken over", [])
            self.store.write(kept.with_suffix(".json"), json.dumps(meta, indent=2))
            image.rename(kept)
            link = current.with_name(f".{name}.sif.{stamp}")
            link.symlink_to(kept.name)
            self.store.own(link)
            link.replace(current)
            shutil.rmtree(staging, ignore_errors=True)
            emit(BuildEvent("ready", str(kept), time.monotonic() - started))
            return kept

    def _overlay_commands(self, prepared: Prepared, staging: Path, timeout: float) -> BuildCommands:
        """Install the environment into an overlay on the base, then squash it."""
        rendered = prepared.rendered
        script = staging / OVERLAY_SCRIPT
        self.store.write(script, rendered.overlay_script or "")
        base = rendered.base.source
        overlay = work_dir(staging) / OVERLAY_DIR
        cache = cache_dir(self.site, prepared.rendered.env_key)
        binds = [
            self._context(prepared, staging),
            Bind(str(script), render.OVERLAY_SCRIPT_IN_IMAGE, read_only=True),
            self._generated(staging, rendered.build_files),
            *_cache_binds(cache),
            *render.overlay_host_binds(self.site),
        ]
        steps = [
            _prepare(staging, cache, f"{OVERLAY_DIR}/upper", f"{OVERLAY_DIR}/work"),
            BuildStep(
                "install environment",
                apptainer.contained_exec(
                    base,
                    ["/bin/sh", render.OVERLAY_SCRIPT_IN_IMAGE],
                    overlay=str(overlay),
                    binds=binds,
                    workdir=work_dir(staging) / SCRATCH,
                    fakeroot=True,
                ),
            ),
            BuildStep(
                "squash environment",
                [
                    "mksquashfs",
                    str(overlay / "upper"),
                    str(staging / OVERLAY),
                    "-noappend",
                    "-all-root",
                    "-no-progress",
                    "-quiet",
                    *apptainer.SQUASH_OPTIONS,
                ],
            ),
            _cleanup(staging, base, OVERLAY_DIR, SCRATCH),
            BuildStep(
                "smoke test",
                apptainer.contained_exec(base, ["true"], overlay=f"{staging / OVERLAY}:ro"),
            ),
        ]
        return BuildCommands(steps, prepared.checkout, staging / JOB_OUTPUT, timeout)

    def _meta(self, prepared: Prepared, strategy: str, staging: Path, seconds: float) -> ImageMeta:
        artifact = staging / (OVERLAY if strategy == "overlay" else IMAGE)
        return ImageMeta(
            key=prepared.rendered.env_key,
            spec=prepared.repo.spec,
            url=prepared.repo.url,
            commit=prepared.repo.commit,
            buildpack=prepared.plan.buildpack,
            base=prepared.rendered.base.name,
            base_image=os.path.realpath(prepared.rendered.base.source),
            strategy="overlay" if strategy == "overlay" else "sif",
            artifact=artifact.name,
            definition=prepared.rendered.definition,
            build_seconds=round(seconds, 2),
            size_bytes=artifact.stat().st_size,
            build_log=str(self.store.image_dir(prepared.rendered.env_key) / LOG),
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            backend=self.backend.name,
            entrypoint=list(prepared.rendered.entrypoint),
        )
