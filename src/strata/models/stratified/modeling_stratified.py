"""Stratified decoder: a Llama-style causal LM with an optional per-token stratum mechanism inside every block.

Block (pre-norm, as Llama):

    x = input_layernorm(h)                      [B, T, H]
    h = h + o_proj(attn(x)) + head_gate(attn(x), w)          # "attention": stratum-specific head gating
    x = post_attention_layernorm(h)
    h = h + mlp(x) + stratified_ffn(x, w)                    # "routing" | "layers" | "moe"

where w [B, T, S] are the stratum weights of a per-layer *stratum source* (routers.py) reading x. Every
stratified term ends in a zero-initialised projection, so at step 0 a variant computes exactly the baseline
function (`stratified_type="none"`). Paths are computed densely (all S paths / E experts) and mixed by w: at the
sizes this family targets that is simpler and not slower than dispatching tokens.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, slice_logits_to_keep
from transformers.utils import can_return_tuple

from strata.models.stratified.configuration_stratified import StratifiedConfig
from strata.models.stratified.routers import (
    RouterOutput,
    StratifiedPart,
    StratumSource,
    build_stratum_source,
    load_balancing_loss,
    router_z_loss,
)

# --------------------------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------------------------


@dataclass
class StratifiedModelOutputWithPast(BaseModelOutputWithPast):
    """`BaseModelOutputWithPast` plus optional router outputs (per layer tuples)."""

    aux_loss: torch.FloatTensor | None = None
    router_logits: tuple[torch.FloatTensor | None, ...] | None = None
    stratum_probs: tuple[torch.FloatTensor | None, ...] | None = None
    expert_router_logits: tuple[torch.FloatTensor | None, ...] | None = None


@dataclass
class StratifiedCausalLMOutputWithPast(CausalLMOutputWithPast):
    """`CausalLMOutputWithPast` plus optional fields; `loss` already includes `aux_loss_coef * aux_loss`.

    aux_loss: mean over layers of the routers' balance + z-losses (unweighted by `aux_loss_coef`).
    router_logits: per layer [B, T, S] stratum-router logits (learned source) or None.
    stratum_probs: per layer [B, T, S] stratum distribution (one-hot for hard sources), before `disabled_strata`.
    expert_router_logits: per layer [B, T, E] expert-router logits (`"moe"`) or None.
    """

    aux_loss: torch.FloatTensor | None = None
    router_logits: tuple[torch.FloatTensor | None, ...] | None = None
    stratum_probs: tuple[torch.FloatTensor | None, ...] | None = None
    expert_router_logits: tuple[torch.FloatTensor | None, ...] | None = None


# --------------------------------------------------------------------------------------------------------------
# Backbone pieces (Llama)
# --------------------------------------------------------------------------------------------------------------


class StratifiedRMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        dtype = hidden_states.dtype
        x = hidden_states.to(torch.float32)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * x.to(dtype)


class StratifiedRotaryEmbedding(nn.Module):
    """Default RoPE; `inv_freq` is a non-persistent buffer recomputed in `_init_weights`."""

    def __init__(self, config: StratifiedConfig):
        super().__init__()
        self.head_dim = config.head_dim
        self.base = float(config.rope_theta)
        self.register_buffer("inv_freq", self.compute_inv_freq(), persistent=False)

    def compute_inv_freq(self) -> torch.Tensor:
        return 1.0 / (self.base ** (torch.arange(0, self.head_dim, 2, dtype=torch.float) / self.head_dim))

    @torch.no_grad()
    def forward(self, x: torch.Tensor, position_ids: torch.LongTensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[..., None].float() * self.inv_freq.to(x.device)  # [B, T, D/2]
        emb = torch.cat((freqs, freqs), dim=-1)  # [B, T, D]
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # [B, 1, T, D] against [B, heads, T, D]
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def repeat_kv(hidden_states: torch.Tensor, n_rep: int) -> torch.Tensor:
    """[B, kv_heads, T, D] -> [B, kv_heads * n_rep, T, D]."""
    if n_rep == 1:
        return hidden_states
    b, h, t, d = hidden_states.shape
    return hidden_states[:, :, None].expand(b, h, n_rep, t, d).reshape(b, h * n_rep, t, d)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    key = repeat_kv(key, module.num_key_value_groups)
    value = repeat_kv(value, module.num_key_value_groups)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling  # [B, heads, T, K]
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    probs = scores.softmax(dim=-1, dtype=torch.float32).to(query.dtype)
    probs = nn.functional.dropout(probs, p=dropout, training=module.training)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), probs  # [B, T, heads, D]


class StratifiedMLP(nn.Module):
    """SwiGLU feed-forward: down(act(gate(x)) * up(x))."""

    def __init__(self, hidden_size: int, intermediate_size: int, hidden_act: str = "silu"):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)
        self.act_fn = ACT2FN[hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


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


# --------------------------------------------------------------------------------------------------------------
# Attention and decoder block
# --------------------------------------------------------------------------------------------------------------


def _mark_stratified(part: StratifiedPart, seed: int) -> StratifiedPart:
    """Give `part` its private init seed and flag its submodules so the generic init skips them."""
    part.init_seed = seed
    for m in part.modules():
        if m is not part:
            m._stratified_leaf = True
    return part


class StratifiedAttention(nn.Module):
    """Causal multi-head attention (GQA-ready) with RoPE and a DynamicCache; optional stratum head gating."""

    def __init__(self, config: StratifiedConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_key_value_groups = config.num_attention_heads // config.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = True
        h = config.hidden_size
        self.q_proj = nn.Linear(h, config.num_attention_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(h, config.num_key_value_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(h, config.num_key_value_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(config.num_attention_heads * self.head_dim, h, bias=False)
        self.head_gate: StratumHeadGate | None = None
        if config.stratified_type == "attention":
            with torch.random.fork_rng(devices=[]):  # keep the global RNG stream identical to the baseline's
                self.head_gate = _mark_stratified(StratumHeadGate(config), _part_seed(config, layer_idx, 0))

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None,
        cache: Cache | None = None,
        stratum_weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        input_shape = hidden_states.shape[:-1]  # [B, T]
        hidden_shape = (*input_shape, -1, self.head_dim)
        q = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)  # [B, heads, T, D]
        k = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)  # [B, kv_heads, T, D]
        v = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        cos, sin = position_embeddings
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn, _ = attention_interface(
            self,
            q,
            k,
            v,
            attention_mask,
            dropout=0.0 if not self.training else self.config.attention_dropout,
            scaling=self.scaling,
        )  # [B, T, heads, D]
        out = self.o_proj(attn.reshape(*input_shape, -1))
        if self.head_gate is not None:
            out = out + self.head_gate(attn, stratum_weights)
        return out


def _part_seed(config: StratifiedConfig, layer_idx: int, part: int) -> int:
    return int(config.stratified_init_seed) * 1_000_003 + 101 * layer_idx + part


@dataclass
class LayerRouting:
    """Per-layer routing record returned by a block."""

    route: RouterOutput | None = None
    expert_logits: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None


class StratifiedDecoderLayer(GradientCheckpointingLayer):
    def __init__(self, config: StratifiedConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.self_attn = StratifiedAttention(config, layer_idx)
        self.mlp = StratifiedMLP(config.hidden_size, config.intermediate_size, config.hidden_act)
        self.input_layernorm = StratifiedRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = StratifiedRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

        self.stratum_source: StratumSource | None = None
        self.stratified_ffn: StratifiedPart | None = None
        kind = config.stratified_type
        if kind != "none":
            with torch.random.fork_rng(devices=[]):
                self.stratum_source = _mark_stratified(
                    build_stratum_source(config), _part_seed(config, layer_idx, 1)
                )
                ffn_cls = {
                    "routing": StratumRoutedFFN,
                    "layers": StratumStrategyFFN,
                    "moe": StratumConditionedMoE,
                }
                if kind in ffn_cls:
                    self.stratified_ffn = _mark_stratified(
                        ffn_cls[kind](config), _part_seed(config, layer_idx, 2)
                    )

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        cache: Cache | None = None,
        input_ids: torch.LongTensor | None = None,
        stratum_ids: torch.LongTensor | None = None,
        token_mask: torch.Tensor | None = None,
        past_length: int = 0,
    ) -> tuple[torch.Tensor, LayerRouting]:
        kind = self.config.stratified_type
        record = LayerRouting()
        source_kwargs = dict(
            input_ids=input_ids, stratum_ids=stratum_ids, token_mask=token_mask, past_length=past_length
        )

        residual = hidden_states
        x = self.input_layernorm(hidden_states)
        if kind == "attention":
            record.route = self.stratum_source(x, **source_kwargs)
        weights = record.route.weights if record.route is not None else None
        hidden_states = residual + self.self_attn(
            x, position_embeddings, attention_mask, cache, weights
        )

        residual = hidden_states
        x = self.post_attention_layernorm(hidden_states)
        out = self.mlp(x)
        if kind in ("routing", "layers", "moe"):
            record.route = self.stratum_source(x, **source_kwargs)
            if kind == "moe":
                moe_out, record.expert_logits, moe_aux = self.stratified_ffn(
                    x, record.route.weights, token_mask
                )
                out = out + moe_out
                record.aux_loss = moe_aux
            else:
                out = out + self.stratified_ffn(x, record.route.weights)
        hidden_states = residual + out

        if record.route is not None and record.route.aux_loss is not None:
            aux = record.route.aux_loss
            record.aux_loss = aux if record.aux_loss is None else record.aux_loss + aux
        return hidden_states, record


# --------------------------------------------------------------------------------------------------------------
# Pretrained model classes
# --------------------------------------------------------------------------------------------------------------


class StratifiedPreTrainedModel(PreTrainedModel):
    config_class = StratifiedConfig
    config: StratifiedConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["StratifiedDecoderLayer"]
    _skip_keys_device_placement = ["cache"]
    _supports_sdpa = True
    _supports_attention_backend = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if getattr(module, "_stratified_leaf", False):
            return  # initialised by its StratifiedPart, from a private generator
        if isinstance(module, StratifiedPart):
            params = list(module.parameters())
            device = params[0].device if params else torch.device("cpu")
            generator = torch.Generator(device=device).manual_seed(int(module.init_seed))
            module.init_stratified(generator, std)
        elif isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.padding_idx is not None and not getattr(module.weight, "_is_hf_initialized", False):
                init.zeros_(module.weight[module.padding_idx])
        elif isinstance(module, StratifiedRMSNorm):
            init.ones_(module.weight)
        elif isinstance(module, StratifiedRotaryEmbedding):
            init.copy_(module.inv_freq, module.compute_inv_freq())


class StratifiedModel(StratifiedPreTrainedModel):
    """The decoder stack: embeddings, L stratified blocks, final RMSNorm."""

    def __init__(self, config: StratifiedConfig):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(
            [StratifiedDecoderLayer(config, i) for i in range(config.num_hidden_layers)]
        )
        self.norm = StratifiedRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = StratifiedRotaryEmbedding(config)
        self.gradient_checkpointing = False
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        output_router_logits: bool | None = None,
        stratum_ids: torch.LongTensor | None = None,
        **kwargs,
    ) -> StratifiedModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Specify exactly one of input_ids or inputs_embeds")
        use_cache = use_cache if use_cache is not None else self.config.use_cache
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        output_router_logits = (
            output_router_logits if output_router_logits is not None else self.config.output_router_logits
        )
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)  # [B, T, H]
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        past_length = cache.get_seq_length() if cache is not None else 0
        seq_len = inputs_embeds.shape[1]
        if position_ids is None:
            position_ids = torch.arange(past_length, past_length + seq_len, device=inputs_embeds.device)[None]

        causal_mask = create_causal_mask(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            cache=cache,
            position_ids=position_ids,
        )
        # tokens that count for the routers' aux-loss statistics: the non-padded current positions
        token_mask = None
        if attention_mask is not None and attention_mask.dim() == 2:
            token_mask = attention_mask[:, -seq_len:].bool()

        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids)
        all_hidden = (hidden_states,) if output_hidden_states else None
        records: list[LayerRouting] = []
        for layer in self.layers:
            hidden_states, record = layer(
                hidden_states,
                attention_mask=causal_mask,
                position_embeddings=position_embeddings,
                cache=cache,
                input_ids=input_ids,
                stratum_ids=stratum_ids,
                token_mask=token_mask,
                past_length=past_length,
            )
            records.append(record)
            if output_hidden_states:
                all_hidden += (hidden_states,)
        hidden_states = self.norm(hidden_states)
        if output_hidden_states:
            all_hidden = all_hidden[:-1] + (hidden_states,)

        aux_terms = [r.aux_loss for r in records if r.aux_loss is not None]
        aux_loss = torch.stack(aux_terms).mean() if aux_terms else None
        router_logits = stratum_probs = expert_logits = None
        if output_router_logits and self.config.stratified_type != "none":
            router_logits = tuple(r.route.logits if r.route is not None else None for r in records)
            stratum_probs = tuple(r.route.probs if r.route is not None else None for r in records)
            expert_logits = tuple(r.expert_logits for r in records)
        return StratifiedModelOutputWithPast(
            last_hidden_state=hidden_states,
            cache=cache if use_cache else None,
            hidden_states=all_hidden,
            aux_loss=aux_loss,
            router_logits=router_logits,
            stratum_probs=stratum_probs,
            expert_router_logits=expert_logits,
        )


class StratifiedForCausalLM(StratifiedPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: StratifiedConfig):
        super().__init__(config)
        self.model = StratifiedModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def set_disabled_strata(self, strata: Iterable[int] | None) -> None:
        """Switch stratum paths off at forward time (ablations); `None` re-enables all."""
        self.config.disabled_strata = sorted(int(s) for s in strata) if strata else None

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        output_router_logits: bool | None = None,
        stratum_ids: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> StratifiedCausalLMOutputWithPast:
        r"""`stratum_ids` ([B] or [B, T]): domain tags, used only by `stratum_source="domain"`.

        `kwargs` may carry Trainer's `num_items_in_batch`, which normalises the LM loss across gradient
        accumulation; the aux loss is then weighted by this micro-batch's share of the label tokens, so the
        accumulated aux term is the token-weighted mean, like the LM term.
        """
        outputs: StratifiedModelOutputWithPast = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            output_router_logits=output_router_logits,
            stratum_ids=stratum_ids,
        )
        hidden_states = slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep)
        logits = self.lm_head(hidden_states)  # [B, T, V]

        loss = None
        if labels is not None:
            num_items = kwargs.get("num_items_in_batch")
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.vocab_size, num_items_in_batch=num_items
            )
            if outputs.aux_loss is not None and self.config.aux_loss_coef:
                aux = self.config.aux_loss_coef * outputs.aux_loss.to(loss.device)
                if num_items is not None:
                    local = (labels[..., 1:] != -100).sum()
                    aux = (
                        aux
                        * local.to(aux.dtype)
                        / torch.as_tensor(num_items, device=aux.device).to(aux.dtype)
                    )
                loss = loss + aux

        return StratifiedCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            aux_loss=outputs.aux_loss,
            router_logits=outputs.router_logits,
            stratum_probs=outputs.stratum_probs,
            expert_router_logits=outputs.expert_router_logits,
        )


# --------------------------------------------------------------------------------------------------------------
# Parameter accounting
# --------------------------------------------------------------------------------------------------------------


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


__all__ = [
    "StratifiedPreTrainedModel",
    "StratifiedModel",
    "StratifiedForCausalLM",
    "StratifiedModelOutputWithPast",
    "StratifiedCausalLMOutputWithPast",
    "count_parameters",
    "match_params",
    "parameter_report",
]
