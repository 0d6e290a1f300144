"""`make run`: Kafka and the four services on this machine, embedded defaults, stopped cleanly on Ctrl-C."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parents[1]
VAR = ROOT / "var"
SERVICES = {"lead_intake": 8001, "scoring": 8002, "routing": 8003, "feedback": 8004}


def admin_key() -> str:
    """BATON_ADMIN_KEY if set, else a key generated once and kept in var/admin_key."""
    given = os.environ.get("BATON_ADMIN_KEY")
    if given:
        return given
    path = VAR / "admin_key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(24))
        path.chmod(0o600)
    return path.read_text().strip()


def start_kafka() -> str | None:
    """Start the local broker unless KAFKA_BOOTSTRAP_SERVERS points elsewhere; returns its port if started."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        return None
    port = os.environ.get("KAFKA_PORT", "9092")
    env = {**os.environ, "KAFKA_PORT": port}
    subprocess.run(["bash", str(ROOT / "deploy/kafka/kafka.sh"), "start"], env=env, check=True, stdout=sys.stderr)
    os.environ["KAFKA_BOOTSTRAP_SERVERS"] = f"127.0.0.1:{port}"
    return port


def stop_kafka(port: str | None) -> None:
    """Stop the broker this run started (its data stays, like the SQLite files)."""
    if port is not None:
        env = {**os.environ, "KAFKA_PORT": port}
        subprocess.run(["bash", str(ROOT / "deploy/kafka/kafka.sh"), "stop"], env=env, check=False)


def start_services(key: str) -> dict[str, subprocess.Popen[bytes]]:
    """One process per service, logging to var/log/<service>.log."""
    (VAR / "log").mkdir(parents=True, exist_ok=True)
    processes = {}
    for name, default_port in SERVICES.items():
        env = {**os.environ, "BATON_ADMIN_KEY": key}
        env.setdefault(f"BATON_{name.upper()}_PORT", str(default_port))
        with (VAR / "log" / f"{name}.log").open("ab") as log:
            processes[name] = subprocess.Popen(
                [sys.executable, "-m", f"services.{name}"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
            )
    return processes


def port_of(name: str) -> int:
    """The port a service listens on."""
    return int(os.environ.get(f"BATON_{name.upper()}_PORT", SERVICES[name]))


def wait_ready(processes: dict[str, subprocess.Popen[bytes]], timeout: float = 90.0) -> None:
    """Poll every service's /readyz until all answer 200."""
    pending = set(processes)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for name in sorted(pending):
            if processes[name].poll() is not None:
                raise SystemExit(f"{name} exited; see var/log/{name}.log")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port_of(name)}/readyz", timeout=2) as answer:
                    if answer.status == 200:
                        pending.discard(name)
            except OSError:
                pass
        time.sleep(0.2)  # poll
    if pending:
        raise SystemExit(f"not ready after {timeout}s: {', '.join(sorted(pending))}; see var/log/")


def stop_services(processes: dict[str, subprocess.Popen[bytes]]) -> None:
    """SIGTERM every service, SIGKILL what does not stop within 15 s."""
    for process in processes.values():
        if process.poll() is None:
            process.terminate()
    for process in processes.values():
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()


def banner(key: str, seconds: float) -> str:
    """What the user needs to start posting leads."""
    urls = "\n".join(f"  {name:<12} http://127.0.0.1:{port_of(name)}/docs" for name in SERVICES)
    intake, feedback = port_of("lead_intake"), port_of("feedback")
    return f"""
Baton is running (ready in {seconds:.1f}s). Broker: {os.environ["KAFKA_BOOTSTRAP_SERVERS"]}. Logs: var/log/.
{urls}
Admin key: {key}

Try:
  curl -s -X POST http://127.0.0.1:{intake}/v1/leads -H "Authorization: Bearer {key}" \\
       -H "Content-Type: application/json" -d '{{"email": "ada@example.com", "job_title": "CTO"}}'
  curl -s http://127.0.0.1:{feedback}/v1/leads/<lead_id>/timeline -H "Authorization: Bearer {key}"

Press Ctrl-C to stop.
"""


def main() -> None:
    """Run everything until interrupted."""
    started = time.monotonic()
    VAR.mkdir(exist_ok=True)
    key = admin_key()
    kafka_port = start_kafka()
    processes: dict[str, subprocess.Popen[bytes]] = {}
    stopping = False

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        processes = start_services(key)
        wait_ready(processes)
        print(banner(key, time.monotonic() - started), flush=True)
        while not stopping and all(process.poll() is None for process in processes.values()):
            time.sleep(0.5)  # poll
    finally:
        print("stopping Baton ...", flush=True)
        stop_services(processes)
        stop_kafka(kafka_port)


if __name__ == "__main__":
    main()
