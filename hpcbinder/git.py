"""The seam around ``git``: list refs, fetch one commit, read tree ids.

Every call runs with prompts disabled (a private or missing repository
fails at once instead of waiting for a password) and with
``GIT_ALLOW_PROTOCOL`` set to the site's allowed protocols, which git
enforces for every transport it opens, including submodules and redirects.
Values from users reach git only as separate argv entries after
``--end-of-options`` or as the value of an option.

A repository on this host (a ``file://`` URL the caller has checked is below
the site's local roots) may belong to another account; git refuses those
("dubious ownership"). Such calls name it as ``local_repo`` and git then
trusts exactly that repository, in the one process that reads it: the
``upload-pack`` serving the fetch gets ``-c safe.directory=PATH`` (and
``PATH/.git``). Neither ``git -c`` nor ``GIT_CONFIG_COUNT`` would do: git
clears both from the environment of a local transport's ``upload-pack``.
The fetcher only reads that repository; everything it writes is its own.
"""

from __future__ import annotations

import re
import shlex
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from hpcbinder import proc

SHA = re.compile(r"[0-9a-f]{40}")
_LS_REMOTE_LINE = re.compile(r"([0-9a-f]{40})\t(\S+)")
#: Paths ``local_repo`` may be: absolute, nothing a shell or git would read
#: specially (they are quoted as well).
_LOCAL_REPO = re.compile(r"/[A-Za-z0-9._~/+=@-]*")
#: A line of git's stderr that starts a new message (``fatal: ...``).
_MESSAGE_START = re.compile(r"(?:fatal|error|warning|hint|remote):", re.IGNORECASE)
_ERROR_START = re.compile(r"(?:fatal|error): ?", re.IGNORECASE)
#: How long a git error (first line and its continuation) may get before
#: only its first line is kept.
_ERROR_CHARS = 300


class GitError(RuntimeError):
    """git could not reach a repository or find what was asked for."""


def _env(protocols: Iterable[str]) -> dict[str, str]:
    return {
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ASKPASS": "true",
        "SSH_ASKPASS": "true",
        "GIT_SSH_COMMAND": "ssh -o BatchMode=yes",
        "GIT_ALLOW_PROTOCOL": ":".join(protocols),
    }


def _git(
    args: list[str],
    *,
    protocols: Iterable[str],
    timeout: float,
    cwd: Path | None = None,
    user: str | None = None,
) -> proc.CommandResult:
    env = _env(protocols)
    if user is None:
        return proc.run(["git", *args], env=env, timeout=timeout, cwd=cwd)
    # sudo resets the environment: the settings go on the command line. The
    # caller's folder may be closed to that account: run elsewhere unless told.
    settings = [f"{name}={value}" for name, value in env.items()]
    argv = ["env", *settings, "git", *args]
    return proc.run(argv, user=user, timeout=timeout, cwd=cwd or Path("/"))


def _hand_to(folder: Path, user: str | None) -> None:
    """Give ``folder`` (just made, empty) to ``user``, who runs git in it;
    only root may give a folder to another account."""
    if user is not None:
        shutil.chown(folder, user)


def _upload_pack(local_repo: Path | None) -> list[str]:
    """The ``--upload-pack`` option that makes git trust ``local_repo``
    (whoever owns it) for this one call; nothing for other URLs."""
    if local_repo is None:
        return []
    path = str(local_repo)
    if not _LOCAL_REPO.fullmatch(path) or "/../" in f"{path}/" or "/./" in f"{path}/":
        raise ValueError(f"not a plain absolute repository path: {path!r}")
    trusted = (path, f"{path.rstrip('/')}/.git")  # a bare repository, a work tree's
    command = ["git", *(f"-c safe.directory={shlex.quote(p)}" for p in trusted), "upload-pack"]
    return [f"--upload-pack={' '.join(command)}"]


def _failed(what: str, result: proc.CommandResult) -> GitError:
    return GitError(f"{what}: {error_message(result)}")


