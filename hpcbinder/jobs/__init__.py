"""Slurm jobs: resource requests, server and batch job scripts, run records."""
