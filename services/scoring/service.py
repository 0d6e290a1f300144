"""Use cases of scoring: each reads what it needs, decides with the pure rules and model, and stores its score
and its `leads.scored` event in one transaction."""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
import weakref
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from services.scoring import store
from services.scoring.captures import Capture, fold_captures, until_each_learner
from services.scoring.learning import Weights, blend, explain, features, label_of, learn, probability
from services.scoring.rules import STARTER_MODEL, ScoringModelDefinition, Touch, score_with_rules
from shared.envelope import utc_now
from shared.events import (
    ActivityRecordedV1,
    LeadCapturedV1,
    LeadErasedV1,
    LeadScoredV1,
    OutcomeRecordedV1,
)
from shared.events import ScoreContribution as Contribution
from shared.privacy import forget_sent_events, mark_erased, strip_personal
from shared.runtime import sweep_every
from shared.uow import Transaction, UnitOfWork

STARTER_VERSION = "starter"
log = logging.getLogger(__name__)


# A stored version never changes, so its parsed definition can be kept (parsing is the costly part), per database.
_parsed_versions: weakref.WeakKeyDictionary[Any, dict[int, ScoringModelDefinition]] = weakref.WeakKeyDictionary()


async def _model_in_force(tx: Transaction) -> tuple[str, ScoringModelDefinition]:
    active = await store.active_model(tx.session)
    if active is None:
        return STARTER_VERSION, STARTER_MODEL
    version = active["version"]
    parsed = _parsed_versions.setdefault(tx.session.get_bind(), {})
    if version not in parsed:
        parsed[version] = ScoringModelDefinition.model_validate(active["definition"])
    return f"v{version}", parsed[version]


async def _model_of_version(tx: Transaction, version: int | None) -> tuple[str, ScoringModelDefinition]:
    """The rules model of `version` (None: the starter model); its definition is read once per version."""
    if version is None:
        return STARTER_VERSION, STARTER_MODEL
    parsed = _parsed_versions.setdefault(tx.session.get_bind(), {})
    if version not in parsed:
        stored = await store.load_model(tx.session, version=version)
        if stored is None:  # retired and deleted since: as if none was active
            return STARTER_VERSION, STARTER_MODEL
        parsed[version] = ScoringModelDefinition.model_validate(stored["definition"])
    return f"v{version}", parsed[version]


async def on_lead_captured(tx: Transaction, captured: LeadCapturedV1) -> None:
    """Keep the lead's facts, apply outcomes that arrived before it, and score it."""
    await on_leads_captured(tx, [captured])


async def on_leads_captured(tx: Transaction, run: Sequence[LeadCapturedV1], *, now: datetime | None = None) -> None:
    """Captures and resubmissions (LeadMergedV1), in order, at a few statements for the whole run rather than a
    few per lead; every store and announcement is what applying them one by one would make."""
    lead_ids = list(dict.fromkeys(captured.lead_id for captured in run))
    if not lead_ids:
        return
    now = now or utc_now()
    known = await store.known_about(tx.session, lead_ids=lead_ids)
    verdicts, held = known.verdicts, known.held
    in_force = known.in_force or await store.models_in_force(tx.session)
    version, model = await _model_of_version(tx, in_force.rules_version)
    captures = fold_captures(run, erased=known.erased, touches=known.touches)
    state: Mapping[str, Any] | None = in_force.learned  # until a held outcome is learned from
    for part in until_each_learner(captures, learners=held):
        xs = [features(capture.facts, capture.touches) for capture in part]
        tokens = sorted({token for x in xs for token in x})
        learned = await store.load_weights(tx.session, tokens=tokens, state=state)
        announced = []
        for capture, x in zip(part, xs, strict=True):
            scored = _scored(capture.lead_id, capture.facts, capture.touches, x, learned, version, model, now=now)
            if verdicts.get(capture.lead_id) == "qualified" and scored.verdict == "nurture":
                scored = scored.model_copy(update={"went_cold": True})
            verdicts[capture.lead_id] = scored.verdict
            announced.append(scored)
        await _keep_captures(tx, part, announced)
        # Scored first, so the prediction logged for a held outcome is what the rules said of this lead.
        for kind, occurred_at in held.pop(part[-1].lead_id, []):
            await _learn_from(tx, part[-1].lead_id, kind, occurred_at)
            state = None  # learning changed it: read it again


