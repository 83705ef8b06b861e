"""Greedy generation for evaluation, plus turning generations into labels and math answers.

Prompts are encoded by :mod:`strata.data.encoding`, the contract training rows are built with: the
ids generation starts from are the training row's context (decoder-only: BOS where the tokenizer
uses one, never a trailing EOS) or its encoder input (encoder-decoder). They are padded by hand (left for decoder-only, right for encoder-decoder), so a tokenizer without a
pad token works without being mutated. Answer parsing lives in ``strata.evaluation.answers``,
shared with the RL rewards so a reward and the reported metric agree on what an answer is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from strata.data.encoding import encode_texts, generation_prompt, special_tokens
from strata.errors import StrataError
from strata.evaluation.answers import extract_number, first_label_word, has_final_answer_line, numbers_match
from strata.evaluation.model_io import (
    decoder_start_id,
    eos_ids,
    eval_context,
    is_encoder_decoder,
    model_device,
    pad_batch,
    pad_id,
)

__all__ = ["generate_texts", "parse_label", "cut_after_final_answer", "score_math_answer"]


def generate_texts(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 32,
    batch_size: int = 8,
    max_length: int | None = None,
    stop: Sequence[str] | None = None,
) -> list[str]:
    """Greedy continuations of ``prompts`` (only the new text, specials removed).

    Decoder-only prompts keep their right end within ``max_length - max_new_tokens`` tokens;
    encoder-decoder prompts within ``max_length``. Generation stops at any eos id; the text is
    also cut at the first of the ``stop`` strings.
    """
    prompts = [str(p) for p in prompts]
    if not prompts:
        return []
    if max_new_tokens < 1:
        raise StrataError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    enc_dec = is_encoder_decoder(model)
    pad = pad_id(tokenizer, model)
    stops = eos_ids(tokenizer, model)
    specials = special_tokens(tokenizer)
    all_ids = [generation_prompt(specials, ids, encoder_decoder=enc_dec, max_length=max_length,
                                 max_new_tokens=max_new_tokens) for ids in encode_texts(tokenizer, prompts)]
    gen_kwargs: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "do_sample": False,
        "num_beams": 1,
        "pad_token_id": pad,
    }
    if enc_dec:
        gen_kwargs["decoder_start_token_id"] = decoder_start_id(model)
    device = model_device(model)
    outputs: list[str] = []
    with eval_context(model):
        for start in range(0, len(prompts), batch_size):
            rows = all_ids[start : start + batch_size]
            ids, mask, _ = pad_batch(rows, pad, "right" if enc_dec else "left")
            generated = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **gen_kwargs)
            # decoder-only output repeats the prompt; encoder-decoder output starts with the decoder start token
            new_tokens = generated[:, 1:] if enc_dec else generated[:, ids.shape[1] :]
            for row in new_tokens.tolist():
                outputs.append(_decode_until_eos(tokenizer, row, stops, stop))
    return outputs


def _decode_until_eos(tokenizer: Any, row: list[int], stops: set[int], stop: Sequence[str] | None) -> str:
    """Decode up to the first eos id (what follows is padding), then cut at the first stop string."""
    for i, token in enumerate(row):
        if token in stops:
            row = row[:i]
            break
    text = tokenizer.decode(row, skip_special_tokens=True)
    for marker in stop or ():
        if marker and marker in text:
            text = text[: text.index(marker)]
    return text


def parse_label(text: str, label_words: list[str]) -> int | None:
    """Index of the label word the generation starts with (lower-cased, punctuation stripped), else None."""
    word = first_label_word(text, label_words)
    return None if word is None else label_words.index(word)


def cut_after_final_answer(text: str) -> str:
    """Drop everything after the first ``#### answer`` line, so a model that rambles on into a new
    question is graded on its first final answer (``extract_number`` reads the last ``####``)."""
    mark = text.find("####")
    if mark < 0:
        return text
    end = text.find("\n", mark)
    return text if end < 0 else text[:end]


def score_math_answer(generation: str, reference: str) -> dict[str, Any]:
    """Extract the numeric answers of a generation and its reference and compare them."""
    pred = extract_number(cut_after_final_answer(generation))
    gold = extract_number(reference)
    return {
        "pred": pred,
        "gold": gold,
        "correct": numbers_match(pred, gold),
        "has_final_line": has_final_answer_line(generation),
    }
