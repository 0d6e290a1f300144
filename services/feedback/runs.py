"""The cards of a consumed batch's leads while its events are applied in memory: folded event by event, in order,
run after run, and what the batch changed written back with a few statements (pure: the service loads and saves).

Applying a batch changes what applying its events one by one would: the same cards, the same journey steps in the
same order, the same outcomes held for leads not known yet, and the same report totals. A card's cells move once,
from the card as loaded to the card as left (store.add_cell_sums: each cell touched written once): the sum of
the differences each of its events made, since each event starts from the card the one before left. A cell that
would move and come back to zero is not written at all (reports show no row for one at zero either way).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from services.feedback import cards
from services.feedback.aggregates import CellSums, LeadCard, add_change
from services.feedback.domain import JourneyStep, outcome_step
from services.feedback.lifecycle import ImpossibleTransition
from shared.events import OutcomeRecordedV1

CardChange = Callable[[LeadCard | None], LeadCard]


class CardRun:
    """The cards of a batch's leads while its events are applied to them, and what the batch writes back."""

    def __init__(self) -> None:
        self._loaded: dict[str, LeadCard] = {}
        self._cards: dict[str, LeadCard] = {}
        self._known: set[str] = set()  # leads whose stored card (or its absence) is here
        self._pending: dict[str, list[OutcomeRecordedV1]] = {}
        self._pending_taken: set[str] = set()  # leads whose held outcomes were taken from the store
        self.steps: list[tuple[str, JourneyStep]] = []
        self.held: list[OutcomeRecordedV1] = []

    def not_loaded(self, lead_ids: Sequence[str]) -> list[str]:
        """Those of `lead_ids` (distinct, in order) whose stored card is not here yet."""
        return [lead_id for lead_id in dict.fromkeys(lead_ids) if lead_id not in self._known]

    def add_loaded(self, lead_ids: Sequence[str], loaded: Mapping[str, LeadCard]) -> None:
        """The stored cards of `lead_ids` (a lead missing from `loaded` has none)."""
        self._known.update(lead_ids)
        self._loaded.update(loaded)
        self._cards.update(loaded)

    def pending_not_taken(self, lead_ids: Sequence[str]) -> list[str]:
        """Those of `lead_ids` (distinct, in order) whose held outcomes were not taken from the store yet."""
        return [lead_id for lead_id in dict.fromkeys(lead_ids) if lead_id not in self._pending_taken]

    def add_pending(self, lead_ids: Sequence[str], pending: Mapping[str, Sequence[OutcomeRecordedV1]]) -> None:
        """The outcomes held in the store for `lead_ids`, taken, oldest first (a lead missing from `pending` had
        none)."""
        self._pending_taken.update(lead_ids)
        for lead_id, outcomes in pending.items():
            self._pending.setdefault(lead_id, []).extend(outcomes)

    def card(self, lead_id: str) -> LeadCard | None:
        """The lead's card as the events applied so far left it (None: not known yet)."""
        return self._cards.get(lead_id)

    def record(self, event_id: str, step: JourneyStep) -> None:
        """Add a step to the lead's journey."""
        self.steps.append((event_id, step))

    def change(self, lead_id: str, change: CardChange) -> LeadCard:
        """Apply `change` to the lead's card; the cells move by the difference it makes."""
        after = change(self._cards.get(lead_id))
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
        """Outcomes that arrived before the lead, applied now that it is known (in the order they came): those held
        in the store, then those this batch held."""
        held_here = [outcome for outcome in self.held if outcome.lead_id == lead_id]
        if held_here:
            self.held = [outcome for outcome in self.held if outcome.lead_id != lead_id]
        for outcome in [*self._pending.pop(lead_id, ()), *held_here]:
            self.apply_outcome(f"pending:{outcome.outcome_id}", outcome)

    def hold(self, outcome: OutcomeRecordedV1) -> None:
        """Keep an outcome whose lead is not known yet."""
        self.held.append(outcome)

    def new_cards(self) -> list[LeadCard]:
        """Cards of leads the run made known."""
        return [card for lead_id, card in self._cards.items() if lead_id not in self._loaded]

    def changed_cards(self) -> list[LeadCard]:
        """Cards that existed before the run and end it different."""
        return [card for lead_id, card in self._cards.items()
                if (loaded := self._loaded.get(lead_id, card)) is not card and loaded != card]  # fmt: skip

    def cell_sums(self) -> CellSums:
        """What the batch adds to the report cells: the sum, per cell, of each card's difference between the card
        loaded and the card left."""
        sums: CellSums = {}
        for lead_id, card in self._cards.items():
            loaded = self._loaded.get(lead_id)
            if loaded is not card and loaded != card:
                add_change(sums, loaded, card)
        return sums
