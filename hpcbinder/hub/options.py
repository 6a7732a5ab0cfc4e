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
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
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

    def user_options(self) -> dict[str, object]:
        """The JSON the hub stores as this server's ``user_options``."""
        return self.model_dump(exclude_none=True)


def _reason(kind: str, message: str) -> str:
    if kind == "extra_forbidden":
        return "not an option a launch can set"
    if kind == "string_pattern_mismatch":
        return "not a valid value"
    return message.removeprefix("Value error, ")
