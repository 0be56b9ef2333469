"""hello-app: the tiny service the local example deploys. Its version is stamped in at build time."""

__version__ = "0.0.0"
# Set in a build made to fail its health check (the demo's 1.2.0).
BROKEN_ON_PURPOSE = False
