"""Use cases of feedback: record journey steps and outcomes."""

from __future__ import annotations

from typing import Literal

from sqlalchemy.exc import IntegrityError

from services.feedback import store
from services.feedback.domain import JourneyStep, outcome_step
from shared.envelope import utc_now
from shared.events import OutcomeRecordedV1
from shared.topics import LEADS_OUTCOMES
from shared.uow import Transaction, UnitOfWork


async def record_step(tx: Transaction, *, event_id: str, step: JourneyStep) -> None:
    """Add a step to a lead's journey."""
    await store.add_step(tx.session, event_id=event_id, step=step)


async def record_outcome(uow: UnitOfWork, outcome: OutcomeRecordedV1) -> tuple[str, Literal["recorded", "duplicate"]]:
    """Store an outcome, add it to the journey and emit `leads.outcomes`; a repeated external id changes nothing."""
    try:
        async with uow.transaction() as tx:
            if outcome.external_id and (
                known := await store.find_outcome_id(tx.session, external_id=outcome.external_id)
            ):
                return known, "duplicate"
            await store.insert_outcome(
                tx.session,
                **outcome.model_dump(exclude={"external_id"}),
                external_id=outcome.external_id,
                recorded_at=utc_now(),
            )
            event = await tx.emit(outcome)
            # Our own event comes back on leads.outcomes: the inbox row makes that redelivery a no-op.
            await tx.mark_processed(event.id, topic=LEADS_OUTCOMES)
            await store.add_step(tx.session, event_id=event.id, step=outcome_step(outcome))
    except IntegrityError:
        if outcome.external_id:
            async with uow.read() as session:
                known = await store.find_outcome_id(session, external_id=outcome.external_id)
            if known:
                return known, "duplicate"
        raise
    return outcome.outcome_id, "recorded"
