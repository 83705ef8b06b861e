"""Per-layer routing diagnostics of a :class:`RouterStats`: balance, association with the domains, baselines.

Per layer, on the recorded tokens: router entropy (per token and of the mean routing distribution) and load
balance; purity / MI / NMI between the router's arg-max stratum and the domain, each with a permutation null
(:mod:`strata.experiments.association`); the same for k-means (k = S) on the *same* hidden states the router
reads, and the local intrinsic dimension of those states per domain and per stratum.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.stats import entropy

from strata.experiments.association import association_metrics
from strata.experiments.intrinsic_dimension import local_intrinsic_dimension
from strata.experiments.router_stats import RouterStats
from strata.models.stratified.routers import kmeans

__all__ = ["router_balance", "routing_diagnostics"]


def router_balance(probs: np.ndarray) -> dict[str, Any]:
    """Entropy and load statistics of router probabilities [N, S] (entropies in nats, normalised by log S)."""
    s = probs.shape[1]
    log_s = math.log(s) if s > 1 else 1.0
    token_entropy = -(probs * np.log(np.clip(probs, 1e-12, None))).sum(1)
    load = np.bincount(probs.argmax(1), minlength=s) / len(probs)
    mean_p = probs.mean(0)
    return {
        "entropy": float(token_entropy.mean()),
        "entropy_normalized": float(token_entropy.mean() / log_s),
        "marginal_entropy_normalized": float(entropy(mean_p) / log_s),
        "load": [float(v) for v in load],
        "load_entropy_normalized": float(entropy(load) / log_s),
        "max_load": float(load.max()),
        "switch_balance": float(s * (load * mean_p).sum()),  # 1.0 when perfectly balanced
    }


def _lid_entry(est: np.ndarray, domains: np.ndarray, assignment: np.ndarray | None, method: str,
               k: int) -> dict[str, Any]:
    """Median LID overall, its distribution per domain and (for a router) its median per stratum."""
    per_domain = {}
    for d in np.unique(domains):
        v = est[domains == d]
        per_domain[str(int(d))] = {
            "mean": float(v.mean()),
            "median": float(np.median(v)),
            "std": float(v.std()),
            "n": int(len(v)),
        }
    entry: dict[str, Any] = {"method": method, "k": int(k), "median": float(np.median(est)),
                             "per_domain": per_domain}
    if assignment is not None:
        entry["per_stratum_median"] = {str(int(s)): float(np.median(est[assignment == s]))
                                       for s in np.unique(assignment)}
    return entry


def _layer_entry(stats: RouterStats, layer: int, sub: np.ndarray, n_permutations: int, seed: int,
                 kmeans_baseline: bool, lid: bool, lid_k: int, lid_method: str) -> dict[str, Any]:
    domains = stats.domains
    entry: dict[str, Any] = {"layer": layer}
    if stats.probs[layer] is not None:
        router = router_balance(stats.probs[layer])
        router.update(association_metrics(stats.assignments[layer], domains, n_permutations, seed))
        entry["router"] = router
    e = stats.expert_assignments[layer]
    if e is not None:
        experts = association_metrics(e, domains, n_permutations, seed)
        experts["load"] = [float(v) for v in np.bincount(e, minlength=int(e.max()) + 1) / len(e)]
        entry["experts"] = experts
    x = stats.hidden[layer][sub]
    if kmeans_baseline:
        _, labels = kmeans(x, stats.num_strata, seed=seed)
        entry["kmeans"] = association_metrics(labels, domains[sub], n_permutations, seed)
    if lid:
        k = min(lid_k, len(x) - 1)
        est = local_intrinsic_dimension(x, k=k, method=lid_method)
        assignment = stats.assignments[layer]
        entry["lid"] = _lid_entry(est, domains[sub], None if assignment is None else assignment[sub],
                                  lid_method, k)
    return entry


def routing_diagnostics(
    stats: RouterStats,
    n_permutations: int = 200,
    seed: int = 0,
    kmeans_baseline: bool = True,
    lid: bool = True,
    lid_k: int = 20,
    lid_method: str = "twonn",
    max_points: int = 4000,
) -> dict[str, Any]:
    """JSON-serialisable per-layer diagnostics of `stats` (see the module docstring).

    k-means and LID run on a random subsample of at most `max_points` tokens (O(N^2) distances);
    router metrics use all tokens.
    """
    rng = np.random.default_rng(seed)
    n = len(stats.domains)
    sub = np.sort(rng.choice(n, size=min(n, max_points), replace=False))
    domains = stats.domains
    return {
        "stratified_type": stats.stratified_type,
        "stratum_source": stats.stratum_source,
        "num_strata": int(stats.num_strata),
        "num_tokens": int(n),
        "num_domains": int(len(np.unique(domains))),
        "domain_fractions": {str(int(d)): float((domains == d).mean()) for d in np.unique(domains)},
        "layers": [
            _layer_entry(stats, layer, sub, n_permutations, seed, kmeans_baseline, lid, lid_k, lid_method)
            for layer in range(stats.num_layers)
        ],
    }
