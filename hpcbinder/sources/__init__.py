"""Binder specs to commits and checkouts: providers, fetch bounds, what a checkout may contain.

Importing any of it registers every provider: the archive providers
(:mod:`hpcbinder.sources.records`) build on :mod:`~hpcbinder.sources.providers`
and add themselves to its ``PROVIDERS``.
"""

from hpcbinder.sources import records as records
