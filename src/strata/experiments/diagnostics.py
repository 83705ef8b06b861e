"""Diagnostics for stratified models: does routing track the domains, better than chance and than k-means?

Per layer, on the non-padded tokens of held-out batches:
- router entropy (per token and of the mean routing distribution) and load balance;
- purity, mutual information and NMI between the router's arg-max stratum and the domain (or planted stratum),
  each with a permutation p-value against shuffled domain labels and the null mean (= the chance level);
- the same metrics for k-means (k = S) on the *same* hidden states the router reads: a router that does no better
  than k-means on frozen features has learned nothing the geometry did not already give;
- per-token local intrinsic dimension (TwoNN or Levina-Bickel MLE) of those hidden states, summarised per domain;
- an ablation matrix: switch stratum s off (`disabled_strata`) and measure the LM loss on each domain.

Everything returned is plain JSON (floats, ints, lists, dicts). Clustering and NMI are written with numpy because
scikit-learn is not a dependency of this project.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from strata.experiments.intrinsic_dimension import local_intrinsic_dimension
from strata.models.stratified.routers import kmeans, router_input_site

Batch = Mapping[str, torch.Tensor]

# --------------------------------------------------------------------------------------------------------------
# Association between two labelings
# --------------------------------------------------------------------------------------------------------------


def _contingency(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    ai, bi = ai.reshape(-1), bi.reshape(-1)
    nb = bi.max() + 1 if len(bi) else 1
    counts = np.bincount(ai * nb + bi, minlength=(ai.max() + 1 if len(ai) else 1) * nb)
    return counts.reshape(-1, nb).astype(np.float64)


def _entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def mutual_information(a: np.ndarray, b: np.ndarray) -> float:
    """I(a; b) in nats from the empirical joint distribution."""
    c = _contingency(a, b)
    p = c / c.sum()
    pa, pb = p.sum(1, keepdims=True), p.sum(0, keepdims=True)
    nz = p > 0
    return float((p[nz] * np.log(p[nz] / (pa @ pb)[nz])).sum())


def normalized_mutual_information(a: np.ndarray, b: np.ndarray) -> float:
    """NMI = I(a; b) / mean(H(a), H(b)) (arithmetic normalisation, scikit-learn's default); 0 if degenerate."""
    c = _contingency(a, b)
    p = c / c.sum()
    ha, hb = _entropy(p.sum(1)), _entropy(p.sum(0))
    if ha == 0.0 and hb == 0.0:
        return 1.0
    denom = 0.5 * (ha + hb)
    return float(mutual_information(a, b) / denom) if denom > 0 else 0.0


def purity(assignment: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of tokens whose cluster's majority label is their own label."""
    c = _contingency(assignment, labels)
    return float(c.max(1).sum() / c.sum())


_METRICS = {"purity": purity, "nmi": normalized_mutual_information, "mi": mutual_information}


def association_metrics(
    assignment: np.ndarray, labels: np.ndarray, n_permutations: int = 200, seed: int = 0
) -> dict[str, float]:
    """Purity / NMI / MI of `assignment` vs `labels`, each with a shuffled-label null.

    p-value = (1 + #{null >= observed}) / (1 + n_permutations); `*_null_mean` is the chance level for this
    sample (for purity it exceeds 1/K when clusters are unbalanced or small).
    """
    assignment, labels = np.asarray(assignment).reshape(-1), np.asarray(labels).reshape(-1)
    rng = np.random.default_rng(seed)
    observed = {k: f(assignment, labels) for k, f in _METRICS.items()}
    nulls = {k: np.empty(n_permutations) for k in _METRICS}
    for i in range(n_permutations):
        shuffled = rng.permutation(labels)
        for k, f in _METRICS.items():
            nulls[k][i] = f(assignment, shuffled)
    out: dict[str, float] = {}
    for k in _METRICS:
        out[k] = observed[k]
        if n_permutations > 0:
            out[f"{k}_null_mean"] = float(nulls[k].mean())
            out[f"{k}_null_std"] = float(nulls[k].std())
            out[f"{k}_p_value"] = float((1 + (nulls[k] >= observed[k] - 1e-12).sum()) / (1 + n_permutations))
    return out


# --------------------------------------------------------------------------------------------------------------
# Collection
# --------------------------------------------------------------------------------------------------------------


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


def _model_inputs(batch: Batch) -> dict[str, Any]:
    return {
        k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "position_ids", "stratum_ids")
    }


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


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
    cfg = model.config
    backbone = model.model
    site = router_input_site(cfg.stratified_type)
    captured: list[list[torch.Tensor]] = [[] for _ in backbone.layers]
    hooks = [
        getattr(layer, site).register_forward_hook(
            lambda _m, _i, out, i=i: captured[i].append(out.float().cpu())
        )
        for i, layer in enumerate(backbone.layers)
    ]
    n_layers = len(backbone.layers)
    probs: list[list[torch.Tensor]] = [[] for _ in range(n_layers)]
    experts: list[list[torch.Tensor]] = [[] for _ in range(n_layers)]
    masks, domains, tokens = [], [], []
    was_training = model.training
    model.eval()
    device = _device(model)
    try:
        for b, batch in enumerate(batches):
            inputs = {k: v.to(device) for k, v in _model_inputs(batch).items()}
            out = model(**inputs, use_cache=False, output_router_logits=True)
            ids = batch["input_ids"].cpu()
            am = batch.get("attention_mask")
            mask = (am.cpu() if am is not None else torch.ones_like(ids)).bool()
            dom = (
                domain_ids[b] if domain_ids is not None else batch.get("domain_ids", batch.get("stratum_ids"))
            )
            if dom is None:
                raise ValueError(
                    "collect_router_stats needs domain_ids (or batch['domain_ids'/'stratum_ids'])"
                )
            dom = torch.as_tensor(np.asarray(dom)).long()
            if dom.dim() == 1:
                dom = dom[:, None].expand_as(ids)
            masks.append(mask)
            domains.append(dom[mask])
            tokens.append(ids[mask])
            for layer in range(n_layers):
                p = out.stratum_probs[layer] if out.stratum_probs is not None else None
                if p is not None:
                    probs[layer].append(p.float().cpu()[mask])
                e = out.expert_router_logits[layer] if out.expert_router_logits is not None else None
                if e is not None:
                    experts[layer].append(e.argmax(-1).cpu()[mask])
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)

    sl = slice(0, max_tokens)
    stats = RouterStats(
        stratified_type=cfg.stratified_type,
        stratum_source=cfg.stratum_source,
        num_strata=cfg.num_strata,
        domains=torch.cat(domains).numpy()[sl],
        token_ids=torch.cat(tokens).numpy()[sl],
    )
    for layer in range(n_layers):
        stats.hidden.append(torch.cat([h[m] for h, m in zip(captured[layer], masks)]).numpy()[sl])
        if probs[layer]:
            p = torch.cat(probs[layer]).numpy()[sl]
            stats.probs.append(p)
            stats.assignments.append(p.argmax(-1))
        else:
            stats.probs.append(None)
            stats.assignments.append(None)
        stats.expert_assignments.append(torch.cat(experts[layer]).numpy()[sl] if experts[layer] else None)
    return stats


