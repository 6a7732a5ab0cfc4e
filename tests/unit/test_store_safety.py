"""The build account's file access in its store and staging folders, and
who may keep an image from gc.

Every read and write goes through :mod:`hpcbinder.images.safefs`: a link,
FIFO, hard link or another account's file where the build server expects
its own is refused, never followed. A researcher pins (``POST /used``, a
job's comment) only images they may launch."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpcbinder.config import Site
from hpcbinder.images import gc as storegc
from hpcbinder.images import safefs
from hpcbinder.images.store import META, ImageMeta, ImageStore, work_dir
from hpcbinder.seams.slurm import SlurmCLI
from tests.unit.fakes import ByProgram, publish_fake_image

KEY = "0123456789abcdef0123456789abcdef"
SECRET = "build-account-secret"  # noqa: S105 (a marker, not a password)


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "secret"
    path.write_text(SECRET)
    path.chmod(0o600)
    return path


def plant(folder: Path, name: str, kind: str, secret: Path) -> None:
    """What a container could leave at ``folder/name``."""
    path = folder / name
    if kind == "symlink":
        path.symlink_to(secret)
    elif kind == "hardlink":
        os.link(secret, path)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "dir":
        path.mkdir()
    elif kind == "foreign":
        path.write_text(SECRET)
        os.chown(path, pwd.getpwnam("nobody").pw_uid, -1)


KINDS = ["symlink", "hardlink", "fifo", "dir"] + (["foreign"] if os.geteuid() == 0 else [])


@pytest.mark.parametrize("kind", KINDS)
def test_nothing_but_an_own_regular_file_is_read_or_written(
    tmp_path: Path, secret: Path, kind: str
) -> None:
    folder = tmp_path / "staging"
    folder.mkdir()
    plant(folder, "build.log", kind, secret)
    with pytest.raises(OSError):  # UnsafeFile, or IsADirectoryError for a folder
        safefs.read_text(folder, "build.log", 1 << 20)
    with pytest.raises(OSError):
        safefs.append(folder, "build.log")
    with pytest.raises(FileExistsError):
        safefs.create(folder, "build.log", "the repository's text")
    assert secret.read_text() == SECRET


def test_a_replaced_record_replaces_a_link_never_its_target(tmp_path: Path, secret: Path) -> None:
    (tmp_path / "used.json").symlink_to(secret)
    safefs.replace(tmp_path, "used.json", "{}")
    assert secret.read_text() == SECRET
    assert not (tmp_path / "used.json").is_symlink()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    planted=st.dictionaries(
        st.sampled_from([META, "image.sif", "build.log", "used", "failures"]),
        st.sampled_from(KINDS),
        min_size=1,
    )
)
def test_the_store_never_reads_a_planted_entry(
    tmp_path_factory: pytest.TempPathFactory, planted: dict[str, str]
) -> None:
    """Whatever stands where the store keeps an image's record, its use or
    its failure, its reads never return the build account's file."""
    root = tmp_path_factory.mktemp("store")
    secret = root / "secret"
    secret.write_text(SECRET)
    store = ImageStore(root / "store")
    for folder in (store.image_dir(KEY), root / "store" / "used", root / "store" / "failures"):
        folder.mkdir(parents=True, exist_ok=True)
    records = {"used": store.use_path(KEY).parent, "failures": store.failure_path(KEY).parent}
    for name, kind in planted.items():
        target = records.get(name, store.image_dir(KEY))
        plant(target, f"{KEY}.json" if name in records else name, kind, secret)
    seen = []
    for read in (lambda: store.lookup(KEY), lambda: store.failure(KEY), lambda: store.users(KEY)):
        with contextlib.suppress(OSError):
            seen.append(repr(read()))
    assert SECRET not in "".join(seen)
    assert secret.read_text() == SECRET


def test_containers_write_only_the_work_folder_next_to_staging(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    lock = store.try_lock(KEY)
    assert lock is not None
    with lock:
        staging = store.new_staging(KEY)
        work = work_dir(staging)
        assert work.is_dir() and work.parent == staging.parent
        assert not work.is_relative_to(staging)
        (work / "planted").symlink_to("/etc/passwd")
        (staging / "image.sif").write_bytes(b"sif")
        record = store.publish(lock, staging, ImageMeta(key=KEY))
    assert not work.exists() and Path("/etc/passwd").is_file()
    assert sorted(p.name for p in record.path.parent.iterdir()) == ["image.sif", META]


# --- pinning -------------------------------------------------------------------


def publish(store: ImageStore, key: str, url: str, user: str) -> None:
    publish_fake_image(store, key)
    meta = store.image_dir(key) / META
    data = json.loads(meta.read_text())
    meta.unlink()
    safefs.create(meta.parent, META, json.dumps({**data, "url": url}))
    store.record_use(key, user, at=time.time() - 30 * 86400)
    os.utime(meta, (time.time() - 30 * 86400,) * 2)


def test_only_images_one_may_launch_are_pinned(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    local, public = "1" * 32, "2" * 32
    publish(store, local, "file:///srv/repos/alice/analysis", "alice")
    publish(store, public, "https://github.com/org/repo", "alice")
    assert store.may_launch(local, "alice") and not store.may_launch(local, "bob")
    assert store.may_launch(public, "bob")
    assert not store.may_launch("f" * 32, "alice")  # no such image
    store.record_use(local, "carol")
    assert store.users(local) == {"alice", "carol"}


def test_gc_keeps_an_image_a_job_names_only_for_its_owner(tmp_path: Path) -> None:
    """bob's job comment naming alice's image of a repository on this host
    keeps nothing; alice's keeps it; anyone's keeps a public image."""
    site = Site.model_validate({"image_store": str(tmp_path / "store")})
    store = ImageStore(site.image_store)
    alices, public = "1" * 32, "2" * 32
    publish(store, alices, "file:///srv/repos/alice/analysis", "alice")
    publish(store, public, "https://github.com/org/repo", "alice")
    squeue = f"RUNNING|bob|hpcbinder-image={alices}\nPENDING|bob|hpcbinder-image={public}\n"
    slurm = SlurmCLI(ByProgram({"scontrol": (0, "", ""), "squeue": (0, squeue, "")}))
    report = storegc.collect(site, older_than_days=2, keep=0, slurm=slurm)
    assert report.images == [alices]
    assert store.lookup(public) is not None
    publish(store, alices, "file:///srv/repos/alice/analysis", "alice")
    squeue = f"RUNNING|alice|hpcbinder-image={alices}\n"
    slurm = SlurmCLI(ByProgram({"scontrol": (0, "", ""), "squeue": (0, squeue, "")}))
    assert storegc.collect(site, older_than_days=2, keep=0, slurm=slurm).images == [public]
    assert store.lookup(alices) is not None
