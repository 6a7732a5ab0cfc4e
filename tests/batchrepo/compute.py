"""A script run by batch tests: prints its arguments, exits as told."""

import argparse
import sys

parser = argparse.ArgumentParser()
parser.add_argument("words", nargs="*")
parser.add_argument("--exit-code", "--exit_code", type=int, default=0)  # grid: exit_code
parser.add_argument("--scale", type=float, default=1.0)
options = parser.parse_args()
print("words:", " ".join(options.words), "scale:", options.scale * 2)
sys.exit(options.exit_code)
