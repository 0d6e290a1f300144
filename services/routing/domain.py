"""Pure routing decisions: a scored lead and the reps in, an assignment with its reasons out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Rep:
    """A sales rep as routing sees them."""

    rep_id: str
    name: str
    active: bool


@dataclass(frozen=True)
class Decision:
    """Who gets the lead (or nobody), and why."""

    kind: Literal["assigned", "unassigned"]
    rep: Rep | None
    reason: str
    skipped: tuple[tuple[str, str], ...]


def assign_round_robin(reps: Sequence[Rep], *, last_assigned: str | None) -> Decision:
    """The next active rep after `last_assigned`, in rep-id order so fairness ignores the order reps were added."""
    skipped = tuple((rep.rep_id, "inactive") for rep in reps if not rep.active)
    eligible = sorted((rep for rep in reps if rep.active), key=lambda rep: rep.rep_id)
    if not eligible:
        return Decision("unassigned", None, "no active rep; the lead waits in the default pool", skipped)
    chosen = next((rep for rep in eligible if last_assigned is None or rep.rep_id > last_assigned), eligible[0])
    reason = f"round robin over {len(eligible)} active rep(s): {chosen.name} is next after {last_assigned or 'start'}"
    return Decision("assigned", chosen, reason, skipped)
