"""One Baton service as a process on a throwaway PostgreSQL and Kafka, for the per-service benches."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.infra import KafkaBroker, PostgresServer, free_port  # noqa: E402

ADMIN_KEY = "bench-admin-key"


@dataclass(frozen=True)
class Running:
    """Where the service answers, the broker it uses, and the environment it runs with."""

    url: str
    kafka: KafkaBroker
    env: dict[str, str]


@contextmanager
def one_service(name: str, *, before_start: object = None) -> Iterator[Running]:
    """Start PostgreSQL, Kafka and `python -m services.<name>` (log level WARNING, admin key set), wait until it
    answers /readyz, and stop everything afterwards. `before_start(kafka)` runs once the broker is up."""
    run_dir = ROOT / "var" / "bench"
    run_dir.mkdir(parents=True, exist_ok=True)
    kafka = KafkaBroker.start(run_dir, use_given=False)
    postgres = PostgresServer.start(use_given=False)
    port, prefix = free_port(), f"BATON_{name.upper()}_"
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "BATON_ADMIN_KEY": ADMIN_KEY,
        prefix + "DATABASE_URL": postgres.create_database(f"baton_bench_{name}"),
        prefix + "PORT": str(port),
        prefix + "LOG_LEVEL": "WARNING",
    }
    if callable(before_start):
        before_start(kafka)
    with (run_dir / f"{name}.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", f"services.{name}"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url)
        yield Running(url, kafka, env)
    finally:
        process.terminate()
        process.wait(timeout=20)
        kafka.stop()
        postgres.stop()


def wait_ready(url: str, timeout: float = 60) -> None:
    """Poll /readyz until the service answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2):
                return
        except OSError:
            time.sleep(0.1)  # poll
    raise SystemExit(f"{url} not ready after {timeout}s")
