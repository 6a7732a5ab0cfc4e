"""A build's log keeps its head and tail and says how much was cut (the
builder writes the events and the log file through one cap)."""

from __future__ import annotations

from hpcbinder.images.buildlog import LogCap, cut_marker


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
