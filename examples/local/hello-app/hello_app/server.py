"""Serves GET /version, GET /hello and GET /metrics (Prometheus text) on 127.0.0.1:PORT.
SIGHUP re-executes the process in place (same pid), so a restart picks up whatever version
is installed in the virtualenv now (and its counters start again from zero)."""

import http.server
import os
import signal
import sys
import time

import hello_app

# Upper bounds (seconds) of the request-duration histogram's buckets.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class Stats:
    requests = {}  # code -> count
    buckets = [0] * (len(BUCKETS) + 1)  # the last one is +Inf
    seconds = 0.0


def metrics():
    v = hello_app.__version__
    lines = ["# TYPE hello_requests_total counter"]
    for code in sorted(set(Stats.requests) | {"200", "500"}):
        n = Stats.requests.get(code, 0)
        lines.append(f'hello_requests_total{{version="{v}",code="{code}"}} {n}')
    lines.append("# TYPE hello_request_seconds histogram")
    total = 0
    for bound, n in zip(BUCKETS + ("+Inf",), Stats.buckets):
        total += n
        lines.append(f'hello_request_seconds_bucket{{version="{v}",le="{bound}"}} {total}')
    lines.append(f'hello_request_seconds_sum{{version="{v}"}} {Stats.seconds}')
    lines.append(f'hello_request_seconds_count{{version="{v}"}} {total}')
    return "\n".join(lines) + "\n"


class Handler(http.server.BaseHTTPRequestHandler):
    def answer(self, code, text, kind="text/plain"):
        body = text.encode()
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/version":
            self.answer(200, hello_app.__version__ + "\n")
        elif self.path == "/metrics":
            self.answer(200, metrics(), "text/plain; version=0.0.4")
        elif self.path == "/hello":
            start = time.monotonic()
            if hello_app.ADDED_LATENCY_MS:
                time.sleep(hello_app.ADDED_LATENCY_MS / 1000)
            served = sum(Stats.requests.values())
            # Deterministic and spread evenly: ERROR_PERCENT of every 100 requests fail.
            pct = hello_app.ERROR_PERCENT
            code = 500 if (served + 1) * pct // 100 > served * pct // 100 else 200
            self.answer(code, "hello\n")
            took = time.monotonic() - start
            Stats.requests[str(code)] = Stats.requests.get(str(code), 0) + 1
            Stats.seconds += took
            slot = next((i for i, b in enumerate(BUCKETS) if took <= b), len(BUCKETS))
            Stats.buckets[slot] += 1
        else:
            self.send_error(404)

    def log_message(self, *args):
        pass


def main():
    port = int(sys.argv[1])
    if hello_app.BROKEN_ON_PURPOSE:
        sys.exit(f"hello-app {hello_app.__version__} is broken on purpose and will not start")
    server = http.server.HTTPServer(("127.0.0.1", port), Handler)
    server.allow_reuse_address = True

    def reload(signum, frame):
        server.socket.close()
        os.execv(sys.executable, [sys.executable, "-m", "hello_app.server", str(port)])

    signal.signal(signal.SIGHUP, reload)
    print(f"hello-app {hello_app.__version__} serving on {port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
