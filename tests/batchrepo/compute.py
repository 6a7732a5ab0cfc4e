"""A script run by batch tests: prints its arguments, exits as told."""

import argparse
import os
import sys

parser = argparse.ArgumentParser()
parser.add_argument("words", nargs="*")
parser.add_argument("--exit-code", "--exit_code", type=int, default=0)  # grid: exit_code
parser.add_argument("--scale", type=float, default=1.0)
options = parser.parse_args()
print("words:", " ".join(options.words), "scale:", options.scale * 2)
# Who runs it, in which job: the researcher's own variables, passed by name.
print("user:", os.environ.get("USER"), "job:", os.environ.get("SLURM_JOB_ID"))
sys.exit(options.exit_code)
