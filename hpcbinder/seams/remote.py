"""The cluster seen from a hub that is not on it: Slurm commands on a login
node over SSH, and SSH tunnels to notebook servers on compute nodes the
hub cannot route to.

SSH runs a command string through the login shell, so argv lists become
shell text here, every word through ``shlex.quote``. Environment values
(the server's hub token among them) never go into that text, where ``ps``
on the login node would show them: they travel on the command's standard
input, ahead of the job script, and a fixed shell loop exports them. The
command starts from an empty environment (``env -i``), as one run through
sudo on this host does: only a fixed PATH, the account's HOME and the
variables its caller passed (:func:`hpcbinder.seams.proc.passed_env`), never
the login shell's own variables.
"""

from __future__ import annotations

import contextlib
import select
import shlex
import socket
import threading
from collections.abc import Callable, Mapping, Sequence

import paramiko

from hpcbinder.config import LOGIN_AS_USER, LoginNode, SSHHost
from hpcbinder.seams import proc
from hpcbinder.seams.proc import CommandResult

#: Runs "$@" from the user's home (not the service account's folder, after
#: sudo) in an empty environment but PATH and HOME, after exporting the
#: NAME=VALUE lines read up to an empty one; the rest of standard input (a
#: job script) is left to the command.
_EXPORT_THEN_RUN = (
    'cd "$HOME" 2>/dev/null || cd /; '
    f'exec env -i PATH={proc.SAFE_PATH} HOME="$HOME" sh -c '
    '\'while IFS= read -r kv && [ -n "$kv" ]; do export "$kv"; done; exec "$@"\' sh "$@"'
)
#: Longest wait for one Slurm command's answer on the login node.
COMMAND_SECONDS = 120


def ssh_client(host: SSHHost, username: str, timeout: float = 30) -> paramiko.SSHClient:
    """A connection to ``host`` as ``username``; an unknown host key is refused."""
    client = paramiko.SSHClient()
    client.load_host_keys(str(host.known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(
        host.host,
        port=host.port,
        username=username,
        key_filename=str(host.key_file),
        look_for_keys=False,
        allow_agent=False,
        timeout=timeout,
    )
    return client


def env_lines(env: Mapping[str, str]) -> str:
    """``env`` (checked: :func:`hpcbinder.seams.proc.passed_env`) as the
    NAME=VALUE lines :data:`_EXPORT_THEN_RUN` reads."""
    return "".join(f"{name}={value}\n" for name, value in proc.passed_env(env).items()) + "\n"


class LoginNodeCommands:
    """Runs commands as a user on the login node; one connection per login
    account, reopened when it drops."""

    def __init__(self, login: LoginNode) -> None:
        self.login = login
        self._clients: dict[str, paramiko.SSHClient] = {}
        self._lock = threading.Lock()

    def _account(self, user: str) -> str:
        return user if self.login.user == LOGIN_AS_USER else self.login.user

    def transport(self, user: str) -> paramiko.Transport:
        """The open SSH transport used for ``user``'s commands and tunnels."""
        account = self._account(user)
        with self._lock:
            client = self._clients.get(account)
            transport = client.get_transport() if client else None
            if transport is None or not transport.is_active():
                client = ssh_client(self.login, account)
                self._clients[account] = client
                transport = client.get_transport()
                if transport is None:
                    raise paramiko.SSHException(f"no connection to {self.login.host}")
                transport.set_keepalive(30)
            return transport

    def command_line(self, user: str, argv: Sequence[str]) -> str:
        """The shell text run on the login node for ``argv`` as ``user``."""
        words = ["sh", "-c", _EXPORT_THEN_RUN, "sh", *argv]
        if self.login.user != LOGIN_AS_USER and user != self.login.user:
            words = proc.sudo_argv(words, user)
        return shlex.join(words)

    def run(
        self,
        argv: Sequence[str],
        *,
        user: str | None = None,
        input_text: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = COMMAND_SECONDS,
    ) -> CommandResult:
        """``argv`` on the login node as ``user`` (None: this process's
        account there, or the login service account). A connection that
        fails is a result with status 255, like a command that could not
        run: callers retry or report it."""
        account = user or (
            proc.current_user() if self.login.user == LOGIN_AS_USER else self.login.user
        )
        lines = env_lines(env or {})
        line = self.command_line(account, argv)
        try:
            channel = self.transport(account).open_session(timeout=30)
            with channel:
                # Slurm's answers are small: reading stdout, then stderr, cannot stall.
                channel.settimeout(timeout)
                channel.exec_command(line)
                channel.sendall((lines + (input_text or "")).encode())
                channel.shutdown_write()
                out = channel.makefile("rb").read()
                err = channel.makefile_stderr("rb").read()
                status = channel.recv_exit_status()
        except (OSError, paramiko.SSHException) as exc:
            return CommandResult(tuple(argv), 255, "", f"ssh {self.login.host}: {exc}")
        return CommandResult(
            tuple(argv), status, out.decode(errors="replace"), err.decode(errors="replace")
        )


class Tunnel:
    """127.0.0.1:``local_port`` on the hub, forwarded through an SSH
    transport to ``target`` (a server on a compute node)."""

    def __init__(
        self,
        transport: Callable[[], paramiko.Transport],
        target: tuple[str, int],
        local_port: int = 0,
    ) -> None:
        self._transport = transport
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", local_port))
        self.local_port: int = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, name=f"tunnel-{self.local_port}", daemon=True).start()

    def reaches_target(self) -> bool:
        """Whether the target accepts connections (opened from the login node)."""
        try:
            channel = self._transport().open_channel("direct-tcpip", self.target, ("127.0.0.1", 0))
        except (OSError, paramiko.SSHException):
            return False
        channel.close()
        return True

    def close(self) -> None:
        with contextlib.suppress(OSError):  # already shut
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, peer = self._listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._pipe, args=(client, peer), daemon=True).start()

    def _pipe(self, client: socket.socket, peer: tuple[str, int]) -> None:
        with client:
            try:
                channel = self._transport().open_channel("direct-tcpip", self.target, peer)
            except (OSError, paramiko.SSHException):
                return
            with channel:
                ends: list[socket.socket | paramiko.Channel] = [client, channel]
                while True:
                    readable, _, _ = select.select(ends, [], [])
                    source, sink = (client, channel) if client in readable else (channel, client)
                    data = source.recv(65536)
                    if not data:
                        return
                    sink.sendall(data)
