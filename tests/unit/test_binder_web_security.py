"""The Binder service's own pages and streams against another site in the
researcher's browser: no page can be framed, its cookies are SameSite and,
over HTTPS, ``__Host-``; ``/build`` (which builds and starts servers) opened
with the hub's login cookie needs the launch page's XSRF header, while
clients with the researcher's own token need none. The real application
and HubOAuth, with the hub's token check replaced."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPResponse
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port
from tornado.web import create_signed_value

from hpcbinder.web.app import hub_oauth, make_app
from hpcbinder.web.launcher import HubAPI
from hpcbinder.web.service import Service
from tests.repohelpers import site_for_tests

SPEC = "gh/org/repo/HEAD"
TOKEN = "alice-hub-token"  # noqa: S105 - what the stand-in hub says is alice's
ALICE = {"name": "alice", "kind": "user", "scopes": ["access:services"]}
#: What EventSource (and every BinderHub client) asks for.
STREAM = {"Accept": "text/event-stream"}


class _Sessions:
    """Stands in for the build coordinator: records who asked to build."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def session(self, spec: str, user: str) -> Any:
        self.asked.append(spec)

        class _Empty:
            result = None

            async def follow(self) -> AsyncIterator[Any]:
                return
                yield

        return _Empty()


def _service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **binder: Any) -> Service:
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "service-token")
    monkeypatch.setenv("JUPYTERHUB_CLIENT_ID", "service-binder")
    monkeypatch.setenv("JUPYTERHUB_API_URL", "http://127.0.0.1:9/hub/api")
    monkeypatch.delenv("JUPYTERHUB_SERVICE_PREFIX", raising=False)
    auth = hub_oauth("http://binder.test/", "http://hub.test/")

    def user_for_token(token: str, session_id: str = "", sync: bool = True) -> Any:
        model = dict(ALICE) if token == TOKEN else None
        if sync:
            return model

        async def answer() -> Any:
            return model

        return answer()

    monkeypatch.setattr(auth, "user_for_token", user_for_token)
    service = Service(
        site=site_for_tests(tmp_path, binder=binder),
        hub=HubAPI("http://127.0.0.1:9/hub/api", "service-token"),
        hub_auth=auth,
        hub_public_url="http://hub.test/",
        public_url="http://binder.test/",
        state_dir=tmp_path / "state",
    )

    async def no_load() -> dict[str, Any]:
        return {}

    monkeypatch.setattr(service, "partition_load", no_load)
    monkeypatch.setattr(service, "builds", _Sessions())
    return service


Client = Callable[..., Awaitable[HTTPResponse]]


def _run(service: Service, scenario: Callable[[Client, dict[str, str]], Awaitable[None]]) -> None:
    """Serve the real application on a free port; ``scenario`` gets a
    client and alice's login cookie (signed as the service signs it)."""

    async def main() -> None:
        app = make_app(service)
        sock, port = bind_unused_port()
        server = HTTPServer(app)
        server.add_sockets([sock])
        name = service.hub_auth.cookie_name
        signed = create_signed_value(app.settings["cookie_secret"], name, TOKEN).decode()
        login = {name: signed}

        async def fetch(path: str, **kwargs: Any) -> HTTPResponse:
            kwargs.setdefault("follow_redirects", False)
            kwargs.setdefault("raise_error", False)
            return await AsyncHTTPClient().fetch(f"http://127.0.0.1:{port}{path}", **kwargs)

        try:
            await scenario(fetch, login)
        finally:
            server.stop()

    asyncio.run(main())


def _cookie_header(cookies: dict[str, str]) -> str:
    return "; ".join(f"{name}={value}" for name, value in cookies.items())


async def _launch_page_xsrf(fetch: Client, login: dict[str, str]) -> tuple[str, dict[str, str]]:
    """The XSRF token the launch page gives its script, and the cookies
    (login and ``_xsrf``) the browser then holds."""
    page = await fetch(f"/v2/{SPEC}", headers={"Cookie": _cookie_header(login)})
    assert page.code == 200, page.body
    cookies = dict(login)
    for line in page.headers.get_list("Set-Cookie"):
        name, _, rest = line.partition("=")
        cookies[name] = rest.split(";", 1)[0]
    config = re.search(rb'id="launch-config" type="application/json">(.*?)</script>', page.body)
    assert config, page.body
    return json.loads(config.group(1))["xsrf"], cookies


