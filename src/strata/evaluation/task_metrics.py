"""Flat, loggable names of task metrics, shared by the trainer's evaluations and ``strata eval``.

One source gives ``eval_accuracy``; a mixture gives ``eval_<source>/accuracy`` per source plus their
unweighted mean as ``eval_accuracy``, so a number in metrics.json, TensorBoard and ``strata eval``'s
output has the same name everywhere.
"""

from __future__ import annotations

import math
from typing import Any

MEAN_OVER_SOURCES = ("accuracy", "macro_f1", "exact_match")


def scalar_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Flatten nested metric dicts to loggable scalars (``per_domain.sst2.accuracy`` ...)."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)) and math.isfinite(float(value)):
            out[name] = float(value)
        elif isinstance(value, dict) and key in ("per_domain", "precision", "recall", "f1"):
            out.update(scalar_metrics(value, prefix=f"{name}/"))
    return out


def task_metric_names(per_source: dict[str, dict[str, Any]], prefix: str = "eval") -> dict[str, float]:
    """Scalar metrics of every evaluation source under the names training logs them with."""
    lead = f"{prefix}_" if prefix else ""
    flat: dict[str, float] = {}
    if len(per_source) == 1:
        (metrics,) = per_source.values()
        return {f"{lead}{k}": v for k, v in scalar_metrics(metrics).items()}
    for name, metrics in per_source.items():
        flat.update({f"{lead}{name}/{k}": v for k, v in scalar_metrics(metrics).items()})
    for key in MEAN_OVER_SOURCES:
        values = [m.get(key) for m in per_source.values()]
        values = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if values:
            flat[f"{lead}{key}"] = sum(values) / len(values)
    return flat