# --------------------------------------------------------------------------------------------------------------
# Summaries
# --------------------------------------------------------------------------------------------------------------


def router_balance(probs: np.ndarray) -> dict[str, Any]:
    """Entropy and load statistics of router probabilities [N, S]."""
    s = probs.shape[1]
    log_s = math.log(s) if s > 1 else 1.0
    token_entropy = -(probs * np.log(np.clip(probs, 1e-12, None))).sum(1)
    load = np.bincount(probs.argmax(1), minlength=s) / len(probs)
    mean_p = probs.mean(0)
    return {
        "entropy": float(token_entropy.mean()),
        "entropy_normalized": float(token_entropy.mean() / log_s),
        "marginal_entropy_normalized": float(_entropy(mean_p) / log_s),
        "load": [float(v) for v in load],
        "load_entropy_normalized": float(_entropy(load) / log_s),
        "max_load": float(load.max()),
        "switch_balance": float(s * (load * mean_p).sum()),  # 1.0 when perfectly balanced
    }


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
    result: dict[str, Any] = {
        "stratified_type": stats.stratified_type,
        "stratum_source": stats.stratum_source,
        "num_strata": int(stats.num_strata),
        "num_tokens": int(n),
        "num_domains": int(len(np.unique(domains))),
        "domain_fractions": {str(int(d)): float((domains == d).mean()) for d in np.unique(domains)},
        "layers": [],
    }
    for layer in range(stats.num_layers):
        entry: dict[str, Any] = {"layer": layer}
        if stats.probs[layer] is not None:
            router = router_balance(stats.probs[layer])
            router.update(association_metrics(stats.assignments[layer], domains, n_permutations, seed))
            entry["router"] = router
        if stats.expert_assignments[layer] is not None:
            experts = association_metrics(stats.expert_assignments[layer], domains, n_permutations, seed)
            e = stats.expert_assignments[layer]
            experts["load"] = [float(v) for v in np.bincount(e, minlength=int(e.max()) + 1) / len(e)]
            entry["experts"] = experts
        x = stats.hidden[layer][sub]
        if kmeans_baseline:
            _, labels = kmeans(x, stats.num_strata, seed=seed)
            entry["kmeans"] = association_metrics(labels, domains[sub], n_permutations, seed)
        if lid:
            est = local_intrinsic_dimension(x, k=min(lid_k, len(x) - 1), method=lid_method)
            per_domain = {}
            for d in np.unique(domains[sub]):
                v = est[domains[sub] == d]
                per_domain[str(int(d))] = {
                    "mean": float(v.mean()),
                    "median": float(np.median(v)),
                    "std": float(v.std()),
                    "n": int(len(v)),
                }
            entry["lid"] = {
                "method": lid_method,
                "k": int(min(lid_k, len(x) - 1)),
                "median": float(np.median(est)),
                "per_domain": per_domain,
            }
            if stats.assignments[layer] is not None:
                a = stats.assignments[layer][sub]
                entry["lid"]["per_stratum_median"] = {
                    str(int(s)): float(np.median(est[a == s])) for s in np.unique(a)
                }
        result["layers"].append(entry)
    return result


