"""Serves GET /version on 127.0.0.1:PORT. SIGHUP re-executes the process in place (same pid),
so a restart picks up whatever version is installed in the virtualenv now."""

import http.server
import os
import signal
import sys

import hello_app


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path != "/version":
            self.send_error(404)
            return
        body = (hello_app.__version__ + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

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
