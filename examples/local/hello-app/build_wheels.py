#!/usr/bin/env python3
"""Builds hello-app wheels offline, with the standard library only (no index, no build
backend): `build_wheels.py OUT_DIR VERSION[:FLAG,...] ...`, where a flag is `broken` (it
will not start), `errors=N` (N of every 100 requests to /hello answer 500) or
`latency=MS` (each takes MS longer).

A wheel is a zip of the package plus a .dist-info with METADATA, WHEEL and RECORD (the
sha256 and size of every file); pip installs it like any other.
"""
import base64
import hashlib
import pathlib
import sys
import zipfile

SRC = pathlib.Path(__file__).parent / "hello_app"


def record_line(name, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def build(out, version, flags):
    files = {}
    for path in sorted(SRC.glob("*.py")):
        text = path.read_text()
        if path.name == "__init__.py":
            text = text.replace('__version__ = "0.0.0"', f'__version__ = "{version}"')
            text = text.replace("BROKEN_ON_PURPOSE = False", f"BROKEN_ON_PURPOSE = {'broken' in flags}")
            text = text.replace("ERROR_PERCENT = 0", f"ERROR_PERCENT = {int(flags.get('errors', 0))}")
            text = text.replace("ADDED_LATENCY_MS = 0", f"ADDED_LATENCY_MS = {int(flags.get('latency', 0))}")
        files[f"hello_app/{path.name}"] = text.encode()
    info = f"hello_app-{version}.dist-info"
    files[f"{info}/METADATA"] = (
        f"Metadata-Version: 2.1\nName: hello-app\nVersion: {version}\n"
        "Summary: The tiny service the shipit local example deploys\n"
    ).encode()
    files[f"{info}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: shipit-example\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    record = "\n".join(record_line(n, d) for n, d in files.items()) + f"\n{info}/RECORD,,\n"
    files[f"{info}/RECORD"] = record.encode()
    target = out / f"hello_app-{version}-py3-none-any.whl"
    tmp = out / f".{target.name}.tmp"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0)), data)
    tmp.replace(target)  # appear whole: a package directory watcher never sees half a file
    print(target)


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    out = pathlib.Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for spec in sys.argv[2:]:
        version, _, spec_flags = spec.partition(":")
        flags = dict(f.partition("=")[::2] for f in spec_flags.split(",") if f)
        build(out, version, flags)


if __name__ == "__main__":
    main()
