"""Classification metrics and exact match against hand-computed values."""

from __future__ import annotations

import json

import pytest

from strata.errors import StrataError
from strata.evaluation.metrics import classification_metrics, exact_match, mean_token_f1, normalize_answer

LABELS = ["negative", "neutral", "positive"]


def test_confusion_matrix_and_f1_with_a_never_predicted_class():
    y_true = [0, 0, 1, 1, 2, 2, 2]
    y_pred = [0, 2, 0, 2, 2, 2, 0]  # "neutral" is never predicted
    m = classification_metrics(y_true, y_pred, LABELS)
    assert m["confusion_matrix"] == [[1, 0, 1], [1, 0, 1], [1, 0, 2]]
    assert m["accuracy"] == pytest.approx(3 / 7)
    neg, neu, pos = (m["per_class"][name] for name in LABELS)
    # negative: predicted 3 times, 1 right; 2 true
    assert neg["precision"] == pytest.approx(1 / 3)
    assert neg["recall"] == pytest.approx(1 / 2)
    assert neg["f1"] == pytest.approx(0.4)
    # neutral: never predicted -> precision 0 by the zero-division convention, recall 0, f1 0
    assert (neu["precision"], neu["recall"], neu["f1"]) == (0.0, 0.0, 0.0)
    # positive: predicted 4 times, 2 right; 3 true
    assert pos["precision"] == pytest.approx(0.5)
    assert pos["recall"] == pytest.approx(2 / 3)
    assert pos["f1"] == pytest.approx(4 / 7)
    assert [m["per_class"][name]["support"] for name in LABELS] == [2, 2, 3]
    assert m["macro_f1"] == pytest.approx((0.4 + 0.0 + 4 / 7) / 3)
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 0.0 + 2 / 3) / 3)
    assert m["majority_baseline"] == pytest.approx(3 / 7)
    assert m["n"] == 7 and m["n_invalid"] == 0
    json.dumps(m, allow_nan=False)


def test_invalid_predictions_are_wrong_but_in_no_column():
    m = classification_metrics([0, 1, 1, 2], [0, -1, 1, 7], LABELS)
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["n_invalid"] == 2
    assert m["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [0, 0, 0]]
    assert m["per_class"]["neutral"]["recall"] == pytest.approx(0.5)
    assert m["per_class"]["neutral"]["precision"] == pytest.approx(1.0)
    assert m["per_class"]["positive"]["f1"] == 0.0


def test_macro_f1_skips_classes_absent_from_truth_and_predictions():
    m = classification_metrics([0, 0], [0, 1], LABELS)
    # negative: p=1, r=1/2 -> f1 2/3; neutral: predicted once, wrong -> 0; positive absent -> not averaged
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.0) / 2)
    assert m["majority_baseline"] == 1.0


def test_bad_labels_raise():
    with pytest.raises(StrataError):
        classification_metrics([0, 3], [0, 0], LABELS)
    with pytest.raises(StrataError):
        classification_metrics([0, -1], [0, 0], LABELS)
    with pytest.raises(StrataError):
        classification_metrics([0], [0, 1], LABELS)


def test_empty_input_gives_zeros_not_nan():
    m = classification_metrics([], [], LABELS)
    assert m["accuracy"] == 0.0 and m["macro_f1"] == 0.0 and m["n"] == 0
    json.dumps(m, allow_nan=False)


def test_exact_match_and_token_f1():
    assert normalize_answer("  The  Eiffel Tower! ") == "eiffel tower"
    assert exact_match(
        ["The Eiffel tower.", "Paris", "42"], ["eiffel Tower", "London", "42"]
    ) == pytest.approx(2 / 3)
    assert exact_match(["Paris."], ["Paris"], normalize=False) == 0.0
    # "paris france" vs "paris": p=1/2, r=1 -> f1 2/3; "x" vs "y": 0
    assert mean_token_f1(["Paris, France", "x"], ["Paris", "y"]) == pytest.approx((2 / 3 + 0.0) / 2)
    with pytest.raises(StrataError):
        exact_match(["a"], [])