def test_a_build_link_opened_by_another_site_starts_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A top-level navigation (a link or redirect from anywhere) carries the
    login cookie but not the page's token: refused before any build."""
    service = _service(tmp_path, monkeypatch, confirm_untrusted=False)
    builds: _Sessions = service.builds  # type: ignore[assignment]

    async def scenario(fetch: Client, login: dict[str, str]) -> None:
        xsrf, cookies = await _launch_page_xsrf(fetch, login)
        cookie = _cookie_header(cookies)
        for headers in (
            {"Cookie": cookie, "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Site": "cross-site"},
            {"Cookie": cookie},
            {"Cookie": cookie, "X-XSRFToken": xsrf + "x"},
        ):
            refused = await fetch(f"/build/{SPEC}", headers=headers)
            assert refused.code == 403, (headers, refused.body)
            assert b"X-XSRFToken" in refused.body
        assert builds.asked == []
        # The launch page's fetch: the same cookies plus its token.
        stream = await fetch(
            f"/build/{SPEC}",
            headers={"Cookie": cookie, "X-XSRFToken": xsrf, "Sec-Fetch-Mode": "cors", **STREAM},
        )
        assert stream.code == 200 and builds.asked == [SPEC]

    _run(service, scenario)


def test_api_clients_with_their_own_token_need_no_xsrf(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = _service(tmp_path, monkeypatch, confirm_untrusted=False)
    builds: _Sessions = service.builds  # type: ignore[assignment]

    async def scenario(fetch: Client, login: dict[str, str]) -> None:
        for scheme in ("token", "Bearer"):
            token = {"Authorization": f"{scheme} {TOKEN}", **STREAM}
            stream = await fetch(f"/build/{SPEC}", headers=token)
            assert stream.code == 200, stream.body
        assert builds.asked == [SPEC, SPEC]
        # A token the hub does not know falls back to the cookie: checked.
        bad = {"Authorization": "token nobody", "Cookie": _cookie_header(login)}
        assert (await fetch(f"/build/{SPEC}", headers=bad)).code == 403
        assert builds.asked == [SPEC, SPEC]

    _run(service, scenario)


def test_the_header_does_not_skip_the_confirmation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = _service(tmp_path, monkeypatch)  # the site vouches for nothing

    async def scenario(fetch: Client, login: dict[str, str]) -> None:
        page = await fetch(f"/v2/{SPEC}", headers={"Cookie": _cookie_header(login)})
        xsrf = re.search(rb'name="_xsrf" value="([^"]+)"', page.body)
        assert page.code == 200 and xsrf, page.body
        cookies = dict(login)
        for line in page.headers.get_list("Set-Cookie"):
            name, _, rest = line.partition("=")
            cookies[name] = rest.split(";", 1)[0]
        headers = {
            "Cookie": _cookie_header(cookies),
            "X-XSRFToken": xsrf.group(1).decode(),
            **STREAM,
        }
        stream = await fetch(f"/build/{SPEC}", headers=headers)
        assert stream.code == 200 and b"confirm that you want to run" in stream.body

    _run(service, scenario)


def test_no_page_can_be_framed_and_cookies_are_samesite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every page and answer of the service: the login redirect, the
    launch and confirm pages, error pages, the stream's refusal, health."""
    service = _service(tmp_path, monkeypatch)

    async def healthy() -> list[dict[str, Any]]:
        return [{"service": "slurm", "ok": True, "message": "ok"}]

    monkeypatch.setattr(service, "cached_health", healthy)

    async def scenario(fetch: Client, login: dict[str, str]) -> None:
        cookie = {"Cookie": _cookie_header(login)}
        answers = {
            "login redirect": await fetch(f"/v2/{SPEC}"),
            "confirm page": await fetch(f"/v2/{SPEC}", headers=cookie),
            "bad link": await fetch("/v2/gh/org", headers=cookie),
            "bad path": await fetch(f"/v2/{SPEC}?urlpath=../../hub/token", headers=cookie),
            "stream refused": await fetch(f"/build/{SPEC}", headers=cookie),
            "health": await fetch("/health"),
            "home": await fetch("/", headers=cookie),
        }
        assert answers["bad path"].code == 400
        for what, answer in answers.items():
            assert answer.headers.get("X-Frame-Options") == "DENY", what
            assert answer.headers.get("Content-Security-Policy") == "frame-ancestors 'none'", what
        set_cookies = [
            line for answer in answers.values() for line in answer.headers.get_list("Set-Cookie")
        ]
        names = {line.split("=", 1)[0] for line in set_cookies}
        assert {"_xsrf", "service-binder-oauth-state"} <= names, set_cookies
        for line in set_cookies:
            assert "samesite=lax" in line.lower(), line

    _run(service, scenario)


def test_over_https_the_login_cookie_is_host_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """``__Host-``: a researcher's server on a subdomain cannot set it."""
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "service-token")
    monkeypatch.setenv("JUPYTERHUB_CLIENT_ID", "service-binder")
    monkeypatch.delenv("JUPYTERHUB_COOKIE_HOST_PREFIX_ENABLED", raising=False)
    https = hub_oauth("https://binder.hub.example.org/", "https://hub.example.org/")
    assert https.cookie_name == "__Host-service-binder" and https.cookie_path == "/"
    assert https.cookie_options == {"samesite": "Lax", "secure": True}
    http = hub_oauth("http://127.0.0.1:8003/", "http://localhost:8000/")
    assert http.cookie_name == "service-binder" and http.cookie_options == {"samesite": "Lax"}
