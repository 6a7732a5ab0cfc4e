"""The seam around MUNGE: who sent a message, verified across hosts.

Every Slurm host runs ``munged`` with the site's shared key, so a MUNGE
credential proves the sender's uid to any other host of the cluster
without new secrets, certificates or a shared socket. A credential here
carries its message as the payload (integrity-protected), may be decoded
by one account only (``--restrict-uid``), and expires after munged's TTL
(5 minutes by default). munged also marks a credential decoded once and
calls a second decode a replay; a caller that must not be denied by
whoever decodes a copy first (a comment Slurm shows to every account)
accepts replays (``replayed_ok``) and binds the payload to its own
one-time request instead (:mod:`hpcbinder.images.privatejob`'s nonce).
"""

from __future__ import annotations

import pwd
from dataclasses import dataclass

from hpcbinder.seams import proc

#: Longest wait for munged.
MUNGE_SECONDS = 30
#: unmunge's STATUS of a credential decoded before (EMUNGE_CRED_REPLAYED):
#: still the sender's uid and payload, as munged vouches.
REPLAYED = "17"


class MungeError(RuntimeError):
    """A credential could not be made, or does not verify."""


@dataclass(frozen=True)
class Verified:
    """A message and the account that sent it, as munged vouches."""

    user: str
    uid: int
    payload: str


def sign(payload: str, reader: str) -> str:
    """A credential of this process's account carrying ``payload``, that
    only the account ``reader`` can decode."""
    uid = pwd.getpwnam(reader).pw_uid
    result = proc.run(["munge", f"--restrict-uid={uid}"], input_text=payload, timeout=MUNGE_SECONDS)
    if not result.ok or not result.stdout.startswith("MUNGE:"):
        raise MungeError(f"munge could not sign the request: {result.stderr.strip()}")
    return result.stdout.strip()


def verify(credential: str, *, replayed_ok: bool = False) -> Verified:
    """The sender and payload of ``credential``; :class:`MungeError` when it
    is forged, expired, meant for another account, or (unless
    ``replayed_ok``) decoded before, or when munged does not answer."""
    if not credential.startswith("MUNGE:") or "\n" in credential.strip():
        raise MungeError("not a MUNGE credential")
    try:
        result = proc.run(["unmunge", "-N"], input_text=credential, timeout=MUNGE_SECONDS)
    except proc.CommandError as exc:
        raise MungeError(f"credential not checked: {exc}") from None
    metadata, _, payload = result.stdout.partition("\n\n")
    fields = dict(
        (key.strip(), value.strip())
        for key, _, value in (line.partition(":") for line in metadata.splitlines())
    )
    accepted = ("0", REPLAYED) if replayed_ok else ("0",)
    if fields.get("STATUS") not in accepted or not fields.get("UID", "").isdigit():
        replayed = "decoded before (replayed)" if fields.get("STATUS") == REPLAYED else ""
        reason = result.stderr.strip().removeprefix("unmunge: Error: ") or replayed or "rejected"
        raise MungeError(f"credential does not verify: {reason}")
    uid = int(fields["UID"])
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError as exc:
        raise MungeError(f"credential of uid {uid}, which has no account here") from exc
    return Verified(user, uid, payload)
