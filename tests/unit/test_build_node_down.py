"""A build node that is down answers nothing at all (its SYNs go
unanswered, unlike a closed port's refusal): the build server's clients
(the CLI, the Binder service, the spawner) say so in one line naming
build.server_url within seconds, not after the kernel's SYN retries."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from hpcbinder.config import Site
from hpcbinder.images.client import CONNECT_TIMEOUT, BuildServerClient, BuildServerError


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port whose SYNs go unanswered: a listener that accepts nothing,
    its queue filled (Linux drops SYNs to a full accept queue)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    time.sleep(0.2)
    probe = socket.socket()
    probe.settimeout(1)
    try:
        probe.connect(("127.0.0.1", port))
        pytest.skip("this kernel answered a full accept queue")
    except TimeoutError:
        pass
    finally:
        probe.close()
    try:
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


def test_a_build_request_to_a_silent_build_node_fails_in_one_line_within_seconds(
    silent_port: int,
) -> None:
    url = f"http://127.0.0.1:{silent_port}"
    client = BuildServerClient(Site.model_validate({"build": {"server_url": url}}))
    started = time.monotonic()
    with pytest.raises(BuildServerError) as failed:
        client.request("gh/org/repo/HEAD", lambda event: None)
    assert time.monotonic() - started < CONNECT_TIMEOUT + 5
    message = str(failed.value)
    assert message.startswith(
        f"cannot reach the build server at {url} (site file: build.server_url)"
    )
    assert "\n" not in message
