"""Which addresses the build account may connect to, for every fetch.

The build server fetches for any logged-in researcher, from where it runs:
a build node inside the cluster, which reaches hosts she may not (the
node's own loopback services, the management network, the cloud's
metadata address, an internal forge that serves repositories without a
login to anyone inside). A link she chose, a redirect, a repository's
submodule or a record service's JSON names the host, so any of them could
otherwise send it there, and what came back would become files in a
world-readable checkout and image. So every connection the build account
makes for a fetch (git's and records' alike) goes to a public address, or
to one in the networks the site lists in ``repos.internal_networks`` (its
own forge, its own Dataverse).

The rule is judged on the address connected to, not the name: a name is
resolved once (:func:`resolve`, bounded, as a resolver can stall), the
answer judged (:meth:`AddressRule.checked`) and the connection then made to
that address, so a second lookup cannot rebind the name elsewhere. An IPv6
address that embeds an IPv4 one (mapped, 6to4, Teredo, NAT64, compatible)
is judged by the IPv4 address it reaches (:func:`reached`).
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Sequence
from typing import Any

from hpcbinder.errors import RepoNotAllowed

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: The setting that lists the non-public networks fetches may reach.
SETTING = "repos.internal_networks"
#: NAT64's well-known prefix (RFC 6052): its last 32 bits are the IPv4 address reached.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
#: Not public, though Python's ``is_global`` says so (3.11): multicast,
#: IPv6's deprecated site-local, IPv4-translated addresses (SIIT), NAT64's
#: local-use prefix (RFC 8215, where a site's translator reaches its own
#: IPv4 networks), 6to4's anycast relays and IETF protocol assignments
#: (192.0.0.0/24: a cloud's metadata address has lived there).
_NOT_PUBLIC = tuple(
    ipaddress.ip_network(net)
    for net in (
        "224.0.0.0/4",
        "ff00::/8",
        "fec0::/10",
        "::ffff:0:0:0/96",
        "64:ff9b:1::/48",
        "192.88.99.0/24",
        "192.0.0.0/24",
    )
)
#: IPv4-compatible addresses (RFC 4291, deprecated), as some stacks still route them.
_COMPATIBLE = ipaddress.ip_network("::/96")


class AddressRule:
    """The addresses a fetch may connect to: public ones, and those in
    ``networks`` (the site's ``repos.internal_networks``)."""

    def __init__(self, networks: Sequence[Network]) -> None:
        self.networks = list(networks)

    def allows(self, address: Address) -> bool:
        return self._listed(address) or all(
            self._listed(each) or (each.is_global and not any(each in n for n in _NOT_PUBLIC))
            for each in reached(address)
        )

    def _listed(self, address: Address) -> bool:
        return any(address in net for net in self.networks)

    def checked(self, host: str, address: Address) -> Address:
        """``address`` (where ``host`` is) if the rule allows it, else
        :class:`RepoNotAllowed`, one line naming the setting."""
        if self.allows(address):
            return address
        raise RepoNotAllowed(
            f"{_shown(host)} is at {address}, not a public address: the build server "
            f"connects to other networks only where the site lists them ({SETTING})"
        )

    def address(self, host: str, port: int, deadline: float) -> Address:
        """The checked address to connect to for ``host`` (a name, resolved
        once by :func:`resolve`, or an address literal, with or without
        IPv6's brackets)."""
        found = _addresses(host, port, deadline)
        if not found:
            raise OSError(f"cannot resolve {_shown(host)}")
        return self.checked(host, found[0])

    def judge_proxied(self, host: str, port: int, deadline: float) -> None:
        """:class:`RepoNotAllowed` unless every address ``host`` has here is
        allowed: for a request a proxy makes, which looks the name up itself
        (no address can be pinned), so every answer is judged. A name that
        does not resolve here is left to the proxy, which may see other DNS
        (a site's proxy must refuse its internal hosts itself)."""
        try:
            found = _addresses(host, port, deadline)
        except TimeoutError:
            raise
        except OSError:
            return
        for address in found:
            self.checked(host, address)


def _addresses(host: str, port: int, deadline: float) -> list[Address]:
    """``host`` itself if it is an address literal (with or without IPv6's
    brackets), else its answers from :func:`resolve`, in their order."""
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        pass
    answers = resolve(host, port, deadline)
    return [ipaddress.ip_address(str(sockaddr[0]).partition("%")[0]) for *_r, sockaddr in answers]


def reached(address: Address) -> list[Address]:
    """The addresses a connection to ``address`` reaches: the IPv4 ones an
    IPv6 address embeds (``is_global`` calls ``64:ff9b::7f00:1`` and
    ``::127.0.0.1`` public, though they lead to loopback), else itself."""
    if isinstance(address, ipaddress.IPv4Address):
        return [address]
    if address.ipv4_mapped is not None:
        return [address.ipv4_mapped]
    if address.sixtofour is not None:
        return [address.sixtofour]
    if address.teredo is not None:
        return list(address.teredo)
    if address in _NAT64 or address in _COMPATIBLE:
        return [ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)]
    return [address]


def resolve(host: str, port: int, deadline: float) -> list[Any]:
    """``host``'s addresses (``getaddrinfo``'s answers), or OSError once
    ``deadline`` (``time.monotonic``) passes: a resolver that stalls does
    not hold the fetch past its bound (``getaddrinfo`` takes no timeout, so
    it runs in a thread of its own, left to end on its own)."""
    found: list[Any] = []
    failed: list[OSError] = []

    def lookup() -> None:
        try:
            found.extend(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except OSError as exc:
            failed.append(exc)
        except UnicodeError:  # the idna codec's, for an empty or overlong label
            failed.append(OSError("not a host name"))

    thread = threading.Thread(target=lookup, name="resolve", daemon=True)
    thread.start()
    thread.join(max(deadline - time.monotonic(), 0))
    if thread.is_alive():
        raise TimeoutError(f"resolving {_shown(host)} did not end before the fetch's deadline")
    if failed:
        reason = str(failed[0]).splitlines()[0] if str(failed[0]) else type(failed[0]).__name__
        raise OSError(f"cannot resolve {_shown(host)}: {reason}")
    return found


def _shown(host: str) -> str:
    return host if host.isprintable() and len(host) < 100 else "its host"
