"""JupyterHub with hpcbinder, for sites and the dev cluster alike: servers
run in Slurm jobs inside Apptainer images through hpcbinder's
ApptainerSlurmSpawner.

The site file's ``hub`` section (hpcbinder.config.HubSettings) says where
the hub, its proxy and the Binder service listen, the hub's address for
compute nodes, its public URL and the authenticator (PAM by default; Dummy
only where the site file says it is the dev cluster, which slurm/devcluster
writes). A site configures its authenticator's own options (LDAP server,
OAuth client) in a file of its own that loads this one. The environment
overrides a few settings so that tests can run several hubs side by side:

  HPCBINDER_HUB_PORT     public port (default hub.port, 8000)
  HPCBINDER_HUB_PUBLIC_URL  the hub's address in browsers (default
                         hub.public_url, else http://localhost:PORT); each
                         researcher's servers are on a subdomain of it
                         (USER.localhost: see README)
  HPCBINDER_HUB_STATE    folder for the database and cookie secret
  HPCBINDER_CHP          configurable-http-proxy executable
  HPCBINDER_DEMO_PASSWORD  the demo users' password
  HPCBINDER_ADMIN_TOKEN  (tests) a token for an admin service
  HPCBINDER_BINDER_PORT  the Binder service's port (default: the hub's + 3)
"""

import os
import sys
from pathlib import Path

from hpcbinder.config import load_site
from hpcbinder.errors import UserError
from hpcbinder.hub import servertokens, spawner
from hpcbinder.hub.authenticator import authenticator_class

c = get_config()  # type: ignore[name-defined]  # noqa: F821 - JupyterHub's config loader

try:
    site_hub = load_site().hub
    authenticator = authenticator_class(site_hub)
except UserError as exc:  # one line, not a traceback
    sys.exit(f"jupyterhub_config.py: {exc}")

state = Path(os.environ.get("HPCBINDER_HUB_STATE", "/var/lib/hpcbinder/hub"))
state.mkdir(parents=True, exist_ok=True)
port = int(os.environ.get("HPCBINDER_HUB_PORT", str(site_hub.port)))

# Each researcher's servers on their own origin (https://alice.hub.example.org),
# so a repository's JavaScript in JupyterLab cannot act on the hub's pages as
# the researcher. A site needs wildcard DNS and a wildcard certificate for it;
# the dev cluster uses *.localhost, which browsers resolve to loopback.
hub_public_url = os.environ.get(
    "HPCBINDER_HUB_PUBLIC_URL", site_hub.public_url or f"http://localhost:{port}"
).rstrip("/")
c.JupyterHub.subdomain_host = hub_public_url
# The hub's cookies (login, session) as __Host- cookies, which no subdomain can
# set: else a repository's JavaScript on alice.hub.example.org could set them for
# hub.example.org (cookie tossing, GHSA-7r3h-4ph8-w38g). Browsers take them only
# over HTTPS; the hub passes the setting to the servers it spawns.
c.JupyterHub.cookie_host_prefix_enabled = hub_public_url.startswith("https://")
c.JupyterHub.ip = site_hub.ip
c.JupyterHub.port = port
# Every server job calls the hub's API from its compute node: at a site an
# address the compute nodes reach (hub_connect_ip where hub_ip is 0.0.0.0).
c.JupyterHub.hub_ip = site_hub.hub_ip
if site_hub.hub_connect_ip:
    c.JupyterHub.hub_connect_ip = site_hub.hub_connect_ip
c.JupyterHub.hub_port = port + 1
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{port + 2}"
c.ConfigurableHTTPProxy.command = [os.environ.get(
    "HPCBINDER_CHP", str(Path(sys.prefix) / "chp" / "node_modules" / ".bin" / "configurable-http-proxy")
)]
c.JupyterHub.db_url = f"sqlite:///{state / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = str(state / "jupyterhub_cookie_secret")
c.JupyterHub.pid_file = str(state / "jupyterhub.pid")
c.JupyterHub.cleanup_servers = False  # a hub restart keeps running servers

