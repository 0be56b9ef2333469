"""Service control for one node, run in the node's directory:

  python -m hello_app.ctl restart PORT        SIGHUP the running service (it re-executes
                                              itself with the installed version), or start it
  python -m hello_app.ctl check PORT VERSION  exit 0 only if VERSION answers on PORT
  python -m hello_app.ctl stop PORT

The pid lives in ./service.pid, the service's output in ./service.log.
"""

import os
import signal
import subprocess
import sys
import urllib.request


def running_pid():
    try:
        pid = int(open("service.pid").read().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    # A service that died may linger as a zombie where nothing reaps orphans (containers).
    try:
        if open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z":
            return None
    except OSError:
        pass
    return pid


def start(port):
    log = open("service.log", "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "hello_app.server", port],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
    )
    with open("service.pid.tmp", "w") as f:
        f.write(str(proc.pid))
    os.replace("service.pid.tmp", "service.pid")
    print(f"started pid {proc.pid}")


def check(port, expected):
    try:
        got = urllib.request.urlopen(f"http://127.0.0.1:{port}/version", timeout=5).read().decode().strip()
    except OSError as e:
        sys.exit(f"nothing answers on port {port}: {getattr(e, 'reason', e)}")
    if got != expected:
        sys.exit(f"port {port} serves {got}, expected {expected}")
    print(f"port {port} serves {got}")


def main():
    command, port = sys.argv[1], sys.argv[2]
    if command == "check":
        return check(port, sys.argv[3])
    pid = running_pid()
    if command == "restart" and pid:
        os.kill(pid, signal.SIGHUP)
        print(f"sent SIGHUP to pid {pid}")
    elif command in ("restart", "start"):
        start(port)
    elif command == "stop":
        if pid:
            os.kill(pid, signal.SIGTERM)
    else:
        sys.exit(f"usage: python -m hello_app.ctl start|restart|stop PORT")


if __name__ == "__main__":
    main()
