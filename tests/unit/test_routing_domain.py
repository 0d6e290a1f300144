"""Round-robin routing: fair, in rep-id order, skipping inactive reps, explained."""

from __future__ import annotations

from collections import Counter

from services.routing.domain import Rep, assign_round_robin

AIKO = Rep("rep-a", "Aiko", active=True)
BEN = Rep("rep-b", "Ben", active=True)
CHIDI = Rep("rep-c", "Chidi", active=True)
DORA_AWAY = Rep("rep-d", "Dora", active=False)


def _rotation(reps: list[Rep], leads: int, *, last: str | None = None) -> list[str]:
    chosen = []
    for _ in range(leads):
        decision = assign_round_robin(reps, last_assigned=last)
        assert decision.rep is not None
        last = decision.rep.rep_id
        chosen.append(last)
    return chosen


def test_first_lead_goes_to_the_lowest_rep_id() -> None:
    decision = assign_round_robin([CHIDI, AIKO, BEN], last_assigned=None)
    assert (decision.kind, decision.rep) == ("assigned", AIKO)


def test_rotation_follows_rep_ids_whatever_order_reps_were_added() -> None:
    assert _rotation([CHIDI, AIKO, BEN], 3) == _rotation([AIKO, BEN, CHIDI], 3) == ["rep-a", "rep-b", "rep-c"]


def test_rotation_wraps_around_after_the_last_rep() -> None:
    assert assign_round_robin([AIKO, BEN, CHIDI], last_assigned="rep-c").rep == AIKO


def test_inactive_reps_are_skipped_with_a_reason() -> None:
    decision = assign_round_robin([AIKO, Rep("rep-b", "Ben", active=False), CHIDI], last_assigned="rep-a")
    assert decision.rep == CHIDI
    assert decision.skipped == (("rep-b", "inactive"),)


def test_rotation_continues_after_a_rep_who_left_the_pool() -> None:
    assert assign_round_robin([AIKO, CHIDI], last_assigned="rep-b").rep == CHIDI


def test_nobody_active_leaves_the_lead_unassigned() -> None:
    decision = assign_round_robin([DORA_AWAY], last_assigned="rep-a")
    assert (decision.kind, decision.rep) == ("unassigned", None)
    assert "no active rep" in decision.reason
    assert decision.skipped == (("rep-d", "inactive"),)


def test_no_reps_at_all_leaves_the_lead_unassigned() -> None:
    assert assign_round_robin([], last_assigned=None).kind == "unassigned"


def test_reason_names_the_rep_and_whom_they_follow() -> None:
    decision = assign_round_robin([AIKO, BEN, DORA_AWAY], last_assigned="rep-a")
    assert decision.reason == "round robin over 2 active rep(s): Ben is next after rep-a"
    assert "after start" in assign_round_robin([AIKO], last_assigned=None).reason


def test_many_leads_are_shared_fairly() -> None:
    shares = Counter(_rotation([CHIDI, DORA_AWAY, AIKO, BEN], 100))
    assert set(shares) == {"rep-a", "rep-b", "rep-c"}
    assert max(shares.values()) - min(shares.values()) <= 1
