"""Stratum sources: where each token's stratum assignment comes from.

Every source maps the normalised hidden state of a token (plus, for the oracle and the control, its domain tag or
token id) to stratum weights ``[B, T, S]``. All of them are per-token functions of the current position only, so
they are causal by construction and cannot look at padding or at future tokens.

- ``learned``: linear router, softmax, optional straight-through top-1; load-balancing + z-loss (Switch / ST-MoE).
- ``clusters``: nearest k-means centroid; the centroids are fitted on the *baseline's* hidden states.
- ``lid_bins``: bin of a per-token Levina-Bickel MLE of local intrinsic dimension, computed against a reference
  set of baseline hidden states; bin edges are quantiles of the fitting tokens' estimates (equal-mass bins).
- ``domain``: the domain tag ``stratum_ids`` given to ``forward`` (an oracle, i.e. an upper bound).
- ``hash``: a fixed hash of the token id (negative control: structure unrelated to the data's strata).

The fitted sources start unfitted (all tokens in stratum 0) and must be fitted with `fit_stratum_sources`
(routers.py, Strata-side). This file imports only numpy, torch, transformers and its siblings (relative): it is
copied next to a saved checkpoint for ``trust_remote_code``, so it must not import ``strata``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .configuration_stratified import StratifiedConfig


@dataclass
class RouterOutput:
    """What a stratum source hands to the block mechanism.

    weights: [B, T, S] mixing weights the mechanism uses (disabled strata zeroed; straight-through for top-1).
    probs:   [B, T, S] routing distribution for diagnostics (one-hot for hard sources), never masked.
    logits:  [B, T, S] router logits (learned source only).
    aux_loss: scalar balance + z-loss over non-padded tokens (learned source only).
    """

    weights: torch.Tensor
    probs: torch.Tensor
    logits: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None


class StratifiedPart(nn.Module):
    """Base class of every module that exists only in stratified variants.

    Such modules are initialised by `init_stratified` from a private generator (seed `init_seed`), never from
    the global RNG, so adding them does not change the backbone weights drawn under a given seed. They hold their
    tensors directly (no child modules): transformers only calls `_init_weights` on modules that own tensors.
    """

    init_seed: int = 0

    def init_stratified(self, generator: torch.Generator, std: float) -> None:
        raise NotImplementedError


def masked_mean(values: torch.Tensor, token_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of `values` [B, T, ...] over tokens where `token_mask` [B, T] is true (padding excluded)."""
    if token_mask is None:
        return values.mean(dim=(0, 1))
    m = token_mask.to(values.dtype).reshape(*token_mask.shape, *([1] * (values.dim() - 2)))
    return (values * m).sum(dim=(0, 1)) / m.sum().clamp_min(1.0)


def load_balancing_loss(
    probs: torch.Tensor, assignment: torch.Tensor, token_mask: torch.Tensor | None
) -> torch.Tensor:
    """Switch-Transformer balance loss n * sum_i f_i * P_i (=1 when uniform); probs/assignment [B, T, n]."""
    n = probs.shape[-1]
    f = masked_mean(assignment.float(), token_mask)  # [n] fraction of tokens dispatched to each path
    p = masked_mean(probs.float(), token_mask)  # [n] mean router probability
    return n * (f * p).sum()


def router_z_loss(logits: torch.Tensor, token_mask: torch.Tensor | None) -> torch.Tensor:
    """ST-MoE z-loss: mean squared log-partition; keeps router logits small and the softmax well conditioned."""
    z = torch.logsumexp(logits.float(), dim=-1) ** 2  # [B, T]
    return masked_mean(z, token_mask)


def _disable(weights: torch.Tensor, disabled: list[int] | None) -> torch.Tensor:
    """Zero the weights of switched-off strata: their path contributes nothing (no renormalisation)."""
    if not disabled:
        return weights
    keep = torch.ones(weights.shape[-1], dtype=weights.dtype, device=weights.device)
    keep[[s for s in disabled if 0 <= s < weights.shape[-1]]] = 0.0
    return weights * keep


