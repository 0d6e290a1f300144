"""A run of consumed events applied in memory: the cards of the run's leads are folded event by event, in order, and
what the run changed is written back with a few statements (pure: the service loads and saves the run).

Applying a run changes exactly what applying its events one by one would: the same cards, the same journey steps in
the same order, the same outcomes held for leads not known yet, and the report cells moved by the sum of the
differences each event makes (store.add_changes_to_cells: each cell touched written once).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from services.feedback import cards
from services.feedback.aggregates import Delta, LeadCard, changes
from services.feedback.domain import JourneyStep, outcome_step
from services.feedback.lifecycle import ImpossibleTransition
from shared.events import OutcomeRecordedV1

CardChange = Callable[[LeadCard | None], LeadCard]


class CardRun:
    """The cards of a run's leads while the run's events are applied to them, and what the run writes back."""

    def __init__(
        self, loaded: Mapping[str, LeadCard], pending: Mapping[str, Sequence[OutcomeRecordedV1]] | None = None
    ) -> None:
        self._loaded = dict(loaded)
        self._cards = dict(loaded)
        self._pending = {lead_id: list(outcomes) for lead_id, outcomes in (pending or {}).items()}
        self._changes: list[list[Delta]] = []
        self.steps: list[tuple[str, JourneyStep]] = []
        self.held: list[OutcomeRecordedV1] = []

    def card(self, lead_id: str) -> LeadCard | None:
        """The lead's card as the events applied so far left it (None: not known yet)."""
        return self._cards.get(lead_id)

    def record(self, event_id: str, step: JourneyStep) -> None:
        """Add a step to the lead's journey."""
        self.steps.append((event_id, step))

    def change(self, lead_id: str, change: CardChange) -> LeadCard:
        """Apply `change` to the lead's card; the cells move by the difference it makes."""
        before = self._cards.get(lead_id)
        after = change(before)
        self._changes.append(changes(before, after))
        self._cards[lead_id] = after
        return after

    def apply_outcome(self, event_id: str, outcome: OutcomeRecordedV1) -> None:
        """An outcome for a known lead, through the lifecycle: one it cannot take stays on the journey as rejected."""
        card = self._cards[outcome.lead_id]
        step = outcome_step(outcome)
        try:
            self.change(outcome.lead_id, lambda _: cards.on_outcome(card, outcome))
        except ImpossibleTransition as exc:
            step = JourneyStep(step.lead_id, "outcome_rejected", step.occurred_at, step.actor, str(exc), step.details)
        self.record(event_id, step)

    def apply_pending(self, lead_id: str) -> None:
        """Outcomes that arrived before the lead, applied now that it is known (in the order they came)."""
        for outcome in self._pending.pop(lead_id, ()):
            self.apply_outcome(f"pending:{outcome.outcome_id}", outcome)

    def hold(self, outcome: OutcomeRecordedV1) -> None:
        """Keep an outcome whose lead is not known yet."""
        self.held.append(outcome)

    def new_cards(self) -> list[LeadCard]:
        """Cards of leads the run made known."""
        return [card for lead_id, card in self._cards.items() if lead_id not in self._loaded]

    def changed_cards(self) -> list[LeadCard]:
        """Cards that existed before the run and end it different."""
        return [card for lead_id, card in self._cards.items() if self._loaded.get(lead_id, card) != card]

    def cell_changes(self) -> list[list[Delta]]:
        """What the run adds to the report cells: the difference each change of a card made, in order."""
        return self._changes
