"""The Binder service (``hpcbinder serve``): BinderHub-compatible links,
event stream and pages in front of JupyterHub, run as a hub service."""
