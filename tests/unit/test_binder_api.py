"""BinderHub's client API on the real application (HubOAuth with a
stand-in token check, a stand-in build coordinator): the provider list,
legacy links and badges, ``Accept``, ``build_only``, and CORS with
credentials for the origins a site lists, where a cookie-authenticated
``/build`` from any other origin starts nothing and is readable by no one."""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpcbinder.sources.providers import PROVIDERS
from hpcbinder.web.events import Event
from hpcbinder.web.service import Service
from tests.unit.test_binder_web_security import (
    SPEC,
    STREAM,
    TOKEN,
    Client,
    _cookie_header,
    _run,
    _service,
    _Sessions,
)

DOCS = "https://docs.example.org"
OWN = "http://binder.test"  # the stand-in service's public URL's origin
#: What browsers add to a script's cross-origin request (EventSource, fetch).
BROWSER = {"Sec-Fetch-Mode": "cors", "Sec-Fetch-Site": "same-site"}
#: Origins that look like the listed one and are not it.
LOOKALIKES = [
    "https://docs.example.org.evil.test",
    "https://evil-docs.example.org",
    "https://docs.example.org:8443",
    "http://docs.example.org",
    "https://DOCS.example.org",
    "https://docs.example.org/",
    "null",
    "",
    "*",
    "https://docs.example.org, https://evil.test",
]


def _cors_service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **binder: Any) -> Service:
    return _service(
        tmp_path, monkeypatch, confirm_untrusted=False, cors_allow_origins=[DOCS], **binder
    )


def _asked(service: Service) -> list[str]:
    builds: _Sessions = service.builds  # type: ignore[assignment]
    return builds.asked


