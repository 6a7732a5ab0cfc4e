"""The image store's locking and bookkeeping, on a real directory with real
processes (no Apptainer needed)."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

from hpcbinder import images
from hpcbinder.images import ImageStore, follow_events

KEY = "0123456789abcdef0123456789abcdef"


def publish(store: ImageStore, key: str, age_days: float = 0) -> None:
    staging = store.new_staging(key)
    (staging / images.IMAGE).write_bytes(b"sif")
    store.publish(key, staging, {"key": key})
    if age_days:
        stamp = time.time() - age_days * 86400
        os.utime(store.image_dir(key) / images.META, (stamp, stamp))


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


def test_followers_see_events_until_the_build_ends(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    lock = store.try_lock(KEY)
    assert lock is not None
    lock.emit({"phase": "building", "message": "one"})

    def finish() -> None:
        time.sleep(0.5)
        lock.emit({"phase": "log", "message": "two"})
        time.sleep(0.5)
        lock.release()

    threading.Thread(target=finish).start()
    seen = [event["message"] for event in follow_events(store, KEY, poll=0.1)]
    assert seen == ["one", "two"]


def test_publish_is_whole_and_gc_keeps_recent(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    keys = [f"{n:032x}" for n in range(4)]
    for age, key in zip((30, 20, 10, 0), keys, strict=True):
        publish(store, key, age_days=age)
    assert [r.key for r in store.records()] == keys
    assert store.gc(older_than_days=15, keep=1) == [keys[1], keys[0]]
    assert [r.key for r in store.records()] == keys[2:]
    assert store.remove(keys[2]) and not store.remove(keys[2])
    assert list((tmp_path / "staging").iterdir()) == []


def test_staging_of_a_dead_build_is_removed_by_the_next(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    leftover = store.new_staging(KEY)
    (leftover / "partial.sif").write_bytes(b"half")
    fresh = store.new_staging(KEY)
    assert not leftover.exists() and fresh.is_dir()
