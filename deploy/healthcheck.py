#!/usr/bin/env python3
"""Container health check: GET a path (default /healthz) of the service running in this container.

The service is found from BATON_SERVICE, else from PID 1's command line (`python -m services.<name>`), so the
check works however the container was started; its port follows BATON_<SERVICE>_PORT like the service does.
Standard library only: the slim image has no curl.
"""

from __future__ import annotations

import os
import sys
import urllib.request
from pathlib import Path

DEFAULT_PORTS = {"lead_intake": 8001, "scoring": 8002, "routing": 8003, "feedback": 8004}


def running_service() -> str | None:
    """The service this container runs, if any."""
    named = os.environ.get("BATON_SERVICE")
    if named in DEFAULT_PORTS:
        return named
    try:
        argv = Path("/proc/1/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return None
    for arg in argv:
        if arg.startswith("services.") and arg.removeprefix("services.") in DEFAULT_PORTS:
            return arg.removeprefix("services.")
    return None


def main() -> int:
    """0 when the service answers 200 within 2 s, else 1."""
    path = sys.argv[1] if len(sys.argv) > 1 else "/healthz"
    service = running_service()
    if service is None:
        print("healthcheck: no Baton service runs in this container", file=sys.stderr)
        return 1
    port = os.environ.get(f"BATON_{service.upper()}_PORT", str(DEFAULT_PORTS[service]))
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as answer:
            return 0 if answer.status == 200 else 1
    except OSError as exc:
        print(f"healthcheck: {service} {path}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
