"""TTT language models: RNN layers whose hidden state is a model trained by gradient descent on the sequence.

Reimplementation of "Learning to (Learn at Test Time): RNNs with Expressive Hidden States" (Sun et al., 2024),
parameter-compatible with the official ``TTTForCausalLM`` (``test-time-training/ttt-lm-pytorch``): a checkpoint of
the official code loads here with ``strict=True`` and gives the same logits (checked against a fixture in the tests).

Notation used in the shape comments: B batch, L sequence length, C hidden size, H heads, d = C / H head dim,
K mini-batch size, N number of mini-batches in a span, s tokens per mini-batch of a span (s <= K), F = 4d (TTT-MLP).

What differs from the reference (on purpose):
* the inner loop runs in float32 (or float64 for a float64 model; the reference uses the model dtype), so bf16
  models stay stable;
* ``attention_mask`` is honoured: a masked token is removed from its row (see ``TTTModel.forward``);
* the cache ([`TTTCache`]) supports any chunk length at any offset, per-row offsets, and beam reordering.

Portable: this file and its siblings import only torch, transformers and each other (relative imports), and
``save_pretrained`` copies them next to the weights with an ``auto_map`` (``register_for_auto_class`` below), so
``AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)`` works where Strata is not installed.
Layout: ``configuration_ttt`` (config), ``ttt_ops`` (numerics), ``ttt_cache`` (cache), ``ttt_scan`` (the
state-independent half of the scan), ``ttt_layer`` (TTT-Linear / TTT-MLP), ``ttt_block`` (residual block), this
file (models).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.utils import logging

from .configuration_ttt import TTTConfig
from .ttt_block import TTTBlock, TTTConv, TTTRMSNorm, TTTSwiGluMLP  # noqa: F401  (re-exported)
from .ttt_cache import TTTCache, _SeqInfo
from .ttt_layer import TTTMLP, TTTBase, TTTLinear
from .ttt_ops import ln_fused_l2_bwd, ln_fwd  # noqa: F401  (re-exported for tests)

logger = logging.get_logger(__name__)


# --------------------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------------------


class TTTPreTrainedModel(PreTrainedModel):
    config: TTTConfig
    config_class = TTTConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["TTTBlock"]
    _skip_keys_device_placement = ["cache"]
    # The recurrent state cannot be rolled back: no assisted generation.
    _is_stateful = True

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        # `generate` must not build a key/value DynamicCache: the model creates its own TTTCache on the first call.
        return False

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Conv1d):
            # PyTorch's default conv init (the reference leaves convs at their default), not normal(0.02).
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                bound = 1.0 / math.sqrt(module.weight.shape[1] * module.weight.shape[2])
                init.uniform_(module.bias, -bound, bound)
            return
        super()._init_weights(module)  # Linear/Embedding: normal(initializer_range); norms: ones/zeros
        if isinstance(module, TTTBase):
            init.zeros_(module.learnable_token_idx)
            init.normal_(module.learnable_ttt_lr_weight, mean=0.0, std=0.02)
            init.zeros_(module.learnable_ttt_lr_bias)
            init.ones_(module.ttt_norm_weight)
            init.zeros_(module.ttt_norm_bias)
            for name in module.inner_param_names:
                param = getattr(module, name)
                if name.startswith("W"):
                    init.normal_(param, mean=0.0, std=0.02)
                else:
                    init.zeros_(param)


class TTTModel(TTTPreTrainedModel):
    """Embedding + TTT blocks + final RMSNorm."""

    def __init__(self, config: TTTConfig):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList([TTTBlock(config, i) for i in range(config.num_hidden_layers)])
        self.norm = TTTRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: TTTCache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPast | tuple:
        r"""
        attention_mask (`torch.Tensor` of shape `(batch_size, past_length + sequence_length)` or
            `(batch_size, sequence_length)`, *optional*): 1 for real tokens, 0 for padding. Only the last
            `sequence_length` columns are read. A masked token is *removed* from its row: it gets no inner-loop
            update (zero learning rate), is not seen by later tokens, and does not advance the mini-batch position
            or RoPE position of the tokens after it; the outputs of the remaining tokens equal those of the row
            with the masked tokens deleted. Outputs at masked positions are unspecified (finite).
        position_ids: accepted for API compatibility and ignored. As in the reference, positions are implicit:
            a token's RoPE position and per-position scale come from the number of real tokens before it, mod K.
        cache ([`TTTCache`], *optional*): the state returned by a previous call (`use_cache=True`).
        """
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        B, L, C = inputs_embeds.shape

        if use_cache is None:
            use_cache = self.config.use_cache and not self.training
        if self.gradient_checkpointing and self.training and (use_cache or cache is not None):
            logger.warning_once("TTT: the cache is incompatible with gradient checkpointing; not using it.")
            use_cache, cache = False, None
        if cache is None and use_cache:
            cache = TTTCache(self.config, B, device=inputs_embeds.device)

        mask = None
        if attention_mask is not None:
            if attention_mask.dim() != 2:
                raise ValueError("TTT models take a 2D attention_mask [batch, length] of 0/1 values")
            mask = attention_mask[:, -L:].bool()
            if bool(mask.all()):
                mask = None

        offset, offsets, column_by_column = self._start_offsets(cache, L)
        if column_by_column:  # rare: multi-token continuation with per-row offsets; feed one column at a time
            return self._forward_column_by_column(inputs_embeds, mask, cache, output_hidden_states, return_dict)
        hidden_states, order, n_valid, info = self._pack(inputs_embeds, mask, cache, offset, offsets)

        def unpack(h: torch.Tensor) -> torch.Tensor:
            if order is None:
                return h
            return torch.empty_like(h).scatter_(1, order[..., None].expand(B, L, h.shape[-1]), h)

        all_hidden_states = () if output_hidden_states else None
        for layer in self.layers:
            if output_hidden_states:
                all_hidden_states += (unpack(hidden_states),)
            hidden_states = layer(hidden_states, info=info, cache=cache)
        hidden_states = unpack(self.norm(hidden_states))
        if output_hidden_states:
            all_hidden_states += (hidden_states,)

        if cache is not None:
            cache.seen_tokens = cache.seen_tokens + n_valid
            cache.seqlen_offset += L
        out = BaseModelOutputWithPast(
            last_hidden_state=hidden_states, cache=cache, hidden_states=all_hidden_states
        )
        return out if return_dict else out.to_tuple()

    def _start_offsets(self, cache: TTTCache | None, L: int) -> tuple[int | None, torch.Tensor | None, bool]:
        """In-mini-batch offset of the first new token (rows can differ after a padded prefill).

        Returns (common offset, or None for per-row offsets with L == 1; the per-row offsets [B]; whether the
        call must go column by column: several new tokens and per-row offsets).
        """
        if cache is None:
            return 0, None, False
        offsets = cache.seen_tokens % self.config.mini_batch_size
        offsets_list = offsets.tolist()
        if len(set(offsets_list)) == 1:
            return offsets_list[0], offsets, False
        if L == 1:
            return None, offsets, False
        return 0, offsets, True

    def _pack(
        self,
        inputs_embeds: torch.Tensor,
        mask: torch.Tensor | None,
        cache: TTTCache | None,
        offset: int | None,
        offsets: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, _SeqInfo]:
        """Pack each row (real tokens first, in order; padding after) and say where the tokens sit.

        Returns (packed states, the packing order [B, L] or None, real tokens per row [B] or None, _SeqInfo).
        """
        B, L, C = inputs_embeds.shape
        K = self.config.mini_batch_size
        hidden_states = inputs_embeds
        order = valid = n_valid = None
        if mask is not None:
            order = torch.argsort((~mask).to(torch.int32), dim=1, stable=True)  # [B, L]
            hidden_states = hidden_states.gather(1, order[..., None].expand(B, L, C))
            valid = mask.gather(1, order)
            n_valid = valid.sum(1)
        elif cache is not None:
            n_valid = torch.full((B,), L, dtype=torch.long, device=inputs_embeds.device)

        arange = torch.arange(L, device=inputs_embeds.device)
        if offset is None:
            pos = offsets[:, None]  # [B, 1]
        else:
            pos = ((offset + arange) % K)[None]  # [1, L]
        info = _SeqInfo(pos=pos, offset=offset, valid=valid, n_valid=n_valid if cache is not None else None)
        return hidden_states, order, n_valid, info

    def _forward_column_by_column(
        self,
        inputs_embeds: torch.Tensor,
        mask: torch.Tensor | None,
        cache: TTTCache,
        output_hidden_states: bool,
        return_dict: bool,
    ) -> BaseModelOutputWithPast | tuple:
        outs = [
            self(
                inputs_embeds=inputs_embeds[:, t : t + 1],
                attention_mask=None if mask is None else mask[:, t : t + 1],
                cache=cache,
                use_cache=True,
                output_hidden_states=output_hidden_states,
                return_dict=True,
            )
            for t in range(inputs_embeds.shape[1])
        ]
        hidden = None
        if output_hidden_states:
            hidden = tuple(torch.cat(per_layer, dim=1) for per_layer in zip(*(o.hidden_states for o in outs)))
        out = BaseModelOutputWithPast(
            last_hidden_state=torch.cat([o.last_hidden_state for o in outs], dim=1),
            cache=cache,
            hidden_states=hidden,
        )
        return out if return_dict else out.to_tuple()


class TTTForCausalLM(TTTPreTrainedModel, GenerationMixin):
    """TTT model with a (tied) language-modelling head. Logits are returned in float32."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: TTTConfig):
        super().__init__(config)
        self.model = TTTModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()
        # Official configs say `use_cache: false` (meaning: forward returns no cache by default). Without a cache,
        # generate() would re-read the whole prefix at every step, so decoding uses the recurrent cache anyway;
        # `generate(..., use_cache=False)` still turns it off.
        if self.generation_config is not None:
            self.generation_config.use_cache = True

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.lm_head = new_embeddings

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: TTTCache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast | tuple:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*): next-token targets,
            shifted inside (`labels = input_ids` is fine); -100 is ignored. Extra loss kwargs such as
            `num_items_in_batch` (passed by the Trainer) go to `self.loss_function`.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        hidden_states = outputs.last_hidden_state
        slice_indices = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, slice_indices, :]).float()

        loss = None
        if labels is not None:
            loss_kwargs = {k: v for k, v in kwargs.items() if k in ("num_items_in_batch", "ignore_index")}
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.vocab_size, **loss_kwargs
            )

        out = CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
        )
        return out if return_dict else out.to_tuple()


# `save_pretrained` then writes this code and an `auto_map` into the checkpoint (see the module docstring).
TTTForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = ["TTTCache", "TTTForCausalLM", "TTTLinear", "TTTMLP", "TTTModel", "TTTPreTrainedModel"]
