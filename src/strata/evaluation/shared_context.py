"""Choice scoring that encodes each context once instead of once per choice.

The reference scorer (:func:`strata.evaluation.scoring._score_decoder_only`) feeds one row per
(example, choice): ``context + choice[:-1]``. For label words that is the whole prompt repeated C
times, and for one-token label words every row is the *same* context. Here:

* decoder-only: each distinct context (the one :mod:`strata.data.encoding` builds for that choice:
  it differs between choices only when ``max_length`` truncation applies) is run once, with logits
  only at its last position, which scores the first token of every choice. Longer choices continue
  from the context's cache (transformers' ``cache=`` argument and output), gathered per choice with
  ``reorder_cache``; a model whose forward takes no ``cache`` argument (PEFT wrappers, whose forward
  is ``**kwargs``) scores those choices with the reference path instead.
* encoder-decoder: the encoder runs once per example; the decoder rows (``[start] + choice[:-1]``,
  one row for all one-token choices) read repeated encoder outputs.

Both return ``None`` when they cannot apply, and the caller uses the reference path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from transformers.modeling_outputs import BaseModelOutput

from strata.data.encoding import (
    SpecialTokens,
    completion_target,
    context_budget,
    decoder_context,
    encoder_input,
)
from strata.evaluation.model_io import (
    decoder_start_id,
    forward_accepts,
    is_encoder_decoder,
    model_device,
    pad_batch,
    position_ids_from_mask,
)

Scores = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # loglik float64 [N, C], num_tokens, is_greedy


class _Accumulator:
    """Per (example, choice) sums of token log-probabilities, token counts and all-greedy flags."""

    def __init__(self, n: int, c: int) -> None:
        self.c = c
        self.loglik = torch.zeros(n * c, dtype=torch.float64)
        self.count = torch.zeros(n * c, dtype=torch.long)
        self.misses = torch.zeros(n * c, dtype=torch.long)

    def add(self, logits: torch.Tensor, rows: list[int], positions: list[int], targets: list[int],
            pairs: list[tuple[int, int]]) -> None:
        """Score ``targets`` at ``logits[rows, positions]`` (float32 log-softmax) into ``pairs``."""
        if not rows:
            return
        device = logits.device
        picked = logits[torch.tensor(rows, device=device), torch.tensor(positions, device=device)].float()
        tgt = torch.tensor(targets, device=device)
        token_lp = F.log_softmax(picked, dim=-1).gather(-1, tgt[:, None]).squeeze(-1).double().cpu()
        miss = (picked.argmax(-1) != tgt).long().cpu()
        slots = torch.tensor([i * self.c + j for i, j in pairs])
        self.loglik.index_add_(0, slots, token_lp)
        self.count.index_add_(0, slots, torch.ones_like(slots))
        self.misses.index_add_(0, slots, miss)

    def result(self) -> Scores:
        shape = (-1, self.c)
        return self.loglik.view(shape), self.count.view(shape), (self.misses == 0).view(shape)


def score_shared(
    model: Any,
    specials: SpecialTokens,
    prompt_ids: Sequence[Sequence[int]],
    conts: list[list[list[int]]],
    max_length: int | None,
    pad: int,
    side: str,
    batch_size: int,
) -> tuple[Scores, list[tuple[int, int]]] | None:
    """Scores plus the (example, choice) pairs left to the reference path; ``None`` when this path does
    not apply to the model (then the reference path scores everything)."""
    if is_encoder_decoder(model):
        scores = score_encoder_decoder_shared(model, specials, prompt_ids, conts, max_length, pad,
                                              decoder_start_id(model), batch_size)
        return None if scores is None else (scores, [])
    return score_decoder_only_shared(model, specials, prompt_ids, conts, max_length, pad, side, batch_size)


def _batches(order: list[int], size: int) -> list[list[int]]:
    return [order[s : s + size] for s in range(0, len(order), size)]


def _distinct_contexts(
    specials: SpecialTokens,
    prompt_ids: Sequence[Sequence[int]],
    conts: list[list[list[int]]],
    max_length: int | None,
) -> tuple[list[list[int]], list[list[tuple[int, int]]]]:
    """Each distinct context (the training row's, for that choice's length) and, per context, the
    (example, choice) pairs it precedes."""
    contexts: list[list[int]] = []
    index: dict[tuple[int, ...], int] = {}
    users: list[list[tuple[int, int]]] = []
    for i, row in enumerate(conts):
        for j, cont in enumerate(row):
            budget = context_budget(max_length, len(completion_target(specials, cont)))
            ctx = tuple(decoder_context(specials, prompt_ids[i], budget))
            if ctx not in index:
                index[ctx] = len(contexts)
                contexts.append(list(ctx))
                users.append([])
            users[index[ctx]].append((i, j))
    return contexts, users


def _last_position_forward(
    model: Any,
    contexts: list[list[int]],
    pad: int,
    side: str,
    takes_positions: bool,
    with_cache: bool,
    keep_ok: bool,
    device: torch.device,
) -> tuple[Any, torch.Tensor, list[int]]:
    """One forward over padded contexts; returns the output, the mask and, per row, the logits position of
    its last token (logits only from the first such position on, where the model takes ``logits_to_keep``)."""
    ids, mask, offsets = pad_batch(contexts, pad, side)
    kwargs: dict[str, Any] = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
    if takes_positions:
        kwargs["position_ids"] = position_ids_from_mask(mask).to(device)
    if forward_accepts(model, "use_cache"):
        kwargs["use_cache"] = with_cache
    kwargs.update(no_router_logits(model))
    last = [off + len(ctx) - 1 for ctx, off in zip(contexts, offsets)]
    first = min(last)
    if first > 0 and keep_ok:
        kwargs["logits_to_keep"] = ids.shape[1] - first
        last = [p - first for p in last]
    return model(**kwargs), mask, last


def score_decoder_only_shared(
    model: Any,
    specials: SpecialTokens,
    prompt_ids: Sequence[Sequence[int]],
    conts: list[list[list[int]]],
    max_length: int | None,
    pad: int,
    side: str,
    batch_size: int,
) -> tuple[Scores, list[tuple[int, int]]]:
    """Score every choice of every example; returns the scores and the (example, choice) pairs left for
    the reference path (multi-token choices of a model that cannot continue from a cache)."""
    n, c = len(conts), len(conts[0])
    device = model_device(model)
    contexts, users = _distinct_contexts(specials, prompt_ids, conts, max_length)
    multi = any(len(cont) > 1 for row in conts for cont in row)
    with_cache = multi and forward_accepts(model, "cache", strict=True)
    takes_positions = forward_accepts(model, "position_ids")
    # Left padding puts every context's last token at the last column (logits_to_keep=1); positions come
    # from the mask so padding shifts nothing. Without position_ids keep the tokenizer's side.
    side = "left" if takes_positions else side
    keep_ok = forward_accepts(model, "logits_to_keep", strict=True)
    acc = _Accumulator(n, c)
    leftover: list[tuple[int, int]] = []
    # Contexts of similar length together (less padding); a batch holds as many rows as the reference's
    # batch (batch_size * C) when no continuation rows follow, else batch_size contexts.
    order = sorted(range(len(contexts)), key=lambda k: len(contexts[k]))
    for batch in _batches(order, batch_size if multi else batch_size * c):
        out, mask, last = _last_position_forward(model, [contexts[k] for k in batch], pad, side, takes_positions,
                                                 with_cache, keep_ok, device)
        rows, positions, targets, pairs = [], [], [], []
        cont_rows: list[int] = []
        cont_pairs: list[tuple[int, int]] = []
        for r, k in enumerate(batch):
            for i, j in users[k]:
                rows.append(r)
                positions.append(last[r])
                targets.append(conts[i][j][0])
                pairs.append((i, j))
                if len(conts[i][j]) > 1:
                    cont_rows.append(r)
                    cont_pairs.append((i, j))
        acc.add(out.logits, rows, positions, targets, pairs)
        if not cont_pairs:
            continue
        cache = getattr(out, "cache", None) if with_cache else None
        if cache is None or not hasattr(cache, "reorder_cache"):
            leftover.extend(cont_pairs)
            continue
        _continue_from_cache(model, cache, mask, cont_rows, cont_pairs, conts, pad, device, acc)
    return acc.result(), leftover


def no_router_logits(model: Any) -> dict[str, bool]:
    """``output_router_logits=False`` for models that take it (scores need no router aux loss)."""
    return {"output_router_logits": False} if forward_accepts(model, "output_router_logits", strict=True) else {}


def _continue_from_cache(model: Any, cache: Any, ctx_mask: torch.Tensor, cont_rows: list[int],
                         cont_pairs: list[tuple[int, int]], conts: list[list[list[int]]], pad: int,
                         device: torch.device, acc: _Accumulator) -> None:
    """Feed ``choice[:-1]`` after its context's cached keys/values; position j predicts ``choice[j+1]``."""
    cache.reorder_cache(torch.tensor(cont_rows, device=device))  # one cache row per continuation
    inputs = [conts[i][j][:-1] for i, j in cont_pairs]
    ids, mask, _ = pad_batch(inputs, pad, "right")
    rows_t = torch.tensor(cont_rows)
    full_mask = torch.cat([ctx_mask[rows_t], mask], dim=1)
    positions = ctx_mask[rows_t].sum(-1, keepdim=True) + torch.arange(ids.shape[1])[None, :]
    # MoE models with output_router_logits on would compute their aux loss over the mask of context + new
    # tokens against router logits of the new tokens only: scoring needs no aux loss, so ask for none.
    logits = model(input_ids=ids.to(device), attention_mask=full_mask.to(device),
                   position_ids=positions.to(device), cache=cache, use_cache=True, **no_router_logits(model)).logits
    rows, pos, targets, pairs = [], [], [], []
    for r, (i, j) in enumerate(cont_pairs):
        for t, token in enumerate(conts[i][j][1:]):
            rows.append(r)
            pos.append(t)
            targets.append(token)
            pairs.append((i, j))
    acc.add(logits, rows, pos, targets, pairs)


