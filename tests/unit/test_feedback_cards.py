"""Lead lifecycle, lead cards and report cells: the cells always equal a full scan of the cards."""

from __future__ import annotations

import random
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.feedback import store
from services.feedback.aggregates import METRICS, LeadCard, contributions, percentile_from_buckets, score_band
from services.feedback.handlers import HANDLERS, SALES_OUTCOME_TYPE
from services.feedback.lifecycle import ImpossibleTransition, Lifecycle
from services.feedback.report_store import summed_cells
from services.feedback.service import record_outcome
from shared.envelope import CloudEvent
from shared.events import (
    EventPayload,
    LeadCapturedV1,
    LeadErasedV1,
    LeadMergedV1,
    LeadRoutedV1,
    LeadScoredV1,
    OutcomeRecordedV1,
)
from shared.uow import UnitOfWork
from tests.unit.fakes import migrated_unit_of_work

T0 = datetime(2026, 3, 2, 9, tzinfo=UTC)


@pytest.fixture
async def uow(engine: AsyncEngine) -> UnitOfWork:
    return await migrated_unit_of_work(engine, store.metadata, store.MIGRATIONS, service="feedback")


# --- lifecycle ----------------------------------------------------------------------------------------------------


def test_working_stages_only_move_forward_and_a_close_keeps_the_stage() -> None:
    lead = Lifecycle().after("contacted").after("accepted").after("qualified")
    assert lead == Lifecycle("open", "qualified")
    assert lead.after("won") == Lifecycle("won", "qualified")


@pytest.mark.parametrize(
    ("path", "outcome", "state"),
    [(("lost",), "won", "lost"), (("won",), "lost", "won"), (("won",), "won", "won"),
     (("disqualified",), "contacted", "disqualified")],
)  # fmt: skip
def test_an_impossible_transition_names_the_current_state(path: tuple[str, ...], outcome: str, state: str) -> None:
    lead = Lifecycle()
    for step in path:
        lead = lead.after(step)
    with pytest.raises(ImpossibleTransition, match=f"a lead that is {state} cannot be {outcome}"):
        lead.after(outcome)


def test_a_lost_lead_can_be_reopened_or_recycled_and_worked_again() -> None:
    assert Lifecycle().after("lost").after("reopened").after("won").state == "won"
    recycled = Lifecycle().after("qualified").after("lost").after("recycled")
    assert recycled == Lifecycle("recycled", "captured")
    assert recycled.after("accepted") == Lifecycle("open", "accepted")


# --- cells ----------------------------------------------------------------------------------------------------------


def test_score_bands_and_percentiles() -> None:
    assert [score_band(s) for s in (None, 0, 19, 20, 79, 80, 100)] == [
        "(none)", "0-19", "0-19", "20-39", "60-79", "80-100", "80-100"]  # fmt: skip
    counts = [0.0] * 21
    counts[3], counts[6] = 9, 1  # nine leads within 1 s, one within 10 s
    assert (percentile_from_buckets(counts, 0.5), percentile_from_buckets(counts, 0.99)) == (1.0, 10.0)
    assert percentile_from_buckets([0.0] * 21, 0.5) is None


def test_an_sla_miss_counts_against_the_rep_who_missed_it() -> None:
    card = LeadCard("lead-1", T0, rep_id="rep-b", sla_missed_by=("rep-a",))
    cells = contributions(card)
    assert cells[("rep", "rep-a")] == {"sla_missed": 1}
    assert "sla_missed" not in cells[("rep", "rep-b")] and cells[("rep", "rep-b")]["captured"] == 1


def _ev(payload: EventPayload) -> CloudEvent:
    return payload.to_event(source="/baton/test")


async def _consume(uow: UnitOfWork, event: CloudEvent) -> None:
    async with uow.transaction() as tx:
        if await tx.mark_processed(event.id, topic="any"):
            await HANDLERS[event.type](tx, event)


