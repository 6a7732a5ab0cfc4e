"""The Binder service's server tokens, in the shipped hub: the service cannot
mint a token through JupyterHub's own ``/users/NAME/tokens`` (whose scopes
are checked against the token's owner: an admin's, with ``inherit``, made
the service an admin), and hpcbinder's handler issues only
``access:servers!server=USER/NAME`` for a running server of that user's, for
an hour, to the Binder service alone; the server's stop revokes them."""

from __future__ import annotations

import json
import string
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tornado.httpclient import HTTPClient, HTTPResponse

from tests.conftest import DevCluster
from tests.hubhelpers import Hub, process_hub_token, start_server, stop_server

pytestmark = [pytest.mark.e2e, pytest.mark.slurm, pytest.mark.apptainer]

SERVER = "tok"
SCOPE = f"access:servers!server=alice/{SERVER}"


def binder_token(hub: Hub) -> str:
    """The Binder service's own hub token, read from the process the hub
    started (``hpcbinder serve --port PORT``)."""
    port = hub.env["HPCBINDER_BINDER_PORT"].encode()
    return process_hub_token(
        lambda _, argv: b"serve" in argv and port in argv, "Binder service process of this hub"
    )


def call(hub: Hub, token: str, method: str, path: str, body: Any = None) -> HTTPResponse:
    return HTTPClient().fetch(
        f"{hub.url}/hub/api{path}",
        method=method,
        headers={"Authorization": f"token {token}"},
        body=None if body is None else (body if isinstance(body, bytes) else json.dumps(body)),
        allow_nonstandard_methods=True,
        raise_error=False,
        request_timeout=30,
    )


def mint(hub: Hub, token: str, user: str, server: str, body: Any = None) -> HTTPResponse:
    path = f"/hpcbinder/servers/{quote(user, safe='')}/{quote(server, safe='')}/token"
    return call(hub, token, "POST", path, body)


def granted(scopes: list[str]) -> list[str]:
    """Scopes without the identity scopes the hub adds to every token."""
    return [scope for scope in scopes if not scope.startswith("read:users:")]


def stored_tokens(hub: Hub, user: str) -> list[dict[str, Any]]:
    """``user``'s tokens as the hub stores them (the admin service's view)."""
    return list(hub.api("GET", f"/users/{user}/tokens")["api_tokens"])


def test_the_binder_service_mints_only_one_servers_token_for_an_hour(
    hub: Hub, devcluster: DevCluster
) -> None:
    service = binder_token(hub)
    # JupyterHub's own minting: an admin's token for any scopes was 201.
    for user in ("hubadmin", "alice"):
        asked = call(hub, service, "POST", f"/users/{user}/tokens", {"scopes": ["inherit"]})
        assert asked.code == 403, asked.body
        assert call(hub, service, "GET", f"/users/{user}/tokens").code == 403
    assert stored_tokens(hub, "hubadmin") == []

    # A server alice does not have (yet), a user that does not exist: no token.
    assert mint(hub, service, "alice", SERVER).code == 404
    assert mint(hub, service, "nobody", SERVER).code == 404
    start_server(hub, "alice", SERVER, {"image": "base:default", "profile": "small"})
    assert mint(hub, service, "bob", SERVER).code == 404  # alice's server name, bob's none

    # Only the Binder service: not the admin service, not alice herself.
    alice = str(hub.api("POST", "/users/alice/tokens", {"scopes": ["inherit"]})["token"])
    assert mint(hub, hub.token, "alice", SERVER).code == 403
    assert mint(hub, alice, "alice", SERVER).code == 403
    # No body: the scope and expiry are not the requester's.
    for body in ({"scopes": ["inherit"]}, {"expires_in": 10**9}, {}, b"x"):
        assert mint(hub, service, "alice", SERVER, body).code == 400, body

    minted = mint(hub, service, "alice", SERVER)
    assert minted.code == 201, minted.body
    answer = json.loads(minted.body)
    expires = datetime.fromisoformat(answer["expires_at"].replace("Z", "+00:00"))
    assert expires <= datetime.now(UTC) + timedelta(hours=1)
    stored = next(t for t in stored_tokens(hub, "alice") if t["id"] == answer["id"])
    assert granted(stored["scopes"]) == [SCOPE]
    whoami = call(hub, answer["token"], "GET", "/user")
    assert granted(json.loads(whoami.body)["scopes"]) == [SCOPE]
    assert call(hub, answer["token"], "GET", "/users/alice/tokens").code == 403

    # Any user, server name and body the service could be tricked into:
    # a token only for alice's running server, with no body, and only SCOPE.
    names = st.sampled_from(["alice", "bob", "hubadmin", "hpcbinder-tests", "binder"]) | st.text(
        string.printable, min_size=1, max_size=20
    )
    bodies = st.none() | st.dictionaries(
        st.sampled_from(["scopes", "roles", "expires_in", "note", "user", "server"]),
        st.just(["inherit"]) | st.integers() | st.text(max_size=10),
        min_size=1,
    )

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(user=names, server=st.sampled_from([SERVER, "", "tok/../x"]) | names, body=bodies)
    def no_other_token(user: str, server: str, body: dict[str, Any] | None) -> None:
        if not user or not server:
            return  # no route without both
        answer = mint(hub, service, user, server, body)
        if user == "alice" and server == SERVER and body is None:
            assert answer.code == 201
        else:
            assert answer.code in (400, 404), (user, server, body, answer.code)

    no_other_token()
    for user in ("alice", "bob", "hubadmin"):
        for token in stored_tokens(hub, user):
            if token["note"].startswith("hpcbinder:"):
                assert (user, granted(token["scopes"])) == ("alice", [SCOPE]), token

    # The server's stop revokes them: none reaches alice's next server "tok".
    stop_server(hub, "alice", SERVER)
    assert not [t for t in stored_tokens(hub, "alice") if t["note"].startswith("hpcbinder:")]
    assert call(hub, answer["token"], "GET", "/user").code == 403
    # And no token anyone asks the hub's API for lives longer than a week.
    forever = call(hub, alice, "POST", "/users/alice/tokens", {"expires_in": 10**9})
    assert forever.code == 400, forever.body
