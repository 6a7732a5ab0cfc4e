"""The image store's locking and bookkeeping, on a real directory with real
processes (no Apptainer needed); what gc keeps; the job comments that tell
it which images and checkouts jobs use."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace

import pytest
from tornado import web

from hpcbinder.config import Site
from hpcbinder.images import gc as storegc
from hpcbinder.images import store as images
from hpcbinder.images.backends.slurmjob import SlurmBackend
from hpcbinder.images.builder import Builder
from hpcbinder.images.client import UseRequest
from hpcbinder.images.jobrefs import JobReferenceError, job_comment, references
from hpcbinder.images.store import BuildEvent, ImageStore, LockLost, follow_events
from hpcbinder.jobs.batch import BatchRun, BatchTask, ImageIdentity, render_batch_script
from hpcbinder.jobs.request import request_for
from hpcbinder.jobs.serverscript import Seed, ServerJob, render_server_script
from hpcbinder.seams import proc
from hpcbinder.seams.processid import ProcessIdentity
from hpcbinder.seams.slurm import JobComment, SlurmCLI, SlurmError
from hpcbinder.sources.providers import ResolvedRepo
from tests.unit.fakes import ByProgram, publish_fake_image

KEY = "0123456789abcdef0123456789abcdef"
COMMIT = "c" * 40
DAY = 86400.0


def publish(store: ImageStore, key: str, age_days: float = 0) -> None:
    publish_fake_image(store, key)
    if age_days:
        store.record_use(key, "alice", at=time.time() - age_days * DAY)


@pytest.fixture
def bystander() -> Iterator[subprocess.Popen[bytes]]:
    """A live process in its own process group that no build started."""
    process = subprocess.Popen(["sleep", "60"], start_new_session=True)
    yield process
    process.kill()
    process.wait()


def test_one_holder_per_key(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    lock = store.try_lock(KEY)
    assert lock is not None and lock.held()
    assert store.try_lock(KEY) is None
    lock.release()
    again = store.try_lock(KEY)
    assert again is not None
    again.release()
    assert not store.lock_path(KEY).exists()


def test_lock_of_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / "locks").mkdir()
    store.lock_path(KEY).write_text(
        json.dumps({"host": os.uname().nodename, "pid": dead.pid, "token": "old"})
    )
    lock = store.try_lock(KEY)
    assert lock is not None
    lock.release()


def test_lock_without_heartbeat_is_taken_over_only_when_stale(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    (tmp_path / "locks").mkdir()
    path = store.lock_path(KEY)
    path.write_text(json.dumps({"host": "another-host", "pid": 1, "token": "t"}))
    assert store.try_lock(KEY) is None  # fresh heartbeat: someone is building
    old = time.time() - images.STALE_AFTER - 5
    os.utime(path, (old, old))
    lock = store.try_lock(KEY)
    assert lock is not None and lock.held()
    lock.release()


class ScriptedCancels:
    """A :class:`hpcbinder.seams.proc.CommandRunner` that records argv."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []

    def run(self, argv: Sequence[str], **_: object) -> proc.CommandResult:
        self.calls.append(tuple(argv))
        return proc.CommandResult(tuple(argv), 0, "", "")


def test_a_dead_builds_slurm_job_is_cancelled_by_the_builder_that_takes_over(
    tmp_path: Path,
) -> None:
    """The store hands the dead build's job to the new holder; the store
    itself never runs Slurm: the builder's backend cancels it."""
    site = Site.model_validate({"image_store": str(tmp_path), "build": {"backend": "slurm"}})
    store = ImageStore(tmp_path)
    (tmp_path / "locks").mkdir()
    lock_path = store.lock_path(KEY)
    lock_path.write_text(json.dumps({"host": "another-host", "pid": 1, "token": "t"}))
    lock_path.with_suffix(".started").write_text("slurm-job 4242\n")
    old = time.time() - images.STALE_AFTER - 5
    os.utime(lock_path, (old, old))
    slurm = ScriptedCancels()
    builder = Builder(site, store, SlurmBackend(site, SlurmCLI(slurm)))
    lock = builder._try_lock(KEY)
    assert lock is not None and lock.leftovers == ["slurm-job 4242"]
    lock.release()
    cancels = [argv for argv in slurm.calls if "scancel" in argv]
    assert cancels and cancels[0][-1] == "4242"
    assert not lock_path.with_suffix(".started").exists()