def _journey(chance: random.Random, lead_id: str) -> list[CloudEvent]:
    """A plausible life of one lead, as events from every service, in a shuffled cross-topic order."""
    at = T0 + timedelta(days=chance.randrange(50), minutes=chance.randrange(600))
    campaigns = ["spring", "webinar-jp", "retarget", None]
    captured = LeadCapturedV1(
        lead_id=lead_id, email=f"{lead_id}@acme.example", captured_at=at, utm_source=chance.choice(["ads", "seo"]),
        utm_campaign=chance.choice(campaigns), country=chance.choice(["JP", "DE", None]),
        interests=tuple(chance.sample(["crm", "ai", "sla"], chance.randrange(3))),
        current_solution=chance.choice(["Salesforce", "HubSpot", None]),
    )  # fmt: skip
    events: list[EventPayload] = [captured]
    if chance.random() < 0.3:
        events.append(LeadMergedV1(**{**captured.model_dump(), "utm_campaign": chance.choice(campaigns)},
                                   merged_at=at + timedelta(hours=1)))  # fmt: skip
    score = chance.randrange(101)
    events.append(LeadScoredV1(lead_id=lead_id, score=score, verdict="qualified" if score >= 50 else "nurture",
                               model_version="1", contributions=(), scored_at=at + timedelta(seconds=1),
                               grade=chance.choice("ABCD") + chance.choice("1234"),
                               learned_probability=round(chance.random(), 3)))  # fmt: skip
    rep = chance.choice(["rep-a", "rep-b", "rep-c"])
    routed_at = at + timedelta(seconds=chance.choice([0.2, 3, 40, 900]))
    events.append(LeadRoutedV1(lead_id=lead_id, assignment_id=str(uuid.uuid4()), kind="assigned", rep_id=rep,
                               reason="r", score=score, routed_at=routed_at, team="apac"))  # fmt: skip
    if chance.random() < 0.3:
        events.append(LeadRoutedV1(lead_id=lead_id, assignment_id="x", kind="sla_breached", rep_id=rep,
                                   previous_rep_id=rep, reason="missed", score=score,
                                   routed_at=routed_at + timedelta(minutes=5)))  # fmt: skip
    for number, kind in enumerate(chance.choice([(), ("accepted",), ("accepted", "qualified", "won"),
                                                 ("contacted", "lost"), ("lost", "recycled")])):  # fmt: skip
        events.append(OutcomeRecordedV1(
            lead_id=lead_id, outcome_id=str(uuid.uuid4()), kind=kind,
            occurred_at=routed_at + timedelta(hours=number + 1),
            amount=Decimal("1000.00") if kind == "won" else None, currency="EUR" if kind == "won" else None,
            reason="budget" if kind == "lost" else None, competitor="HubSpot" if kind == "lost" else None,
        ))  # fmt: skip
    first, *rest = [_ev(payload) for payload in events]
    chance.shuffle(rest)  # topics are not ordered with each other; the capture may even come late
    rest.insert(chance.randrange(len(rest) + 1), first)
    return rest


async def test_report_cells_always_equal_a_full_scan_of_the_cards(uow: UnitOfWork) -> None:
    chance = random.Random(11)
    for number in range(40):
        for event in _journey(chance, f"lead-{number}"):
            await _consume(uow, event)
    async with uow.read() as session:
        cards = [store.card_from_row(dict(row)) for row in (await session.execute(select(store.lead_cards))).mappings()]
        stored = {(row["day"], row["dimension"], row["value"]): row
                  for row in (await session.execute(select(store.report_cells))).mappings()}  # fmt: skip
    expected: dict[tuple[str, str, str], dict[str, Any]] = defaultdict(lambda: defaultdict(int))
    for card in cards:
        for (dimension, value), amounts in contributions(card).items():
            for metric, amount in amounts.items():
                expected[(card.day, dimension, value)][metric] += amount
    assert len(cards) == 40
    for key in set(expected) | set(stored):
        for metric in METRICS:
            want = expected.get(key, {}).get(metric, 0)
            got = stored[key][metric] if key in stored else 0
            assert float(got) == pytest.approx(float(want)), (key, metric)
    totals = {metric: sum(float(row[metric]) for key, row in stored.items() if key[1] == "all") for metric in METRICS}
    # Whole months come from the monthly rollup, the edges from daily cells: the same sums either way.
    async with uow.read() as session:
        for low, high in (("2026-03-01", "2026-04-30"), ("2026-03-05", "2026-04-12"), ("2026-02-01", "2026-03-31")):
            by_source = await summed_cells(session, dimension="source", day_from=low, day_to=high)
            for source, sums in by_source.items():
                daily = [row for key, row in stored.items() if key[1] == "source" and key[2] == source
                         and low <= key[0] <= high]  # fmt: skip
                assert float(sums["captured"]) == sum(float(row["captured"]) for row in daily), (low, high, source)
                assert float(sums["won_amount"]) == sum(float(row["won_amount"]) for row in daily)
    assert totals["captured"] == 40
    assert totals["won"] == sum(card.state == "won" for card in cards)
    assert totals["won_amount"] == 1000 * totals["won"]


