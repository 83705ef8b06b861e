"""Per-point local intrinsic dimension (LID) estimators, numpy only.

- ``twonn``: TwoNN (Facco et al., Sci. Rep. 2017). For each point, mu = r2 / r1 (second over first neighbour
  distance); on a locally uniform d-dimensional sample log(mu) ~ Exp(d). The *local* estimate of point i pools
  the k + 1 values of mu in its k-neighbourhood (itself included): d_i = k / sum log(mu_j), the unbiased
  Gamma-MLE. Only the two nearest distances of each point enter, so it tolerates density changes and curvature.
- ``mle``: Levina & Bickel (NeurIPS 2004) with the MacKay-Ghahramani bias correction:
  d_i = (k - 2) / sum_{j<k} log(T_k / T_j), T_j the distance to the j-th nearest neighbour.

Duplicated rows (identical prefixes give identical hidden states in a causal LM) are estimated once and
mapped back, since zero distances make both estimators undefined.
"""

from __future__ import annotations

import numpy as np


def knn_distances(x: np.ndarray, k: int, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Distances [N, k] (ascending) and indices [N, k] of each row's k nearest other rows (brute force)."""
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    if n <= k:
        raise ValueError(f"need more than k={k} points, got {n}")
    sq = (x * x).sum(1)
    dists = np.empty((n, k))
    idx = np.empty((n, k), dtype=np.int64)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        d2 = np.maximum(sq[start:stop, None] - 2 * x[start:stop] @ x.T + sq[None, :], 0.0)  # [c, N]
        d2[np.arange(stop - start), np.arange(start, stop)] = np.inf  # not its own neighbour
        part = np.argpartition(d2, k, axis=1)[:, :k]
        pd = np.take_along_axis(d2, part, axis=1)
        order = np.argsort(pd, axis=1)
        idx[start:stop] = np.take_along_axis(part, order, axis=1)
        dists[start:stop] = np.sqrt(np.take_along_axis(pd, order, axis=1))
    return dists, idx


def _twonn_local(x: np.ndarray, k: int) -> np.ndarray:
    dists, idx = knn_distances(x, max(k, 2))
    log_mu = np.log(dists[:, 1] / np.maximum(dists[:, 0], 1e-300))  # [N]
    pooled = np.concatenate([log_mu[:, None], log_mu[idx[:, :k]]], axis=1)  # [N, k + 1]
    return k / np.maximum(pooled.sum(1), 1e-12)


def _mle_local(x: np.ndarray, k: int) -> np.ndarray:
    if k < 3:
        raise ValueError("the bias-corrected MLE needs k >= 3")
    dists, _ = knn_distances(x, k)
    s = np.log(dists[:, -1:] / np.maximum(dists[:, :-1], 1e-300)).sum(1)
    return (k - 2) / np.maximum(s, 1e-12)


def local_intrinsic_dimension(x: np.ndarray, k: int = 20, method: str = "twonn") -> np.ndarray:
    """Per-point LID estimates [N] of the rows of `x` [N, D]; `method` is "twonn" or "mle"."""
    x = np.asarray(x, dtype=np.float64)
    uniq, inverse = np.unique(x, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    if method == "twonn":
        est = _twonn_local(uniq, k)
    elif method == "mle":
        est = _mle_local(uniq, k)
    else:
        raise ValueError(f"method must be 'twonn' or 'mle', got {method!r}")
    return est[inverse]


def twonn_global(x: np.ndarray) -> float:
    """Global TwoNN estimate (Facco et al.): the Gamma-MLE (N - 1) / sum log(mu) over all distinct points."""
    uniq = np.unique(np.asarray(x, dtype=np.float64), axis=0)
    dists, _ = knn_distances(uniq, 2)
    log_mu = np.log(dists[:, 1] / np.maximum(dists[:, 0], 1e-300))
    return float((len(log_mu) - 1) / np.maximum(log_mu.sum(), 1e-12))


__all__ = ["knn_distances", "local_intrinsic_dimension", "twonn_global"]