def test_repoproviders_lists_every_provider_in_binderhubs_shape(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = _service(tmp_path, monkeypatch)

    async def scenario(fetch: Client, login: dict[str, str]) -> None:
        answer = await fetch("/api/repoproviders")  # no login: BinderHub's is public
        assert answer.code == 200 and answer.headers["Content-Type"] == "application/json"
        listed = json.loads(answer.body)
        assert [entry["id"] for entry in listed] == list(PROVIDERS)
        for entry in listed:
            assert set(entry) >= {"displayName", "id", "spec", "repo", "ref"}, entry
            assert isinstance(entry["displayName"], str) and entry["displayName"]
            assert set(entry["repo"]) == {"label", "placeholder", "urlEncode"}, entry
            assert isinstance(entry["ref"]["enabled"], bool)
            assert entry["spec"]["validateRegex"]
            one = await fetch(f"/api/repoproviders/{entry['id']}/config")
            assert one.code == 200 and json.loads(one.body) == entry
        byid = {entry["id"]: entry for entry in listed}
        assert byid["gh"]["ref"] == {
            "enabled": True,
            "default": "HEAD",
            "label": "Git ref (branch, tag, or commit)",
        }
        assert byid["gh"]["repo"]["urlEncode"] is False and byid["git"]["repo"]["urlEncode"]
        assert "(?<repo>" in byid["gh"]["detect"]["regex"]
        missing = await fetch("/api/repoproviders/nope/config")
        assert missing.code == 404 and b"No provider found for prefix nope" in missing.body
        # A name that is markup stays JSON text, never sniffed into a page.
        markup = await fetch("/api/repoproviders/%3Cscript%3Ealert(1)%3C%2Fscript%3E/config")
        assert markup.code == 404 and markup.headers["Content-Type"] == "application/json"
        assert markup.headers["X-Content-Type-Options"] == "nosniff"
        legacy = json.loads((await fetch("/_config")).body)
        assert list(legacy) == list(PROVIDERS)
        assert legacy["gh"]["ref_prop_disabled"] is False and legacy["gh"]["text"]

    _run(service, scenario)


def test_legacy_repo_links_and_badges(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    service = _service(tmp_path, monkeypatch)

    async def scenario(fetch: Client, login: dict[str, str]) -> None:
        plain = await fetch("/repo/binder-examples/requirements")
        assert plain.code == 302
        assert plain.headers["Location"] == "/v2/gh/binder-examples/requirements/master"
        deep = await fetch("/repo/org/repo/notebooks/index.ipynb")
        assert deep.headers["Location"] == (
            "/v2/gh/org/repo/master?urlpath=notebooks%2Findex.ipynb"
        )
        for path in ("/badge.svg", "/badge_logo.svg", "/assets/images/badge.svg"):
            badge = await fetch(path)
            assert badge.code == 200 and badge.headers["Content-Type"] == "image/svg+xml", path
            assert b"<svg" in badge.body

    _run(service, scenario)


#: Path segments of a legacy link as an attacker writes them (escaped
#: slashes and dots, schemes, CR/LF, backslashes) and anything else.
_SEGMENT = st.one_of(
    st.sampled_from(
        ["%2F%2Fevil.test", "..", "%2e%2e", "evil.test%5C", "%0d%0aSet-Cookie:x=1", "http:", "@x"]
    ),
    st.text(alphabet=st.characters(codec="ascii", exclude_characters="/?#"), min_size=1),
)


def test_a_legacy_link_never_leaves_the_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever ``/repo/<user>/<repo>/<path>`` holds, the answer is a 400 or
    a redirect to this service's ``/v2/gh/`` (no other host, no header
    broken by a CR/LF)."""
    service = _service(tmp_path, monkeypatch)

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(user=_SEGMENT, repo=_SEGMENT, path=st.lists(_SEGMENT, max_size=3))
    def check(user: str, repo: str, path: list[str]) -> None:
        async def scenario(fetch: Client, login: dict[str, str]) -> None:
            url = "/repo/" + "/".join([user, repo, *path])
            answer = await fetch(url.replace(" ", "%20"))
            if answer.code != 302:
                assert answer.code in (400, 404), (url, answer.code)
                return
            location = answer.headers["Location"]
            parts = urlsplit(location)
            assert not parts.scheme and not parts.netloc, location
            assert location.startswith("/v2/gh/") and "\r" not in location, location
            assert "\n" not in location and "\\" not in location
            assert parts.path.count("/") == 5, location  # /v2/gh/USER/REPO/master
            assert set(parse_qs(parts.query)) <= {"urlpath"}

        _run(service, scenario)

    check()


def test_the_stream_needs_an_event_stream_accept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = _cors_service(tmp_path, monkeypatch)

    async def scenario(fetch: Client, login: dict[str, str]) -> None:
        token = {"Authorization": f"token {TOKEN}"}
        for accept in ("", "text/html", "application/json"):
            answer = await fetch(f"/build/{SPEC}", headers={**token, "Accept": accept})
            assert answer.code == 400, accept
            assert b"Missing Accept header: text/event-stream" in answer.body
        assert _asked(service) == []
        browser = {**token, "Accept": "text/event-stream; q=1, */*"}
        assert (await fetch(f"/build/{SPEC}", headers=browser)).code == 200
        assert _asked(service) == [SPEC]

    _run(service, scenario)


class _Built:
    """Stands in for a finished build: its events, then its result."""

    def __init__(self, built_here: bool) -> None:
        self.asked: list[str] = []
        self.built_here = built_here

    def session(self, spec: str, user: str) -> Any:
        self.asked.append(spec)
        outer = self

        class _Done:
            result = object()

            async def follow(self) -> AsyncIterator[Event]:
                yield Event("fetching", "Fetching\n")
                if outer.built_here:
                    yield Event("building", "Building image\n")
                yield Event("built", "Found built image K\n", {"imageName": "K"})

        return _Done()


@pytest.mark.parametrize(("built_here", "message"), [(True, "Image built"), (False, "Found")])
def test_build_only_ends_with_ready_and_the_image_and_launches_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, built_here: bool, message: str
) -> None:
    service = _cors_service(tmp_path, monkeypatch)
    monkeypatch.setattr(service, "builds", _Built(built_here))

    async def no_launch(*args: Any, **kwargs: Any) -> str:
        raise AssertionError("build_only launched a server")

    monkeypatch.setattr(service.launcher, "launch", no_launch)

    async def scenario(fetch: Client, login: dict[str, str]) -> None:
        headers = {"Authorization": f"token {TOKEN}", **STREAM}
        answer = await fetch(f"/build/{SPEC}?build_only=True", headers=headers)
        events = [json.loads(line[5:]) for line in answer.body.splitlines() if line[:5] == b"data:"]
        assert [e["phase"] for e in events][-1] == "ready", events
        assert "built" not in [e["phase"] for e in events]
        assert events[-1]["imageName"] == "K" and message in events[-1]["message"]

    _run(service, scenario)


def test_build_only_is_refused_where_the_site_disallows_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = _cors_service(tmp_path, monkeypatch, allow_build_only=False)

    async def scenario(fetch: Client, login: dict[str, str]) -> None:
        headers = {"Authorization": f"token {TOKEN}", **STREAM}
        answer = await fetch(f"/build/{SPEC}?build_only=true", headers=headers)
        assert answer.code == 400 and b"binder.allow_build_only" in answer.body
        assert _asked(service) == []

    _run(service, scenario)


def test_a_listed_origin_builds_and_reads_the_stream_with_the_login(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A documentation page's EventSource (withCredentials: the login
    cookie, its ``Origin``, no header of its own): allowed, and the browser
    may show it the answer (exact origin, credentials, ``Vary: Origin``);
    the service's own origin too. The preflight a script's fetch needs."""
    service = _cors_service(tmp_path, monkeypatch)

    async def scenario(fetch: Client, login: dict[str, str]) -> None:
        cookie = _cookie_header(login)
        for origin in (DOCS, OWN):
            # What Chromium sends with an EventSource's withCredentials.
            headers = {"Cookie": cookie, "Origin": origin, **BROWSER, **STREAM}
            answer = await fetch(f"/build/{SPEC}", headers=headers)
            assert answer.code == 200, answer.body
            assert answer.headers["Access-Control-Allow-Origin"] == origin
            assert answer.headers["Access-Control-Allow-Credentials"] == "true"
            assert "Origin" in answer.headers["Vary"]
        assert _asked(service) == [SPEC, SPEC]
        for path in (f"/build/{SPEC}", "/api/repoproviders"):
            preflight = await fetch(
                path,
                method="OPTIONS",
                headers={"Origin": DOCS, "Access-Control-Request-Method": "GET"},
            )
            assert preflight.code == 204, path
            assert preflight.headers["Access-Control-Allow-Origin"] == DOCS
            assert "GET" in preflight.headers["Access-Control-Allow-Methods"]
        providers = await fetch("/api/repoproviders", headers={"Origin": DOCS})
        assert providers.headers["Access-Control-Allow-Origin"] == DOCS
        # Pages are never readable by another origin (they hold the XSRF token).
        page = await fetch(f"/v2/{SPEC}", headers={"Cookie": cookie, "Origin": DOCS})
        assert page.code == 200 and "Access-Control-Allow-Origin" not in page.headers

    _run(service, scenario)


def test_no_other_origin_starts_a_build_or_reads_the_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The login cookie from any origin the site does not list (look-alikes,
    ``null`` from a sandboxed frame or a redirect, none at all as for a
    navigation or an image): 403 before any build, no CORS header (the
    browser shows the page nothing), the preflight refused."""
    service = _cors_service(tmp_path, monkeypatch)

    async def scenario(fetch: Client, login: dict[str, str]) -> None:
        cookie = _cookie_header(login)
        for origin, browser in itertools.product(LOOKALIKES, ({}, BROWSER)):
            headers = {
                "Cookie": cookie,
                **STREAM,
                **browser,
                **({"Origin": origin} if origin else {}),
            }
            answer = await fetch(f"/build/{SPEC}", headers=headers)
            assert answer.code == 403, (origin, answer.body)
            assert "Access-Control-Allow-Origin" not in answer.headers, origin
            preflight = await fetch(
                f"/build/{SPEC}",
                method="OPTIONS",
                headers={"Origin": origin, "Access-Control-Request-Method": "GET"},
            )
            assert preflight.code == 403, origin
            assert "Access-Control-Allow-Origin" not in preflight.headers, origin
        assert _asked(service) == []

    _run(service, scenario)


_HOST = st.from_regex(r"[a-z0-9.-]{1,20}", fullmatch=True)


@pytest.mark.parametrize("listed", [[], [DOCS], [DOCS, "http://localhost:8080"]])
def test_any_unlisted_origin_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, listed: list[str]
) -> None:
    """Property: an ``Origin`` that is not exactly a listed one (nor the
    service's own) never starts a build with the login cookie."""
    service = _service(tmp_path, monkeypatch, confirm_untrusted=False, cors_allow_origins=listed)

    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        origin=st.one_of(
            st.builds(
                lambda scheme, host, port: f"{scheme}://{host}{port}",
                st.sampled_from(["http", "https", "HTTPS", "file", "chrome-extension"]),
                _HOST,
                st.sampled_from(["", ":443", ":8080", ":80"]),
            ),
            st.sampled_from([o + suffix for o in [*listed, OWN] for suffix in ("/", ".", " ")]),
            st.text(alphabet=st.characters(codec="ascii", min_codepoint=32), max_size=30),
        )
    )
    def check(origin: str) -> None:
        # HTTP drops a header value's surrounding spaces (as any server does).
        allowed = origin.strip(" \t") in (*listed, OWN)

        async def scenario(fetch: Client, login: dict[str, str]) -> None:
            headers = {"Cookie": _cookie_header(login), "Origin": origin, **BROWSER, **STREAM}
            answer = await fetch(f"/build/{SPEC}", headers=headers)
            assert (answer.code == 200) is allowed, (origin, answer.code)
            assert ("Access-Control-Allow-Origin" in answer.headers) is allowed

        before = len(_asked(service))
        _run(service, scenario)
        assert len(_asked(service)) == before + allowed

    check()
