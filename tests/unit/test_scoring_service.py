"""Scoring's use cases on SQLite: leads, activity and outcomes in; a stored, announced score with its reasons out."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from services.scoring import service, store
from services.scoring.handlers import HANDLERS
from services.scoring.rules import STARTER_MODEL, FitRule, ScoringModelDefinition
from shared.envelope import utc_now
from shared.events import (
    ActivityRecordedV1,
    LeadCapturedV1,
    LeadMergedV1,
    LeadScoredV1,
    OutcomeKind,
    OutcomeRecordedV1,
    parse_payload,
)
from shared.uow import UnitOfWork
from tests.unit.fakes import MANAGER_LEAD, migrated_unit_of_work, outbox_events

MANAGER = MANAGER_LEAD
JAPAN_FIRST = ScoringModelDefinition(
    fit_rules=[FitRule(id="japan", field="country", op="equals", value="jp", points=60)],
    engagement_rules=STARTER_MODEL.engagement_rules,
)


@pytest.fixture
async def uow(engine: AsyncEngine) -> UnitOfWork:
    return await migrated_unit_of_work(engine, store.metadata, store.MIGRATIONS, service="scoring")


def _lead(lead_id: str, *, at: datetime | None = None, **fields: Any) -> LeadCapturedV1:
    return LeadCapturedV1(lead_id=lead_id, captured_at=at or utc_now(), **{**MANAGER, **fields})


async def _capture(uow: UnitOfWork, lead: LeadCapturedV1) -> None:
    async with uow.transaction() as tx:
        await service.on_lead_captured(tx, lead)


async def _act(uow: UnitOfWork, lead_id: str, kind: str, *, at: datetime | None = None) -> None:
    activity = ActivityRecordedV1(
        lead_id=lead_id, activity_id=str(uuid.uuid4()), kind=kind, occurred_at=at or utc_now()
    )
    async with uow.transaction() as tx:
        await service.on_activity(tx, activity)


async def _close(uow: UnitOfWork, lead_id: str, kind: OutcomeKind, *, at: datetime | None = None) -> None:
    outcome = OutcomeRecordedV1(lead_id=lead_id, outcome_id=str(uuid.uuid4()), kind=kind, occurred_at=at or utc_now())
    async with uow.transaction() as tx:
        await service.on_outcome(tx, outcome)


async def _announced(uow: UnitOfWork) -> list[LeadScoredV1]:
    return [parse_payload(event, LeadScoredV1) for event in await outbox_events(uow, store.metadata)]


async def _stored(uow: UnitOfWork, lead_id: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    async with uow.read() as session:
        return await store.load_facts(session, lead_id=lead_id), await store.load_score(session, lead_id=lead_id)


async def _learned(uow: UnitOfWork) -> tuple[int, list[dict[str, Any]]]:
    async with uow.read() as session:
        return (await store.learned_summary(session))["outcomes"], await store.load_predictions(session)


# --- leads, activity, resubmissions -------------------------------------------------------------------------------


async def test_a_captured_lead_is_stored_scored_and_announced(uow: UnitOfWork) -> None:
    await _capture(uow, _lead("lead-1", attributes={"plan": "pro"}))
    [scored] = await _announced(uow)
    assert (scored.lead_id, scored.score, scored.verdict, scored.grade) == ("lead-1", 30, "nurture", "B4")
    assert (scored.fit_score, scored.engagement_score, scored.rules_score) == (30, 0, 30)
    assert (scored.model_version, scored.company_domain, scored.went_cold) == ("starter", "acme.test", False)
    assert (scored.learned_probability, scored.learned_outcomes) == (None, 0)
    assert [(c.rule, c.points, c.kind) for c in scored.contributions] == [
        ("business-email", 15, "fit"),
        ("manager", 10, "fit"),
        ("company-named", 5, "fit"),
    ]
    facts, score = await _stored(uow, "lead-1")
    assert facts is not None and score is not None
    assert (facts["facts"]["attributes"], facts["closed"]) == ({"plan": "pro"}, False)
    assert (score["score"], score["grade"], score["fit_score"], score["rules_score"]) == (30, "B4", 30, 30)
    assert score["contributions"] == [c.model_dump() for c in scored.contributions]


async def test_an_activity_rescores_the_lead_with_higher_engagement(uow: UnitOfWork) -> None:
    await _capture(uow, _lead("lead-1"))
    await _act(uow, "lead-1", "demo_request")
    captured, engaged = await _announced(uow)
    assert (captured.engagement_score, captured.verdict) == (0, "nurture")
    assert (engaged.score, engaged.verdict, engaged.grade, engaged.engagement_score) == (60, "qualified", "B1", 30)
    demo = engaged.contributions[-1]
    assert (demo.rule, demo.kind, demo.points, demo.decayed_points) == ("demo", "engagement", 30, 30.0)


async def test_activity_of_a_lead_not_seen_yet_counts_once_it_arrives(uow: UnitOfWork) -> None:
    await _act(uow, "lead-1", "webinar_attended")
    assert await _announced(uow) == []
    await _capture(uow, _lead("lead-1"))
    [scored] = await _announced(uow)
    assert (scored.engagement_score, scored.score) == (10, 40)


async def test_a_resubmission_with_renewed_interest_adds_engagement(uow: UnitOfWork) -> None:
    await _capture(uow, _lead("lead-1"))
    merged = LeadMergedV1(
        **_lead("lead-1", seniority="vp").model_dump(), merged_at=utc_now(), changed_fields=("seniority",)
    )
    await _capture(uow, merged)
    _, resubmitted = await _announced(uow)
    assert (resubmitted.fit_score, resubmitted.engagement_score, resubmitted.score) == (40, 10, 50)
    assert [c.rule for c in resubmitted.contributions if c.kind == "engagement"] == ["resubmitted"]
    facts, _ = await _stored(uow, "lead-1")
    assert facts is not None
    assert facts["facts"]["seniority"] == "vp"
    assert "merged_at" not in facts["facts"]


async def test_a_resubmission_without_renewed_interest_only_updates_the_facts(uow: UnitOfWork) -> None:
    await _capture(uow, _lead("lead-1"))
    await _capture(uow, LeadMergedV1(**_lead("lead-1").model_dump(), merged_at=utc_now(), renewed_interest=False))
    _, again = await _announced(uow)
    assert (again.engagement_score, again.score) == (0, 30)


async def test_a_merge_event_reaches_the_service_through_its_handler(uow: UnitOfWork) -> None:
    await _capture(uow, _lead("lead-1"))
    event = LeadMergedV1(**_lead("lead-1").model_dump(), merged_at=utc_now()).to_event(source="/baton/lead_intake")
    async with uow.transaction() as tx:
        await HANDLERS[event.type](tx, event)
    _, resubmitted = await _announced(uow)
    assert resubmitted.engagement_score == 10


async def test_rescoring_a_lead_scoring_has_not_seen_does_nothing(uow: UnitOfWork) -> None:
    async with uow.transaction() as tx:
        assert await service.rescore(tx, "nobody") is None
    assert await _announced(uow) == []


# --- outcomes and the learned model -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "learned", "closed"),
    [("won", 1, True), ("lost", 1, True), ("disqualified", 1, True), ("qualified", 1, False), ("contacted", 0, False)],
)
async def test_outcomes_teach_the_model_and_verdicts_close_the_lead(
    uow: UnitOfWork, kind: OutcomeKind, learned: int, closed: bool
) -> None:
    await _capture(uow, _lead("lead-1"))
    await _close(uow, "lead-1", kind)
    outcomes, predictions = await _learned(uow)
    facts, _ = await _stored(uow, "lead-1")
    assert facts is not None
    assert (outcomes, len(predictions), facts["closed"]) == (learned, learned, closed)


async def test_an_outcome_before_its_lead_is_held_and_learned_when_the_lead_arrives(uow: UnitOfWork) -> None:
    await _close(uow, "lead-1", "won")
    assert await _learned(uow) == (0, [])
    assert await _announced(uow) == []
    await _capture(uow, _lead("lead-1"))
    outcomes, [prediction] = await _learned(uow)
    assert outcomes == 1
    assert (prediction["lead_id"], prediction["label"], prediction["probability"]) == ("lead-1", 1, 0.5)
    assert prediction["outcomes_before"] == 0
    facts, _ = await _stored(uow, "lead-1")
    assert facts is not None and facts["closed"] is True
    await _capture(uow, _lead("lead-1"))
    assert (await _learned(uow))[0] == 1  # held once, learned once


async def test_an_outcome_held_for_a_lead_whose_facts_came_meanwhile_is_learned_from_once(uow: UnitOfWork) -> None:
    """Another replica stored the lead's facts without seeing the hold: the recheck learns from it, once."""
    await _close(uow, "lead-1", "won")
    assert await service.learn_from_outcomes_held_for_known_leads(uow) == 0  # the lead is not known yet
    async with uow.transaction() as tx:
        await store.save_all_facts(tx.session, leads=[("lead-1", dict(MANAGER), utc_now())])
    assert await service.learn_from_outcomes_held_for_known_leads(uow) == 1
    assert await service.learn_from_outcomes_held_for_known_leads(uow) == 0
    outcomes, [prediction] = await _learned(uow)
    assert (outcomes, prediction["lead_id"], prediction["label"]) == (1, "lead-1", 1)


