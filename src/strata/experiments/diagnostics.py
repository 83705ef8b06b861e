"""Diagnostics for stratified models: does routing track the domains, better than chance and than k-means?

Per layer, on the non-padded tokens of held-out batches (:mod:`~strata.experiments.router_stats` collects
them, :mod:`~strata.experiments.routing_summary` summarises them):
- router entropy (per token and of the mean routing distribution) and load balance;
- purity, mutual information and NMI between the router's arg-max stratum and the domain (or planted stratum),
  each with a permutation p-value against shuffled domain labels and the null mean (= the chance level);
  the measures are scikit-learn's (:mod:`~strata.experiments.association`);
- the same metrics for k-means (k = S) on the *same* hidden states the router reads: a router that does no better
  than k-means on frozen features has learned nothing the geometry did not already give;
- per-token local intrinsic dimension (TwoNN or Levina-Bickel MLE) of those hidden states, summarised per domain;
- an ablation matrix: switch stratum s off (`disabled_strata`) and measure the LM loss on each domain
  (:mod:`~strata.experiments.ablation`).

Everything returned is plain JSON (floats, ints, lists, dicts); :mod:`~strata.experiments.tensorboard_log`
writes it as scalars, :mod:`~strata.experiments.planted` makes data with a known answer. This module is the
one place to import them from.
"""

from __future__ import annotations

from strata.experiments.ablation import ablation_matrix, lm_loss, strata_disabled
from strata.experiments.association import (
    association_metrics,
    mutual_information,
    normalized_mutual_information,
    purity,
)
from strata.experiments.intrinsic_dimension import local_intrinsic_dimension
from strata.experiments.planted import planted_strata_batches
from strata.experiments.router_stats import RouterStats, collect_router_stats
from strata.experiments.routing_summary import router_balance, routing_diagnostics
from strata.experiments.tensorboard_log import log_diagnostics_to_tensorboard

__all__ = [
    "RouterStats",
    "mutual_information",
    "normalized_mutual_information",
    "purity",
    "association_metrics",
    "collect_router_stats",
    "router_balance",
    "routing_diagnostics",
    "local_intrinsic_dimension",
    "strata_disabled",
    "lm_loss",
    "ablation_matrix",
    "log_diagnostics_to_tensorboard",
    "planted_strata_batches",
]
