"""``hpcbinder-git-connect``: git's connection to a remote, made to the
address hpcbinder checked, not to one git or ssh looks up again.

For ``git://`` git runs it as ``core.gitProxy`` (with the host and port as
arguments), for ``ssh://`` ssh runs it as its ``ProxyCommand``; either
then speaks the protocol over this program's standard input and output.
It takes neither host nor port from its arguments: it connects to
:data:`ADDRESS` and :data:`PORT` from its environment, which
:mod:`hpcbinder.seams.git` set to the address
:mod:`hpcbinder.seams.addresses` judged for that one call (a name resolved
once, so a second lookup cannot rebind it to an internal host), and
relays bytes both ways until the remote closes.
"""

from __future__ import annotations

import os
import socket
import sys
import threading

#: The variables that name where to connect (set by the git seam, per call).
ADDRESS = "HPCBINDER_CONNECT_ADDRESS"
PORT = "HPCBINDER_CONNECT_PORT"
#: How long the connection itself may take (git's fetch has its own limit).
CONNECT_SECONDS = 30
_CHUNK = 65536


def main() -> None:
    address, port = os.environ.get(ADDRESS, ""), os.environ.get(PORT, "")
    if not address or not port.isdigit():
        sys.exit(f"hpcbinder-git-connect: {ADDRESS} and {PORT} are not set (run by git only)")
    try:
        remote = socket.create_connection((address, int(port)), timeout=CONNECT_SECONDS)
    except OSError as exc:
        sys.exit(f"hpcbinder-git-connect: cannot connect to {address} port {port}: {exc}")
    remote.settimeout(None)
    threading.Thread(target=_send_input, args=(remote,), daemon=True).start()
    while chunk := remote.recv(_CHUNK):
        _write_all(sys.stdout.fileno(), chunk)


def _send_input(remote: socket.socket) -> None:
    """Standard input to the remote; at its end, the remote's writing half shut."""
    try:
        while chunk := os.read(sys.stdin.fileno(), _CHUNK):
            remote.sendall(chunk)
        remote.shutdown(socket.SHUT_WR)
    except OSError:
        remote.close()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
