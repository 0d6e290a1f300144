"""Use cases of feedback: journey steps, lead cards and report cells from events; outcomes through the lifecycle."""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal, TypeVar

from sqlalchemy.exc import IntegrityError

from services.feedback import cards, store
from services.feedback.domain import JourneyStep, captured_step, outcome_step
from services.feedback.lifecycle import ImpossibleTransition
from services.feedback.runs import CardChange, CardRun
from shared.envelope import utc_now
from shared.events import LeadCapturedV1, LeadErasedV1, OutcomeRecordedV1
from shared.privacy import ERASED, forget_sent_events, mark_erased
from shared.problems import ProblemError
from shared.runtime import sweep_every
from shared.topics import LEADS_OUTCOMES
from shared.uow import Transaction, UnitOfWork

log = logging.getLogger(__name__)

OutcomeStatus = Literal["recorded", "duplicate", "pending"]


# The cards of the leads a consumed batch touches, kept across its runs and written once, before the commit.
BATCH_CARDS = "feedback.cards"


async def record_steps(tx: Transaction, steps: Sequence[tuple[str, JourneyStep]]) -> None:
    """Add (event id, step) pairs to their leads' journeys (with the batch's other steps, in order)."""
    run = _batch_run(tx)
    for event_id, step in steps:
        run.record(event_id, step)


@dataclass(frozen=True)
class CardUpdate:
    """What one consumed event does: a step on its lead's journey and a change to the lead's card."""

    event_id: str
    step: JourneyStep
    change: CardChange


async def update_cards(tx: Transaction, updates: Sequence[CardUpdate]) -> None:
    """Apply a run of events to their leads' cards (locked), in order, and move the report cells with them."""
    run = await open_run(tx, [update.step.lead_id for update in updates])
    for update in updates:
        run.record(update.event_id, update.step)
        run.change(update.step.lead_id, update.change)


async def capture_leads(tx: Transaction, captured: Sequence[tuple[str, LeadCapturedV1]]) -> None:
    """Journeys start: each card gets its lead's origin and segment, then the outcomes that came first."""
    leads = await anonymised(tx, [lead for _, lead in captured])
    run = await open_run(tx, [lead.lead_id for lead in leads], with_pending=True)
    for (event_id, _), lead in zip(captured, leads, strict=True):
        run.record(event_id, captured_step(lead))
        run.change(lead.lead_id, functools.partial(cards.on_captured, captured=lead))
        run.apply_pending(lead.lead_id)


async def apply_published_outcomes(tx: Transaction, published: Sequence[tuple[str, OutcomeRecordedV1]]) -> None:
    """Outcomes other tools put on `leads.outcomes` directly: each applied if the lifecycle allows it, otherwise
    kept on the journey as rejected; held if its lead is not known yet."""
    run = await open_run(tx, [outcome.lead_id for _, outcome in published])
    for event_id, outcome in published:
        if run.card(outcome.lead_id) is None:
            run.hold(outcome)
        else:
            run.apply_outcome(event_id, outcome)


async def open_run(tx: Transaction, lead_ids: Sequence[str], *, with_pending: bool = False) -> CardRun:
    """The cards of the transaction's batch, with those of `lead_ids` loaded and locked if they are not there yet
    (and, `with_pending`, the outcomes waiting for them, taken). What the batch does to them is written before it
    commits (see `write_run`): a lead captured, scored and routed in one batch is read once and written once."""
    run = _batch_run(tx)
    if missing := run.not_loaded(lead_ids):
        run.add_loaded(missing, await store.load_cards(tx.session, lead_ids=missing))
    if with_pending and (untaken := run.pending_not_taken(lead_ids)):
        waiting = await store.take_pending_outcomes(tx.session, lead_ids=untaken)
        run.add_pending(untaken, {lead_id: [OutcomeRecordedV1.model_validate(held) for held in events]
                                  for lead_id, events in waiting.items()})  # fmt: skip
    return run


def _batch_run(tx: Transaction) -> CardRun:
    async def write(run: CardRun) -> None:
        await write_run(tx, run)

    return tx.keep(BATCH_CARDS, CardRun, write)


async def write_run(tx: Transaction, run: CardRun) -> None:
    """Write back what a batch did: its journey steps, cards, report cells and held outcomes, a statement each."""
    await store.add_steps(tx.session, steps=run.steps)
    await store.save_cards(tx.session, new=run.new_cards(), changed=run.changed_cards())
    await store.add_cell_sums(tx.session, run.cell_sums())
    held = [outcome.model_dump(mode="json") for outcome in run.held]
    await store.hold_outcomes(tx.session, events=held, at=utc_now())