async def test_a_held_outcome_logs_what_the_rules_said_of_the_lead(uow: UnitOfWork) -> None:
    await _close(uow, "lead-1", "won")
    await _capture(uow, _lead("lead-1"))
    [scored] = await _announced(uow)
    _, [prediction] = await _learned(uow)
    assert (prediction["rules_score"], prediction["score"]) == (scored.rules_score, scored.score)


async def test_a_prediction_logs_the_lead_score_before_learning(uow: UnitOfWork) -> None:
    await _capture(uow, _lead("lead-1"))
    await _act(uow, "lead-1", "demo_request")
    await _close(uow, "lead-1", "lost")
    _, [prediction] = await _learned(uow)
    assert (prediction["label"], prediction["rules_score"], prediction["score"]) == (0, 60, 60)


async def test_behaviour_after_the_outcome_is_not_learned(uow: UnitOfWork) -> None:
    closed_at = utc_now()
    await _capture(uow, _lead("lead-1", at=closed_at - timedelta(days=1)))
    await _act(uow, "lead-1", "webinar_attended", at=closed_at + timedelta(hours=1))
    await _close(uow, "lead-1", "won", at=closed_at)
    async with uow.read() as session:
        learned = await store.load_weights(session, tokens=["did:webinar_attended", "seniority=manager"])
    assert set(learned.weights) == {"seniority=manager"}


