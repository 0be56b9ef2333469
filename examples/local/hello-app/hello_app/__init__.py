"""hello-app: the tiny service the local example deploys. Its version is stamped in at build time."""

__version__ = "0.0.0"
# Set in a build made to fail its health check (the demo's 1.2.0).
BROKEN_ON_PURPOSE = False
# Set in builds made to serve badly (the metric checks' tests): this many of every 100
# requests to /hello answer 500, and each takes this much longer.
ERROR_PERCENT = 0
ADDED_LATENCY_MS = 0
