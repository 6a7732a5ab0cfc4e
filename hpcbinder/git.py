"""The seam around ``git``: list refs, fetch one commit, read tree ids.

Every call runs with prompts disabled (a private or missing repository
fails at once instead of waiting for a password) and with
``GIT_ALLOW_PROTOCOL`` set to the site's allowed protocols, which git
enforces for every transport it opens, including submodules and redirects.
Values from users reach git only as separate argv entries after
``--end-of-options`` or as the value of an option.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterable
from pathlib import Path

from hpcbinder import proc

SHA = re.compile(r"[0-9a-f]{40}")
_LS_REMOTE_LINE = re.compile(r"([0-9a-f]{40})\t(\S+)")


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
    args: list[str], *, protocols: Iterable[str], timeout: float, cwd: Path | None = None
) -> proc.CommandResult:
    return proc.run(["git", *args], env=_env(protocols), timeout=timeout, cwd=cwd)


def _failed(what: str, result: proc.CommandResult) -> GitError:
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    return GitError(f"{what}: {lines[-1] if lines else f'git exit status {result.returncode}'}")


def ls_remote(url: str, *, protocols: Iterable[str], timeout: float = 60) -> dict[str, str]:
    """Every ref the remote advertises, name → commit (peeled tags as ``name^{}``)."""
    result = _git(["ls-remote", "--end-of-options", url], protocols=protocols, timeout=timeout)
    if not result.ok:
        raise _failed(f"cannot list refs of {url}", result)
    refs = {}
    for line in result.stdout.splitlines():
        match = _LS_REMOTE_LINE.fullmatch(line.strip())
        if match:
            refs[match.group(2)] = match.group(1)
    return refs


def expand_short_sha(
    url: str, short: str, *, protocols: Iterable[str], timeout: float = 300
) -> str | None:
    """The full commit id that ``short`` abbreviates among the remote's
    branches and tags, or None. Fetches commits only (no trees or blobs)
    where the server allows it."""
    protocols = tuple(protocols)
    with tempfile.TemporaryDirectory(prefix="hpcbinder-sha-") as tmp:

        def in_tmp(*args: str) -> proc.CommandResult:
            return _git(list(args), protocols=protocols, timeout=timeout, cwd=Path(tmp))

        proc.check(in_tmp("init", "-q", "--bare"))
        fetched = in_tmp(
            "fetch",
            "-q",
            "--filter=tree:0",
            "--end-of-options",
            url,
            "+refs/heads/*:refs/heads/*",
            "+refs/tags/*:refs/tags/*",
        )
        if not fetched.ok:
            raise _failed(f"cannot fetch {url}", fetched)
        found = in_tmp(
            "rev-parse", "--verify", "--quiet", "--end-of-options", f"{short}^{{commit}}"
        )
        commit = found.stdout.strip()
        return commit if found.ok and SHA.fullmatch(commit) else None


def fetch_commit(
    url: str, commit: str, dest: Path, *, protocols: Iterable[str], timeout: float = 600
) -> None:
    """A checkout of exactly ``commit`` in the new directory ``dest``, with
    history depth 1."""
    if not SHA.fullmatch(commit):
        raise ValueError(f"not a full commit id: {commit!r}")
    dest.mkdir(parents=True)
    steps = [
        ["init", "-q"],
        ["fetch", "-q", "--depth=1", "--end-of-options", url, commit],
        ["-c", "advice.detachedHead=false", "checkout", "-q", "--detach", commit],
    ]
    for args in steps:
        result = _git(args, protocols=protocols, timeout=timeout, cwd=dest)
        if not result.ok:
            raise _failed(f"cannot fetch commit {commit} of {url}", result)


def tree_id(checkout: Path) -> str:
    """The git tree id of the checked-out commit: a hash of every file in it."""
    result = proc.check(proc.run(["git", "rev-parse", "HEAD^{tree}"], cwd=checkout, timeout=30))
    return result.stdout.strip()