async def test_once_the_model_learned_the_score_names_its_tokens(uow: UnitOfWork) -> None:
    await _capture(uow, _lead("lead-1", attributes={"plan": "pro"}))
    await _close(uow, "lead-1", "won")
    await _capture(uow, _lead("lead-2", attributes={"plan": "pro"}))
    scored = (await _announced(uow))[-1]
    assert scored.lead_id == "lead-2"
    assert scored.learned_outcomes == 1
    assert scored.learned_probability is not None and scored.learned_probability > 0.5
    learned = scored.contributions[-1]
    assert (learned.rule, learned.kind) == ("learned", "learned")
    assert learned.points == scored.score - (scored.rules_score or 0)
    assert "learned from 1 outcomes" in learned.reason
    assert "attributes.plan=pro (+" in learned.reason


# --- models marketers own -----------------------------------------------------------------------------------------


async def test_activating_a_model_rescores_every_open_lead_and_finishes_the_job(uow: UnitOfWork) -> None:
    for lead_id, country in (("lead-1", "jp"), ("lead-2", "de"), ("lead-3", "jp"), ("lead-4", "jp")):
        await _capture(uow, _lead(lead_id, country=country))
    await _close(uow, "lead-4", "lost")
    before = len(await _announced(uow))
    version = await service.create_model(uow, name="Japan first", definition=JAPAN_FIRST)
    async with uow.read() as session:
        draft = await store.load_model(session, version=version)
    assert draft is not None and draft["status"] == "draft"
    job_id = await service.activate(uow, version=version)
    await service.run_rescore_job(uow, job_id=job_id, page=2)
    rescored = (await _announced(uow))[before:]
    assert {(s.lead_id, s.model_version, s.score, s.verdict) for s in rescored} == {
        ("lead-1", "v1", 60, "qualified"),
        ("lead-2", "v1", 0, "nurture"),
        ("lead-3", "v1", 60, "qualified"),
    }
    async with uow.read() as session:
        job = await store.load_job(session, job_id=job_id)
        active = await store.active_model(session)
    assert job is not None and active is not None
    assert (job["status"], job["done"], job["total"], job["model_version"]) == ("finished", 3, 3, version)
    assert job["finished_at"] is not None
    assert active["version"] == version