# --------------------------------------------------------------------------------------------------------------
# Ablations
# --------------------------------------------------------------------------------------------------------------


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
    device = _device(model)
    total, count = 0.0, 0
    for batch in batches:
        inputs = {k: v.to(device) for k, v in _model_inputs(batch).items()}
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


# --------------------------------------------------------------------------------------------------------------
# Logging
# --------------------------------------------------------------------------------------------------------------


def _flatten(prefix: str, value: Any, out: dict[str, float]) -> None:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return
    if isinstance(value, (int, float, np.integer, np.floating)):
        if math.isfinite(float(value)):
            out[prefix] = float(value)
    elif isinstance(value, Mapping):
        if "layer" in value and isinstance(value["layer"], int):
            prefix = f"{prefix.rsplit('/', 1)[0]}/layer{value['layer']}"
        for k, v in value.items():
            if k != "layer":
                _flatten(f"{prefix}/{k}", v, out)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _flatten(f"{prefix}/{i}", v, out)


def log_diagnostics_to_tensorboard(
    writer: Any, diag: Mapping[str, Any], step: int, prefix: str = "diag"
) -> int:
    """Write every finite numeric leaf of `diag` as a scalar (tags like diag/layers/layer0/router/nmi).

    `writer` is a torch.utils.tensorboard SummaryWriter (anything with `add_scalar`). Returns the number of
    scalars written.
    """
    flat: dict[str, float] = {}
    _flatten(prefix, diag, flat)
    for tag, v in flat.items():
        writer.add_scalar(tag, v, step)
    return len(flat)


# --------------------------------------------------------------------------------------------------------------
# Synthetic data with a known answer
# --------------------------------------------------------------------------------------------------------------


def planted_strata_batches(
    num_batches: int,
    batch_size: int = 32,
    seq_len: int = 16,
    num_domains: int = 4,
    tokens_per_domain: int = 16,
    concentration: float = 0.2,
    seed: int = 0,
) -> tuple[list[dict[str, torch.Tensor]], int]:
    """Token sequences from `num_domains` planted strata: each domain has its own sub-vocabulary and its own
    Dirichlet(`concentration`) bigram chain over it. Token 0 is reserved for padding.

    Returns (batches with input_ids / attention_mask / labels / stratum_ids [B], vocab_size). The chains are
    fixed; `seed` only draws the samples, so different seeds give train / test splits of the same task.
    """
    chain_rng = np.random.default_rng(12345)  # the planted chains are fixed; `seed` only changes the samples
    chains = chain_rng.dirichlet(
        np.full(tokens_per_domain, concentration), size=(num_domains, tokens_per_domain)
    )
    rng = np.random.default_rng(seed)
    vocab_size = 1 + num_domains * tokens_per_domain
    batches = []
    for _ in range(num_batches):
        dom = rng.integers(num_domains, size=batch_size)
        ids = np.empty((batch_size, seq_len), dtype=np.int64)
        for b in range(batch_size):
            t = rng.integers(tokens_per_domain)
            for i in range(seq_len):
                ids[b, i] = 1 + dom[b] * tokens_per_domain + t
                t = rng.choice(tokens_per_domain, p=chains[dom[b], t])
        input_ids = torch.from_numpy(ids)
        batches.append(
            {
                "input_ids": input_ids,
                "attention_mask": torch.ones_like(input_ids),
                "labels": input_ids.clone(),
                "stratum_ids": torch.from_numpy(dom),
            }
        )
    return batches, vocab_size


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
