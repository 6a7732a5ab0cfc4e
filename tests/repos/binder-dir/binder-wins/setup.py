raise SystemExit("top-level setup.py must be ignored")
