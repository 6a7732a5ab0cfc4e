"""Spec to definition: resolve, fetch, detect, render — the front half of
every launch and build, as one call with typed results."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hpcbinder import buildpacks, git, render, repoproviders
from hpcbinder.buildpacks.base import BuildPlan
from hpcbinder.config import Site
from hpcbinder.repoproviders import ResolvedRepo


@dataclass(frozen=True)
class Prepared:
    """A repository at an exact commit, checked out, planned and rendered."""

    repo: ResolvedRepo
    checkout: Path
    plan: BuildPlan
    rendered: render.Rendered


def prepare(spec: str, site: Site) -> Prepared:
    """Everything up to the build. Bad input raises a :class:`UserError`."""
    provider = repoproviders.parse_spec(spec, site.repos)
    resolved = provider.resolve()
    checkout = repoproviders.checkout(provider, resolved, repoproviders.cache_root(site.repos))
    plan = buildpacks.detect(checkout)
    tree = git.tree_id(checkout) if plan.reads_whole_repo else None
    return Prepared(resolved, checkout, plan, render.render(plan, site, checkout, tree))
