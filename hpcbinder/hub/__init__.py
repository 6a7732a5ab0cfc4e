"""JupyterHub's side: the spawner."""
