"""A run of captured and merged leads folded in memory: what applying each capture alone, in order, would see.

Pure: the run's reads happen once before the fold, its writes once after, so a run costs a few statements
whatever its size, and a lead captured twice in one run sees its first capture's resubmission.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from services.scoring.rules import RESUBMISSION, Touch
from shared.events import LeadCapturedV1, LeadMergedV1
from shared.privacy import strip_personal


@dataclass(frozen=True)
class Capture:
    """One capture of a run: the lead's facts as it now stands and everything it did so far, oldest first."""

    lead_id: str
    facts: dict[str, Any]
    captured_at: datetime
    touches: tuple[Touch, ...]
    resubmitted: Touch | None  # the renewed interest this capture adds, if it does


def fold_captures(
    run: Sequence[LeadCapturedV1], *, erased: Collection[str], touches: Mapping[str, Sequence[Touch]]
) -> list[Capture]:
    """Each capture of `run`, in order; `touches` are what the run's leads did before it, `erased` the leads
    that asked to be forgotten (whose facts are kept without anything personal)."""
    did = {lead_id: tuple(done) for lead_id, done in touches.items()}
    folded = []
    for captured in run:
        facts = captured.model_dump(mode="json", exclude={"merged_at", "changed_fields", "renewed_interest"})
        if captured.lead_id in erased:
            facts = strip_personal(facts)
        resubmitted = _renewed_interest(captured)
        so_far = did.get(captured.lead_id, ())
        if resubmitted is not None:
            so_far = tuple(sorted((*so_far, resubmitted), key=lambda touch: touch.at))
        did[captured.lead_id] = so_far
        folded.append(Capture(captured.lead_id, facts, captured.captured_at, so_far, resubmitted))
    return folded


def _renewed_interest(captured: LeadCapturedV1) -> Touch | None:
    if isinstance(captured, LeadMergedV1) and captured.renewed_interest:
        return Touch(kind=RESUBMISSION, at=captured.merged_at)
    return None


def until_each_learner(captures: Sequence[Capture], *, learners: Collection[str]) -> Iterator[list[Capture]]:
    """The run cut after the first capture of each lead with held outcomes: learning from them changes the
    model, so the captures after must be scored by the model that learned."""
    waiting, part = set(learners), []
    for capture in captures:
        part.append(capture)
        if capture.lead_id in waiting:
            waiting.discard(capture.lead_id)
            yield part
            part = []
    if part:
        yield part
