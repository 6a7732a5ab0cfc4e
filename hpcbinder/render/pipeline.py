"""Spec to definition: resolve, fetch, detect, render — the front half of
every launch and build, as one call with typed results."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcbinder import buildpacks, childcall
from hpcbinder.buildpacks.base import BuildPlan
from hpcbinder.config import Site
from hpcbinder.render import definition as render
from hpcbinder.sources import providers
from hpcbinder.sources.checkout import check_links, tree_id
from hpcbinder.sources.providers import ResolvedRepo

#: How long reading a repository's configuration and rendering its
#: definition may take (a large repository's take well under a second).
PLAN_SECONDS = 60.0


@dataclass(frozen=True)
class Prepared:
    """A repository at an exact commit, checked out, planned and rendered."""

    repo: ResolvedRepo
    checkout: Path
    plan: BuildPlan
    rendered: render.Rendered

    def fetched(self) -> Fetched:
        return Fetched(
            self.repo,
            self.checkout,
            self.rendered.env_key,
            self.plan.reads_whole_repo,
            tuple(self.rendered.warnings),
        )


@dataclass(frozen=True)
class Fetched:
    """What the build server tells its clients of a prepared repository:
    where its checkout is (readable by researchers' jobs), its image's env
    key, and whether the image holds the repository as built."""

    repo: ResolvedRepo
    checkout: Path
    env_key: str
    reads_whole_repo: bool  # postBuild & co. ran: seed workspaces from the image
    warnings: tuple[str, ...] = ()
    #: Built as the researcher into her own store (hpcbinder.images.private),
    #: never said by the build server.
    private: bool = False

    def to_json(self) -> dict[str, Any]:
        repo = self.repo
        return {
            "repo": {"spec": repo.spec, "url": repo.url, "ref": repo.ref, "commit": repo.commit},
            "checkout": str(self.checkout),
            "env_key": self.env_key,
            "reads_whole_repo": self.reads_whole_repo,
            "warnings": list(self.warnings),
            "private": self.private,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Fetched:
        repo = data["repo"]
        return cls(
            ResolvedRepo(
                str(repo["spec"]), str(repo["url"]), str(repo["ref"]), str(repo["commit"])
            ),
            Path(str(data["checkout"])),
            str(data["env_key"]),
            bool(data["reads_whole_repo"]),
            tuple(str(w) for w in data["warnings"]),
            bool(data.get("private", False)),
        )


def prepare(spec: str, site: Site) -> Prepared:
    """Everything up to the build. Bad input raises a :class:`UserError`."""
    provider = providers.parse_spec(spec, site.repos)
    resolved = provider.resolve()
    checkout = providers.checkout(provider, resolved, providers.cache_root(site.repos))
    check_links(checkout)  # before anything reads or copies a file of it
    plan, rendered = childcall.call(
        _plan_and_render, checkout, site, deadline=PLAN_SECONDS, what="reading the repository"
    )
    return Prepared(resolved, checkout, plan, rendered)


def _plan_and_render(checkout: Path, site: Site) -> tuple[BuildPlan, render.Rendered]:
    """The work whose time the repository's files choose (in a child process)."""
    plan = buildpacks.detect(checkout)
    tree = tree_id(checkout) if plan.reads_whole_repo else None
    return plan, render.render_definition(plan, site, checkout, tree)
