"""Fitting the stratum sources on a model's hidden states (Strata-side), and the source API in one place.

The sources themselves live in stratum_sources.py, which is portable (copied into checkpoints, no ``strata``
imports); this module adds what only Strata needs: capturing router inputs, fitting `clusters` / `lid_bins`, and
a ``MissingStratumIds`` that is also a ``StrataError`` so the CLI prints it as one line.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import torch
from torch import nn

from strata.errors import StrataError

from .stratum_sources import (
    ClusterStratumSource,
    DomainStratumSource,
    HashStratumSource,
    LearnedStratumRouter,
    LIDBinStratumSource,
    RouterOutput,
    StratifiedPart,
    StratumSource,
    build_stratum_source,
    kmeans,
    load_balancing_loss,
    mle_lid_to_reference,
    router_z_loss,
)
from .stratum_sources import MissingStratumIds as _PortableMissingStratumIds


class MissingStratumIds(StrataError, _PortableMissingStratumIds):
    """A `domain` model called without `stratum_ids`: a ValueError for library callers, one line in the CLI."""


# Strata's own DomainStratumSource raises the StrataError flavour (a checkpoint's copied code keeps the plain one).
DomainStratumSource.missing_ids_error = MissingStratumIds


def router_input_site(stratified_type: str) -> str:
    """Which normalised hidden state the stratum source reads: the attention input or the FFN input."""
    return "input_layernorm" if stratified_type == "attention" else "post_attention_layernorm"


@torch.no_grad()
def capture_router_inputs(
    model: nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    site: str,
    max_tokens: int | None = None,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Run `model` and collect, per layer, the `site` norm output of every non-padded token.

    Returns (per-layer arrays [N, H], list of flat index arrays (batch_index, position) for alignment).
    `model` is a StratifiedForCausalLM / StratifiedModel (any `stratified_type`, including the baseline).
    """
    backbone = model.model if hasattr(model, "model") else model
    captured: list[list[torch.Tensor]] = [[] for _ in backbone.layers]
    hooks = []
    for i, layer in enumerate(backbone.layers):

        def hook(_m, _inp, out, i=i):
            captured[i].append(out.detach().float().cpu())

        hooks.append(getattr(layer, site).register_forward_hook(hook))
    masks = []
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            kwargs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "stratum_ids")}
            model(**kwargs, use_cache=False)
            ids = batch["input_ids"]
            am = batch.get("attention_mask")
            masks.append((am if am is not None else torch.ones_like(ids)).bool().cpu())
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    layers = []
    for per_batch in captured:
        rows = [h[m] for h, m in zip(per_batch, masks)]  # [n_valid, H] each
        x = torch.cat(rows).numpy()
        layers.append(x[:max_tokens] if max_tokens else x)
    return layers, masks


def fit_stratum_sources(
    model: nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    baseline: nn.Module | None = None,
    seed: int = 0,
    max_tokens: int = 8192,
) -> list[list[float]]:
    """Fit the `clusters` / `lid_bins` sources of `model` on the hidden states of `baseline` (default: `model`).

    Fitting on `model` itself at step 0 is equivalent to fitting on a baseline with the same backbone weights,
    because the zero-initialised mechanisms leave the residual stream unchanged. After fitting, the assignments
    are frozen buffers: they do not follow the hidden states if the backbone keeps training.
    Returns, per layer, the share of the fitting tokens that the fitted source puts in each stratum ([] if
    there is nothing to fit).
    """
    cfg = model.config
    if cfg.stratified_type == "none" or cfg.stratum_source not in ("clusters", "lid_bins"):
        return []
    batches = list(batches)
    source_model = baseline if baseline is not None else model
    per_layer, _ = capture_router_inputs(source_model, batches, router_input_site(cfg.stratified_type))
    rng = np.random.default_rng(seed)
    shares: list[list[float]] = []
    for i, layer in enumerate(model.model.layers):
        x = per_layer[i]
        if len(x) > max_tokens:
            x = x[rng.choice(len(x), size=max_tokens, replace=False)]
        source = layer.stratum_source
        source.fit(x, seed=seed + i)
        with torch.no_grad():
            idx = source.assign(torch.as_tensor(x, dtype=torch.float32, device=source.fitted.device)[None])
        counts = torch.bincount(idx.flatten().cpu(), minlength=source.num_strata).double()
        shares.append([round(float(c), 4) for c in counts / counts.sum()])
    return shares


__all__ = [
    "RouterOutput",
    "StratifiedPart",
    "StratumSource",
    "LearnedStratumRouter",
    "ClusterStratumSource",
    "LIDBinStratumSource",
    "DomainStratumSource",
    "HashStratumSource",
    "build_stratum_source",
    "load_balancing_loss",
    "router_z_loss",
    "mle_lid_to_reference",
    "kmeans",
    "capture_router_inputs",
    "router_input_site",
    "fit_stratum_sources",
    "MissingStratumIds",
]