async def _keep_captures(tx: Transaction, part: Sequence[Capture], announced: Sequence[LeadScoredV1]) -> None:
    leads = [(capture.lead_id, capture.facts, capture.captured_at) for capture in part]
    await store.save_all_facts(tx.session, leads=leads)
    resubmitted = [(capture.lead_id, capture.resubmitted) for capture in part if capture.resubmitted is not None]
    await store.add_touches(tx.session, done=resubmitted)
    await store.save_scores(tx.session, scored=[_score_row(scored) for scored in announced])
    await tx.emit_all(announced)


async def on_lead_erased(tx: Transaction, erased: LeadErasedV1) -> None:
    """Forget who the lead is; what it is (segment, behaviour, outcome) stays for the model."""
    if not await mark_erased(tx.session, store.metadata, lead_id=erased.lead_id):
        return
    stored = await store.load_facts(tx.session, lead_id=erased.lead_id)
    if stored is not None:
        await store.save_all_facts(tx.session, leads=[(erased.lead_id, strip_personal(stored["facts"]),
                                                       stored["captured_at"])])  # fmt: skip
    await forget_sent_events(tx.session, store.metadata, lead_id=erased.lead_id)


async def on_activity(tx: Transaction, activity: ActivityRecordedV1) -> None:
    """Remember what the lead did and score it again (renewed engagement)."""
    await store.add_touches(tx.session, done=[(activity.lead_id, Touch(kind=activity.kind, at=activity.occurred_at))])
    await rescore(tx, activity.lead_id)


async def on_outcome(tx: Transaction, outcome: OutcomeRecordedV1) -> None:
    """Learn from a verdict of sales; an outcome for a lead not seen yet is kept until it arrives."""
    if label_of(outcome.kind) is None:
        return
    if await store.load_facts(tx.session, lead_id=outcome.lead_id) is None:
        await store.hold_outcome(
            tx.session, lead_id=outcome.lead_id, kind=outcome.kind, occurred_at=outcome.occurred_at
        )
        return
    await _learn_from(tx, outcome.lead_id, outcome.kind, outcome.occurred_at)


async def learn_from_outcomes_held_for_known_leads(uow: UnitOfWork, *, limit: int = 100) -> int:
    """Learn from the outcomes held for leads whose facts are stored by now, as their captures would have; how
    many. With several replicas, one can hold an outcome while another stores the lead's facts without seeing the
    hold: the outcome would wait for good."""
    async with uow.transaction() as tx:
        held = await store.take_outcomes_held_for_known_leads(tx.session, limit=limit)
        for lead_id, kind, occurred_at in held:
            await _learn_from(tx, lead_id, kind, occurred_at)
    if held:
        log.info("learned from %d outcome(s) held for leads known meanwhile", len(held))
    return len(held)


async def keep_learning_from_held_outcomes(uow: UnitOfWork, *, every_seconds: float = 5.0) -> None:
    """Every `every_seconds`, learn from the outcomes left held for leads known by then, forever."""
    await sweep_every(functools.partial(learn_from_outcomes_held_for_known_leads, uow),
                      every_seconds=every_seconds, what="learn from outcomes held for known leads")  # fmt: skip


async def _learn_from(tx: Transaction, lead_id: str, kind: str, occurred_at: datetime) -> None:
    label = label_of(kind)
    stored = await store.load_facts(tx.session, lead_id=lead_id)
    if label is None or stored is None:
        return
    # Only what was known before the outcome: the facts at capture and the behaviour before it.
    x = features(stored["facts"], await store.load_touches(tx.session, lead_id=lead_id), before=occurred_at)
    await store.lock_learned_state(tx.session)
    model = await store.load_weights(tx.session, tokens=list(x))
    current = await store.load_score(tx.session, lead_id=lead_id)
    await store.add_prediction(
        tx.session, lead_id=lead_id, label=label, probability=probability(model, x),
        rules_score=(current or {}).get("rules_score") or 0, score=(current or {}).get("score") or 0,
        outcomes_before=model.outcomes, at=utc_now(),
    )  # fmt: skip
    changed = learn(model, x, label)
    await store.save_weights(tx.session, model=model, tokens=changed, at=utc_now())
    if kind in ("won", "lost", "disqualified"):
        await store.close_lead(tx.session, lead_id=lead_id)


