"""The system under test: its own broker, its own PostgreSQL and the four services, each a separate OS process."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncEngine

from tests.faults.load import LeadStream
from tests.support.infra import KafkaBroker, PostgresServer
from tests.support.polling import eventually
from tests.support.stack import ServiceProcess, Stack


@dataclass
class FaultCluster:
    """Everything a scenario may break, and the means to bring it back."""

    kafka: KafkaBroker
    postgres: PostgresServer
    stack: Stack
    engine: AsyncEngine
    replicas: list[ServiceProcess] = field(default_factory=list)

    async def ensure_healthy(self) -> None:
        """Restart whatever a previous scenario left dead, and wait until every service is ready."""
        for replica in self.replicas:
            replica.stop()
        self.replicas.clear()
        for service in self.stack.services.values():
            if service.process is None or service.exited():
                service.start()
        for service in self.stack.services.values():
            await asyncio.to_thread(service.wait_ready)


@dataclass
class FaultContext:
    """What a scenario's fault sees: the cluster, the running load, the signal of this run."""

    cluster: FaultCluster
    stream: LeadStream
    kill_signal: signal.Signals
    cleared_at: float = field(default_factory=time.monotonic)
    extra_leads: set[str] = field(default_factory=set)
    failures: list[str] = field(default_factory=list)
    notes: dict[str, object] = field(default_factory=dict)

    def service(self, name: str) -> ServiceProcess:
        """A service process of the stack."""
        return self.cluster.stack[name]

    async def when_acknowledged(self, fraction: float) -> None:
        """Wait until the load has had this fraction of its leads acknowledged."""
        wanted = int(self.stream.count * fraction)

        async def reached() -> bool:
            return len(self.stream.report.acknowledged) >= wanted

        await eventually(reached, timeout=120, message=f"{wanted} leads acknowledged")

    async def signal(self, service: ServiceProcess) -> None:
        """Send this run's signal to a service and wait for it to end."""
        await asyncio.to_thread(service.signal, self.kill_signal)

    async def restart(self, service: ServiceProcess, extra_env: dict[str, str] | None = None) -> None:
        """Start a service again and wait until it is ready; the fault counts as cleared from here."""
        service.start(extra_env)
        await asyncio.to_thread(service.wait_ready)
        self.cleared_at = time.monotonic()

    async def wait_exit(self, service: ServiceProcess, *, timeout: float = 120) -> None:
        """Wait for a service to die at its failpoint."""

        async def exited() -> bool:
            return service.exited()

        await eventually(exited, timeout=timeout, message=f"{service.name} reached its failpoint")

    async def hold(self, seconds: float, observe: Callable[[], Awaitable[None]] | None = None) -> None:
        """Keep a fault in place for `seconds` (the outage itself), observing the system meanwhile."""
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            if observe is not None:
                await observe()
            await asyncio.sleep(0.5)  # poll: an outage lasts this long by design
