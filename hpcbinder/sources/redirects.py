"""Where an HTTP(S) repository's redirects lead, each hop judged by the site.

git follows no redirect (``http.followRedirects=false``, see
:mod:`hpcbinder.seams.git`): curl would follow one to any host, past the
site's allow and ban patterns, which judged only the URL a link named. But
forges redirect for good reasons: GitHub answers a renamed repository's old
URL with a 301 to its new name, GitLab a project path without ``.git`` to
the one with it, and mybinder.org's links (BinderHub runs plain git) keep
working. So before git's first contact with an ``http(s)`` remote,
:func:`final_url` asks for what git asks first (``URL/info/refs?service=
git-upload-pack``), without following, and for each redirect takes the
repository URL its Location names (git's own rule: the Location must end
with that same ``info/refs`` request, else git refuses to rebase the URL
on it) and has the caller's policy judge it, exactly as the URL the link
named was judged (:meth:`~hpcbinder.sources.providers.GitRepoProvider.check_allowed`:
protocols, allow and ban lists, one spelling, no credentials). It must stay
HTTP(S), not downgrade HTTPS to HTTP, be spelled as records' URLs must
(:func:`~hpcbinder.sources.download.spelling_problem`: a lower-case host,
no default port, one notation of an address: a ban matches text), and come
within :data:`MAX_HOPS`.
git then runs on the last URL, still following nothing itself.

Any answer but a redirect (200; 401 or 403 of a private repository; 404)
ends resolution at the URL asked for, and so does a host that cannot be
reached: git then contacts it as it would have, and its own message (or
the researcher's credentials, :func:`hpcbinder.seams.git.own_credentials`)
takes over. The requests are :class:`~hpcbinder.sources.download.Session`'s:
bounded by :data:`RESOLVE_SECONDS` (git's fetch has its own), trusting ``network.ca_bundle``,
through the host's proxies, and carrying no credentials, cookies or
``Authorization`` whoever runs them. They reach the addresses git may
(:mod:`hpcbinder.seams.addresses`): for the build account, public ones
and ``repos.internal_networks``; for a researcher fetching as herself,
any her own account reaches.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from urllib.parse import urljoin, urlsplit

from hpcbinder.config import RepoPolicy
from hpcbinder.errors import RepoNotAllowed, SpecError
from hpcbinder.seams import git
from hpcbinder.sources.archives import Bounds, Budget, RecordError
from hpcbinder.sources.download import Session, spelling_problem
from hpcbinder.sources.providers import may_hold_credentials

#: What git asks a smart-HTTP remote first, and so what a redirect answers.
INFO_REFS = "/info/refs?service=git-upload-pack"
#: Redirects followed (each judged) before the URL is refused.
MAX_HOPS = 5
#: Seconds all of a URL's redirects may take (at most repos.fetch_timeout_seconds):
#: a host that answers nothing in time is left to git, whose fetch has its own.
RESOLVE_SECONDS = 30.0
#: A researcher's own fetch connects to whatever address an allowed URL
#: names, as she could; so may its resolver.
_ANY_ADDRESS = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))
_SETTINGS = "repos.allow, repos.ban, repos.protocols"
_SHOWN_CHARS = 200


def final_url(url: str, policy: RepoPolicy, judge: Callable[[str], object]) -> str:
    """The repository URL git should fetch ``url`` (already judged) from:
    where its redirects lead, every hop judged by ``judge`` (which raises
    :class:`RepoNotAllowed` or :class:`SpecError` for a URL the site does
    not allow); ``url`` itself if it is not HTTP(S) or does not redirect.
    :class:`RepoNotAllowed`, one line naming the hop and the settings, for
    a hop refused or more than :data:`MAX_HOPS` of them."""
    if urlsplit(url).scheme not in ("http", "https"):
        return url

    def judge_request(request: str) -> None:  # every request the session sends
        if not request.endswith(INFO_REFS):
            raise RepoNotAllowed(f"not a git request: {_shown(request)}")
        judge(request.removesuffix(INFO_REFS))

    # Its own short deadline: git's fetch that follows has the whole setting.
    seconds = min(RESOLVE_SECONDS, policy.fetch_timeout_seconds)
    bounds = Bounds(max_bytes=0, max_files=0, seconds=seconds)
    budget = Budget(bounds, f"following the redirects of {url}")
    current = url
    try:
        networks = _ANY_ADDRESS if git.fetching_as_self() else None  # None: the site's
        session = Session(policy, budget, _SETTINGS, judge=judge_request, networks=networks)
    except RecordError:  # the CA bundle unreadable: git says so for its own fetch
        return url
    with session:
        for hop in range(MAX_HOPS + 1):
            try:
                location = session.redirect(current + INFO_REFS)
            except RecordError:  # unreachable, or out of time: git tries and says
                return current
            if location is None:
                return current
            if hop == MAX_HOPS:
                raise RepoNotAllowed(
                    f"{url} redirects more than {MAX_HOPS} times (last to "
                    f"{_shown(_joined(current, location))}): link the repository's own URL"
                )
            current = _next(url, current, location, judge)
    return current  # not reached: the loop returns or raises


def _next(given: str, current: str, location: str, judge: Callable[[str], object]) -> str:
    """The repository URL ``current``'s redirect to ``location`` names,
    judged; :class:`RepoNotAllowed` naming it otherwise."""
    target = _joined(current, location)

    def refused(reason: str) -> RepoNotAllowed:
        return RepoNotAllowed(f"{given} redirects to {_shown(target)}, which {reason}")

    if not location or not location.isprintable() or not target.endswith(INFO_REFS):
        raise refused("is not a git repository's address (git would not follow it either)")
    new = target.removesuffix(INFO_REFS)
    scheme = new.partition(":")[0]
    if scheme not in ("http", "https"):
        raise refused(
            f"hpcbinder does not follow: a redirect may lead to http(s) only ({_SETTINGS})"
        )
    if current.startswith("https:") and scheme == "http":
        raise refused("hpcbinder does not follow: it leaves HTTPS for plain HTTP")
    problem = spelling_problem(new)
    if problem is not None:  # a host in capitals, say, would slip past repos.ban
        raise refused(
            f"{problem}: it has another spelling that the site's patterns would not match"
        )
    try:
        judge(new)
    except (RepoNotAllowed, SpecError, ValueError) as exc:  # ValueError: urlsplit's
        reason = str(exc) if len(str(exc)) <= 2 * _SHOWN_CHARS else "is refused"
        raise refused(f"this site does not allow: {reason} ({_SETTINGS})") from None
    return new


def _joined(current: str, location: str) -> str:
    """``location`` read relative to the request ``current`` answered, as
    curl would; as given if it cannot be (unprintable, or a broken URL)."""
    if not location.isprintable():
        return location
    try:
        return urljoin(current + INFO_REFS, location)
    except ValueError:  # an IPv6 host without its ]
        return location


def _shown(url: str) -> str:
    """``url`` for a one-line message: not repeated if it may hold
    credentials, cut if long."""
    if may_hold_credentials(url) or not url.isprintable():
        return "a URL not repeated here (it may hold credentials or control characters)"
    return url if len(url) <= _SHOWN_CHARS else f"{url[:_SHOWN_CHARS]}..."