async def rescore(
    tx: Transaction,
    lead_id: str,
    *,
    now: datetime | None = None,
    only_if_changed: bool = False,
) -> LeadScoredV1 | None:
    """Score a known lead with the model in force and announce it; None if scoring has not seen the lead
    (or, with `only_if_changed`, if score, grade and verdict stayed the same)."""
    stored = await store.load_facts(tx.session, lead_id=lead_id)
    if stored is None:
        return None
    facts = stored["facts"]
    now = now or utc_now()
    version, model = await _model_in_force(tx)
    touches = await store.load_touches(tx.session, lead_id=lead_id)
    scored = await _score(tx, lead_id, facts, touches, version=version, model=model, now=now)
    previous = await store.load_score(tx.session, lead_id=lead_id)
    if (
        only_if_changed
        and previous is not None
        and (previous["score"], previous["grade"], previous["verdict"]) == (scored.score, scored.grade, scored.verdict)
    ):
        return None
    went_cold = previous is not None and previous["verdict"] == "qualified" and scored.verdict == "nurture"
    if went_cold:
        scored = scored.model_copy(update={"went_cold": True})
    await store.save_scores(tx.session, scored=[_score_row(scored)])
    await tx.emit(scored)
    return scored


def _score_row(scored: LeadScoredV1) -> dict[str, Any]:
    return {
        "lead_id": scored.lead_id, "score": scored.score, "verdict": scored.verdict,
        "model_version": scored.model_version, "contributions": [c.model_dump() for c in scored.contributions],
        "scored_at": scored.scored_at, "grade": scored.grade, "fit_score": scored.fit_score,
        "engagement_score": scored.engagement_score, "rules_score": scored.rules_score,
        "learned_probability": scored.learned_probability,
    }  # fmt: skip


async def _score(
    tx: Transaction,
    lead_id: str,
    facts: dict[str, Any],
    touches: list[Touch],
    *,
    version: str,
    model: ScoringModelDefinition,
    now: datetime,
) -> LeadScoredV1:
    x = features(facts, touches)
    learned = await store.load_weights(tx.session, tokens=list(x))
    return _scored(lead_id, facts, touches, x, learned, version, model, now=now)


def _scored(
    lead_id: str,
    facts: Mapping[str, Any],
    touches: Sequence[Touch],
    x: Mapping[str, float],
    learned: Weights,
    version: str,
    model: ScoringModelDefinition,
    *,
    now: datetime,
) -> LeadScoredV1:
    """The lead's score by the rules of `model` and the `learned` model (`x`: its features, all in `learned`)."""
    rules = score_with_rules(model, facts, touches, now=now)
    p = probability(learned, x) if learned.outcomes else None
    value = blend(rules.value, p, weight=model.learned_weight, outcomes=learned.outcomes)
    contributions = list(rules.contributions)
    if p is not None:
        pushes = ", ".join(f"{token} ({push:+.2f})" for token, push in explain(learned, x))
        contributions.append(
            Contribution(
                rule="learned",
                points=value - rules.value,
                kind="learned",
                reason=f"learned from {learned.outcomes} outcomes: P(win) {p:.0%}; moved most by {pushes or 'nothing'}",
            )
        )
    return LeadScoredV1(
        lead_id=lead_id, score=value, verdict="qualified" if value >= model.qualified_threshold else "nurture",
        model_version=version, contributions=tuple(contributions), company_domain=facts.get("company_domain"),
        scored_at=now, grade=rules.grade, fit_score=rules.fit, engagement_score=rules.engagement,
        rules_score=rules.value, learned_probability=None if p is None else round(p, 4),
        learned_outcomes=learned.outcomes, lead=dict(facts),
    )  # fmt: skip


