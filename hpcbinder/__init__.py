"""hpcbinder: Binder for supercomputing centres.

Binder links build a repository's environment into an Apptainer image and
start JupyterLab in it, in a Slurm job on a compute node, as the user.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
