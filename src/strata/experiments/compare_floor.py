"""The model-free floor of a comparison: per domain, the majority label of that domain's training rows.

A mechanism that only learns "which domain is this" cannot beat it; the report shows it beside every arm.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

__all__ = ["compute_floor", "domain_floor"]


def domain_floor(train_domains: list[str], train_labels: list[int], evals: list[Any]) -> dict[str, Any]:
    """Per-domain majority label of the training rows, scored like a model on every evaluation source.

    Ties go to the smallest label id; a domain absent from training falls back to its source's majority.
    Overall = unweighted mean over sources, like ``eval_accuracy`` of a mixture.
    """
    from strata.evaluation.metrics import classification_metrics

    counts: dict[str, Counter] = {}
    for domain, label in zip(train_domains, train_labels):
        if label >= 0:
            counts.setdefault(domain, Counter())[int(label)] += 1
    majority = {d: min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] for d, c in counts.items()}
    per_source: dict[str, Any] = {}
    for source in evals:
        domains = [str(d) for d in source.dataset["domain"]]
        labels = [int(x) for x in source.dataset["label"]]
        seen = Counter(majority[d] for d in domains if d in majority)
        fallback = seen.most_common(1)[0][0] if seen else 0
        predictions = [majority.get(d, fallback) for d in domains]
        metrics = classification_metrics(labels, predictions, list(source.label_words))
        per_source[source.name] = {
            "accuracy": metrics["accuracy"],
            "macro_f1": metrics["macro_f1"],
            "n": metrics["n"],
            "predicted": {d: source.label_words[majority.get(d, fallback)] for d in sorted(set(domains))},
        }
    return {
        "per_source": per_source,
        "accuracy": sum(v["accuracy"] for v in per_source.values()) / max(1, len(per_source)),
        "macro_f1": sum(v["macro_f1"] for v in per_source.values()) / max(1, len(per_source)),
        "train_rows": len(train_labels),
    }


def compute_floor(base: Any) -> tuple[dict[str, Any], Any]:
    """The floor over exactly the training rows a run consumes (the first max_steps x batch rows)."""
    import os

    from strata.data.pipeline import load_examples

    data = base.data
    data.hub_mirror = data.hub_mirror or os.environ.get("STRATA_HUB_MIRROR")
    examples = load_examples(data, "sft", base.train.data_order_seed())
    t = base.train
    rows = min(len(examples.train), t.max_steps * t.per_device_train_batch_size * t.gradient_accumulation_steps)
    head = examples.train.select(range(rows))
    return domain_floor(list(head["domain"]), list(head["label"]), examples.evals), examples

