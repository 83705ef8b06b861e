"""Association between two labelings of the same tokens: purity, mutual information, NMI, with a null.

The measures are scikit-learn's (``sklearn.metrics``): MI in nats (natural log), NMI normalised by the
arithmetic mean of the two entropies (``average_method="arithmetic"``, its default, spelled out), and
both labelings constant counting as a perfect match (NMI 1.0). Purity has no scikit-learn function; it is
read off scikit-learn's contingency matrix. What is ours is the permutation null around them.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import mutual_info_score, normalized_mutual_info_score
from sklearn.metrics.cluster import contingency_matrix

__all__ = ["mutual_information", "normalized_mutual_information", "purity", "association_metrics"]


def mutual_information(a: np.ndarray, b: np.ndarray) -> float:
    """I(a; b) in nats from the empirical joint distribution."""
    return float(mutual_info_score(np.asarray(a).reshape(-1), np.asarray(b).reshape(-1)))


def normalized_mutual_information(a: np.ndarray, b: np.ndarray) -> float:
    """NMI = I(a; b) / mean(H(a), H(b)); 1.0 when both labelings are constant, 0.0 when only one is."""
    return float(
        normalized_mutual_info_score(
            np.asarray(a).reshape(-1), np.asarray(b).reshape(-1), average_method="arithmetic"
        )
    )


def _purity(c: np.ndarray) -> float:
    return float(c.max(1).sum() / c.sum())


def purity(assignment: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of tokens whose cluster's majority label is their own label."""
    return _purity(contingency_matrix(np.asarray(assignment).reshape(-1), np.asarray(labels).reshape(-1)))


def _scores(assignment: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The three measures of one labeling pair, from one contingency matrix (the null loop's cost)."""
    c = contingency_matrix(assignment, labels)
    return {
        "purity": _purity(c),
        "nmi": float(normalized_mutual_info_score(assignment, labels, average_method="arithmetic")),
        "mi": float(mutual_info_score(None, None, contingency=c)),
    }


_METRICS = ("purity", "nmi", "mi")


def association_metrics(
    assignment: np.ndarray, labels: np.ndarray, n_permutations: int = 200, seed: int = 0
) -> dict[str, float]:
    """Purity / NMI / MI of `assignment` vs `labels`, each with a shuffled-label null.

    p-value = (1 + #{null >= observed}) / (1 + n_permutations); `*_null_mean` is the chance level for this
    sample (for purity it exceeds 1/K when clusters are unbalanced or small).
    """
    assignment, labels = np.asarray(assignment).reshape(-1), np.asarray(labels).reshape(-1)
    rng = np.random.default_rng(seed)
    observed = _scores(assignment, labels)
    nulls = {k: np.empty(n_permutations) for k in _METRICS}
    for i in range(n_permutations):
        for k, v in _scores(assignment, rng.permutation(labels)).items():
            nulls[k][i] = v
    out: dict[str, float] = {}
    for k in _METRICS:
        out[k] = observed[k]
        if n_permutations > 0:
            out[f"{k}_null_mean"] = float(nulls[k].mean())
            out[f"{k}_null_std"] = float(nulls[k].std())
            out[f"{k}_p_value"] = float((1 + (nulls[k] >= observed[k] - 1e-12).sum()) / (1 + n_permutations))
    return out
