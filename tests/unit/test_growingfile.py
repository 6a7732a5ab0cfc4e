"""Following a file another process appends to: whole lines only, each once."""

from __future__ import annotations

from pathlib import Path

from hpcbinder.growingfile import GrowingFile
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
