"""The four stratum mechanisms (each ends in a zero-initialised projection, so step 0 equals the baseline).

Imports only torch, transformers and its siblings (relative): copied next to a saved checkpoint for
``trust_remote_code``, so it must not import ``strata``.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN

from .configuration_stratified import StratifiedConfig
from .stratum_sources import StratifiedPart, load_balancing_loss, router_z_loss

# --------------------------------------------------------------------------------------------------------------
# Stratum mechanisms (each ends in a zero-initialised projection)
# --------------------------------------------------------------------------------------------------------------


class StratumHeadGate(StratifiedPart):
    """`"attention"`: each stratum re-weights the attention heads; the gated heads enter through a zero-init proj.

    gate[s, h] = 2 * sigmoid(gate_logits[s, h]) (1 at logit 0); a token's head gates are sum_s w_s gate[s, :].
    gate_logits start random so the strata differ from step 0 and the router's gradient is not identically zero.
    """

    def __init__(self, config: StratifiedConfig):
        super().__init__()
        self.gate_logits = nn.Parameter(
            torch.zeros(config.num_strata, config.num_attention_heads)
        )  # [S, heads]
        self.out_proj = nn.Parameter(
            torch.zeros(config.hidden_size, config.num_attention_heads * config.head_dim)
        )

    def init_stratified(self, generator: torch.Generator, std: float) -> None:
        init.normal_(self.gate_logits, mean=0.0, std=1.0, generator=generator)
        init.zeros_(self.out_proj)

    def forward(self, attn_heads: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        # attn_heads [B, T, heads, D], weights [B, T, S]
        gates = weights @ (2.0 * torch.sigmoid(self.gate_logits)).to(weights.dtype)  # [B, T, heads]
        gated = attn_heads * gates[..., None]
        return nn.functional.linear(gated.flatten(-2), self.out_proj)  # [B, T, H]


class StratumRoutedFFN(StratifiedPart):
    """`"routing"`: one SwiGLU path per stratum (equal widths), mixed by the stratum weights."""

    def __init__(self, config: StratifiedConfig):
        super().__init__()
        s, h, i = config.num_strata, config.hidden_size, config.stratum_intermediate_size
        self.gate_proj = nn.Parameter(torch.zeros(s, h, i))
        self.up_proj = nn.Parameter(torch.zeros(s, h, i))
        self.down_proj = nn.Parameter(torch.zeros(s, i, h))  # zero-init: the path starts switched off
        self.act_fn = ACT2FN[config.hidden_act]

    def init_stratified(self, generator: torch.Generator, std: float) -> None:
        init.normal_(self.gate_proj, mean=0.0, std=std, generator=generator)
        init.normal_(self.up_proj, mean=0.0, std=std, generator=generator)
        init.zeros_(self.down_proj)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        # x [B, T, H], weights [B, T, S]
        g = torch.einsum("bth,shi->btsi", x, self.gate_proj)
        u = torch.einsum("bth,shi->btsi", x, self.up_proj)
        y = torch.einsum("btsi,sih->btsh", self.act_fn(g) * u, self.down_proj)  # [B, T, S, H]
        return torch.einsum("bts,btsh->bth", weights, y)


class StratumStrategyFFN(StratifiedPart):
    """`"layers"`: strategy s is an extra SwiGLU of width `layer_strategy_widths[s]` (0 = skip: adds nothing).

    The strategies are stored as one SwiGLU of width sum(widths) whose hidden units are blocked by strategy; a
    token's unit u is scaled by w[strategy(u)], which equals sum_s w_s * SwiGLU_s(x) exactly.
    """

    def __init__(self, config: StratifiedConfig):
        super().__init__()
        self.widths = [int(w) for w in config.layer_strategy_widths]
        total = max(1, sum(self.widths))  # all-skip keeps one (unused) unit so the shapes stay valid
        self.gate_proj = nn.Parameter(torch.zeros(total, config.hidden_size))
        self.up_proj = nn.Parameter(torch.zeros(total, config.hidden_size))
        self.down_proj = nn.Parameter(torch.zeros(config.hidden_size, total))  # zero-init
        self.act_fn = ACT2FN[config.hidden_act]

    def init_stratified(self, generator: torch.Generator, std: float) -> None:
        init.normal_(self.gate_proj, mean=0.0, std=std, generator=generator)
        init.normal_(self.up_proj, mean=0.0, std=std, generator=generator)
        init.zeros_(self.down_proj)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        # x [B, T, H], weights [B, T, S]
        if sum(self.widths) == 0:
            return torch.zeros_like(x)
        h = self.act_fn(nn.functional.linear(x, self.gate_proj)) * nn.functional.linear(
            x, self.up_proj
        )  # [B,T,W]
        repeats = torch.tensor(self.widths, device=x.device)
        unit_weights = weights.repeat_interleave(repeats, dim=-1, output_size=sum(self.widths))  # [B, T, W]
        h = h * unit_weights  # unit u of strategy s scaled by w_s
        return nn.functional.linear(h, self.down_proj)


class StratumConditionedMoE(StratifiedPart):
    """`"moe"`: top-k mixture of E SwiGLU experts whose router is conditioned on the stratum.

    Expert logits = sum_s w_s (x @ W_s + b_s): each stratum has its own expert router (soft w mixes them). The
    MoE output is scaled by the kept stratum mass sum_s w_s, so `disabled_strata` switch the path off.
    """

    def __init__(self, config: StratifiedConfig):
        super().__init__()
        s, h, e, i = config.num_strata, config.hidden_size, config.num_experts, config.moe_intermediate_size
        self.top_k = config.num_experts_per_tok
        self.z_loss_weight = config.z_loss_weight
        self.router_weight = nn.Parameter(torch.zeros(s, h, e))  # [S, H, E]
        self.router_bias = nn.Parameter(torch.zeros(s, e))  # [S, E]
        self.gate_proj = nn.Parameter(torch.zeros(e, h, i))
        self.up_proj = nn.Parameter(torch.zeros(e, h, i))
        self.down_proj = nn.Parameter(torch.zeros(e, i, h))  # zero-init
        self.act_fn = ACT2FN[config.hidden_act]

    def init_stratified(self, generator: torch.Generator, std: float) -> None:
        init.normal_(self.router_weight, mean=0.0, std=std, generator=generator)
        init.zeros_(self.router_bias)
        init.normal_(self.gate_proj, mean=0.0, std=std, generator=generator)
        init.normal_(self.up_proj, mean=0.0, std=std, generator=generator)
        init.zeros_(self.down_proj)

    def forward(
        self, x: torch.Tensor, weights: torch.Tensor, token_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # x [B, T, H], weights [B, T, S]
        per_stratum = torch.einsum("bth,she->btse", x, self.router_weight) + self.router_bias  # [B, T, S, E]
        logits = torch.einsum("bts,btse->bte", weights, per_stratum).float()  # [B, T, E]
        probs = logits.softmax(dim=-1)
        top_p, top_i = probs.topk(self.top_k, dim=-1)  # [B, T, k]
        top_p = top_p / top_p.sum(-1, keepdim=True)  # renormalise over the chosen experts (Mixtral)
        combine = torch.zeros_like(probs).scatter(-1, top_i, top_p)  # [B, T, E], k non-zeros
        dispatched = torch.zeros_like(probs).scatter(-1, top_i, 1.0 / self.top_k)

        g = torch.einsum("bth,ehi->btei", x, self.gate_proj)
        u = torch.einsum("bth,ehi->btei", x, self.up_proj)
        y = torch.einsum("btei,eih->bteh", self.act_fn(g) * u, self.down_proj)  # [B, T, E, H]
        out = torch.einsum("bte,bteh->bth", combine.to(x.dtype), y)
        out = out * weights.sum(-1, keepdim=True)  # kept stratum mass (1 unless strata are disabled)
        aux = load_balancing_loss(probs, dispatched, token_mask) + self.z_loss_weight * router_z_loss(
            logits, token_mask
        )
        return out, logits, aux


def _mark_stratified(part: StratifiedPart, seed: int) -> StratifiedPart:
    """Give `part` its private init seed and flag its submodules so the generic init skips them."""
    part.init_seed = seed
    for m in part.modules():
        if m is not part:
            m._stratified_leaf = True
    return part
