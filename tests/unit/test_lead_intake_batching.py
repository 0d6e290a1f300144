"""Group commit of submitted leads: shared transactions, yet each submission answered as if it had been alone."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from opentelemetry import trace
from sqlalchemy import select
from sqlalchemy.exc import OperationalError, StatementError
from sqlalchemy.ext.asyncio import AsyncEngine

from services.lead_intake import store
from services.lead_intake.batching import CaptureStopped, LeadCaptureBatcher
from services.lead_intake.domain import Lead
from services.lead_intake.service import capture_lead
from shared.db import make_engine
from shared.events import LeadCapturedV1, LeadMergedV1, parse_payload
from shared.sessions import make_sessions
from shared.tables import OUTBOX
from shared.tracing import configure_tracing
from shared.uow import Transaction, UnitOfWork
from tests.unit.fakes import migrated_unit_of_work, outbox_events

AT = datetime(2024, 5, 1, tzinfo=UTC)


class CountingUnitOfWork(UnitOfWork):
    """The real unit of work, counting the transactions it opens."""

    transactions = 0

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        self.transactions += 1
        async with super().transaction() as tx:
            yield tx


async def counting_unit_of_work(engine: AsyncEngine) -> CountingUnitOfWork:
    await migrated_unit_of_work(engine, store.metadata, store.MIGRATIONS, service="lead_intake")
    return CountingUnitOfWork(make_sessions(engine), store.metadata, source="/baton/lead_intake")


@contextlib.asynccontextmanager
async def running(uow: UnitOfWork) -> AsyncIterator[LeadCaptureBatcher]:
    batcher = LeadCaptureBatcher()
    worker = asyncio.create_task(batcher.run(uow))
    try:
        yield batcher
    finally:
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker


@pytest.fixture
async def uow(engine: AsyncEngine) -> CountingUnitOfWork:
    return await counting_unit_of_work(engine)


@pytest.fixture
async def batcher(uow: UnitOfWork) -> AsyncIterator[LeadCaptureBatcher]:
    async with running(uow) as batcher:
        yield batcher


def lead(number: int, *, email: str | None = None, company: str | None = None, job_title: str | None = None) -> Lead:
    email = email or f"p{number}@acme.test"
    return Lead(lead_id=f"lead-{number}", email=email, captured_at=AT, company=company, job_title=job_title)


async def test_a_lone_submission_is_stored_without_waiting_for_others(batcher: LeadCaptureBatcher) -> None:
    assert await asyncio.wait_for(batcher.capture(lead(1)), timeout=10) == ("lead-1", "captured")


async def test_concurrent_submissions_share_transactions_and_each_gets_its_own_lead(
    batcher: LeadCaptureBatcher, uow: CountingUnitOfWork
) -> None:
    answers = await asyncio.gather(*(batcher.capture(lead(number)) for number in range(200)))

    assert answers == [(f"lead-{number}", "captured") for number in range(200)]
    assert uow.transactions < 20  # the migration's are not counted: this unit of work only captured
    captured = [parse_payload(event, LeadCapturedV1) for event in await outbox_events(uow, store.metadata)]
    assert sorted(event.lead_id for event in captured) == sorted(f"lead-{number}" for number in range(200))
    async with uow.read() as session:
        stored = await store.find_leads_by_email(session, emails=[f"p{number}@acme.test" for number in range(200)])
    assert {email: known.lead_id for email, known in stored.items()} == {
        f"p{number}@acme.test": f"lead-{number}" for number in range(200)
    }


async def test_one_email_twice_in_a_batch_is_captured_then_merged_as_if_submitted_in_turn(
    batcher: LeadCaptureBatcher, uow: UnitOfWork, tmp_path: Path
) -> None:
    first, again = lead(1, company="Acme"), lead(2, email="p1@acme.test", job_title="CTO")

    answers = await asyncio.gather(batcher.capture(first), batcher.capture(again))

    assert list(answers) == [("lead-1", "captured"), ("lead-1", "merged")]
    in_turn = await _captured_in_turn([first, again], tmp_path)
    assert await _effects(uow) == await _effects(in_turn)


async def _captured_in_turn(leads: list[Lead], tmp_path: Path) -> UnitOfWork:
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'in_turn.db'}", schema="unit")
    uow = await migrated_unit_of_work(engine, store.metadata, store.MIGRATIONS, service="lead_intake")
    for submitted in leads:
        await capture_lead(uow, submitted)
    return uow


async def _effects(uow: UnitOfWork) -> tuple[object, ...]:
    events = await outbox_events(uow, store.metadata)
    merged = parse_payload(events[-1], LeadMergedV1)
    async with uow.read() as session:
        stored = await store.find_lead_by_email(session, email="p1@acme.test")
        history = await store.load_history(session, lead_id="lead-1")
    assert stored is not None
    return (
        [event.type for event in events],
        (merged.lead_id, merged.company, merged.job_title, merged.changed_fields, merged.renewed_interest),
        (stored.lead_id, stored.company, stored.job_title),
        [(entry["source"], entry["changes"]) for entry in history],
    )


async def test_a_lead_the_database_refuses_fails_only_its_own_submission(
    batcher: LeadCaptureBatcher, uow: UnitOfWork
) -> None:
    naive = Lead(lead_id="lead-bad", email="bad@acme.test", captured_at=datetime(2024, 5, 1))

    answers = await asyncio.gather(
        batcher.capture(lead(1)), batcher.capture(naive), batcher.capture(lead(2)), return_exceptions=True
    )

    assert answers[0] == ("lead-1", "captured")
    assert isinstance(answers[1], StatementError)
    assert answers[2] == ("lead-2", "captured")
    async with uow.read() as session:
        stored = await store.find_leads_by_email(session, emails=["p1@acme.test", "bad@acme.test", "p2@acme.test"])
    assert sorted(stored) == ["p1@acme.test", "p2@acme.test"]


async def test_a_database_outage_fails_every_waiting_submission_at_once(tmp_path: Path) -> None:
    unreachable = make_engine(f"sqlite+aiosqlite:///{tmp_path}", schema="unit")  # a directory: cannot be opened
    uow = CountingUnitOfWork(make_sessions(unreachable), store.metadata, source="/baton/lead_intake")
    try:
        async with running(uow) as batcher:
            answers = await asyncio.gather(*(batcher.capture(lead(n)) for n in range(5)), return_exceptions=True)
    finally:
        await unreachable.dispose()

    assert all(isinstance(answer, OperationalError) for answer in answers)
    assert uow.transactions == 1  # no lead-by-lead retry against a database that is down


async def test_submissions_still_queued_when_the_service_stops_are_refused(uow: UnitOfWork) -> None:
    batcher = LeadCaptureBatcher()
    worker = asyncio.create_task(batcher.run(uow))
    assert await batcher.capture(lead(0)) == ("lead-0", "captured")  # the worker runs, now idle
    waiting = asyncio.ensure_future(batcher.capture(lead(1)))
    worker.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await worker

    with pytest.raises(CaptureStopped):
        await waiting
    with pytest.raises(CaptureStopped):
        await batcher.capture(lead(2))


async def test_each_submissions_events_continue_its_own_requests_trace(
    batcher: LeadCaptureBatcher, uow: UnitOfWork
) -> None:
    configure_tracing("unit")

    async def submitted_in_a_request(submitted: Lead) -> str:
        with trace.get_tracer("unit").start_as_current_span("POST /v1/leads") as span:
            await batcher.capture(submitted)
            return format(span.get_span_context().trace_id, "032x")

    traces = await asyncio.gather(
        submitted_in_a_request(lead(1)),
        submitted_in_a_request(lead(2)),
        submitted_in_a_request(lead(3, email="p1@acme.test")),  # the same email again: merged, its own trace
    )

    outbox = store.metadata.tables[OUTBOX]
    async with uow.read() as session:
        rows = (await session.execute(select(outbox.c.headers).order_by(outbox.c.id))).scalars().all()
    traceparents = [dict(headers)["ce_traceparent"] for headers in rows]
    assert [traceparent.split("-")[1] for traceparent in traceparents] == list(traces)