# --- models marketers own ----------------------------------------------------------------------------------------


async def create_model(uow: UnitOfWork, *, name: str, definition: ScoringModelDefinition) -> int:
    """Store a validated model as a draft; returns its version."""
    async with uow.transaction() as tx:
        return await store.add_model(tx.session, name=name, definition=definition.model_dump(mode="json"), at=utc_now())


async def dry_run(uow: UnitOfWork, *, definition: ScoringModelDefinition, last: int) -> dict[str, Any]:
    """What a draft would do to the last `last` leads: grade changes and leads becoming (un)qualified."""
    now = utc_now()
    changed_grade = became_qualified = no_longer_qualified = 0
    async with uow.transaction() as tx:
        recent = await store.recent_scores(tx.session, limit=last)
        for row in recent:
            touches = await store.load_touches(tx.session, lead_id=row["lead_id"])
            draft = await _score(tx, row["lead_id"], row["facts"], touches, version="draft", model=definition, now=now)
            changed_grade += draft.grade != row["grade"]
            became_qualified += draft.verdict == "qualified" and row["verdict"] != "qualified"
            no_longer_qualified += draft.verdict != "qualified" and row["verdict"] == "qualified"
    return {
        "leads": len(recent),
        "changed_grade": changed_grade,
        "became_qualified": became_qualified,
        "no_longer_qualified": no_longer_qualified,
    }


async def activate(uow: UnitOfWork, *, version: int) -> str:
    """Put a model in force and start re-scoring open leads; returns the re-score job id."""
    job_id = str(uuid.uuid4())
    async with uow.transaction() as tx:
        if await store.load_model(tx.session, version=version) is None:
            raise LookupError(f"no scoring model version {version}")
        await store.activate_model(tx.session, version=version, at=utc_now())
        total = await store.count_open_leads(tx.session)
        await store.start_job(tx.session, job_id=job_id, version=version, total=total, at=utc_now())
    return job_id


async def run_rescore_job(uow: UnitOfWork, *, job_id: str, page: int = 200) -> None:
    """Re-score every open lead with the model in force, a page per transaction, recording progress."""
    done, after = 0, ""
    while True:
        async with uow.transaction() as tx:
            lead_ids = await store.open_lead_ids(tx.session, after=after, limit=page)
            for lead_id in lead_ids:
                await rescore(tx, lead_id)
            done += len(lead_ids)
            finished = utc_now() if len(lead_ids) < page else None
            await store.advance_job(tx.session, job_id=job_id, done=done, finished_at=finished)
        if finished is not None:
            return
        after = lead_ids[-1]


async def rescore_cooling_leads(uow: UnitOfWork) -> int:
    """Re-score qualified leads whose engagement decays; those that cross the threshold are announced cold."""
    async with uow.read() as session:
        lead_ids = await store.qualified_open_lead_ids(session)
    cold = 0
    for lead_id in lead_ids:
        async with uow.transaction() as tx:
            scored = await rescore(tx, lead_id, only_if_changed=True)
            cold += bool(scored and scored.went_cold)
    return cold


async def work_rescore_jobs(uow: UnitOfWork, *, every_seconds: float = 1.0) -> None:
    """Run re-score jobs (started by activations, or left unfinished by a crash), forever."""
    while True:
        async with uow.read() as session:
            job_id = await store.running_job(session)
        if job_id is not None:
            await run_rescore_job(uow, job_id=job_id)
            continue
        await asyncio.sleep(every_seconds)


async def watch_cooling(uow: UnitOfWork, *, every_seconds: float = 60.0) -> None:
    """Announce leads that decay makes go cold, once a period, forever."""
    while True:
        try:
            await rescore_cooling_leads(uow)
        except Exception as exc:  # an outage: try again next period
            log.warning("could not re-score cooling leads: %r", exc)
        await asyncio.sleep(every_seconds)
