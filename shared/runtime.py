"""A service's moving parts — engine, unit of work, outbox relay, consumer — built and stopped in its lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import MetaData, text
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.consumer import EventConsumer, Handler
from shared.db import Migration, PostgresTls, make_engine, migrate
from shared.failpoints import Failpoints
from shared.kafka import KafkaPublisher, KafkaSecurity, broker_reachable, ensure_topics
from shared.metrics import ServiceMetrics, metrics_context
from shared.outbox import OutboxRelay, notify_channel_for
from shared.retention import pruner
from shared.sessions import make_sessions
from shared.settings import ServiceSettings
from shared.topics import ALL_TOPICS, dead_letter_topic
from shared.uow import UnitOfWork

log = logging.getLogger(__name__)

# A shutdown never waits longer than this for background work: uncommitted work is redelivered anyway.
STOP_SECONDS = 10.0


class ServiceRuntime:
    """Everything a service runs besides its HTTP routes; nothing is connected before `start`."""

    def __init__(
        self,
        settings: ServiceSettings,
        *,
        metadata: MetaData,
        migrations: Sequence[Migration],
        consumes: Sequence[str] = (),
        handlers: Mapping[str, Handler] | None = None,
        background: Sequence[Callable[[UnitOfWork], Coroutine[Any, Any, None]]] = (),
        raw_topics: Mapping[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self._metadata = metadata
        self._migrations = migrations
        self._consumes = tuple(consumes)
        self._handlers = dict(handlers or {})
        self._background = tuple(background)
        self._raw_topics = dict(raw_topics or {})
        self._tasks: list[asyncio.Task[None]] = []
        self._publishers: list[KafkaPublisher] = []
        self._engine: AsyncEngine | None = None
        self._uow: UnitOfWork | None = None
        self.relay: OutboxRelay | None = None
        self._consumer: EventConsumer | None = None
        self._stopping = False
        self._failpoints = Failpoints(settings.failpoints)
        self._kafka_security = KafkaSecurity.from_settings(settings)
        self.metrics = ServiceMetrics()

    @property
    def uow(self) -> UnitOfWork:
        """The service's unit of work; available once started."""
        if self._uow is None:
            raise RuntimeError("service runtime not started")
        return self._uow

    async def start(self) -> None:
        """Migrate the database, then run the outbox relay and the consumer in the background."""
        settings = self.settings
        schema = settings.resolved_database_schema()
        tls = PostgresTls.from_settings(settings)
        engine = self._engine = make_engine(settings.resolved_database_url(), schema=schema, tls=tls)
        await migrate(engine, self._migrations, schema=schema)
        sessions = make_sessions(engine)
        self.relay = OutboxRelay(
            engine=engine,
            sessions=sessions,
            metadata=self._metadata,
            publisher=self._publisher("relay"),
            lock_name=schema,
            failpoints=self._failpoints,
        )
        source = f"/baton/{settings.service_name}"
        self._uow = UnitOfWork(
            sessions,
            self._metadata,
            source=source,
            hand_over=self.relay.hand_over,
        )
        self._spawn(self.relay.run, "outbox-relay")
        if self._consumes:
            self._spawn(self._consume, "consumer")
        uow = self._uow
        for number, work in enumerate(self._background):
            self._spawn(functools.partial(work, uow), f"background-{number}")
        keep = pruner(self._metadata, outbox_keep=timedelta(hours=settings.outbox_retention_hours),
                      inbox_keep=timedelta(days=settings.inbox_retention_days))  # fmt: skip
        self._spawn(functools.partial(keep, uow), "retention")

    def _publisher(self, role: str) -> KafkaPublisher:
        publisher = KafkaPublisher(
            bootstrap_servers=self.settings.kafka_bootstrap_servers,
            client_id=f"baton-{self.settings.service_name}-{role}",
            timeout_seconds=self.settings.broker_timeout_seconds,
            security=self._kafka_security,
        )
        self._publishers.append(publisher)
        return publisher

    def _spawn(self, work: Callable[[], Coroutine[Any, Any, None]], name: str) -> None:
        task_name, context = f"{self.settings.service_name}-{name}", metrics_context(self.metrics)
        supervised = keep_running(work, task_name, stopping=lambda: self._stopping)
        self._tasks.append(asyncio.create_task(supervised, name=task_name, context=context))

    async def _consume(self) -> None:
        await self._ensure_topics()
        if self._consumer is None:
            self._consumer = self._new_consumer()
        await self._consumer.run()

    def _new_consumer(self) -> EventConsumer:
        return EventConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap_servers,
            group_id=self.settings.consumer_group or f"baton-{self.settings.service_name}",
            topics=self._consumes,
            handlers=self._handlers,
            uow=self.uow,
            dead_letters=self._publisher("dlq"),
            max_attempts=self.settings.consumer_max_attempts,
            stall_seconds=self.settings.consumer_stall_seconds,
            fetch_max_wait_ms=self.settings.consumer_fetch_max_wait_ms,
            fetch_min_bytes=self.settings.consumer_fetch_min_bytes,
            timeout_seconds=self.settings.broker_timeout_seconds,
            failpoints=self._failpoints,
            raw_topics=self._raw_topics,
            security=self._kafka_security,
        )

    async def _ensure_topics(self) -> None:
        # The broker may be down at start-up: keep trying, the outbox buffers meanwhile.
        wanted = list(
            dict.fromkeys([*ALL_TOPICS, *self._consumes, *(dead_letter_topic(topic) for topic in self._consumes)])
        )
        delay = 0.2
        while True:
            try:
                await ensure_topics(
                    self.settings.kafka_bootstrap_servers,
                    wanted,
                    partitions=self.settings.topic_partitions,
                    timeout_seconds=self.settings.broker_timeout_seconds,
                    security=self._kafka_security,
                )
                return
            except Exception as exc:
                log.warning("cannot create topics yet, retrying in %.1fs: %r", delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def stop(self) -> None:
        """Stop background work (never waiting past STOP_SECONDS), close producers and dispose of the engine."""
        self._stopping = True
        for worker in (self.relay, self._consumer):
            if worker is not None:
                worker.stop()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            _, stuck = await asyncio.wait(self._tasks, timeout=STOP_SECONDS)
            for task in stuck:
                log.error("%s did not stop within %ss; abandoning it", task.get_name(), STOP_SECONDS)
        self._tasks.clear()
        for publisher in self._publishers:
            await publisher.close()
        if self._engine is not None:
            await self._engine.dispose()

    async def readiness(self) -> dict[str, bool]:
        """Whether the database and the broker answer right now."""
        return {
            "database": await self._database_answers(),
            "broker": await broker_reachable(self.settings.kafka_bootstrap_servers, security=self._kafka_security),
        }

    async def _database_answers(self) -> bool:
        if self._engine is None:
            return False
        try:
            async with asyncio.timeout(2), self._engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
        except Exception:
            return False
        return True


async def keep_running(
    work: Callable[[], Coroutine[Any, Any, None]],
    name: str,
    *,
    stopping: Callable[[], bool],
    first_delay: float = 0.5,
    max_delay: float = 10.0,
) -> None:
    """Run a service's background work for as long as the service runs. Work that fails, ends, or is cancelled by
    anything but the service's own shutdown (a stray CancelledError from a client library) is logged and started
    again after a capped backoff: a relay or consumer that silently stopped would strand every later event."""
    delay = first_delay
    while True:
        try:
            await work()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if stopping() or (task is not None and task.cancelling()):
                raise
            log.error("%s was cancelled from within; starting it again in %.1fs", name, delay)
        except Exception:
            log.exception("%s failed; starting it again in %.1fs", name, delay)
        else:
            if stopping():
                return
            log.error("%s ended while the service runs; starting it again in %.1fs", name, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, max_delay)


async def sweep_every(sweep: Callable[[], Awaitable[int]], *, every_seconds: float, what: str) -> None:
    """Run `sweep` (it answers how much it handled) again at once while it finds work, then once every
    `every_seconds`, forever; a failure (an outage, a deadlock with a consumed batch) is logged and tried again the
    next period."""
    while True:
        try:
            while await sweep() > 0:
                pass
        except Exception as exc:
            log.warning("could not %s: %r", what, exc)
        await asyncio.sleep(every_seconds)


@contextlib.asynccontextmanager
async def standalone_unit_of_work(
    settings: ServiceSettings, *, metadata: MetaData, migrations: Sequence[Migration]
) -> AsyncIterator[UnitOfWork]:
    """A unit of work on a service's database for command-line tools; the service's own relay publishes
    whatever events they leave in the outbox (on PostgreSQL their commits NOTIFY it; on SQLite its next idle
    read finds them)."""
    schema = settings.resolved_database_schema()
    engine = make_engine(settings.resolved_database_url(), schema=schema, tls=PostgresTls.from_settings(settings))
    try:
        await migrate(engine, migrations, schema=schema)
        yield UnitOfWork(make_sessions(engine), metadata, source=f"/baton/{settings.service_name}",
                         notify_channel=notify_channel_for(engine, schema))  # fmt: skip
    finally:
        await engine.dispose()
