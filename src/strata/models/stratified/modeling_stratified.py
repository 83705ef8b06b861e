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

Portable: this file and its siblings (configuration_stratified, mechanisms, stratum_sources) import only numpy,
torch, transformers and each other (relative imports), and ``save_pretrained`` copies them next to the weights
with an ``auto_map`` (``register_for_auto_class`` below), so ``AutoModelForCausalLM.from_pretrained(path,
trust_remote_code=True)`` works where Strata is not installed. Parameter accounting is in parameters.py, the
fitting of the stratum sources in routers.py (both Strata-side).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import slice_logits_to_keep
from transformers.utils import can_return_tuple

from .backbone import (
    StratifiedAttention,
    StratifiedMLP,
    StratifiedRMSNorm,
    StratifiedRotaryEmbedding,
    _part_seed,
)
from .configuration_stratified import StratifiedConfig
from .mechanisms import (
    StratumConditionedMoE,
    StratumRoutedFFN,
    StratumStrategyFFN,
    _mark_stratified,
)
from .stratum_sources import (
    RouterOutput,
    StratifiedPart,
    StratumSource,
    build_stratum_source,
)


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


# `save_pretrained` then writes this code and an `auto_map` into the checkpoint (see the module docstring).
StratifiedForCausalLM.register_for_auto_class("AutoModelForCausalLM")


__all__ = [
    "StratifiedPreTrainedModel",
    "StratifiedModel",
    "StratifiedForCausalLM",
    "StratifiedModelOutputWithPast",
    "StratifiedCausalLMOutputWithPast",
]
