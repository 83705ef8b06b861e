"""Per-token router records of a stratified model on held-out batches (what the diagnostics read).

One pass, no grad, over the non-padded tokens: the hidden state each layer's stratum source reads
(captured by a forward hook at ``router_input_site``), the router's stratum probabilities and arg-max,
and the top-1 expert of MoE layers, each flattened over batches.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from strata.evaluation.model_io import model_device
from strata.models.stratified.routers import router_input_site

Batch = Mapping[str, torch.Tensor]

__all__ = ["Batch", "RouterStats", "collect_router_stats", "model_inputs"]


@dataclass
class RouterStats:
    """Per-token router records of the non-padded tokens, flattened over batches (N tokens in total).

    hidden[l]: [N, H] the normalised hidden state the stratum source of layer l reads (for the baseline: the
    same site, so k-means / LID can be compared across variants). probs[l]: [N, S] or None. assignments[l]:
    [N] arg-max stratum or None. expert_assignments[l]: [N] top-1 expert ("moe") or None.
    """

    stratified_type: str
    stratum_source: str
    num_strata: int
    domains: np.ndarray
    token_ids: np.ndarray
    hidden: list[np.ndarray] = field(default_factory=list)
    probs: list[np.ndarray | None] = field(default_factory=list)
    assignments: list[np.ndarray | None] = field(default_factory=list)
    expert_assignments: list[np.ndarray | None] = field(default_factory=list)

    @property
    def num_layers(self) -> int:
        return len(self.hidden)


def model_inputs(batch: Batch) -> dict[str, Any]:
    """The entries of a batch the stratified forward takes (labels and domain ids stay out)."""
    return {
        k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "position_ids", "stratum_ids")
    }


def _token_domains(batch: Batch, given: torch.Tensor | np.ndarray | None, ids: torch.Tensor) -> torch.Tensor:
    """The domain of every token of the batch ([B, T]), from `given` or the batch's own domain entry."""
    dom = given if given is not None else batch.get("domain_ids", batch.get("stratum_ids"))
    if dom is None:
        raise ValueError("collect_router_stats needs domain_ids (or batch['domain_ids'/'stratum_ids'])")
    dom = torch.as_tensor(np.asarray(dom)).long()
    return dom[:, None].expand_as(ids) if dom.dim() == 1 else dom


class _Records:
    """Per-layer lists of the masked per-token tensors, concatenated at the end."""

    def __init__(self, n_layers: int) -> None:
        self.hidden: list[list[torch.Tensor]] = [[] for _ in range(n_layers)]
        self.probs: list[list[torch.Tensor]] = [[] for _ in range(n_layers)]
        self.experts: list[list[torch.Tensor]] = [[] for _ in range(n_layers)]
        self.masks: list[torch.Tensor] = []
        self.domains: list[torch.Tensor] = []
        self.tokens: list[torch.Tensor] = []

    def add_outputs(self, out: Any, mask: torch.Tensor) -> None:
        for layer in range(len(self.probs)):
            if out.stratum_probs is not None and out.stratum_probs[layer] is not None:
                self.probs[layer].append(out.stratum_probs[layer].float().cpu()[mask])
            if out.expert_router_logits is not None and out.expert_router_logits[layer] is not None:
                self.experts[layer].append(out.expert_router_logits[layer].argmax(-1).cpu()[mask])

    def to_stats(self, cfg: Any, max_tokens: int | None) -> RouterStats:
        sl = slice(0, max_tokens)
        stats = RouterStats(
            stratified_type=cfg.stratified_type,
            stratum_source=cfg.stratum_source,
            num_strata=cfg.num_strata,
            domains=torch.cat(self.domains).numpy()[sl],
            token_ids=torch.cat(self.tokens).numpy()[sl],
        )
        for layer in range(len(self.hidden)):
            stats.hidden.append(torch.cat([h[m] for h, m in zip(self.hidden[layer], self.masks)]).numpy()[sl])
            p = torch.cat(self.probs[layer]).numpy()[sl] if self.probs[layer] else None
            stats.probs.append(p)
            stats.assignments.append(None if p is None else p.argmax(-1))
            experts = self.experts[layer]
            stats.expert_assignments.append(torch.cat(experts).numpy()[sl] if experts else None)
        return stats


@torch.no_grad()
def collect_router_stats(
    model: torch.nn.Module,
    batches: Sequence[Batch],
    domain_ids: Sequence[torch.Tensor | np.ndarray] | None = None,
    max_tokens: int | None = None,
) -> RouterStats:
    """Run `model` (eval, no grad) on `batches` and record routing per non-padded token.

    domain_ids: one [B] or [B, T] tensor per batch (the domain or planted stratum). If None, each batch's
    "domain_ids" or "stratum_ids" entry is used.
    """
    layers = model.model.layers
    site = router_input_site(model.config.stratified_type)
    records = _Records(len(layers))
    hooks = [
        getattr(layer, site).register_forward_hook(
            lambda _m, _i, out, i=i: records.hidden[i].append(out.float().cpu())
        )
        for i, layer in enumerate(layers)
    ]
    was_training = model.training
    model.eval()
    device = model_device(model)
    try:
        for b, batch in enumerate(batches):
            inputs = {k: v.to(device) for k, v in model_inputs(batch).items()}
            out = model(**inputs, use_cache=False, output_router_logits=True)
            ids = batch["input_ids"].cpu()
            am = batch.get("attention_mask")
            mask = (am.cpu() if am is not None else torch.ones_like(ids)).bool()
            dom = _token_domains(batch, domain_ids[b] if domain_ids is not None else None, ids)
            records.masks.append(mask)
            records.domains.append(dom[mask])
            records.tokens.append(ids[mask])
            records.add_outputs(out, mask)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return records.to_stats(model.config, max_tokens)