class StratumSource(StratifiedPart):
    """Common interface; `hard` sources return one-hot weights that carry no gradient."""

    def __init__(self, config: StratifiedConfig):
        super().__init__()
        self.config = config
        self.num_strata = config.num_strata

    def assign(self, hidden_states: torch.Tensor, **kwargs) -> torch.Tensor:
        """Hard sources: stratum index per token, [B, T] long."""
        raise NotImplementedError

    def forward(
        self,
        hidden_states: torch.Tensor,
        input_ids: torch.LongTensor | None = None,
        stratum_ids: torch.LongTensor | None = None,
        token_mask: torch.Tensor | None = None,
        past_length: int = 0,
    ) -> RouterOutput:
        idx = self.assign(
            hidden_states, input_ids=input_ids, stratum_ids=stratum_ids, past_length=past_length
        )
        onehot = F.one_hot(idx, self.num_strata).to(hidden_states.dtype)  # [B, T, S]
        return RouterOutput(weights=_disable(onehot, self.config.disabled_strata), probs=onehot)

    def init_stratified(self, generator: torch.Generator, std: float) -> None:
        pass


class LearnedStratumRouter(StratumSource):
    """Linear router on the normalised hidden state; soft mixture or straight-through top-1."""

    def __init__(self, config: StratifiedConfig):
        super().__init__(config)
        self.weight = nn.Parameter(torch.zeros(config.num_strata, config.hidden_size))  # [S, H]

    def init_stratified(self, generator: torch.Generator, std: float) -> None:
        from transformers import initialization as init

        init.normal_(self.weight, mean=0.0, std=std, generator=generator)

    def forward(
        self,
        hidden_states: torch.Tensor,
        input_ids: torch.LongTensor | None = None,
        stratum_ids: torch.LongTensor | None = None,
        token_mask: torch.Tensor | None = None,
        past_length: int = 0,
    ) -> RouterOutput:
        logits = F.linear(hidden_states, self.weight).float() / self.config.router_temperature  # [B, T, S]
        probs = logits.softmax(dim=-1)
        hard = F.one_hot(probs.argmax(dim=-1), self.num_strata).to(probs.dtype)
        if self.config.router_mode == "top1":
            weights = (
                hard + probs - probs.detach()
            )  # forward: one-hot; backward: d/d probs (straight-through)
        else:
            weights = probs
        aux = load_balancing_loss(probs, hard, token_mask) + self.config.z_loss_weight * router_z_loss(
            logits, token_mask
        )
        weights = _disable(weights.to(hidden_states.dtype), self.config.disabled_strata)
        return RouterOutput(weights=weights, probs=probs, logits=logits, aux_loss=aux)


class ClusterStratumSource(StratumSource):
    """Nearest of S centroids (k-means on baseline hidden states, see `fit_stratum_sources`)."""

    def __init__(self, config: StratifiedConfig):
        super().__init__(config)
        self.register_buffer("centroids", torch.zeros(config.num_strata, config.hidden_size))  # [S, H]
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    def init_stratified(self, generator: torch.Generator, std: float) -> None:
        from transformers import initialization as init

        init.zeros_(self.centroids)
        init.zeros_(self.fitted)

    def assign(self, hidden_states: torch.Tensor, **kwargs) -> torch.Tensor:
        c = self.centroids.to(torch.float32)
        x = hidden_states.to(torch.float32)
        d = (x * x).sum(-1, keepdim=True) - 2 * x @ c.T + (c * c).sum(-1)  # [B, T, S] squared distances
        return d.argmin(dim=-1)

    def fit(self, x: np.ndarray, seed: int = 0) -> None:
        centroids, _ = kmeans(x, self.num_strata, seed=seed)
        self.centroids.copy_(torch.as_tensor(centroids, dtype=self.centroids.dtype))
        self.fitted.fill_(True)


