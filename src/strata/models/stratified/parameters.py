"""Parameter accounting of the stratified family: exact counts, a size-matched dense baseline, a report.

Not needed to run a model, so it is not part of a checkpoint's copied code (it may import Strata modules).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping

import torch

from .configuration_stratified import StratifiedConfig
from .modeling_stratified import StratifiedForCausalLM
from .stratum_sources import StratifiedPart


def count_parameters(config: StratifiedConfig) -> dict[str, int]:
    """Exact parameter counts of `StratifiedForCausalLM(config)`, built on the meta device (no memory, no RNG)."""
    with torch.device("meta"):
        model = StratifiedForCausalLM(config)
    total = sum(p.numel() for p in model.parameters())  # tied weights counted once
    stratified = sum(
        p.numel()
        for m in model.modules()
        if isinstance(m, StratifiedPart)
        for p in m.parameters(recurse=True)
    )
    embedding = model.model.embed_tokens.weight.numel()
    if not config.tie_word_embeddings:
        embedding += model.lm_head.weight.numel()
    return {"total": total, "stratified": stratified, "backbone": total - stratified, "embedding": embedding}


def match_params(config: StratifiedConfig, target_params: int | StratifiedConfig) -> StratifiedConfig:
    """A dense `"none"` copy of `config` whose `intermediate_size` makes its parameter count closest to the target.

    `target_params` is a count or a variant config (its total count). The dense count is linear in the FFN width
    (3 * hidden * layers per unit, SwiGLU), so the width is solved directly (error < 1.5 * hidden * layers).
    A variant `config` is returned unchanged: only the dense baseline is widened, the variants are the targets.
    """
    if config.stratified_type != "none":
        return config
    if isinstance(target_params, StratifiedConfig):
        target_params = count_parameters(target_params)["total"]
    dense = copy.deepcopy(config)
    dense.stratified_type = "none"
    base = count_parameters(dense)["total"]
    per_unit = 3 * dense.hidden_size * dense.num_hidden_layers
    width = max(1, dense.intermediate_size + round((int(target_params) - base) / per_unit))
    dense.intermediate_size = int(width)
    return dense


def parameter_report(
    configs: Mapping[str, StratifiedConfig] | Iterable[StratifiedConfig],
) -> dict[str, dict[str, int | str]]:
    """JSON-ready parameter counts per config: total / stratified / backbone / embedding, type and source."""
    if not isinstance(configs, Mapping):
        configs = {
            f"{c.stratified_type}" + ("" if c.stratified_type == "none" else f"-{c.stratum_source}"): c
            for c in configs
        }
    report: dict[str, dict[str, int | str]] = {}
    for name, cfg in configs.items():
        counts = count_parameters(cfg)
        report[name] = {
            **counts,
            "stratified_type": cfg.stratified_type,
            "stratum_source": cfg.stratum_source,
            "intermediate_size": cfg.intermediate_size,
        }
    return report


__all__ = ["count_parameters", "match_params", "parameter_report"]
