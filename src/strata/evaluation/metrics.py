"""Plain numpy metrics (no scikit-learn), returned as JSON-ready Python scalars and lists.

Zero-division convention: a ratio whose denominator is 0 is reported as 0.0 (precision of a
class never predicted, recall of a class absent from the gold labels, F1 when both are 0),
matching scikit-learn's ``zero_division=0``.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

import numpy as np

from strata.errors import StrataError

__all__ = ["classification_metrics", "exact_match", "normalize_answer", "mean_token_f1"]

_PUNCT = str.maketrans("", "", string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else 0.0


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], label_names: list[str]) -> dict:
    """Accuracy, macro F1, per-class precision/recall/F1/support, confusion matrix, majority baseline.

    ``y_pred`` values outside ``[0, len(label_names))`` (e.g. -1 for an unparseable generation)
    are invalid: they count as wrong for accuracy and as a miss for the true class's recall, but
    as no class's prediction, so they are absent from the confusion matrix (``n_invalid`` counts
    them). ``macro_f1`` and ``balanced_accuracy`` average over the classes that occur in
    ``y_true`` or (validly) in ``y_pred``, like scikit-learn without explicit ``labels``: a
    class absent from both would add a meaningless 0. The confusion matrix has rows = true
    class, columns = predicted class, in ``label_names`` order.
    """
    k = len(label_names)
    if k == 0:
        raise StrataError("classification metrics need at least one label name")
    true = np.asarray(list(y_true), dtype=np.int64)
    pred = np.asarray(list(y_pred), dtype=np.int64)
    if true.shape != pred.shape:
        raise StrataError(
            f"y_true has {true.size} labels but y_pred has {pred.size}; pass one prediction per example"
        )
    if true.size and (true.min() < 0 or true.max() >= k):
        raise StrataError(f"a true label is outside 0..{k - 1}; drop unlabelled (-1) rows before scoring")
    n = int(true.size)
    valid = (pred >= 0) & (pred < k)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (true[valid], pred[valid]), 1)
    support = np.bincount(true, minlength=k)
    predicted = confusion.sum(axis=0)
    tp = np.diag(confusion)

    per_class: dict[str, dict[str, float | int]] = {}
    f1s, recalls, present = [], [], []
    for i, name in enumerate(label_names):
        precision = _ratio(tp[i], predicted[i])
        recall = _ratio(tp[i], support[i])
        f1 = _ratio(2 * precision * recall, precision + recall)
        per_class[str(name)] = {
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "support": int(support[i]),
        }
        f1s.append(f1)
        recalls.append(recall)
        present.append(bool(support[i] > 0 or predicted[i] > 0))
    mask = np.asarray(present)
    correct = int((true == pred).sum())
    return {
        "accuracy": _ratio(correct, n),
        "macro_f1": float(np.mean(np.asarray(f1s)[mask])) if mask.any() else 0.0,
        "balanced_accuracy": float(np.mean(np.asarray(recalls)[support > 0])) if (support > 0).any() else 0.0,
        "majority_baseline": _ratio(support.max(), n) if n else 0.0,
        "n": n,
        "n_invalid": int((~valid).sum()),
        "per_class": per_class,
        "confusion_matrix": confusion.tolist(),
        "label_names": [str(name) for name in label_names],
    }


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    text = (text or "").lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(predictions: Sequence[str], references: Sequence[str], normalize: bool = True) -> float:
    """Fraction of predictions equal to their reference (after :func:`normalize_answer` by default)."""
    if len(predictions) != len(references):
        raise StrataError(
            f"{len(predictions)} predictions for {len(references)} references; pass one per example"
        )
    if not predictions:
        return 0.0
    if normalize:
        hits = sum(normalize_answer(p) == normalize_answer(r) for p, r in zip(predictions, references))
    else:
        hits = sum(p == r for p, r in zip(predictions, references))
    return hits / len(predictions)


def mean_token_f1(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean SQuAD token F1 (the shared ``answers.token_f1``, so rewards and metrics agree)."""
    from strata.evaluation.answers import token_f1

    if len(predictions) != len(references):
        raise StrataError(
            f"{len(predictions)} predictions for {len(references)} references; pass one per example"
        )
    if not predictions:
        return 0.0
    return float(np.mean([token_f1(p, r) for p, r in zip(predictions, references)]))
