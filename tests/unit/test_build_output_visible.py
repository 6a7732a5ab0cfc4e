"""A build's output reaches researchers' terminals (``hpcbinder build``
prints its events) and the store's logs: control characters a postBuild
prints (an OSC 52 sequence that sets the clipboard, a carriage return that
redraws a line the CLI printed) arrive as visible escapes, never raw."""

from __future__ import annotations

import time
import unicodedata
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from hpcbinder.images import buildlog
from hpcbinder.images.builder import LOG, _Output
from hpcbinder.images.store import BuildEvent, ImageStore


@given(st.text(max_size=200))
def test_visible_lines_hold_no_control_character_but_tab(line: str) -> None:
    shown = buildlog.visible(line)
    assert all(c == "\t" or unicodedata.category(c) != "Cc" for c in shown)


def test_a_builds_events_and_log_show_escapes_not_control_characters(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "store")
    staging = tmp_path / "staging"
    staging.mkdir()
    events: list[BuildEvent] = []
    output = _Output(store, staging, events.append, time.monotonic())
    output.line("clipboard \x1b]52;c;ZXZpbA==\x07 then\rfake line")
    output.close()
    shown = "clipboard \\x1b]52;c;ZXZpbA==\\x07 then\\x0dfake line"
    assert [event.message for event in events] == [shown]
    assert (staging / LOG).read_text() == shown + "\n"