def score_encoder_decoder_shared(
    model: Any,
    specials: SpecialTokens,
    prompt_ids: Sequence[Sequence[int]],
    conts: list[list[list[int]]],
    max_length: int | None,
    pad: int,
    start: int,
    batch_size: int,
) -> Scores | None:
    """Encode each example once; decode one row per distinct ``[start] + choice[:-1]`` over its
    repeated encoder outputs. ``None`` for models that take no precomputed ``encoder_outputs``."""
    if not (callable(getattr(model, "get_encoder", None)) and forward_accepts(model, "encoder_outputs", strict=True)):
        return None
    n, c = len(conts), len(conts[0])
    device = model_device(model)
    acc = _Accumulator(n, c)
    encoder = model.get_encoder()
    multi = any(len(cont) > 1 for row in conts for cont in row)
    for batch in _batches(list(range(n)), batch_size if multi else batch_size * c):
        enc_ids, enc_mask, _ = pad_batch([encoder_input(specials, prompt_ids[i], max_length) for i in batch],
                                         pad, "right")
        hidden = encoder(input_ids=enc_ids.to(device), attention_mask=enc_mask.to(device),
                         return_dict=True).last_hidden_state
        dec_rows: list[list[int]] = []
        dec_owner: list[int] = []  # batch position of the example a decoder row belongs to
        row_of: dict[tuple[int, tuple[int, ...]], int] = {}
        rows, pos, targets, pairs = [], [], [], []
        for b, i in enumerate(batch):
            for j, cont in enumerate(conts[i]):
                key = (b, tuple([start] + cont[:-1]))
                if key not in row_of:
                    row_of[key] = len(dec_rows)
                    dec_rows.append(list(key[1]))
                    dec_owner.append(b)
                for t, token in enumerate(cont):
                    rows.append(row_of[key])
                    pos.append(t)
                    targets.append(token)
                    pairs.append((i, j))
        dec_ids, dec_mask, _ = pad_batch(dec_rows, pad, "right")
        owner = torch.tensor(dec_owner, device=hidden.device)
        kwargs: dict[str, Any] = {
            "encoder_outputs": BaseModelOutput(last_hidden_state=hidden.index_select(0, owner)),
            "attention_mask": enc_mask.to(device).index_select(0, owner),
            "decoder_input_ids": dec_ids.to(device),
            "decoder_attention_mask": dec_mask.to(device),
        }
        if forward_accepts(model, "use_cache"):
            kwargs["use_cache"] = False
        acc.add(model(**kwargs).logits, rows, pos, targets, pairs)
    return acc.result()