def test_followers_see_events_until_the_build_ends(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    lock = store.try_lock(KEY)
    assert lock is not None
    lock.emit(BuildEvent("building", "one", 1.5))

    def finish() -> None:
        time.sleep(0.5)
        with store.events_path(KEY).open("a") as events:
            events.write('not an event\n{"phase": "log"}\n')
        lock.emit(BuildEvent("log", "two"))
        time.sleep(0.5)
        lock.release()

    threading.Thread(target=finish).start()
    seen = list(follow_events(store, KEY, poll=0.1))
    assert seen == [BuildEvent("building", "one", 1.5), BuildEvent("log", "two")]


def test_publish_is_whole_and_gc_keeps_recent(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    keys = [f"{n:032x}" for n in range(4)]
    for age, key in zip((30, 20, 10, 0), keys, strict=True):
        publish(store, key, age_days=age)
    assert [r.key for r in store.records()] == keys
    assert store.gc(older_than_days=15, keep=1, in_use=frozenset()) == [keys[1], keys[0]]
    assert [r.key for r in store.records()] == keys[2:]
    assert store.remove(keys[2]) and not store.remove(keys[2])
    assert list((tmp_path / "staging").iterdir()) == []


def test_staging_of_a_dead_build_is_removed_by_the_next(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    leftover = store.new_staging(KEY)
    (leftover / "partial.sif").write_bytes(b"half")
    fresh = store.new_staging(KEY)
    assert not leftover.exists() and fresh.is_dir()


# --- use records and gc -----------------------------------------------------------


def test_gc_reads_use_records_and_keeps_what_jobs_use(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    used_by_job, used_yesterday, unused = (f"{n:032x}" for n in range(3))
    for key in (used_by_job, used_yesterday, unused):
        publish(store, key, age_days=30)
        old = time.time() - 30 * DAY  # publication (meta.json) long ago as well
        os.utime(store.image_dir(key) / images.META, (old, old))
    store.record_use(used_yesterday, "bob", at=time.time() - DAY)
    assert json.loads(store.use_path(used_yesterday).read_text())["user"] == "bob"
    removed = store.gc(older_than_days=2, keep=0, in_use=frozenset({used_by_job}))
    assert removed == [unused]
    assert {r.key for r in store.records()} == {used_by_job, used_yesterday}
    assert not store.use_path(unused).exists()


def test_use_is_its_own_record_not_the_metadata_time(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    publish(store, KEY, age_days=10)
    os.utime(store.image_dir(KEY) / images.META)  # a metadata change is not a use
    assert store.gc(older_than_days=5, keep=0, in_use=frozenset()) == [KEY]


def test_finding_an_image_records_who_uses_it(tmp_path: Path) -> None:
    """The build server, a build and a launch find images through
    ``find``: each use keeps the image from gc, whoever asked."""
    store = ImageStore(tmp_path)
    publish(store, KEY, age_days=10)
    assert store.find("f" * 32, "bob") is None
    record = store.find(KEY, "bob")
    assert record is not None and record.key == KEY
    assert json.loads(store.use_path(KEY).read_text())["user"] == "bob"
    assert store.gc(older_than_days=5, keep=0, in_use=frozenset()) == []


def test_a_build_records_who_asked_and_a_follower_who_waited(tmp_path: Path) -> None:
    """The researcher whose request built an image, and one who waited for
    another process's build of it, are both recorded as its users."""
    store = ImageStore(tmp_path / "store")
    lock = store.try_lock(KEY)
    assert lock is not None
    published: list[str] = []

    def finish() -> None:
        time.sleep(0.3)
        staging = store.new_staging(KEY)
        (staging / images.IMAGE).write_bytes(b"sif")
        store.publish(lock, staging, images.ImageMeta(key=KEY), "alice")
        published.append(json.loads(store.use_path(KEY).read_text())["user"])
        lock.release()

    builder = Builder(Site(), store, SimpleNamespace())  # type: ignore[arg-type]
    follower = threading.Thread(target=finish)
    follower.start()
    events: list[BuildEvent] = []
    prepared = SimpleNamespace(rendered=SimpleNamespace(env_key=KEY))
    record = builder.build_image(prepared, events.append, "bob")  # type: ignore[arg-type]
    follower.join()
    assert published == ["alice"]
    assert record.key == KEY and events[0].phase == "waiting"
    assert json.loads(store.use_path(KEY).read_text())["user"] == "bob"


# --- staging --------------------------------------------------------------------


def test_base_builds_keep_each_others_staging_and_gc_keeps_a_live_build(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    gpu_lock = store.try_lock("base-default-gpu")
    default_lock = store.try_lock("base-default")
    assert gpu_lock is not None and default_lock is not None
    gpu = store.new_staging("base-default-gpu")
    (gpu / images.IMAGE).write_bytes(b"half a base")
    default = store.new_staging("base-default")
    assert gpu.is_dir() and default.is_dir()
    assert store.clean_staging() == []
    assert gpu.is_dir() and default.is_dir()
    gpu_lock.release()  # that build died without cleaning up: its staging is a leftover
    assert store.clean_staging() == [gpu.name]
    assert default.is_dir()
    default_lock.release()


# --- lock take-over ---------------------------------------------------------------


def _stale_lock(store: ImageStore, holder: dict[str, object], started: str) -> None:
    store.lock_path(KEY).parent.mkdir(parents=True, exist_ok=True)
    store.lock_path(KEY).write_text(json.dumps({"host": socket.gethostname(), **holder}))
    store.started_path(KEY).write_text(started)
    old = time.time() - images.STALE_AFTER - 5  # no heartbeat either
    os.utime(store.lock_path(KEY), (old, old))


def test_take_over_spares_a_process_that_got_the_recorded_pid(
    tmp_path: Path, bystander: subprocess.Popen[bytes]
) -> None:
    """The lock and its sessions name the bystander's pid, as a build
    before a reboot (or long ago) left them: another start time."""
    store = ImageStore(tmp_path)
    now = ProcessIdentity.of(bystander.pid)
    assert now is not None
    earlier = {**now.to_json(), "start_ticks": now.start_ticks - 500}
    _stale_lock(
        store,
        {"token": "old", **earlier},
        f"session {bystander.pid} {now.boot_id} {now.start_ticks - 500}\n"
        f"session {bystander.pid}\n",  # written before identities were recorded
    )
    lock = store.try_lock(KEY)
    assert lock is not None and lock.held()
    lock.release()
    time.sleep(0.2)
    assert bystander.poll() is None, "a process no build started was killed"


def test_take_over_stops_the_dead_builds_own_session(
    tmp_path: Path, bystander: subprocess.Popen[bytes]
) -> None:
    store = ImageStore(tmp_path)
    dead = subprocess.Popen(["true"])
    dead.wait()
    leftover = ProcessIdentity.of(bystander.pid)
    assert leftover is not None
    _stale_lock(
        store,
        {"token": "old", "pid": dead.pid},
        f"session {leftover.pid} {leftover.boot_id} {leftover.start_ticks}\n",
    )
    lock = store.try_lock(KEY)
    assert lock is not None
    lock.release()
    assert bystander.wait(timeout=5) == -9


def test_take_over_never_signals_process_group_0_or_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    signalled: list[int] = []
    monkeypatch.setattr(images.proc, "kill_session", signalled.append)
    init = ProcessIdentity.of(1)
    assert init is not None
    store = ImageStore(tmp_path)
    _stale_lock(
        store,
        {"token": "old", "pid": 0},
        f"session 0\nsession 1\nsession 1 {init.boot_id} {init.start_ticks}\n",
    )
    lock = store.try_lock(KEY)
    assert lock is not None
    lock.release()
    assert signalled == []


def test_a_build_records_its_sessions_identity(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    with store.try_lock(KEY) as lock:  # type: ignore[union-attr]
        lock.note_started(f"session {os.getpid()}")
        lock.note_started("slurm-job 12")
        me = ProcessIdentity.current()
        assert store.started_path(KEY).read_text().splitlines() == [
            f"session {me.pid} {me.boot_id} {me.start_ticks}",
            "slurm-job 12",
        ]
        holder = store.lock_holder(KEY) or {}
        assert ProcessIdentity.from_json(holder) == me


# --- publish ----------------------------------------------------------------------


def test_publish_needs_the_lock_and_never_replaces_an_image(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    slow = store.try_lock(KEY)
    assert slow is not None
    staged = store.new_staging(KEY)
    (staged / images.IMAGE).write_bytes(b"the slow build's")
    # The slow build stalled past STALE_AFTER: another took the lock over and published.
    store.lock_path(KEY).write_text(json.dumps({"host": "elsewhere", "token": "fast"}))
    fast = images.BuildLock(store, KEY, "fast")
    theirs = store.new_staging(KEY + "x")  # (a folder of their own)
    (theirs / images.IMAGE).write_bytes(b"the fast build's")
    store.publish(fast, theirs, images.ImageMeta(key=KEY, spec="fast"))
    with pytest.raises(LockLost, match="taken over"):
        store.publish(slow, staged, images.ImageMeta(key=KEY, spec="slow"))
    record = store.lookup(KEY)
    assert record is not None and record.meta.spec == "fast"
    assert record.path.read_bytes() == b"the fast build's"
    fast.release()
    slow.release()


# --- checkouts ----------------------------------------------------------------------


def test_gc_removes_unused_checkouts_and_unfinished_fetches(tmp_path: Path) -> None:
    now = time.time()
    repo = tmp_path / "0123456789abcdef"

    def checkout(name: str, age_days: float) -> Path:
        path = repo / name
        (path / "sub").mkdir(parents=True)
        (path / "sub" / "notebook.ipynb").write_text("{}")
        os.utime(path, (now - age_days * DAY, now - age_days * DAY))
        return path

    old, recent, queued = checkout("a" * 40, 10), checkout("b" * 40, 1), checkout(COMMIT, 10)
    broken, fetching = checkout(f".{'d' * 40}-x1", 1), checkout(f".{'e' * 40}-x2", 0)
    storegc.record_checkout_use(recent)  # a build started from it just now
    removed = storegc.clean_checkouts(
        tmp_path,
        unused_since=now - 5 * DAY,
        unfinished_since=now - 3600,
        in_use=frozenset({COMMIT}),
    )
    assert removed == [old]
    assert sorted(p.name for p in repo.iterdir()) == sorted(
        [recent.name, queued.name, fetching.name]
    )
    assert not broken.exists()


# --- job comments -------------------------------------------------------------------


def test_job_comments_name_image_and_commit_and_refuse_anything_else() -> None:
    assert job_comment(KEY, COMMIT) == f"hpcbinder-image={KEY},hpcbinder-commit={COMMIT}"
    assert job_comment(None, None) == "hpcbinder"
    # A private run's names neither: squeue shows every job's comment to all.
    assert job_comment(KEY, COMMIT, private=True) == "hpcbinder"
    for bad in (f"{KEY} --wrap=id", KEY.upper(), "base:default"):
        with pytest.raises(JobReferenceError):
            job_comment(bad, None)
    with pytest.raises(JobReferenceError):
        job_comment(KEY, "HEAD")
    comments = [job_comment(KEY, COMMIT), "(null)", f"mine hpcbinder-image={'f' * 33}", "x"]
    found = references(JobComment("alice", comment) for comment in comments)
    assert found.images == {("alice", KEY)} and found.commits == {COMMIT}


def test_server_and_batch_scripts_carry_the_comment(tmp_path: Path) -> None:
    site = Site.model_validate({})
    request = request_for(site, None, {}, user="alice")
    server = ServerJob(
        "alice",
        Path("/home/alice"),
        request,
        ["apptainer", "exec", "/images/env.sif"],
        ["jupyterhub-singleuser"],
        workspace=tmp_path / "ws",
        seed=Seed(tmp_path / "checkout", COMMIT, from_image=False),
        image_key=KEY,
    )
    expected = f"#SBATCH --comment=hpcbinder-image={KEY},hpcbinder-commit={COMMIT}\n"
    assert expected in render_server_script(site, server)
    run = BatchRun(
        user="alice",
        home=Path("/home/alice"),
        repo=ResolvedRepo("gh/a/b/HEAD", "https://x/a/b", "HEAD", COMMIT),
        env_key=KEY,
        image=ImageIdentity(Path("/images/env.sif"), "0" * 64),
        launch=["apptainer", "exec", "/images/env.sif"],
        checkout=tmp_path / "checkout",
        from_image=False,
        path="run.py",
        args=[],
        tasks=[BatchTask(0, {})],
        per_task=False,
        array=None,
        request=request,
        run_dir=Path("/home/alice/hpcbinder-runs/b"),
    )
    assert expected in render_batch_script(run)
    # Her private repository's run: squeue shows its comment to every account.
    mine = render_batch_script(dataclasses.replace(run, private=True))
    assert "#SBATCH --comment=hpcbinder\n" in mine
    assert KEY not in mine.split("#SBATCH --comment=")[1].splitlines()[0]


# --- Slurm's view of every job --------------------------------------------------


SQUEUE = f"""RUNNING|alice|hpcbinder-image={KEY}
SUSPENDED|bob|hpcbinder-image={"1" * 32}
PENDING|alice|hpcbinder-image={"2" * 32},hpcbinder-commit={COMMIT}
COMPLETED|alice|hpcbinder-image={"3" * 32}
CANCELLED|alice|hpcbinder-image={"4" * 32}
RUNNING|bob|(null)
"""


def test_every_unfinished_jobs_comment_is_read() -> None:
    slurm = ByProgram(
        {"scontrol": (0, "PrivateData             = none\n", ""), "squeue": (0, SQUEUE, "")}
    )
    found = references(SlurmCLI(slurm).unfinished_job_comments("hpcbuild"))
    assert found.images == {("alice", KEY), ("bob", "1" * 32), ("alice", "2" * 32)}
    assert found.commits == {COMMIT}
    assert ["squeue", "-h", "-a", "--states=all", "-o", "%T|%u|%k"] in slurm.calls


def test_a_queue_hidden_by_private_data_is_never_taken_for_the_whole_queue() -> None:
    answers = {
        "scontrol": (0, "PrivateData             = jobs,usage\nSlurmUser = slurm(64030)\n", ""),
        "squeue": (0, "", ""),
        "sacctmgr": (0, "None\n", ""),
    }
    with pytest.raises(SlurmError, match=r"PrivateData=jobs.*adminlevel=Operator"):
        SlurmCLI(ByProgram(answers)).unfinished_job_comments("hpcbuild")
    answers["sacctmgr"] = (0, "Operator\n", "")
    assert SlurmCLI(ByProgram(answers)).unfinished_job_comments("hpcbuild") == []
    failing = {"scontrol": (0, "", ""), "squeue": (1, "", "failed")}
    with pytest.raises(SlurmError, match="squeue did not answer"):
        SlurmCLI(ByProgram(failing)).unfinished_job_comments("hpcbuild")


def test_use_reports_carry_only_an_image_key() -> None:
    assert UseRequest.from_json(UseRequest(KEY, "alice").to_json()) == UseRequest(KEY, "alice")
    for payload in ({"key": "../../etc"}, {"key": KEY, "for_user": 3}, ["x"]):
        with pytest.raises(ValueError):
            UseRequest.from_json(json.dumps(payload))


def test_a_launch_is_ruled_at_once_when_the_build_server_cannot_be_asked(
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    """The spawner asks a build server that is down whether alice may
    launch an image: at once, the store's records rule (here: an image it
    does not have, a 403), and the unreachable server is logged."""
    from hpcbinder.hub.spawner import ApptainerSlurmSpawner

    site = Site.model_validate(
        {"build": {"server_url": "http://127.0.0.1:9"}, "image_store": str(tmp_path)}
    )
    spawner = SimpleNamespace(
        site=site,
        user=SimpleNamespace(name="alice"),
        log=logging.getLogger("test-spawner"),
        build_server=None,
    )
    started = time.monotonic()
    with (
        caplog.at_level(logging.WARNING, logger="test-spawner"),
        pytest.raises(web.HTTPError) as refused,
    ):
        asyncio.run(ApptainerSlurmSpawner._admit_image(spawner, KEY))
    assert time.monotonic() - started < 10
    assert refused.value.status_code == 403
    assert "cannot reach the build server at http://127.0.0.1:9" in caplog.text
    assert f"Refused image {KEY} to alice (store records)" in caplog.text
