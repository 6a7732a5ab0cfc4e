"""One seam per outside program: the command runner (local, as a user, over
SSH), Slurm, Apptainer, git, MUNGE."""