async def apply_outcomes_held_for_known_leads(uow: UnitOfWork, *, held_for: timedelta, limit: int = 100) -> int:
    """Apply the outcomes held longer than `held_for` for leads that now have a card, as the leads' captures would
    have (the lifecycle decides; one it refuses stays on the journey as rejected); the number of leads they were
    applied to.

    With one replica, a capture always sees what was held before it. With several, one replica can hold an outcome
    (no card yet) while another applies the lead's capture and commits the card without seeing the hold: the outcome
    would wait for good. The card's lock orders this against the consumer's batches, which take held outcomes under
    it too."""
    async with uow.read() as session:
        lead_ids = await store.known_leads_with_held_outcomes(session, held_before=utc_now() - held_for, limit=limit)
    if not lead_ids:
        return 0
    async with uow.transaction() as tx:
        run = await open_run(tx, lead_ids)
        known = [lead_id for lead_id in lead_ids if run.card(lead_id) is not None]  # cards are never deleted
        await open_run(tx, known, with_pending=True)
        for lead_id in known:
            run.apply_pending(lead_id)
    if known:
        log.info("applied outcomes held for %d lead(s) known meanwhile", len(known))
    return len(known)


async def keep_applying_held_outcomes(
    uow: UnitOfWork, *, every_seconds: float = 5.0, held_for: timedelta = timedelta(seconds=10)
) -> None:
    """Every `every_seconds`, apply the outcomes left held for leads known by then (see
    apply_outcomes_held_for_known_leads), forever."""
    await sweep_every(functools.partial(apply_outcomes_held_for_known_leads, uow, held_for=held_for),
                      every_seconds=every_seconds, what="apply outcomes held for known leads")  # fmt: skip


async def record_outcome(uow: UnitOfWork, outcome: OutcomeRecordedV1) -> tuple[str, OutcomeStatus]:
    """An outcome from a sales tool: checked against the lifecycle (409 naming the current state), stored, put on
    the journey and the lead's card, and emitted on `leads.outcomes` — all in one transaction. A repeated
    external id changes nothing; an outcome for a lead not known yet is applied by the consumer when its event comes
    back (held until the lead arrives, if it has not yet)."""
    try:
        async with uow.transaction() as tx:
            known = await _known_outcome(tx, outcome)
            if known:
                return known, "duplicate"
            try:
                status = await accept_outcome(tx, outcome)
            except ImpossibleTransition as exc:
                raise ProblemError(409, str(exc), current_state=exc.current.state, outcome=exc.outcome) from exc
    except IntegrityError:
        async with uow.transaction() as tx:
            known = await _known_outcome(tx, outcome)
        if known:
            return known, "duplicate"
        raise
    return outcome.outcome_id, status


async def _known_outcome(tx: Transaction, outcome: OutcomeRecordedV1) -> str | None:
    if not outcome.external_id:
        return None
    return await store.find_outcome_id(tx.session, external_id=outcome.external_id)


async def accept_outcome(tx: Transaction, outcome: OutcomeRecordedV1) -> OutcomeStatus:
    """Store and announce an outcome in `tx`; raises ImpossibleTransition for a known lead that cannot take it."""
    await tx.finish(BATCH_CARDS)  # the batch's cards first: this reads and writes one of them directly
    card = await store.load_card(tx.session, lead_id=outcome.lead_id, for_update=True)
    if card is not None:
        await store.save_card(tx.session, card, cards.on_outcome(card, outcome))
    await store.insert_outcome(
        tx.session,
        **outcome.model_dump(exclude={"external_id"}),
        external_id=outcome.external_id,
        recorded_at=utc_now(),
    )
    event = await tx.emit(outcome)
    if card is None:
        # Not held here: the consumer may be applying the lead's capture right now, and neither transaction would
        # see the other's part (no card here, no held outcome there), leaving the outcome held for good. The event
        # comes back on leads.outcomes to the consumer, which applies captures and outcomes one batch after another:
        # it applies the outcome, or holds it for the capture.
        return "pending"
    # Our own event comes back on leads.outcomes: the inbox row makes that redelivery a no-op.
    await tx.mark_processed(event.id, topic=LEADS_OUTCOMES)
    await store.add_step(tx.session, event_id=event.id, step=outcome_step(outcome))
    return "recorded"


async def erase_lead(tx: Transaction, erased: LeadErasedV1) -> None:
    """Forget who the lead is: the card loses its email, the journey its personal values; aggregates stay."""
    await tx.finish(BATCH_CARDS)  # the batch's cards and steps first: this reads and scrubs them directly
    if not await mark_erased(tx.session, store.metadata, lead_id=erased.lead_id):
        return
    card = await store.load_card(tx.session, lead_id=erased.lead_id, for_update=True)
    if card is not None and card.email:
        await store.scrub_journey(tx.session, lead_id=erased.lead_id, values=[card.email])
        await store.save_card(tx.session, card, card.with_(email=None))
    await forget_sent_events(tx.session, store.metadata, lead_id=erased.lead_id)


Captured = TypeVar("Captured", bound=LeadCapturedV1)


async def anonymised(tx: Transaction, captured: Sequence[Captured]) -> list[Captured]:
    """The captured leads as they may be stored: without personal data for those erased before they arrived."""
    erased = await store.erased_among(tx.session, lead_ids=list(dict.fromkeys(lead.lead_id for lead in captured)))
    return [_without_personal_data(lead) if lead.lead_id in erased else lead for lead in captured]


def _without_personal_data(captured: Captured) -> Captured:
    return captured.model_copy(update={"email": ERASED, "first_name": None, "last_name": None, "phone": None,
                                       "job_title": None, "city": None, "attributes": {}})  # fmt: skip
