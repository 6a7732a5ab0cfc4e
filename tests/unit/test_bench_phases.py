"""The build benchmarks' per-phase figures, read from a build's progress
lines (`hpcbinder build -v`) and when each arrived."""

from __future__ import annotations

from tests.bench.common import build_phases

KEY = "8b1aee256e48d573ad776b53e9688b03"
BUILT = [
    (0.5, "[   0.0s] fetching: Fetching repos/a @ main…"),
    (0.8, "[   0.3s] waiting: Waiting for a build slot: number 1 in the queue"),
    (0.9, f"[   0.4s] building: Building image {KEY}"),
    (1.1, f"[   0.6s]   building {KEY} (overlay, local backend)"),
    (1.2, "[   0.7s]   hpcbinder-build-step: install environment"),
    (1.3, "[   0.8s]   Using Python 3.11.2 environment at: /opt/hpcbinder/kernel"),
    (1.4, f"[   0.9s]   building {'0' * 32} (a log line that looks like the builder's)"),
    (2.4, "[   1.9s]   hpcbinder-build-step: squash environment"),
    (2.9, "[   2.4s]   hpcbinder-build-step: smoke test"),
    (3.1, "[   2.6s]   publishing"),
    (3.2, "run it with: apptainer --quiet exec ... COMMAND"),
]


def test_each_phase_lasts_until_the_next_starts() -> None:
    assert build_phases(BUILT, 3.5) == {
        "command_start": 0.5,
        "fetch": 0.3,
        "queue": 0.1,
        "lock_and_stage": 0.2,
        "render_and_start": 0.1,
        "step:install_environment": 1.2,
        "step:squash_environment": 0.5,
        "step:smoke_test": 0.2,
        "publish_and_exit": 0.4,
    }


def test_a_found_image_has_only_the_phases_it_went_through() -> None:
    found = [(0.4, "[   0.0s] fetching: Fetching repos/a @ main…"), (0.6, "run it with: x")]
    assert build_phases(found, 0.7) == {"command_start": 0.4, "fetch": 0.3}
