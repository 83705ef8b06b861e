"""Multiple-choice scoring by log-likelihood, the way lm-evaluation-harness does it.

Each choice is scored as the summed log-probability of its tokens given the prompt. The context of
a choice is built by :mod:`strata.data.encoding`, the contract training rows are built with: the
score of the gold label is minus the summed loss of those tokens in the very training row (tested
per tokenizer family). Scoring never generates: each distinct context is run once for all its
choices (:mod:`strata.evaluation.shared_context`); the one-row-per-choice path stays as the reference.

The helpers every evaluation forward needs (eval mode, device, padding, positions) are in
:mod:`strata.evaluation.model_io`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from strata.data.encoding import (
    SpecialTokens,
    completion_target,
    context_budget,
    decoder_context,
    encode_texts,
    encoder_input,
    row_needs,
    special_tokens,
)
from strata.errors import StrataError
from strata.evaluation.model_io import (
    decoder_start_id,
    eval_context,
    forward_accepts,
    is_encoder_decoder,
    model_device,
    pad_batch,
    pad_id,
    position_ids_from_mask,
)
from strata.evaluation.shared_context import Scores, score_shared

__all__ = ["ChoiceScores", "label_loglikelihoods", "score_choices"]


@dataclass
class ChoiceScores:
    """Per (example, choice) log-likelihoods plus what the harness' normalised variants need."""

    loglik: torch.Tensor  # [N, C] summed log-probability of the choice tokens
    num_tokens: torch.Tensor  # [N, C] number of scored tokens
    num_chars: torch.Tensor  # [N, C] characters in the choice text (harness acc_norm uses bytes)
    is_greedy: torch.Tensor  # [N, C] whether every choice token is the argmax

    @property
    def per_token(self) -> torch.Tensor:
        """Mean log-probability per token (length-normalised)."""
        return self.loglik / self.num_tokens.clamp(min=1)

    @property
    def per_char(self) -> torch.Tensor:
        """Log-probability per character, lm-evaluation-harness's ``acc_norm`` criterion."""
        return self.loglik / self.num_chars.clamp(min=1)


def _choices_per_example(
    prompts: Sequence[str], choices: Sequence[str] | Sequence[Sequence[str]]
) -> list[list[str]]:
    if not choices:
        raise StrataError("no choices to score; pass at least one choice continuation")
    if isinstance(choices[0], str):
        shared = [str(c) for c in choices]
        return [shared for _ in prompts]
    per_example = [[str(c) for c in row] for row in choices]
    if len(per_example) != len(prompts):
        raise StrataError(
            f"got {len(per_example)} choice lists for {len(prompts)} prompts; pass one per prompt"
        )
    widths = {len(row) for row in per_example}
    if len(widths) != 1 or 0 in widths:
        raise StrataError("every example needs the same, non-zero number of choices")
    return per_example


def score_choices(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    choices: Sequence[str] | Sequence[Sequence[str]],
    batch_size: int = 8,
    max_length: int | None = None,
    *,
    reuse_context: bool = True,
) -> ChoiceScores:
    """Score every choice continuation of every prompt; see :func:`label_loglikelihoods`.

    ``choices`` is either one list shared by all prompts (label continuations such as
    ``[" negative", " positive"]``, used verbatim) or one list per prompt. ``batch_size`` counts
    examples: a forward holds at most ``batch_size * C`` rows.
    ``reuse_context`` (default) runs each distinct context once for all its choices
    (:mod:`strata.evaluation.shared_context`); ``False`` is the reference path, one
    ``context + choice`` row per (example, choice), kept to test the fast one against.
    """
    prompts = [str(p) for p in prompts]
    if not prompts:
        width = len(choices) if choices and isinstance(choices[0], str) else 0
        empty = torch.zeros((0, width))
        return ChoiceScores(empty, empty.long(), empty.long(), empty.bool())
    per_example = _choices_per_example(prompts, choices)
    n, c = len(prompts), len(per_example[0])
    if batch_size < 1:
        raise StrataError(f"batch_size must be at least 1, got {batch_size}")

    specials = special_tokens(tokenizer)
    prompt_ids = encode_texts(tokenizer, prompts)
    choice_tok = _encode_choices(tokenizer, specials, per_example, max_length)
    conts = [[choice_tok[ch] for ch in row] for row in per_example]
    scores: Scores = (
        torch.zeros((n, c), dtype=torch.float64),
        torch.zeros((n, c), dtype=torch.long),
        torch.zeros((n, c), dtype=torch.bool),
    )
    num_chars = torch.tensor([[len(ch) for ch in row] for row in per_example], dtype=torch.long)
    pad = pad_id(tokenizer, model)
    side = "right" if is_encoder_decoder(model) else getattr(tokenizer, "padding_side", "right")

    with eval_context(model):
        todo = list(range(n))  # examples the reference path scores
        if reuse_context:
            fast = score_shared(model, specials, prompt_ids, conts, max_length, pad, side, batch_size)
            if fast is not None:
                scores, leftover = fast
                todo = sorted({i for i, _ in leftover})
        _score_reference(model, specials, prompt_ids, conts, todo, max_length, pad, side, batch_size, scores)
    loglik, num_tokens, greedy = scores
    return ChoiceScores(loglik.float(), num_tokens, num_chars, greedy)