async def test_a_sales_outcome_written_as_plain_json_is_recorded_like_an_api_call(uow: UnitOfWork) -> None:
    await _consume(uow, _ev(LeadCapturedV1(lead_id="lead-1", email="a@acme.example", captured_at=T0)))
    plain = CloudEvent.from_plain_json(
        b'{"lead_id": "lead-1", "kind": "won", "amount": "500.00", "currency": "JPY", "external_id": "crm-9"}',
        type=SALES_OUTCOME_TYPE, source="kafka:sales.outcomes", event_id="sales.outcomes:0:7", subject="lead-1",
    )  # fmt: skip
    await _consume(uow, plain)
    async with uow.read() as session:
        card = await store.load_card(session, lead_id="lead-1")
        recorded = await store.find_outcome_id(session, external_id="crm-9")
    assert card is not None and (card.state, card.won_amount, card.currency) == ("won", Decimal("500.00"), "JPY")
    assert recorded is not None
    # The same tool event again through the API: a duplicate, not a second win.
    again = OutcomeRecordedV1(lead_id="lead-1", outcome_id="o-2", kind="won", amount=Decimal("500.00"),
                              currency="JPY", external_id="crm-9", occurred_at=T0)  # fmt: skip
    assert await record_outcome(uow, again) == (recorded, "duplicate")


async def test_an_impossible_outcome_on_the_topic_is_kept_on_the_journey_as_rejected(uow: UnitOfWork) -> None:
    await _consume(uow, _ev(LeadCapturedV1(lead_id="lead-1", email="a@acme.example", captured_at=T0)))
    lost = OutcomeRecordedV1(lead_id="lead-1", outcome_id="o-1", kind="lost", occurred_at=T0 + timedelta(days=1))
    won = OutcomeRecordedV1(lead_id="lead-1", outcome_id="o-2", kind="won", amount=Decimal(1), currency="EUR",
                            occurred_at=T0 + timedelta(days=2))  # fmt: skip
    await _consume(uow, _ev(lost))
    await _consume(uow, _ev(won))
    async with uow.read() as session:
        steps = [(row["step"], row["reason"]) for row in await store.load_journey(session, lead_id="lead-1")]
    assert steps[-1][0] == "outcome_rejected" and "a lead that is lost cannot be won" in steps[-1][1]


async def test_an_erasure_scrubs_the_journey_and_a_capture_arriving_after_it_stores_nothing_personal(
    uow: UnitOfWork,
) -> None:
    await _consume(uow, _ev(LeadCapturedV1(lead_id="lead-1", email="kenji@acme.example", captured_at=T0)))
    await _consume(uow, _ev(LeadErasedV1(lead_id="lead-1", erased_at=T0 + timedelta(days=1))))
    # lead-2 is erased before its capture event arrives (topics are not ordered with each other).
    await _consume(uow, _ev(LeadErasedV1(lead_id="lead-2", erased_at=T0)))
    await _consume(uow, _ev(LeadCapturedV1(lead_id="lead-2", email="aiko@acme.example", first_name="Aiko",
                                           captured_at=T0)))  # fmt: skip
    async with uow.read() as session:
        for lead_id, email in (("lead-1", "kenji@acme.example"), ("lead-2", "aiko@acme.example")):
            card = await store.load_card(session, lead_id=lead_id)
            journey = await store.load_journey(session, lead_id=lead_id)
            assert card is not None and card.email is None
            assert journey and not any(email in str(step) for step in journey)
