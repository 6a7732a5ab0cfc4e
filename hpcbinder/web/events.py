"""Events of BinderHub's ``/build`` stream, as Server-Sent Events.

Phases, in order: waiting, fetching, building, built, launching, ready;
or failed at any point. Clients (BinderHub's own JavaScript among them)
read ``phase`` and ``message``, ``imageName`` with built, ``url`` and
``token`` with ready.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

#: BinderHub's phases (in the order above).
Phase = Literal["waiting", "fetching", "building", "built", "launching", "ready", "failed"]
#: A comment line: keeps proxies from closing a quiet stream.
KEEPALIVE = ":keepalive\n\n"


@dataclass(frozen=True)
class Event:
    phase: Phase
    message: str
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"phase": self.phase, "message": self.message, **self.extra}

    def sse(self) -> str:
        """One ``data:`` record (JSON never holds a raw newline)."""
        return f"data: {json.dumps(self.to_json())}\n\n"


def failed(message: str) -> Event:
    return Event("failed", message.rstrip("\n") + "\n")