async def test_activating_another_version_retires_the_one_in_force(uow: UnitOfWork) -> None:
    first = await service.create_model(uow, name="Japan first", definition=JAPAN_FIRST)
    second = await service.create_model(uow, name="Starter again", definition=STARTER_MODEL)
    await service.activate(uow, version=first)
    job_id = await service.activate(uow, version=second)
    await service.run_rescore_job(uow, job_id=job_id)
    async with uow.read() as session:
        statuses = {model["version"]: model["status"] for model in await store.load_models(session)}
        job = await store.load_job(session, job_id=job_id)
    assert statuses == {first: "retired", second: "active"}
    assert job is not None and (job["status"], job["done"], job["total"]) == ("finished", 0, 0)


async def test_a_dry_run_reports_what_a_draft_would_change_without_writing(uow: UnitOfWork) -> None:
    await _capture(uow, _lead("lead-1", country="jp"))
    await _capture(uow, _lead("lead-2", country="de"))
    await _act(uow, "lead-2", "demo_request")
    await _capture(uow, _lead("lead-3", country="de"))
    announced = await _announced(uow)
    _, score_before = await _stored(uow, "lead-1")
    report = await service.dry_run(uow, definition=JAPAN_FIRST, last=10)
    assert report == {"leads": 3, "changed_grade": 3, "became_qualified": 1, "no_longer_qualified": 1}
    assert await _announced(uow) == announced
    assert (await _stored(uow, "lead-1"))[1] == score_before
    assert (await service.dry_run(uow, definition=JAPAN_FIRST, last=1))["leads"] == 1


# --- re-scoring over time -----------------------------------------------------------------------------------------


async def test_rescoring_only_if_changed_emits_nothing_when_nothing_changed(uow: UnitOfWork) -> None:
    await _capture(uow, _lead("lead-1"))
    async with uow.transaction() as tx:
        assert await service.rescore(tx, "lead-1", only_if_changed=True) is None
    assert len(await _announced(uow)) == 1


async def test_rescoring_only_if_changed_announces_a_decayed_score(uow: UnitOfWork) -> None:
    await _capture(uow, _lead("lead-1"))
    await _act(uow, "lead-1", "pricing_page_view")
    async with uow.transaction() as tx:
        later = await service.rescore(tx, "lead-1", now=utc_now() + timedelta(days=30), only_if_changed=True)
    assert later is not None
    assert (later.engagement_score, later.score, later.went_cold) == (5, 35, False)
    assert len(await _announced(uow)) == 3


async def test_a_lead_that_decays_below_the_threshold_is_announced_cold_once(uow: UnitOfWork) -> None:
    await _capture(uow, _lead("lead-1"))
    await _act(uow, "lead-1", "demo_request")
    far_future = utc_now() + timedelta(days=3650)
    async with uow.transaction() as tx:
        cold = await service.rescore(tx, "lead-1", now=far_future)
    assert cold is not None
    assert (cold.verdict, cold.score, cold.engagement_score, cold.went_cold) == ("nurture", 30, 0, True)
    assert (await _announced(uow))[-1] == cold
    _, stored = await _stored(uow, "lead-1")
    assert stored is not None and stored["verdict"] == "nurture"
    async with uow.transaction() as tx:
        assert await service.rescore(tx, "lead-1", now=far_future, only_if_changed=True) is None
        again = await service.rescore(tx, "lead-1", now=far_future)
    assert again is not None and again.went_cold is False
