"""Which process a pid names, so that a pid written down earlier is never
mistaken for another process that got the same number.

A pid alone does not name a process for long: after the process ends (or
the host reboots) the number goes to the next process that starts. The
kernel gives every process a start time (clock ticks since boot, field 22
of ``/proc/PID/stat``) and every boot an id (``/proc/sys/kernel/random/boot_id``);
(boot id, pid, start time) names one process for good. The command line is
kept too: where a process does not replace its program, a different one
means a different process.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_PROC = Path("/proc")
_BOOT_ID = _PROC / "sys" / "kernel" / "random" / "boot_id"


def boot_id() -> str:
    """This boot's id ("" where the kernel does not say)."""
    try:
        return _BOOT_ID.read_text().strip()
    except OSError:
        return ""


@dataclass(frozen=True)
class ProcessIdentity:
    """One process, for good: its pid in one boot, its start time, its
    command line."""

    pid: int
    boot_id: str
    start_ticks: int
    cmdline: tuple[str, ...]

    @classmethod
    def of(cls, pid: int) -> ProcessIdentity | None:
        """The process ``pid`` names now, or None if there is none."""
        if pid <= 0:
            return None
        try:
            stat = (_PROC / str(pid) / "stat").read_text()
            raw = (_PROC / str(pid) / "cmdline").read_bytes()
        except OSError:
            return None
        # The name (field 2) is in parentheses and may hold spaces or ')'.
        fields = stat[stat.rindex(")") + 2 :].split()
        cmdline = tuple(part.decode(errors="replace") for part in raw.split(b"\0") if part)
        return cls(pid, boot_id(), int(fields[19]), cmdline)

    @classmethod
    def current(cls) -> ProcessIdentity:
        me = cls.of(os.getpid())
        if me is None:
            raise RuntimeError("/proc does not show this process")
        return me

    def alive(self) -> bool:
        """Whether the process still runs: same boot, same pid, same start
        time (its program may have replaced itself since)."""
        now = ProcessIdentity.of(self.pid)
        return now is not None and (now.boot_id, now.start_ticks) == (
            self.boot_id,
            self.start_ticks,
        )

    def alive_unchanged(self) -> bool:
        """:meth:`alive`, and it still runs the same command line."""
        now = ProcessIdentity.of(self.pid)
        return now is not None and now == self

    def leads_its_group(self) -> bool:
        """Whether it still runs and is the leader of process group ``pid``."""
        with contextlib.suppress(OSError):
            return self.alive() and os.getpgid(self.pid) == self.pid
        return False

    def to_json(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "boot_id": self.boot_id,
            "start_ticks": self.start_ticks,
            "cmdline": list(self.cmdline),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProcessIdentity | None:
        """The identity recorded in ``data``; None where a field is missing
        (written before identities were recorded) or malformed."""
        try:
            pid, boot, start = data["pid"], data["boot_id"], data["start_ticks"]
            cmdline = data["cmdline"]
        except (KeyError, TypeError):
            return None
        if not (isinstance(pid, int) and isinstance(start, int) and isinstance(boot, str)):
            return None
        if not isinstance(cmdline, list) or not all(isinstance(p, str) for p in cmdline):
            return None
        return cls(pid, boot, start, tuple(cmdline))
