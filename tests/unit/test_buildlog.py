"""A build's log keeps its head and tail and says how much was cut, in
events and on disk."""

from __future__ import annotations

from pathlib import Path

from hpcbinder.images.buildlog import LogCap, cap_file, cut_marker


def test_events_keep_head_and_tail_and_count_the_cut() -> None:
    seen: list[str] = []
    cap = LogCap(seen.append, head=3, tail=2)
    for number in range(100):
        cap.line(f"line {number}")
    cap.finish()
    cap.finish()
    assert seen[:3] == ["line 0", "line 1", "line 2"]
    assert seen[-3:] == [cut_marker(95), "line 98", "line 99"]
    assert len(seen) == 3 + 1 + 1 + 2


def test_a_short_log_passes_whole() -> None:
    seen: list[str] = []
    cap = LogCap(seen.append, head=3, tail=2)
    for number in range(4):
        cap.line(f"line {number}")
    cap.finish()
    assert seen[:3] == ["line 0", "line 1", "line 2"] and seen[-1] == "line 3"
    assert not any("cut ...]" in line for line in seen)


def test_a_log_file_is_capped_in_place_once(tmp_path: Path) -> None:
    log = tmp_path / "build.log"
    log.write_text("".join(f"line {n}\n" for n in range(10_000)) + "x" * 100_000 + "\n")
    cap_file(log, head=5, tail=5)
    lines = log.read_text().splitlines()
    assert lines[:5] == [f"line {n}" for n in range(5)]
    assert cut_marker(10_001 - 10) in lines
    assert lines[-1].endswith("[... line cut ...]") and len(lines[-1]) < 5000
    capped = log.read_text()
    cap_file(log, head=5, tail=5)
    assert log.read_text() == capped