def _encode_choices(
    tokenizer: Any, specials: SpecialTokens, per_example: list[list[str]], max_length: int | None
) -> dict[str, list[int]]:
    """Token ids of each distinct choice text; a choice that is empty or cannot fit is refused."""
    unique_choices = sorted({ch for row in per_example for ch in row})
    choice_tok = dict(zip(unique_choices, encode_texts(tokenizer, unique_choices)))
    for text, ids in choice_tok.items():
        if not ids:
            raise StrataError(f"choice {text!r} tokenizes to no tokens; use a non-empty continuation")
        if max_length is not None and row_needs(specials, ids) > max_length:
            raise StrataError(
                f"choice {text!r} needs {row_needs(specials, ids)} tokens with its prompt's first token and "
                f"EOS > max_length={max_length}; raise max_length"
            )
    return choice_tok


def _score_reference(
    model: Any,
    specials: SpecialTokens,
    prompt_ids: list[list[int]],
    conts: list[list[list[int]]],
    todo: list[int],
    max_length: int | None,
    pad: int,
    side: str,
    batch_size: int,
    scores: Scores,
) -> None:
    """The reference path: one ``context + choice`` row per (example, choice) of the examples ``todo``,
    written into ``scores`` in place."""
    loglik, num_tokens, greedy = scores
    c = len(conts[0])
    device = model_device(model)
    for start in range(0, len(todo), batch_size):
        examples = todo[start : start + batch_size]
        flat = [cont for i in examples for cont in conts[i]]
        ctxs = [prompt_ids[i] for i in examples for _ in range(c)]
        if is_encoder_decoder(model):
            sums, counts, all_greedy = _score_encoder_decoder(model, specials, ctxs, flat, max_length, pad, device)
        else:
            sums, counts, all_greedy = _score_decoder_only(
                model, specials, ctxs, flat, max_length, pad, side, device
            )
        rows = torch.tensor(examples)
        loglik[rows] = sums.view(len(examples), c)
        num_tokens[rows] = counts.view(len(examples), c)
        greedy[rows] = all_greedy.view(len(examples), c)