def error_message(result: proc.CommandResult) -> str:
    """What went wrong, in one line, from a failed git's output: the first
    ``fatal:``/``error:`` message, with the lines continuing it if that stays
    short; else git's last line; else its exit status."""
    lines = [line.strip() for line in result.stderr.splitlines()]
    start = next((i for i, line in enumerate(lines) if _ERROR_START.match(line)), None)
    if start is None:
        last = [line for line in lines if line]
        return last[-1] if last else f"git exit status {result.returncode}"
    message = [_ERROR_START.sub("", lines[start], count=1)]
    for line in lines[start + 1 :]:
        if not line or _MESSAGE_START.match(line):
            break
        message.append(line)
    while len(message) > 1 and message[-1].endswith(":"):
        message.pop()  # introduces advice (a command to run) that was cut off
    joined = " ".join(message)
    return joined if len(joined) <= _ERROR_CHARS else message[0]


def ls_remote(
    url: str,
    *,
    protocols: Iterable[str],
    timeout: float = 60,
    local_repo: Path | None = None,
    user: str | None = None,
) -> dict[str, str]:
    """Every ref the remote advertises, name → commit (peeled tags as ``name^{}``).

    ``local_repo``: ``url`` is ``file://`` + this path, checked to be a
    repository git may read whoever owns it. ``user``: run git as that
    account."""
    result = _git(
        ["ls-remote", *_upload_pack(local_repo), "--end-of-options", url],
        protocols=protocols,
        timeout=timeout,
        user=user,
    )
    if not result.ok:
        raise _failed(f"cannot list refs of {url}", result)
    refs = {}
    for line in result.stdout.splitlines():
        match = _LS_REMOTE_LINE.fullmatch(line.strip())
        if match:
            refs[match.group(2)] = match.group(1)
    return refs


def expand_short_sha(
    url: str,
    short: str,
    *,
    protocols: Iterable[str],
    timeout: float = 300,
    local_repo: Path | None = None,
    user: str | None = None,
) -> str | None:
    """The full commit id that ``short`` abbreviates among the remote's
    branches and tags, or None. Fetches commits only (no trees or blobs)
    where the server allows it. ``local_repo``, ``user``: as for
    :func:`ls_remote`."""
    protocols = tuple(protocols)
    with tempfile.TemporaryDirectory(prefix="hpcbinder-sha-") as tmp:
        work = Path(tmp)
        _hand_to(work, user)

        def in_work(*args: str) -> proc.CommandResult:
            return _git(list(args), protocols=protocols, timeout=timeout, cwd=work, user=user)

        proc.check(in_work("init", "-q", "--bare"))
        fetched = in_work(
            "fetch",
            "-q",
            "--filter=tree:0",
            *_upload_pack(local_repo),
            "--end-of-options",
            url,
            "+refs/heads/*:refs/heads/*",
            "+refs/tags/*:refs/tags/*",
        )
        if not fetched.ok:
            raise _failed(f"cannot fetch {url}", fetched)
        found = in_work(
            "rev-parse", "--verify", "--quiet", "--end-of-options", f"{short}^{{commit}}"
        )
        commit = found.stdout.strip()
        return commit if found.ok and SHA.fullmatch(commit) else None


def fetch_commit(
    url: str,
    commit: str,
    dest: Path,
    *,
    protocols: Iterable[str],
    timeout: float = 600,
    local_repo: Path | None = None,
    user: str | None = None,
) -> None:
    """A checkout of exactly ``commit`` in the new directory ``dest``, with
    history depth 1. ``local_repo``, ``user``: as for :func:`ls_remote`
    (``user`` must be able to reach ``dest``'s parent)."""
    if not SHA.fullmatch(commit):
        raise ValueError(f"not a full commit id: {commit!r}")
    dest.mkdir(parents=True)
    _hand_to(dest, user)
    steps = [
        ["init", "-q"],
        ["fetch", "-q", "--depth=1", *_upload_pack(local_repo), "--end-of-options", url, commit],
        ["-c", "advice.detachedHead=false", "checkout", "-q", "--detach", commit],
    ]
    for args in steps:
        result = _git(args, protocols=protocols, timeout=timeout, cwd=dest, user=user)
        if not result.ok:
            raise _failed(f"cannot fetch commit {commit} of {url}", result)


def tree_id(checkout: Path) -> str:
    """The git tree id of the checked-out commit: a hash of every file in it."""
    result = proc.check(proc.run(["git", "rev-parse", "HEAD^{tree}"], cwd=checkout, timeout=30))
    return result.stdout.strip()
