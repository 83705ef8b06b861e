"""Synthetic token data with a known answer: planted strata, each with its own vocabulary and bigram chain."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["planted_strata_batches"]


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

