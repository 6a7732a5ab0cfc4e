"""The site's authenticator for the shipped hub config
(configs/jupyterhub_config.py): the site file's ``hub.authenticator``,
resolved as JupyterHub resolves it, so that a class that only calls itself
something else is still recognised as Dummy authentication."""

from __future__ import annotations

from typing import Any

from jupyterhub.app import JupyterHub
from jupyterhub.auth import DummyAuthenticator
from jupyterhub.authenticators.shared import SharedPasswordAuthenticator
from traitlets import TraitError

from hpcbinder.config import HubSettings
from hpcbinder.errors import UserError

#: Authenticators where one password logs anyone in as anyone.
SHARED_PASSWORD = (DummyAuthenticator, SharedPasswordAuthenticator)


def authenticator_class(hub: HubSettings) -> type[Any]:
    """The authenticator class ``hub.authenticator`` names (an entry point
    such as ``pam`` or ``generic-oauth``, or a dotted class path).

    DummyAuthenticator and SharedPasswordAuthenticator (and their
    subclasses) let anyone log in as anyone with one shared password:
    refused unless the site file says it is the dev cluster
    (``hub.dev_cluster: true``)."""
    trait = JupyterHub.class_traits()["authenticator_class"]
    try:
        found: type[Any] = trait.validate(None, hub.authenticator)
    except (TraitError, ImportError) as exc:
        raise UserError(
            f"hub.authenticator: {hub.authenticator} is not an installed JupyterHub "
            "authenticator (site file; e.g. pam, ldapauthenticator, generic-oauth)"
        ) from exc
    if issubclass(found, SHARED_PASSWORD) and not hub.dev_cluster:
        raise UserError(
            f"hub.authenticator: {hub.authenticator} lets anyone log in as anyone with one "
            "shared password; only the dev cluster (hub.dev_cluster: true) may use it "
            "(site file: choose pam or your site's authenticator)"
        )
    return found
