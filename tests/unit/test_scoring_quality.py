"""How well a score ranks leads: AUC, top-decile lift and calibration on small, hand-checked examples."""

from __future__ import annotations

import pytest

from services.scoring.quality import Band, calibration, roc_auc, top_decile_lift


@pytest.mark.parametrize(
    ("scores", "labels", "auc"),
    [
        ([0.1, 0.4, 0.35, 0.8], [0, 1, 0, 1], 1.0),
        ([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1], 0.0),
        ([5, 5, 5, 5], [1, 0, 1, 0], 0.5),
        ([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1], 0.75),
        ([1, 2, 2, 3], [0, 1, 0, 1], 0.875),
        ([3, 1, 2], [1, 0, 0], 1.0),
    ],
)
def test_roc_auc_on_known_examples(scores: list[float], labels: list[int], auc: float) -> None:
    assert roc_auc(scores, labels) == pytest.approx(auc)


@pytest.mark.parametrize("labels", [[1, 1, 1], [0, 0], []])
def test_roc_auc_needs_both_classes(labels: list[int]) -> None:
    assert roc_auc([0.5] * len(labels), labels) is None


def test_roc_auc_does_not_care_about_the_scale_only_the_order() -> None:
    labels = [0, 1, 0, 1, 1, 0]
    scores = [0.2, 0.7, 0.4, 0.3, 0.9, 0.1]
    assert roc_auc(scores, labels) == roc_auc([s * 100 - 7 for s in scores], labels)


def test_top_decile_lift_compares_the_top_tenth_with_the_base_rate() -> None:
    scores = list(range(20))
    labels = [0] * 18 + [1, 1]  # the two best-scored leads are the two positives
    assert top_decile_lift(scores, labels) == pytest.approx(10.0)
    assert top_decile_lift(scores, list(reversed(labels))) == 0.0


def test_top_decile_lift_of_fewer_than_ten_leads_takes_the_best_one() -> None:
    assert top_decile_lift([0.1, 0.9, 0.5, 0.4], [0, 1, 0, 1]) == pytest.approx(2.0)


@pytest.mark.parametrize("labels", [[], [0, 0, 0]])
def test_top_decile_lift_needs_positives(labels: list[int]) -> None:
    assert top_decile_lift([0.5] * len(labels), labels) is None


def test_top_decile_lift_of_a_constant_score_is_one() -> None:
    labels = [1] + [0] * 9
    assert top_decile_lift([50] * 10, labels) == pytest.approx(1.0)


def test_calibration_compares_prediction_and_outcome_per_band() -> None:
    probabilities = [0.05, 0.0, 0.15, 0.1, 0.95, 1.0, 0.99]
    labels = [0, 0, 1, 0, 1, 1, 0]
    assert calibration(probabilities, labels) == [
        Band(band="0-10", leads=2, predicted_rate=0.025, actual_rate=0.0),
        Band(band="10-20", leads=2, predicted_rate=0.125, actual_rate=0.5),
        Band(band="90-100", leads=3, predicted_rate=0.98, actual_rate=0.6667),
    ]


def test_calibration_with_coarser_bands_and_nothing_to_show() -> None:
    assert calibration([0.2, 0.6, 0.7], [0, 1, 1], bands=2) == [
        Band(band="0-50", leads=1, predicted_rate=0.2, actual_rate=0.0),
        Band(band="50-100", leads=2, predicted_rate=0.65, actual_rate=1.0),
    ]
    assert calibration([], []) == []
