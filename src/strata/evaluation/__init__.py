"""Strata evaluation: log-likelihood scoring, greedy generation, metrics and one dispatcher.

Names are loaded lazily (PEP 562) so that importing a light submodule such as
``strata.evaluation.answers`` (used by RL rewards) does not pull in torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "FAMILIES": "evaluate",
    "METHODS": "evaluate",
    "evaluate_dataset": "evaluate",
    "cut_after_final_answer": "generation",
    "generate_texts": "generation",
    "parse_label": "generation",
    "score_math_answer": "generation",
    "classification_metrics": "metrics",
    "exact_match": "metrics",
    "mean_token_f1": "metrics",
    "normalize_answer": "metrics",
    "perplexity_from_rows": "perplexity",
    "perplexity_from_texts": "perplexity",
    "sequence_nll": "perplexity",
    "ChoiceScores": "scoring",
    "label_loglikelihoods": "scoring",
    "score_choices": "scoring",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'strata.evaluation' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"strata.evaluation.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
