"""hpcbinder_websocket_tokens: a researcher's server takes a token from a
URL on kernel websockets only (a Jupyter server extension in every base).

JupyterHub's single-user server means to: ``allow_token_in_url`` is off
since JupyterHub 5, "except on websocket requests", which browsers can
authenticate only with a token in the URL. It knows a websocket by its
``Sec-Fetch-Mode: websocket`` header, which Chromium does not send, so
pages on another origin (Thebe on a centre's documentation) could not open
a kernel's websocket with the token their launch gave them, short of
allowing tokens in every URL. That would let a link with ``?token=`` log
its visitor in to the token owner's server. Here the handler itself says
whether the request is a websocket upgrade: a page's navigation or fetch
never is, so its URL token is ignored as JupyterHub ignores it.
"""

from typing import Any

from tornado.web import RequestHandler
from tornado.websocket import WebSocketHandler


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "hpcbinder_websocket_tokens"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    hub_auth = getattr(serverapp.identity_provider, "hub_auth", None)
    if hub_auth is None:  # not a JupyterHub server: nothing takes URL tokens
        return
    from_url_where_hub_allows = hub_auth._get_token_url

    def token_from_url(handler: RequestHandler) -> str:
        if isinstance(handler, WebSocketHandler):
            return str(handler.get_argument("token", ""))
        return str(from_url_where_hub_allows(handler))

    hub_auth._get_token_url = token_from_url
