"""A real OpenSSH server for tests: on loopback, or inside a network
namespace, letting the given accounts in with a key generated here."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.conftest import SHARED_SCRATCH, free_port, wait_for_port


@contextmanager
def running_sshd(
    users: Sequence[str],
    address: str = "127.0.0.1",
    netns: str | None = None,
    key_owner: str | None = None,
) -> Iterator[dict[str, Any]]:
    """Yields SSH host settings (host, port, key_file, known_hosts) as the
    site file takes them. sshd reads authorized_keys as the logging-in
    account, so the folder is world-readable; the client key is root's, or
    ``key_owner``'s (the hub's service account). sshd logs each login to
    ``sshd.log`` beside the key (:func:`sshd_log`)."""
    keys = SHARED_SCRATCH / f"ssh-{uuid.uuid4().hex[:10]}"
    keys.mkdir(parents=True)
    keys.chmod(0o755)
    for name in ("host", "client"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / name)], check=True
        )
    (keys / "authorized_keys").write_text((keys / "client.pub").read_text())
    if key_owner is not None:
        shutil.chown(keys / "client", key_owner, key_owner)
    port = free_port()
    host_key = (keys / "host.pub").read_text().split()
    (keys / "known_hosts").write_text(f"[{address}]:{port} {host_key[0]} {host_key[1]}\n")
    config = keys / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress {address}\nHostKey {keys / 'host'}\n"
        f"AuthorizedKeysFile {keys / 'authorized_keys'}\nStrictModes no\nUsePAM no\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        f"AllowUsers {' '.join(users)}\nPermitRootLogin prohibit-password\n"
        f"PidFile {keys / 'sshd.pid'}\n"
    )
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    inside = ["ip", "netns", "exec", netns] if netns else []
    server = subprocess.Popen(
        [*inside, "/usr/sbin/sshd", "-D", "-E", str(keys / "sshd.log"), "-f", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, "sshd", host=address)
        yield {
            "host": address,
            "port": port,
            "key_file": str(keys / "client"),
            "known_hosts": str(keys / "known_hosts"),
        }
    finally:
        server.terminate()
        server.wait(timeout=10)
        subprocess.run(["rm", "-rf", str(keys)], check=False)


def sshd_log(host: dict[str, Any]) -> str:
    """What the sshd of :func:`running_sshd` logged so far (its logins)."""
    return (Path(host["key_file"]).parent / "sshd.log").read_text(errors="replace")