c.JupyterHub.authenticator_class = authenticator
c.DummyAuthenticator.password = os.environ.get("HPCBINDER_DEMO_PASSWORD", "hpcbinder-demo")
c.Authenticator.allowed_users = set(site_hub.allowed_users)
c.LocalAuthenticator.allowed_groups = set(site_hub.allowed_groups)  # PAM: the researchers' group
c.Authenticator.admin_users = set(site_hub.admin_users)  # see /health's details; run no server

c.JupyterHub.allow_named_servers = True
c.JupyterHub.spawner_class = "hpcbinder.hub.spawner.ApptainerSlurmSpawner"
# The page of a server that is not running says why its job ended (a lost node).
c.JupyterHub.template_paths = [str(spawner.TEMPLATES)]
c.Spawner.default_url = "/lab"
# No Spawner.start_timeout: the spawner derives it from the site file's
# launch.max_queue_minutes (the wait in Slurm's queue, which it enforces
# itself) plus launch.start_seconds (a started job bringing its server up).
c.Spawner.http_timeout = 120
c.BatchSpawnerBase.startup_poll_interval = 0.5

services = [{
    "name": "idle-culler",
    "command": [sys.executable, "-m", "jupyterhub_idle_culler", "--timeout=3600"],
}]
roles = [{
    "name": "idle-culler",
    "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
    "services": ["idle-culler"],
}]
# The Binder service (hpcbinder serve): BinderHub-style links on its own port,
# logging users in through the hub; it starts servers with its own token.
binder_port = int(os.environ.get("HPCBINDER_BINDER_PORT", str(port + 3)))
binder_url = f"http://{site_hub.binder_ip}:{binder_port}"
binder_public_url = (site_hub.binder_public_url or binder_url).rstrip("/")
services.append({
    "name": "binder",
    "url": binder_url,
    "command": [
        str(Path(sys.executable).with_name("hpcbinder")), "serve",
        "--ip", site_hub.binder_ip, "--port", str(binder_port),
        "--public-url", binder_public_url + "/",
    ],
    "environment": {
        "HPCBINDER_HUB_PUBLIC_URL": hub_public_url + "/",
        "HPCBINDER_BINDER_STATE": str(state / "binder"),
        **{k: v for k, v in os.environ.items() if k in ("HPCBINDER_SITE", "PATH")},
    },
    "oauth_redirect_uri": binder_public_url + "/oauth_callback",
    "oauth_no_confirm": True,
})
# A launch's client on another origin (Thebe) gets a token of the researcher's
# for that one server, minted in the hub by hpcbinder's handler (only
# access:servers!server=USER/NAME, for an hour; revoked when the server stops).
# Never the hub's `tokens` scope: with it the service could mint tokens with
# any scopes of any user, admins' included (JupyterHub checks the owner's).
c.JupyterHub.custom_scopes = {
    servertokens.SCOPE: {"description": "Mint a user's token for one running server of theirs"},
}
c.JupyterHub.extra_handlers = [(servertokens.ROUTE, servertokens.ServerTokenHandler)]
c.Spawner.post_stop_hook = servertokens.revoke_server_tokens
# Any token a user or service asks the hub's API for expires within a week.
c.JupyterHub.token_expires_in_max_seconds = 7 * 24 * 3600
roles.append({
    "name": "binder",
    "scopes": ["servers", "read:users", "read:servers", servertokens.SCOPE],
    "services": ["binder"],
})
# Every user may log in to the Binder service (the default user role lacks it).
roles.append({"name": "user", "scopes": ["self", "access:services!service=binder"]})
if os.environ.get("HPCBINDER_ADMIN_TOKEN"):
    services.append({"name": "hpcbinder-tests", "api_token": os.environ["HPCBINDER_ADMIN_TOKEN"]})
    roles.append({"name": "admin", "services": ["hpcbinder-tests"]})
c.JupyterHub.services = services
c.JupyterHub.load_roles = roles