class LIDBinStratumSource(StratumSource):
    """Equal-mass bin of a per-token MLE local intrinsic dimension (k = `lid_k`) against a stored reference set.

    The estimate for token x uses the distances T_1 <= ... <= T_k from x to its k nearest reference points
    (bias-corrected Levina-Bickel MLE, see `mle_lid_to_reference`). Stratum 0 = lowest LID.
    """

    def __init__(self, config: StratifiedConfig):
        super().__init__(config)
        self.register_buffer(
            "reference", torch.zeros(config.lid_reference_size, config.hidden_size)
        )  # [R, H]
        self.register_buffer("bin_edges", torch.zeros(config.num_strata - 1))  # [S-1] ascending
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    def init_stratified(self, generator: torch.Generator, std: float) -> None:
        from transformers import initialization as init

        init.zeros_(self.reference)
        init.zeros_(self.bin_edges)
        init.zeros_(self.fitted)

    def local_dimension(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Per-token LID estimate, [B, T]."""
        flat = hidden_states.reshape(-1, hidden_states.shape[-1])
        lid = mle_lid_to_reference(flat, self.reference, k=self.config.lid_k)
        return lid.reshape(hidden_states.shape[:-1])

    def assign(self, hidden_states: torch.Tensor, **kwargs) -> torch.Tensor:
        if not bool(self.fitted):
            return torch.zeros(hidden_states.shape[:-1], dtype=torch.long, device=hidden_states.device)
        lid = self.local_dimension(hidden_states)
        return torch.bucketize(lid, self.bin_edges.to(lid.dtype))

    def fit(self, x: np.ndarray, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        uniq = np.unique(np.round(x, 6), axis=0)  # identical prefixes give identical states: drop duplicates
        r = self.reference.shape[0]
        if len(uniq) < r + 1:
            raise ValueError(f"lid_bins needs more than {r} distinct fitting tokens, got {len(uniq)}")
        ref = uniq[rng.choice(len(uniq), size=r, replace=False)]
        self.reference.copy_(torch.as_tensor(ref, dtype=self.reference.dtype))
        lid = mle_lid_to_reference(
            torch.as_tensor(x, dtype=torch.float32), self.reference, k=self.config.lid_k
        )
        qs = np.arange(1, self.num_strata) / self.num_strata
        edges = np.quantile(lid.numpy(), qs) if self.num_strata > 1 else np.zeros(0)
        self.bin_edges.copy_(torch.as_tensor(edges, dtype=self.bin_edges.dtype))
        self.fitted.fill_(True)


class MissingStratumIds(ValueError):
    """A `domain` model called without `stratum_ids`: a ValueError for library callers.

    Inside Strata, routers.py swaps in a subclass that is also a ``StrataError`` (one line in the CLI); this file
    cannot import ``strata`` (it must load where Strata is not installed).
    """


class DomainStratumSource(StratumSource):
    """Oracle: the domain tag passed as `stratum_ids` ([B] or [B, T]); an upper bound, not a method."""

    missing_ids_error: type[ValueError] = MissingStratumIds  # what a call without `stratum_ids` raises

    def assign(
        self,
        hidden_states: torch.Tensor,
        stratum_ids: torch.LongTensor | None = None,
        past_length: int = 0,
        **kwargs,
    ) -> torch.Tensor:
        if stratum_ids is None:
            raise self.missing_ids_error('stratum_source="domain" needs the forward kwarg `stratum_ids` ([B] or [B, T]), '
                                    "each example's domain; `strata train` feeds a mixture's dataset index, "
                                    "other callers must pass it")
        b, t = hidden_states.shape[:2]
        ids = torch.as_tensor(stratum_ids, device=hidden_states.device).long()
        if ids.dim() == 1:
            ids = ids[:, None].expand(b, t)
        elif ids.shape[1] != t:
            # with a KV cache the tags may cover past + current tokens; past the end, the last tag carries on
            if ids.shape[1] >= past_length + t:
                ids = ids[:, past_length : past_length + t]
            else:
                ids = ids[:, -1:].expand(b, t)
        if ids.numel() and (ids.min() < 0 or ids.max() >= self.num_strata):
            raise ValueError(f"stratum_ids must lie in [0, {self.num_strata})")
        return ids


class HashStratumSource(StratumSource):
    """Negative control: Knuth multiplicative hash of the token id (high bits), independent of context."""

    def assign(
        self, hidden_states: torch.Tensor, input_ids: torch.LongTensor | None = None, **kwargs
    ) -> torch.Tensor:
        if input_ids is None:
            raise ValueError('stratum_source="hash" needs input_ids (not inputs_embeds)')
        salt = int(self.config.stratified_init_seed)
        h = ((input_ids.long() + salt) * 2654435761) % (2**32)
        return (h >> 16) % self.num_strata


STRATUM_SOURCE_CLASSES: dict[str, type[StratumSource]] = {
    "learned": LearnedStratumRouter,
    "clusters": ClusterStratumSource,
    "lid_bins": LIDBinStratumSource,
    "domain": DomainStratumSource,
    "hash": HashStratumSource,
}


def build_stratum_source(config: StratifiedConfig) -> StratumSource:
    return STRATUM_SOURCE_CLASSES[config.stratum_source](config)


# --------------------------------------------------------------------------------------------------------------
# Estimators shared with the diagnostics (numpy k-means: scikit-learn is not a dependency of this project).
# --------------------------------------------------------------------------------------------------------------


def mle_lid_to_reference(x: torch.Tensor, reference: torch.Tensor, k: int, eps: float = 1e-6) -> torch.Tensor:
    """Bias-corrected Levina-Bickel MLE of local intrinsic dimension of each row of `x` [N, H].

    m(x) = (k - 2) / sum_{j<k} log(T_k / T_j), with T_j the distance to the j-th nearest `reference` row [R, H].
    The (k - 2) numerator (instead of k - 1) makes 1/m unbiased-inverse (MacKay & Ghahramani, 2005). Reference
    points at distance <= eps are treated as the query itself and skipped. Distances are taken directly, not
    through cdist's matrix-product shortcut: that one was off by up to 6e-3 on RMS-normed states (norm ~8), so a
    duplicate got a tiny non-zero T_1 instead of 0, which dominated the log sum.
    """
    d = torch.cdist(x.float(), reference.float().to(x.device), compute_mode="donot_use_mm_for_euclid_dist")
    d = d.masked_fill(d <= eps, float("inf"))
    t = d.topk(k, dim=-1, largest=False).values  # [N, k], ascending
    s = torch.log(t[:, -1:] / t[:, :-1]).sum(dim=-1)  # [N]
    return (k - 2) / s.clamp_min(1e-12)


def _sq_dists(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    return np.maximum((x * x).sum(1)[:, None] - 2 * x @ c.T + (c * c).sum(1)[None, :], 0.0)


def kmeans(
    x: np.ndarray, k: int, n_iter: int = 100, n_init: int = 4, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means with k-means++ seeding; best of `n_init` runs. Returns (centroids [k, D], labels [N])."""
    x = np.asarray(x, dtype=np.float64)
    rng = np.random.default_rng(seed)
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    for _ in range(n_init):
        c = x[[rng.integers(len(x))]]
        for _ in range(1, k):  # k-means++: sample proportional to squared distance to the chosen centroids
            d2 = _sq_dists(x, c).min(1)
            p = d2 / d2.sum() if d2.sum() > 0 else np.full(len(x), 1.0 / len(x))
            c = np.concatenate([c, x[[rng.choice(len(x), p=p)]]])
        for _ in range(n_iter):
            labels = _sq_dists(x, c).argmin(1)
            new = np.stack([x[labels == j].mean(0) if np.any(labels == j) else c[j] for j in range(k)])
            if np.allclose(new, c):
                break
            c = new
        d = _sq_dists(x, c)
        labels = d.argmin(1)
        inertia = float(d[np.arange(len(x)), labels].sum())
        if best is None or inertia < best[0]:
            best = (inertia, c, labels)
    return best[1], best[2]
