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


def test_never_predicted_class_and_invalid_prediction_by_hand_without_warnings():
    import warnings

    y_true = [0, 0, 1, 2, 2]
    y_pred = [0, 2, -1, 2, 0]  # "neutral" never predicted; its one row got an unparseable answer (-1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # zero_division is explicit: no UndefinedMetricWarning
        m = classification_metrics(y_true, y_pred, LABELS)
    # valid pairs (true, pred): (0,0) (0,2) (2,2) (2,0); the -1 row is in no column
    assert m["confusion_matrix"] == [[1, 0, 1], [0, 0, 0], [1, 0, 1]]
    assert m["accuracy"] == pytest.approx(2 / 5) and m["n_invalid"] == 1
    neg, neu, pos = (m["per_class"][name] for name in LABELS)
    assert (neg["precision"], neg["recall"], neg["f1"]) == pytest.approx((1 / 2, 1 / 2, 1 / 2))  # 1 of 2, 1 of 2
    assert (neu["precision"], neu["recall"], neu["f1"], neu["support"]) == (0.0, 0.0, 0.0, 1)  # 0/0 -> 0
    assert (pos["precision"], pos["recall"], pos["f1"]) == pytest.approx((1 / 2, 1 / 2, 1 / 2))
    # neutral occurs in y_true, so both averages count its 0
    assert m["macro_f1"] == pytest.approx((1 / 2 + 0 + 1 / 2) / 3)
    assert m["balanced_accuracy"] == pytest.approx((1 / 2 + 0 + 1 / 2) / 3)
    assert m["majority_baseline"] == pytest.approx(2 / 5)


# The official SQuAD v1.1 evaluate script's normalize_answer, applied by hand: lower case, drop
# string.punctuation, then the words a/an/the, then collapse whitespace (in that order).
SQUAD_CASES = [
    ("  The  Eiffel Tower! ", "eiffel tower"),
    ("An apple,a day", "applea day"),  # punctuation goes first: "apple,a" -> "applea", no article left
    ("the-end", "theend"),  # "-" removed before articles, so "theend" is one word
    ("A.B. the theory", "ab theory"),
    ("Theatre of the Absurd", "theatre of absurd"),  # "the" inside a word stays
    ("\tNew\nYork\u00a0City ", "new york city"),  # any whitespace, NBSP included
    ("\u201cParis\u201d", "\u201cparis\u201d"),  # curly quotes are not in string.punctuation: kept
    ("", ""),
]


@pytest.mark.parametrize(("text", "expected"), SQUAD_CASES)
def test_one_squad_normaliser_matches_the_official_script(text, expected):
    from strata.evaluation import answers
    from strata.evaluation.answers import token_f1

    assert normalize_answer is answers.normalize_answer  # one normaliser for EM, token F1 and rewards
    assert normalize_answer(text) == expected
    assert token_f1(text, expected) == 1.0 and exact_match([text], [expected]) == 1.0
