"""A lead's lifecycle as sales reports it: which outcome may follow which, as a pure state machine.

States: `open` (not yet worked or being worked: accepted, contacted, meeting_booked, qualified are stages of it),
`won`, `lost`, `disqualified` (closed), `recycled` (back to nurture with marketing). A closed lead only moves again
through `reopened` (or `recycled`, for lost and disqualified leads marketing wants to nurture); `won` is final
unless reopened. A recycled lead can be worked again from the start.
"""

from __future__ import annotations

from dataclasses import dataclass

STAGES = ("captured", "accepted", "contacted", "meeting_booked", "qualified")
CLOSED = frozenset({"won", "lost", "disqualified"})
WORKING = frozenset({"accepted", "contacted", "meeting_booked", "qualified"})

# state → outcomes that may follow it
ALLOWED: dict[str, frozenset[str]] = {
    "open": WORKING | CLOSED | {"recycled"},
    "recycled": WORKING | CLOSED | {"recycled"},
    "won": frozenset({"reopened"}),
    "lost": frozenset({"reopened", "recycled"}),
    "disqualified": frozenset({"reopened", "recycled"}),
}


@dataclass(frozen=True)
class Lifecycle:
    """Where a lead stands: its state and the furthest working stage it reached in this cycle."""

    state: str = "open"
    stage: str = "captured"

    def after(self, outcome: str) -> Lifecycle:
        """The lifecycle once `outcome` is applied; raises ImpossibleTransition when it cannot follow."""
        if outcome not in ALLOWED[self.state]:
            raise ImpossibleTransition(self, outcome)
        if outcome in WORKING:
            furthest = max(self.stage, outcome, key=STAGES.index)
            return Lifecycle("open", furthest)
        if outcome in CLOSED:
            return Lifecycle(outcome, self.stage)
        if outcome == "recycled":
            return Lifecycle("recycled", "captured")
        return Lifecycle("open", self.stage)  # reopened


class ImpossibleTransition(ValueError):
    """An outcome that cannot follow the lead's current state."""

    def __init__(self, current: Lifecycle, outcome: str) -> None:
        allowed = ", ".join(sorted(ALLOWED[current.state]))
        super().__init__(f"a lead that is {current.state} cannot be {outcome}; allowed next: {allowed}")
        self.current = current
        self.outcome = outcome
