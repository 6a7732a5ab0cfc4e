"""The one token the Binder service may have minted for a researcher: in the
hub's own process, reaching one running server of theirs, for an hour.

BinderHub's ``ready`` event gives its client on another origin (Thebe, an
API client) a token for the launched server. JupyterHub's own way to mint one,
``POST /users/NAME/tokens`` with the ``tokens`` scope, lets its holder ask
for any scopes the token's *owner* has, for any user, without expiry: the
Binder service (internet-facing, parsing untrusted specs) would hold the
admins' rights. A hub service cannot mint a narrower token itself, so this
handler (registered by configs/jupyterhub_config.py in
``JupyterHub.extra_handlers``) takes only a user and a server name and issues
only ``access:servers!server=USER/NAME``, expiring after
:data:`SERVER_TOKEN_SECONDS`, to a requester holding :data:`SCOPE` (granted
to the Binder service's role alone). :func:`revoke_server_tokens` (the
spawners' ``post_stop_hook``) deletes them when the server stops, so none
reaches the researcher's next server of that name.
"""

from __future__ import annotations

import json
from typing import Any

from jupyterhub import orm
from jupyterhub.apihandlers.base import APIHandler
from tornado import web

#: The custom scope that lets a requester call :class:`ServerTokenHandler`.
SCOPE = "custom:hpcbinder-server-tokens"
#: How long a minted token reaches its server.
SERVER_TOKEN_SECONDS = 3600
#: Where the handler answers, under the hub's prefix (``/hub/``).
ROUTE = r"/api/hpcbinder/servers/([^/]+)/([^/]+)/token"
#: The note of every token minted here; with the scope, how a stop finds them.
NOTE = "hpcbinder: Binder launch"


def server_scope(user: str, server: str) -> str:
    """The only scope a minted token has."""
    return f"access:servers!server={user}/{server}"


class ServerTokenHandler(APIHandler):  # type: ignore[misc]  # JupyterHub is untyped
    """``POST /hub/api/hpcbinder/servers/USER/NAME/token``: a new token of
    USER's for their running server NAME (201, ``{"token", "expires_at",
    "scopes"}``). No body: nothing of the token is the requester's choice."""

    async def post(self, user_name: str, server_name: str) -> None:
        if self.current_user is None or SCOPE not in self.expanded_scopes:
            raise web.HTTPError(403, f"server tokens need the {SCOPE} scope")
        if self.request.body.strip():
            raise web.HTTPError(400, "this endpoint takes no body: the token's scope is fixed")
        user = self.find_user(user_name)
        spawner = user.orm_spawners.get(server_name) if user is not None else None
        if user is None or spawner is None:
            raise web.HTTPError(404, f"no server {server_name} of user {user_name}")
        if not user.spawners[server_name].ready:
            raise web.HTTPError(409, f"server {server_name} of user {user_name} is not running")
        token = user.new_api_token(
            note=f"{NOTE} of server {server_name}",
            expires_in=SERVER_TOKEN_SECONDS,
            scopes=[server_scope(user.name, server_name)],
        )
        model: dict[str, Any] = self.token_model(orm.APIToken.find(self.db, token))
        self.log.info(
            "%s minted a server token for %s/%s", self.current_user.name, user.name, server_name
        )
        self.set_status(201)
        self.write(json.dumps({**model, "token": token}))


def revoke_server_tokens(spawner: Any) -> None:
    """``Spawner.post_stop_hook``: delete the tokens minted here for the
    server that stopped (their note and exact scope), so that a Thebe page's
    token of an earlier launch never reaches the next server of that name."""
    user = spawner.user
    scope = server_scope(user.name, spawner.name)
    for token in list(user.orm_user.api_tokens):
        if token.note.startswith(NOTE) and list(token.scopes) == [scope]:
            user.db.delete(token)
    user.db.commit()
