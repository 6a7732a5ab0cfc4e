"""The ``hpcbinder`` command line."""
