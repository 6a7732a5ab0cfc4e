"""Binder specs to commits and checkouts: providers, fetch bounds, what a checkout may contain."""
