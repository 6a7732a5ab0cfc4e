"""What a server launch asks for: JupyterHub's ``user_options``, typed.

The Binder service and the hub's options form write ``user_options``;
anyone with a hub token can send them through the hub's API. They are
parsed here, once, into :class:`LaunchOptions`: unknown keys and malformed
values are a :class:`LaunchOptionsError` (a 400 from the hub's API, before
anything is submitted), never a crash deep in the spawner. Resource values
are checked against the site's limits later, by
:func:`hpcbinder.jobs.request.request_for`, as the form's are.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from hpcbinder import textpatterns
from hpcbinder.errors import UserError
from hpcbinder.jobs.request import OVERRIDABLE
from hpcbinder.patterns import COMMIT, ENV_KEY, SITE_NAME

#: An image of the store (its env key) or a site base (``base:NAME``).
IMAGE = textpatterns.compile(rf"{ENV_KEY.pattern}|base:{SITE_NAME.pattern}")
_Text = Annotated[str, StringConstraints(max_length=200)]


def _count_as_text(value: object) -> object:
    """JSON clients send counts as numbers, forms as text: one type."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


#: A count (cpus, gpus) as the form sends it; its range is the site's to check.
_Count = Annotated[str, BeforeValidator(_count_as_text), StringConstraints(pattern=r"^\d{1,6}$")]


def _one_line(value: str) -> str:
    """Text that becomes an environment variable of the researcher's
    server: one line of printable characters (no newline, carriage return,
    tab, escape, Unicode line separator or other control), since the job's
    environment is read line by line (``env``, Slurm's records, logs)."""
    if not value.isprintable():
        raise ValueError("expected one line of printable text")
    return value


#: A value of BinderHub's launch variables (untrusted: any researcher's API
#: client sends them for their own server).
_Line = Annotated[str, StringConstraints(max_length=2000), AfterValidator(_one_line)]


class LaunchOptionsError(UserError):
    """``user_options`` the spawner cannot use: an unknown key or a bad value."""


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class WorkspaceOptions(_Options):
    """The researcher's workspace for a repository and what seeds it.

    No path: anyone with a hub token can send these, and a path would let
    a server's job copy any folder of its user (their home) into a
    workspace that another's image sees. The spawner finds the files of
    ``commit`` in the build server's checkout cache."""

    slug: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")]
    commit: Annotated[str, Field(pattern=rf"^{COMMIT.pattern}$")]
    #: postBuild ran: the workspace is seeded from the repository as built
    #: into the image, not from the checkout.
    from_image: bool = False


class LaunchOptions(_Options):
    """One server launch: its image, resources and workspace.

    Resource fields override the profile's (see
    :data:`hpcbinder.jobs.request.OVERRIDABLE`); ``None`` keeps the
    profile's value.
    """

    image: Annotated[str, Field(pattern=f"^(?:{IMAGE.pattern})$")] | None = None
    profile: _Text | None = None
    partition: _Text | None = None
    time: _Text | None = None
    cpus: _Count | None = None
    mem: _Text | None = None
    gpus: _Count | None = None
    account: _Text | None = None
    qos: _Text | None = None
    workspace: WorkspaceOptions | None = None
    #: ``image`` is in the researcher's own store, not the shared one (a
    #: private repository's: :mod:`hpcbinder.images.private`): the server's
    #: job, as her, finds it there, and her workspace's checkout
    #: (:mod:`hpcbinder.jobs.privateserver`). Only an env key: never a
    #: path, nor a base.
    private: bool = False
    #: BinderHub's launch fields (its BinderSpawner's ``user_options``
    #: names), for the server's ``BINDER_*`` variables (:meth:`binder_env`).
    repo_url: _Line | None = None
    binder_ref_url: _Line | None = None
    binder_launch_host: _Line | None = None
    binder_request: _Line | None = None
    binder_persistent_request: _Line | None = None

    @model_validator(mode="after")
    def _private_is_a_key(self) -> LaunchOptions:
        if self.private and (self.image is None or not ENV_KEY.fullmatch(self.image)):
            raise ValueError("a private launch names an image key of the researcher's store")
        return self

    @classmethod
    def parse(cls, user_options: Mapping[str, object] | None) -> LaunchOptions:
        """``user_options`` as sent (a form's, the Binder service's or an
        API client's); a :class:`LaunchOptionsError` naming the first bad key."""
        try:
            return cls.model_validate(dict(user_options or {}))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "user_options"
            raise LaunchOptionsError(f"{where}: {_reason(first['type'], first['msg'])}") from None

    def resource_overrides(self) -> dict[str, str | int | None]:
        """The profile overrides this launch sets."""
        return {
            name: getattr(self, name) for name in OVERRIDABLE if getattr(self, name) is not None
        }

    def binder_env(self) -> dict[str, str]:
        """The server's ``BINDER_*`` variables, as BinderHub's spawner sets
        them: each launch field given, upper-cased (``repo_url`` as
        ``BINDER_REPO_URL``)."""
        fields = {
            "BINDER_REPO_URL": self.repo_url,
            "BINDER_REF_URL": self.binder_ref_url,
            "BINDER_LAUNCH_HOST": self.binder_launch_host,
            "BINDER_REQUEST": self.binder_request,
            "BINDER_PERSISTENT_REQUEST": self.binder_persistent_request,
        }
        return {name: value for name, value in fields.items() if value is not None}

    def user_options(self) -> dict[str, object]:
        """The JSON the hub stores as this server's ``user_options``."""
        return self.model_dump(exclude_none=True)


def _reason(kind: str, message: str) -> str:
    if kind == "extra_forbidden":
        return "not an option a launch can set"
    if kind == "string_pattern_mismatch":
        return "not a valid value"
    return message.removeprefix("Value error, ")
