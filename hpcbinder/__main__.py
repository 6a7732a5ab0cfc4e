"""``python -m hpcbinder``: the same as the ``hpcbinder`` command."""

from hpcbinder.cli.main import main

main()
