"""The one prompt/completion encoding contract, shared by training, scoring, generation, RL and diagnostics.

Every path that turns text into token ids for a model calls these functions, so evaluation scores
exactly the sequence training built (tested per tokenizer family in tests/test_encoding_contract.py):

* Prompt and completion are tokenized **separately** (no special tokens) and concatenated. The loss
  mask and label-likelihood scoring both rely on this split; a BPE never merges across the boundary.
* Special tokens are decided once, by probing the tokenizer (:func:`special_tokens`): whatever it puts
  *before* a text (a Llama-style BOS) starts every decoder prompt; whatever it puts *after* a text
  (T5/ByT5's ``</s>``) only ends encoder inputs. A decoder-only row has EOS after the completion and
  nowhere else.
* A decoder context that would be empty (no BOS, empty prompt) starts with EOS instead, as
  lm-evaluation-harness does, so the first completion token is predicted from something.
* Truncation happens here and only here: the prompt loses tokens from the *left* (its end holds the
  task cue the completion is conditioned on, e.g. ``Sentiment:``); the leading specials and the
  completion are never cut.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from strata.errors import StrataError

IGNORE_INDEX = -100


@dataclass(frozen=True)
class SpecialTokens:
    """What a tokenizer adds around a text, probed once (see :func:`special_tokens`)."""

    prefix: tuple[int, ...]  # before every prompt (Llama's BOS; empty for GPT-2, ByT5)
    suffix: tuple[int, ...]  # after an encoder input only (T5/ByT5/BART ``</s>``)
    eos: int | None  # after every completion

    def require_eos(self, tokenizer: Any) -> int:
        if self.eos is None:
            raise StrataError(f"{type(tokenizer).__name__} has no eos_token_id; set tokenizer.eos_token")
        return self.eos


def special_tokens(tokenizer: Any) -> SpecialTokens:
    """Probe what ``tokenizer(text)`` adds before and after a text.

    Probing beats reading flags (``add_bos_token`` and friends differ between tokenizer classes and
    transformers versions); what the tokenizer does is what a user's tools (the harness, ``pipeline``) do.
    """
    probe = "a"
    plain = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    full = list(tokenizer(probe, add_special_tokens=True)["input_ids"])
    prefix: list[int] = []
    suffix: list[int] = []
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            prefix, suffix = full[:start], full[start + len(plain) :]
            break
    eos = getattr(tokenizer, "eos_token_id", None)
    return SpecialTokens(tuple(int(i) for i in prefix), tuple(int(i) for i in suffix),
                         None if eos is None else int(eos))


def encode_texts(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text, without special tokens and without the tokenizer's own truncation."""
    if not texts:
        return []
    return [list(ids) for ids in tokenizer([str(t) for t in texts], add_special_tokens=False,
                                           truncation=False)["input_ids"]]


def completion_target(specials: SpecialTokens, completion_ids: Sequence[int], add_eos: bool = True) -> list[int]:
    """The labelled tokens of a row: the completion, then EOS."""
    return list(completion_ids) + ([specials.eos] if add_eos and specials.eos is not None else [])


def _keep_right(ids: Sequence[int], budget: int) -> list[int]:
    return list(ids[len(ids) - budget :]) if len(ids) > budget else list(ids)


def decoder_context(specials: SpecialTokens, prompt_ids: Sequence[int], budget: int | None = None) -> list[int]:
    """What precedes the completion in a decoder-only row: prefix + the prompt's right end.

    ``budget`` bounds the whole context (prefix included); ``None`` keeps the whole prompt. A context
    with nothing in it becomes ``[eos]`` (lm-evaluation-harness's choice) so the first target token
    is conditioned on something.
    """
    prefix = list(specials.prefix)
    prompt = list(prompt_ids) if budget is None else _keep_right(prompt_ids, max(budget - len(prefix), 0))
    context = prefix + prompt
    if not context and specials.eos is not None:
        context = [specials.eos]
    return context


def context_budget(max_length: int | None, target_length: int) -> int | None:
    """Tokens left for the context of a decoder row of ``max_length`` holding ``target_length`` labels."""
    return None if max_length is None else max_length - target_length


def causal_row(specials: SpecialTokens, prompt_ids: Sequence[int], completion_ids: Sequence[int],
               max_length: int | None, add_eos: bool = True) -> tuple[list[int], list[int]] | None:
    """A decoder-only training row: ``input_ids`` and ``labels`` (-100 on the context), or ``None`` when the
    completion (+EOS), the prefix and one prompt token do not fit ``max_length``."""
    target = completion_target(specials, completion_ids, add_eos)
    budget = context_budget(max_length, len(target))
    if not target or (budget is not None and budget < len(specials.prefix) + 1):
        return None
    context = decoder_context(specials, prompt_ids, budget)
    return context + target, [IGNORE_INDEX] * len(context) + target


def row_needs(specials: SpecialTokens, completion_ids: Sequence[int], add_eos: bool = True) -> int:
    """The shortest ``max_length`` that fits this completion's row (for the too-long error message)."""
    return len(specials.prefix) + len(completion_target(specials, completion_ids, add_eos)) + 1


def encoder_input(specials: SpecialTokens, prompt_ids: Sequence[int], max_length: int | None = None) -> list[int]:
    """An encoder-decoder model's encoder input: prefix + the prompt's right end + suffix (``[eos]`` if empty)."""
    prefix, suffix = list(specials.prefix), list(specials.suffix)
    if max_length is None:
        ids = prefix + list(prompt_ids) + suffix
    else:
        budget = max_length - len(prefix) - len(suffix)
        if budget < 1:
            raise StrataError(f"max_length={max_length} leaves no room for the prompt; use at least "
                              f"{len(prefix) + len(suffix) + 1}")
        ids = prefix + _keep_right(prompt_ids, budget) + suffix
    return ids if ids or specials.eos is None else [specials.eos]  # an encoder needs one position


def generation_prompt(specials: SpecialTokens, prompt_ids: Sequence[int], *, encoder_decoder: bool,
                      max_length: int | None, max_new_tokens: int) -> list[int]:
    """The ids generation starts from: the training row's context (decoder-only, within ``max_length -
    max_new_tokens``) or the training row's encoder input (encoder-decoder, within ``max_length``)."""
    if encoder_decoder:
        return encoder_input(specials, prompt_ids, max_length)
    budget = None if max_length is None else max_length - max_new_tokens
    if budget is not None and budget < len(specials.prefix) + 1:
        raise StrataError(f"max_length={max_length} leaves no room for the prompt; raise it above "
                          f"max_new_tokens={max_new_tokens} + {len(specials.prefix) + 1}")
    return decoder_context(specials, prompt_ids, budget)


def document_ids(specials: SpecialTokens, text_ids: Sequence[int]) -> list[int]:
    """A pretraining document as the training stream holds it: its tokens, then EOS (no BOS)."""
    return list(text_ids) + ([specials.eos] if specials.eos is not None else [])
