"""How well a score ranks leads: ROC AUC, top-decile lift and calibration per band. Pure arithmetic."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


def roc_auc(scores: Sequence[float], labels: Sequence[int]) -> float | None:
    """Probability that a random positive scores above a random negative (ties count half); None if one class."""
    positives = sum(labels)
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return None
    ranked = sorted(zip(scores, labels, strict=True), key=lambda pair: pair[0])
    rank_sum, position = 0.0, 0
    while position < len(ranked):
        end = position
        while end < len(ranked) and ranked[end][0] == ranked[position][0]:
            end += 1
        average_rank = (position + 1 + end) / 2
        rank_sum += average_rank * sum(label for _, label in ranked[position:end])
        position = end
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def top_decile_lift(scores: Sequence[float], labels: Sequence[int]) -> float | None:
    """Positive rate among the top 10 % by score, over the overall positive rate."""
    if not labels or sum(labels) == 0:
        return None
    size = max(1, len(labels) // 10)
    cut = sorted(scores, reverse=True)[size - 1]
    above = [label for score, label in zip(scores, labels, strict=True) if score > cut]
    at_cut = [label for score, label in zip(scores, labels, strict=True) if score == cut]
    # Leads tied at the cut share the remaining places: their order says nothing.
    share = (size - len(above)) / len(at_cut)
    top_rate = (sum(above) + share * sum(at_cut)) / size
    return top_rate / (sum(labels) / len(labels))


@dataclass(frozen=True)
class Band:
    """One score band: how many leads, what the score promised, what happened."""

    band: str
    leads: int
    predicted_rate: float
    actual_rate: float


def calibration(probabilities: Sequence[float], labels: Sequence[int], *, bands: int = 10) -> list[Band]:
    """Predicted vs actual positive rate per probability band (0-10 %, 10-20 %, ...)."""
    table = []
    for index in range(bands):
        low, high = index / bands, (index + 1) / bands
        members = [
            (p, label) for p, label in zip(probabilities, labels, strict=True)
            if low <= p < high or (index == bands - 1 and p == 1.0)
        ]  # fmt: skip
        if members:
            table.append(Band(
                band=f"{round(low * 100)}-{round(high * 100)}",
                leads=len(members),
                predicted_rate=round(sum(p for p, _ in members) / len(members), 4),
                actual_rate=round(sum(label for _, label in members) / len(members), 4),
            ))  # fmt: skip
    return table
