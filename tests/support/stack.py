"""The four services as real OS processes, for end-to-end and fault tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.support.infra import ROOT, free_port

SERVICES = ("lead_intake", "scoring", "routing", "feedback")


@dataclass
class ServiceProcess:
    """One service run with `python -m services.<name>`, its output in a log file."""

    name: str
    port: int
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Base URL of the service."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, extra_env: dict[str, str] | None = None) -> None:
        """Start the process (appending to its log), with `extra_env` (e.g. failpoints) for this run only."""
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", f"services.{self.name}"],
            cwd=ROOT,
            env={**os.environ, **self.env, **(extra_env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Poll /readyz until the service answers 200, or fail with its log tail."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                break
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)  # poll
        raise AssertionError(f"{self.name} not ready in {timeout}s; log tail:\n{self.log_tail()}")

    def signal(self, sig: signal.Signals) -> None:
        """Send a signal and wait for the process to end."""
        assert self.process is not None
        self.process.send_signal(sig)
        self.process.wait(timeout=30)

    def exited(self) -> bool:
        """True once the process has ended."""
        return self.process is not None and self.process.poll() is not None

    def replica(self, index: int) -> ServiceProcess:
        """Another process of the same service (same database and group) on its own port."""
        port = free_port()
        env = {**self.env, f"BATON_{self.name.upper()}_PORT": str(port)}
        return ServiceProcess(self.name, port, env, self.log_path.with_name(f"{self.name}-{index}.log"))

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not stop in time."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def log_tail(self, lines: int = 40) -> str:
        """The last lines the service printed."""
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Stack:
    """All four services against one broker and one PostgreSQL database (a schema each)."""

    services: dict[str, ServiceProcess] = field(default_factory=dict)
    admin_key: str = "test-admin-key"
    database_url: str = ""

    @classmethod
    def create(
        cls,
        *,
        bootstrap_servers: str,
        database_url: str,
        log_dir: Path,
        extra_env: dict[str, str] | None = None,
        group_suffix: str | None = None,
    ) -> Stack:
        """Describe the stack (every service also gets `extra_env`, e.g. broker security); nothing starts until
        `start`. A second stack on the same broker needs a `group_suffix`: with the same consumer groups the two
        stacks would split the partitions, each applying half of the other's events to its own database."""
        stack = cls(database_url=database_url)
        log_dir.mkdir(parents=True, exist_ok=True)
        for name in SERVICES:
            port = free_port()
            prefix = f"BATON_{name.upper()}_"
            env = {
                "KAFKA_BOOTSTRAP_SERVERS": bootstrap_servers,
                "BATON_ADMIN_KEY": stack.admin_key,
                prefix + "DATABASE_URL": database_url,
                prefix + "PORT": str(port),
                **({prefix + "CONSUMER_GROUP": f"baton-{name}-{group_suffix}"} if group_suffix else {}),
                **(extra_env or {}),
            }
            stack.services[name] = ServiceProcess(name, port, env, log_dir / f"{name}.log")
        return stack

    def __getitem__(self, name: str) -> ServiceProcess:
        return self.services[name]

    @property
    def headers(self) -> dict[str, str]:
        """Authorization for every call."""
        return {"Authorization": f"Bearer {self.admin_key}"}

    def start(self) -> None:
        """Start every service and wait until all are ready."""
        for service in self.services.values():
            service.start()
        for service in self.services.values():
            service.wait_ready()

    def stop(self) -> None:
        """Stop every service."""
        for service in self.services.values():
            service.stop()


@contextmanager
def running_stack(
    *,
    reps: Sequence[dict[str, Any]],
    bootstrap_servers: str,
    database_url: str,
    log_dir: Path,
    extra_env: dict[str, str] | None = None,
    group_suffix: str | None = None,
) -> Iterator[Stack]:
    """A started stack with `reps` added to routing; stopped when the block ends."""
    stack = Stack.create(
        bootstrap_servers=bootstrap_servers,
        database_url=database_url,
        log_dir=log_dir,
        extra_env=extra_env,
        group_suffix=group_suffix,
    )
    try:
        stack.start()
        for rep in reps:
            response = httpx.post(stack["routing"].url + "/v1/reps", json=rep, headers=stack.headers)
            assert response.status_code in (201, 409), response.text
        yield stack
    finally:
        stack.stop()
