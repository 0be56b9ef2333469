# Sourced by scripts/test and scripts/lambda-watch: the AWS API emulator (moto 5.2.5 with
# tests/emulator/server.py's additions) in the venv $venv, started on a free loopback port.

# Installs moto into $venv if it is not there. botocore is pinned too: the emulator's
# CloudWatch bridge encodes CBOR with its codec and model.
emulator_install() {
  if ! "$venv/bin/python" -c 'import moto, botocore, sys; sys.exit(moto.__version__ != "5.2.5" or botocore.__version__ != "1.44.18")' 2>/dev/null; then
    echo "installing the moto emulator into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check 'moto[sqs,ssm,ec2,stepfunctions]==5.2.5' 'boto3==1.44.18' 'botocore==1.44.18' flask flask-cors
  fi
}

# Starts it, stopped when the shell exits, and exports what the SDKs need to reach it
# (AWS_ENDPOINT_URL and test credentials).
emulator_start() {
  local port log
  port=$("$venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  log=$(mktemp -t moto.XXXXXX.log)
  "$venv/bin/python" tests/emulator/server.py "$port" >"$log" 2>&1 &
  emulator_pid=$!
  # What stops it, for a caller that sets a trap of its own.
  emulator_stop="kill $emulator_pid 2>/dev/null; wait $emulator_pid 2>/dev/null; rm -f '$log'"
  # shellcheck disable=SC2064 # the pid and log are fixed now
  trap "$emulator_stop" EXIT
  "$venv/bin/python" - "$port" <<'PY' || { cat "$log" >&2; exit 1; }
import sys, time, urllib.request
for _ in range(150):
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/moto-api/", timeout=1)
        sys.exit(0)
    except Exception:
        time.sleep(0.1)
sys.exit("moto did not start within 15 s")
PY
  export AWS_ENDPOINT_URL="http://127.0.0.1:$port" AWS_REGION=us-east-1 \
    AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_EC2_METADATA_DISABLED=true
}
