"""What BinderHub's clients read of a Binder service besides the event
stream: the repository providers (``/api/repoproviders``, the old
``/_config``), the ``BINDER_*`` fields of a launch (the ``ready`` event and
the server's environment), and the legacy ``/repo/`` links.

The provider list is built from :data:`hpcbinder.sources.providers.PROVIDERS`
(every provider this site parses, and only those), from what each
provider class says of itself.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlsplit

from hpcbinder import textpatterns
from hpcbinder.errors import UserError
from hpcbinder.sources import providers

#: BinderHub's ``spec.validateRegex`` of its providers (what follows the
#: prefix); a provider not listed takes "something, a slash, a ref".
SPEC_REGEX = {
    "gh": r"[^/]+/[^/]+/.+",
    "gist": r"[^/]+/[^/]+(/[^/]+)?",
    "zenodo": r"10\.\d+/(.)+",
    "figshare": r"10\.\d+/(.)+",
    "dataverse": r"10\.\d+/(.)+",
    "doi": r"10\.\d+/(.)+",
    "hydroshare": r"[^/]+",
    "ckan": r"[^/]+",
    "swhid": r"[^/]+",
}
#: BinderHub's ``detect.regex``: the repository part of a pasted URL, in a
#: JavaScript named group ``repo`` (for the forges whose host is implied).
DETECT_REGEX = {
    "gh": r"^(https?://github.com/)?(?<repo>.*[^/])/?",
    "gl": r"^(https?://gitlab.com/)?(?<repo>.*[^/])/?",
    "gist": r"^(https?://gist.github.com/)?(?<repo>.*[^/])/?",
}


def display_config(prefix: str, cls: type[providers.RepoProvider]) -> dict[str, Any]:
    """``cls``'s entry of ``/api/repoproviders`` in BinderHub's shape
    (displayName, id, spec.validateRegex, detect.regex, repo.label,
    placeholder and urlEncode, ref.enabled and default), from what the
    provider class says of itself (its ``display_name``, ``label_repo``,
    ``spec_example``, ``url_encode``, ``label_ref``); a class that says
    nothing gets its prefix as its name and a git ref."""
    example = getattr(cls, "spec_example", "")
    label_ref = getattr(cls, "label_ref", "Git ref (branch, tag, or commit)")
    config: dict[str, Any] = {
        "displayName": getattr(cls, "display_name", prefix),
        "id": prefix,
        "spec": {"validateRegex": SPEC_REGEX.get(prefix, r"[^/]+/.+")},
        "repo": {
            "label": getattr(cls, "label_repo", f"{prefix} repository"),
            "placeholder": f"example: {example}" if example else "",
            "urlEncode": bool(getattr(cls, "url_encode", True)),
        },
        "ref": {"enabled": True, "default": "HEAD", "label": label_ref}
        if label_ref
        else {"enabled": False},
    }
    if prefix in DETECT_REGEX:
        config["detect"] = {"regex": DETECT_REGEX[prefix]}
    return config


def repo_providers() -> list[dict[str, Any]]:
    """``/api/repoproviders``: every provider of the registry."""
    return [display_config(prefix, cls) for prefix, cls in providers.PROVIDERS.items()]


def legacy_config() -> dict[str, dict[str, Any]]:
    """``/_config``: BinderHub's older shape, the labels by provider."""
    entries = {}
    for config in repo_providers():
        ref = config["ref"]
        entries[config["id"]] = {
            "text": config["repo"]["label"],
            "tag_text": ref.get("label", ""),
            "ref_prop_disabled": not ref["enabled"],
            "label_prop_disabled": not ref["enabled"],
        }
    return entries


def ref_url(repo: providers.RepoProvider, commit: str) -> str:
    """``binder_ref_url``: where a person sees the repository at the
    version launched (a forge's tree view); for other providers, the
    repository's own URL, as BinderHub gives for git URLs."""
    if isinstance(repo, providers.GitHubRepoProvider | providers.GitLabRepoProvider):
        return f"{repo.url.removesuffix('.git')}/tree/{commit}"
    return repo.url


def persistent_spec(spec: str, repo: providers.RepoProvider, commit: str) -> str:
    """The spec with its ref replaced by the resolved commit (BinderHub's
    ``binder_persistent_request`` after ``v2/``), for git providers; an
    archive's spec already names its version."""
    if not isinstance(repo, providers.GitRepoProvider):
        return spec
    prefix, _, body = spec.partition("/")
    _, quoted_ref = repo.parse(body)
    if not body.endswith(quoted_ref):
        return spec
    return f"{prefix}/{body[: len(body) - len(quoted_ref)]}{commit}"


def launch_fields(
    spec: str, repo: providers.RepoProvider, commit: str, launch_host: str
) -> dict[str, str]:
    """BinderHub's fields of a launch, for the ``ready`` event and (under
    the same names) the server's ``user_options``: ``binder_request`` and
    ``binder_persistent_request`` are relative to ``launch_host`` (this
    service's public URL), without a leading slash."""
    return {
        "repo_url": repo.url,
        "binder_ref_url": ref_url(repo, commit),
        "binder_launch_host": launch_host,
        "binder_request": f"v2/{spec}",
        "binder_persistent_request": f"v2/{persistent_spec(spec, repo, commit)}",
    }


_GH_PART = textpatterns.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def legacy_redirect(base_url: str, user: str, repo: str, urlpath: str | None) -> str:
    """``/repo/<user>/<repo>[/<path>]``, mybinder.org's first links:
    BinderHub sends them to the GitHub repository's ``master`` with the
    path as ``urlpath``. Always a path on this service (the names are
    GitHub's, checked; the path goes only into the query)."""
    if not (_GH_PART.fullmatch(user) and _GH_PART.fullmatch(repo)):
        raise UserError(f"invalid GitHub repository {providers.echo(f'{user}/{repo}')}")
    url = f"{base_url}v2/gh/{user}/{repo}/master"
    path = (urlpath or "").strip("/")
    return f"{url}?urlpath={quote(path, safe='')}" if path else url


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` of ``url``, as browsers send ``Origin``."""
    parts = urlsplit(url)
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    default = {"http": 80, "https": 443}.get(scheme)
    port = f":{parts.port}" if parts.port not in (None, default) else ""
    return f"{scheme}://{host}{port}"
