"""Following a file another process appends to: whole lines only, each once."""

from __future__ import annotations

import os
from pathlib import Path

from hpcbinder.boundedlines import CUT, LINE_LIMIT
from hpcbinder.growingfile import READ_BYTES, GrowingFile
from hpcbinder.jobs import batchjobs


def test_lines_are_read_once_and_only_when_whole(tmp_path: Path) -> None:
    path = tmp_path / "build.log"
    followed = GrowingFile(path)
    assert followed.new_lines() == []  # not written yet
    path.write_bytes(b"first\nsec")
    assert followed.new_lines() == ["first"]
    with path.open("ab") as handle:
        handle.write("ond caf\u00e9\n\nthird\r\n".encode())
    assert followed.new_lines() == ["second caf\u00e9", "", "third\r"]
    assert followed.new_lines() == []


def test_undecodable_bytes_do_not_stop_the_reader(tmp_path: Path) -> None:
    path = tmp_path / "events"
    path.write_bytes(b"\xff\xfe bad\nok\n")
    assert GrowingFile(path).new_lines() == ["\ufffd\ufffd bad", "ok"]


def test_followed_batch_logs_prefix_every_line_even_a_redrawn_one(tmp_path: Path) -> None:
    """``jobs logs -f`` / ``sbatch --wait``: each line of a task's log gets
    its task index, a progress bar's carriage returns included, and a line
    still being written waits for its end."""
    log = tmp_path / "slurm-12_3.out"
    log.write_bytes(b"10%\r50%\r100%\ndone\r\n\nhalf")
    followed: dict[Path, GrowingFile] = {}
    assert list(batchjobs._new_lines([log], followed)) == [
        "[3] 10%",
        "[3] 50%",
        "[3] 100%",
        "[3] done",
        "[3] ",
    ]
    with log.open("ab") as handle:
        handle.write(b" a line\n")
    assert list(batchjobs._new_lines([log], followed)) == ["[3] half a line"]


def test_a_line_without_end_is_passed_on_cut_and_reads_are_bounded(tmp_path: Path) -> None:
    """A job printing a gigabyte without a newline costs the follower one
    capped line, not its memory."""
    path = tmp_path / "job-output.log"
    followed = GrowingFile(path)
    path.write_bytes(b"x" * (READ_BYTES + 5))
    first = followed.new_lines()
    assert first == ["x" * LINE_LIMIT + CUT]
    with path.open("ab") as handle:
        handle.write(b"x" * 100 + b"\nnext\n" + b"y" * (LINE_LIMIT + 3) + b"\n")
    lines = []
    for _ in range(5):
        lines += followed.new_lines()
    assert lines == ["next", "y" * LINE_LIMIT + CUT]


def test_a_link_or_fifo_is_not_followed(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("secret\n")
    (tmp_path / "log").symlink_to(secret)
    assert GrowingFile(tmp_path / "log").new_lines() == []
    os.mkfifo(tmp_path / "fifo")
    assert GrowingFile(tmp_path / "fifo").new_lines() == []
