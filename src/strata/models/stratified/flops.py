"""Measured training FLOPs per token of the stratified family, and a FLOPs-matched dense baseline.

Strata-side like parameters.py (not copied next to a checkpoint). Parameter matching answers "same capacity";
the variants compute every stratum path densely, so they also cost more compute than a parameter-matched dense
model, and a comparison needs a control for that too.

Convention (what `torch.utils.flop_counter.FlopCounterMode` counts): matrix products only (mm, addmm, bmm,
baddbmm, convolutions, and the registered SDPA kernels), 2 FLOPs per multiply-add; elementwise ops (norms,
activations, softmax, RoPE, the loss) and embedding lookups count 0. Attention is counted over the full T x T
score matrix (causal masking is not discounted, as FlopCounterMode's own SDPA formula also does not discount it).
The model is measured with eager attention: on CPU, `scaled_dot_product_attention` dispatches to
`_scaled_dot_product_flash_attention_for_cpu`, which FlopCounterMode has no formula for (it would count 0),
while eager attention's two batched matmuls are counted exactly as the registered SDPA formula counts them.
"""

from __future__ import annotations

import copy

import torch
from torch.utils.flop_counter import FlopCounterMode

from .configuration_stratified import StratifiedConfig
from .modeling_stratified import StratifiedForCausalLM

_SEED = 0


def training_flops_per_token(config: StratifiedConfig, seq_len: int) -> dict[str, float]:
    """Forward, backward and total FLOPs per token of one training step on a [1, seq_len] batch with labels.

    Measured with FlopCounterMode (see the module docstring for what it counts) on `StratifiedForCausalLM(config)`
    in fp32 on the CPU, built under a local seed on a random batch from its own generator: deterministic, and the
    global RNG is left as it was. Per token = the batch's FLOPs / seq_len (the lm_head runs on all seq_len
    positions). The dense paths are computed for every stratum, so the count does not depend on the data.
    """
    if seq_len < 2:
        raise ValueError(f"seq_len {seq_len}: a training step needs at least 2 tokens (one label)")
    cfg = copy.deepcopy(config)
    cfg._attn_implementation = "eager"  # counted; CPU sdpa is not (module docstring)
    generator = torch.Generator().manual_seed(_SEED)
    input_ids = torch.randint(cfg.vocab_size, (1, seq_len), generator=generator)
    kwargs = {"stratum_ids": torch.zeros(1, dtype=torch.long)} if cfg.stratum_source == "domain" else {}
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(_SEED)  # CPU only: fork_rng restores only the CPU RNG
        model = StratifiedForCausalLM(cfg).to(torch.float32).train()
        with FlopCounterMode(display=False) as forward:
            loss = model(input_ids=input_ids, labels=input_ids, use_cache=False, **kwargs).loss
        with FlopCounterMode(display=False) as backward:
            loss.backward()
    fwd, bwd = forward.get_total_flops() / seq_len, backward.get_total_flops() / seq_len
    return {"forward": fwd, "backward": bwd, "total": fwd + bwd}


def match_flops(config: StratifiedConfig, target_config: StratifiedConfig, seq_len: int) -> StratifiedConfig:
    """A dense `"none"` copy of `config` whose `intermediate_size` brings its training FLOPs/token closest to
    the target's (both measured by `training_flops_per_token` at `seq_len`).

    Dense FLOPs are affine in the FFN width (the SwiGLU's three matrices: 18 * hidden * layers FLOPs/token per
    unit of width, forward + backward), so the width is solved from two measurements and the result measured
    again. Error bound: |dense - target| <= half that slope, 9 * hidden * layers FLOPs/token, unless the target
    is below the width-1 dense model (then width 1 is returned). A variant `config` loses its stratum mechanism:
    its backbone is what is widened.
    """
    target = training_flops_per_token(target_config, seq_len)["total"]
    dense = copy.deepcopy(config)
    dense.stratified_type = "none"
    base_width = int(dense.intermediate_size)
    base = training_flops_per_token(dense, seq_len)["total"]
    dense.intermediate_size = base_width + 1
    slope = training_flops_per_token(dense, seq_len)["total"] - base  # FLOPs/token per unit of FFN width
    width = max(1, base_width + round((target - base) / slope))
    dense.intermediate_size = int(width)
    measured = training_flops_per_token(dense, seq_len)["total"]
    if width > 1 and abs(measured - target) > slope / 2 + 1e-6 * target:
        raise RuntimeError(f"dense FLOPs are not affine in intermediate_size here: width {width} gives "
                           f"{measured:.0f} FLOPs/token for a target of {target:.0f}")
    return dense


__all__ = ["match_flops", "training_flops_per_token"]
