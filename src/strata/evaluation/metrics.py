"""Classification metrics (scikit-learn) and SQuAD answer metrics, as JSON-ready Python scalars and lists.

Zero-division convention: a ratio whose denominator is 0 is reported as 0.0 (precision of a
class never predicted, recall of a class absent from the gold labels, F1 when both are 0):
scikit-learn's ``zero_division=0``, passed explicitly so no warning is raised.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from strata.errors import StrataError
from strata.evaluation.answers import normalize_answer, token_f1

# normalize_answer lives in answers.py (stdlib only, shared with the RL rewards); importable from here too.
__all__ = ["classification_metrics", "exact_match", "normalize_answer", "mean_token_f1"]


def _checked_arrays(y_true: Sequence[int], y_pred: Sequence[int], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Both label sequences as int64 arrays; a one-line refusal for what no metric can score."""
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
    return true, pred


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], label_names: list[str]) -> dict:
    """Accuracy, macro F1, per-class precision/recall/F1/support, confusion matrix, majority baseline.

    ``y_pred`` values outside ``[0, len(label_names))`` (e.g. -1 for an unparseable generation)
    are invalid: they count as wrong for accuracy and as a miss for the true class's recall, but
    as no class's prediction, so they are absent from the confusion matrix (``n_invalid`` counts
    them); scikit-learn does exactly this for a prediction outside its explicit ``labels``.
    ``macro_f1`` averages over the classes that occur in ``y_true`` or (validly) in ``y_pred``,
    ``balanced_accuracy`` (macro recall) over those in ``y_true``: scikit-learn's own sets without
    explicit ``labels``, except that an invalid prediction is not a class. The confusion matrix has
    rows = true class, columns = predicted class, in ``label_names`` order.
    """
    # sklearn.metrics takes ~2 s to import (scipy): only here, so exact match and token F1 stay light.
    from sklearn.metrics import (
        accuracy_score,
        confusion_matrix,
        f1_score,
        precision_recall_fscore_support,
        recall_score,
    )

    k = len(label_names)
    true, pred = _checked_arrays(y_true, y_pred, k)
    names = [str(name) for name in label_names]
    n = int(true.size)
    valid = (pred >= 0) & (pred < k)
    if n == 0:
        zeros = {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
        return {"accuracy": 0.0, "macro_f1": 0.0, "balanced_accuracy": 0.0, "majority_baseline": 0.0,
                "n": 0, "n_invalid": 0, "per_class": {name: dict(zeros) for name in names},
                "confusion_matrix": np.zeros((k, k), dtype=int).tolist(), "label_names": names}
    classes = list(range(k))
    precision, recall, f1, support = precision_recall_fscore_support(
        true, pred, labels=classes, average=None, zero_division=0
    )
    seen = sorted(set(true.tolist()) | set(pred[valid].tolist()))
    per_class = {
        name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
               "support": int(support[i])}
        for i, name in enumerate(names)
    }
    return {
        "accuracy": float(accuracy_score(true, pred)),
        "macro_f1": float(f1_score(true, pred, labels=seen, average="macro", zero_division=0)),
        "balanced_accuracy": float(
            recall_score(true, pred, labels=sorted(set(true.tolist())), average="macro", zero_division=0)
        ),
        "majority_baseline": float(support.max() / n),
        "n": n,
        "n_invalid": int((~valid).sum()),
        "per_class": per_class,
        "confusion_matrix": confusion_matrix(true, pred, labels=classes).tolist(),
        "label_names": names,
    }


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
    if len(predictions) != len(references):
        raise StrataError(
            f"{len(predictions)} predictions for {len(references)} references; pass one per example"
        )
    if not predictions:
        return 0.0
    return float(np.mean([token_f1(p, r) for p, r in zip(predictions, references)]))