def _gather_scores(
    logits: torch.Tensor, row_idx: list[int], pos_idx: list[int], targets: list[int], n_rows: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sum log-softmax at the scored positions per row (float32 softmax whatever the model dtype)."""
    device = logits.device
    rows = torch.tensor(row_idx, device=device)
    picked = logits[rows, torch.tensor(pos_idx, device=device)].float()
    tgt = torch.tensor(targets, device=device)
    token_lp = F.log_softmax(picked, dim=-1).gather(-1, tgt[:, None]).squeeze(-1)
    hit = (picked.argmax(-1) == tgt).long()
    sums = torch.zeros(n_rows, dtype=torch.float64, device=device).index_add_(0, rows, token_lp.double())
    counts = torch.zeros(n_rows, dtype=torch.long, device=device).index_add_(0, rows, torch.ones_like(rows))
    hits = torch.zeros(n_rows, dtype=torch.long, device=device).index_add_(0, rows, hit)
    return sums.cpu(), counts.cpu(), (hits == counts).cpu()


def _score_decoder_only(
    model: Any,
    specials: SpecialTokens,
    ctxs: list[list[int]],
    conts: list[list[int]],
    max_length: int | None,
    pad: int,
    side: str,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward over ``context + continuation[:-1]`` rows; the last token is never fed.

    The context is the one the training row with this choice as completion has (same prefix, same
    left truncation for the same ``max_length``: the row holds the choice *and* its EOS).
    """
    inputs: list[list[int]] = []
    ctx_lens: list[int] = []
    for ctx, cont in zip(ctxs, conts):
        ctx = decoder_context(specials, ctx, context_budget(max_length, len(completion_target(specials, cont))))
        inputs.append(ctx + cont[:-1])
        ctx_lens.append(len(ctx))
    ids, mask, offsets = pad_batch(inputs, pad, side)
    kwargs: dict[str, Any] = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
    if forward_accepts(model, "position_ids"):
        kwargs["position_ids"] = position_ids_from_mask(mask).to(device)
    if forward_accepts(model, "use_cache"):
        kwargs["use_cache"] = False
    row_idx, pos_idx, targets = [], [], []
    for r, (cont, ctx_len, offset) in enumerate(zip(conts, ctx_lens, offsets)):
        for j, token in enumerate(cont):
            row_idx.append(r)
            pos_idx.append(offset + ctx_len - 1 + j)  # the position whose next-token logits predict cont[j]
            targets.append(token)
    first = min(pos_idx)
    if first > 0 and forward_accepts(model, "logits_to_keep", strict=True):
        # only the positions from the first scored one on need logits: [B, T - first, V], not [B, T, V]
        kwargs["logits_to_keep"] = ids.shape[1] - first
        pos_idx = [p - first for p in pos_idx]
    logits = model(**kwargs).logits
    return _gather_scores(logits, row_idx, pos_idx, targets, len(inputs))


def _score_encoder_decoder(
    model: Any,
    specials: SpecialTokens,
    ctxs: list[list[int]],
    conts: list[list[int]],
    max_length: int | None,
    pad: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The training row's encoder input into the encoder, ``[start] + choice[:-1]`` into the decoder;
    both right-padded (BART's learned positions would shift under left padding).
    """
    enc_rows = [encoder_input(specials, ctx, max_length) for ctx in ctxs]
    start = decoder_start_id(model)
    dec_rows = [[start] + cont[:-1] for cont in conts]
    enc_ids, enc_mask, _ = pad_batch(enc_rows, pad, "right")
    dec_ids, dec_mask, _ = pad_batch(dec_rows, pad, "right")
    kwargs: dict[str, Any] = {
        "input_ids": enc_ids.to(device),
        "attention_mask": enc_mask.to(device),
        "decoder_input_ids": dec_ids.to(device),
        "decoder_attention_mask": dec_mask.to(device),
    }
    if forward_accepts(model, "use_cache"):
        kwargs["use_cache"] = False
    logits = model(**kwargs).logits
    row_idx, pos_idx, targets = [], [], []
    for r, cont in enumerate(conts):
        for j, token in enumerate(cont):
            row_idx.append(r)
            pos_idx.append(j)
            targets.append(token)
    return _gather_scores(logits, row_idx, pos_idx, targets, len(conts))


def label_loglikelihoods(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    choices: list[str],
    batch_size: int = 8,
    max_length: int | None = None,
) -> torch.Tensor:
    """Summed log-probability of each choice's tokens given each prompt, shape ``[N, C]`` (float32, CPU).

    Choices are continuation texts used verbatim (for label words pass ``" " + word``). Each
    (prompt, choice) is encoded as the training row ``prompt -> choice + EOS`` would be
    (:mod:`strata.data.encoding`): for a row longer than ``max_length`` the prompt keeps its right
    end (and a leading BOS), exactly as training truncated it.
    Works for decoder-only (right or left padding) and encoder-decoder models. For
    length-normalised scores use :func:`score_choices` (``.per_token``, ``.per_char``).
    """
    return score_choices(
        model, tokenizer, prompts, choices, batch_size=batch_size, max_length=max_length
    ).loglik
