"""Ablations of a stratified model: switch stratum s off and measure the LM loss on each domain.

A stratum that specialises on domain d shows a loss increase in column d only; the switch is the model's own
``config.disabled_strata``, so nothing here touches weights.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from strata.evaluation.model_io import model_device
from strata.experiments.router_stats import Batch, model_inputs

__all__ = ["strata_disabled", "lm_loss", "ablation_matrix"]


@contextlib.contextmanager
def strata_disabled(model: torch.nn.Module, strata: Sequence[int] | None) -> Iterator[None]:
    """Temporarily switch the given strata off (`config.disabled_strata`), restoring the previous value."""
    previous = model.config.disabled_strata
    model.config.disabled_strata = sorted(int(s) for s in strata) if strata else None
    try:
        yield
    finally:
        model.config.disabled_strata = previous


@torch.no_grad()
def lm_loss(model: torch.nn.Module, batches: Sequence[Batch]) -> float:
    """Token-weighted next-token cross-entropy (no aux loss) over `batches`; padding / -100 labels ignored."""
    device = model_device(model)
    total, count = 0.0, 0
    for batch in batches:
        inputs = {k: v.to(device) for k, v in model_inputs(batch).items()}
        logits = model(**inputs, use_cache=False).logits.float()  # [B, T, V]
        labels = batch.get("labels")
        if labels is None:
            labels = batch["input_ids"].clone()
            if batch.get("attention_mask") is not None:
                labels[batch["attention_mask"] == 0] = -100
        labels = labels.to(device)[:, 1:]
        ce = F.cross_entropy(logits[:, :-1].transpose(1, 2), labels, ignore_index=-100, reduction="sum")
        total += float(ce)
        count += int((labels != -100).sum())
    return total / max(count, 1)


def ablation_matrix(
    model: torch.nn.Module, batches_by_domain: Mapping[Any, Sequence[Batch]]
) -> dict[str, Any]:
    """Loss per domain with each stratum switched off in turn.

    Returns {"domains", "strata", "base_loss": {domain: loss}, "loss": [S][D], "delta": [S][D]} where delta =
    ablated - base. A stratum that specialises on domain d shows a large delta in column d only.
    """
    was_training = model.training
    model.eval()
    domains = list(batches_by_domain)
    try:
        with strata_disabled(model, None):
            base = {str(d): lm_loss(model, batches_by_domain[d]) for d in domains}
        loss, delta = [], []
        for s in range(model.config.num_strata):
            with strata_disabled(model, [s]):
                row = [lm_loss(model, batches_by_domain[d]) for d in domains]
            loss.append(row)
            delta.append([r - base[str(d)] for r, d in zip(row, domains)])
    finally:
        model.train(was_training)
    return {
        "domains": [str(d) for d in domains],
        "strata": list(range(model.config.num_strata)),
        "base_loss": base,
        "loss": loss,
        "delta": delta,
    }

