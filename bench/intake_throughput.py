"""Requests/s of POST /v1/leads on one uvicorn worker with the real database (PostgreSQL) and broker.

Starts a throwaway PostgreSQL and Kafka with the project's scripts, one lead_intake process, then drives it with
wrk (Debian package) for a fixed time at a fixed concurrency. Prints a line and saves var/reports/intake-*.json.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from one_service import one_service  # noqa: E402

DURATION = os.environ.get("BENCH_DURATION", "20s")
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "32"))


def main() -> None:
    """Run the measurement and report it."""
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: apt-get install -y wrk")
    with one_service("lead_intake") as service:
        wrk = ["wrk", "-t2", f"-c{CONNECTIONS}", "-s", str(ROOT / "bench" / "post_lead.lua")]
        env = {**service.env, "BENCH_RUN": "warm"}
        subprocess.run([*wrk, "-d3s", service.url], env=env, check=True, capture_output=True)
        measured = [*wrk, f"-d{DURATION}", service.url]
        output = subprocess.run(
            measured, env={**env, "BENCH_RUN": str(time.time_ns())}, check=True, capture_output=True, text=True
        ).stdout
    report(output)


def report(output: str) -> None:
    """Parse wrk's RESULT line, print it and save it."""
    match = re.search(r"RESULT requests=(\d+) duration_us=(\d+) non2xx=(\d+) p50_us=(\d+) p99_us=(\d+)", output)
    if match is None:
        raise SystemExit(f"no RESULT in wrk output:\n{output}")
    requests, duration_us, non2xx, p50, p99 = (int(group) for group in match.groups())
    result = {
        "requests_per_second": round(requests / (duration_us / 1e6), 1),
        "requests": requests,
        "non_2xx": non2xx,
        "p50_ms": p50 / 1000,
        "p99_ms": p99 / 1000,
        "connections": CONNECTIONS,
        "workers": 1,
        "database": "postgresql",
        "at": datetime.now(UTC).isoformat(),
    }
    print(
        f"POST /v1/leads, 1 uvicorn worker, PostgreSQL: {result['requests_per_second']} req/s "
        f"(p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, {non2xx} non-2xx of {requests})"
    )
    path = ROOT / "var" / "reports" / f"intake-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
