"""Token-weighted mean NLL and perplexity, from tokenized rows or from raw text.

Rows follow the Hugging Face convention used by training: ``labels`` are aligned with
``input_ids`` (the model predicts ``labels[t]`` from tokens ``< t``) and ``-100`` is ignored;
for encoder-decoder rows ``labels`` are the decoder targets. The mean is over tokens (not over
sequences), so long and short rows weigh what their tokens weigh.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch.nn.functional as F

from strata.data.encoding import document_ids, encode_texts, special_tokens
from strata.errors import StrataError
from strata.evaluation.model_io import (
    decoder_start_id,
    eval_context,
    forward_accepts,
    is_encoder_decoder,
    model_device,
    pad_batch,
    pad_id,
)

__all__ = ["sequence_nll", "perplexity_from_rows", "perplexity_from_texts", "summarize_nll"]

IGNORE = -100


def sequence_nll(
    model: Any, rows: Sequence[Mapping[str, Any]], *, batch_size: int = 8, pad_token_id: int | None = None
) -> tuple[list[float], list[int]]:
    """Per-row summed NLL (nats) and number of scored tokens; rows need ``input_ids``, ``labels`` optional.

    Without ``labels`` every token after the first is scored (decoder-only only).
    """
    enc_dec = is_encoder_decoder(model)
    pad = pad_id(None, model) if pad_token_id is None else pad_token_id
    device = model_device(model)
    sums: list[float] = []
    counts: list[int] = []
    with eval_context(model):
        for start in range(0, len(rows), batch_size):
            batch = [rows[i] for i in range(start, min(len(rows), start + batch_size))]
            inputs = [list(row["input_ids"]) for row in batch]
            if enc_dec:
                if any(row.get("labels") is None for row in batch):
                    raise StrataError(
                        "encoder-decoder perplexity needs a 'labels' column with the decoder targets"
                    )
                labels = [list(row["labels"]) for row in batch]
            else:
                labels = [
                    list(row["labels"]) if row.get("labels") is not None else list(row["input_ids"])
                    for row in batch
                ]
                if any(len(lab) != len(inp) for lab, inp in zip(labels, inputs)):
                    raise StrataError(
                        "'labels' must be as long as 'input_ids' (aligned, -100 for unscored tokens)"
                    )
            if any(not inp for inp in inputs):
                raise StrataError("a row has empty input_ids; drop empty rows before computing perplexity")
            ids, mask, _ = pad_batch(inputs, pad, "right")
            kwargs: dict[str, Any] = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
            if forward_accepts(model, "use_cache"):
                kwargs["use_cache"] = False
            lab, _, _ = pad_batch(labels, IGNORE, "right")
            if enc_dec:
                start_id = decoder_start_id(model)
                dec_in = [[start_id] + [t if t != IGNORE else pad for t in row[:-1]] for row in labels]
                dec_ids, dec_mask, _ = pad_batch(dec_in, pad, "right")
                kwargs["decoder_input_ids"] = dec_ids.to(device)
                kwargs["decoder_attention_mask"] = dec_mask.to(device)
                logits = model(**kwargs).logits
                targets = lab.to(logits.device)
            else:
                logits = model(**kwargs).logits[:, :-1]
                targets = lab[:, 1:].to(logits.device)
            nll = F.cross_entropy(
                logits.float().reshape(-1, logits.shape[-1]),
                targets.reshape(-1),
                ignore_index=IGNORE,
                reduction="none",
            ).view(targets.shape)
            scored = targets != IGNORE
            sums.extend((nll * scored).double().sum(-1).tolist())
            counts.extend(scored.sum(-1).tolist())
    return sums, counts


def summarize_nll(sums: Sequence[float], counts: Sequence[int]) -> dict[str, float | int]:
    """Token-weighted mean NLL and its exponential; raises when nothing was scored."""
    n_tokens = int(sum(counts))
    if n_tokens == 0:
        raise StrataError("no tokens to score for perplexity; check that labels are not all -100")
    mean_nll = float(sum(sums)) / n_tokens
    return {
        "mean_nll": mean_nll,
        "perplexity": math.exp(mean_nll) if mean_nll < 700 else float("inf"),
        "n_tokens": n_tokens,
    }


def perplexity_from_rows(
    model: Any, rows: Sequence[Mapping[str, Any]], *, batch_size: int = 8, pad_token_id: int | None = None
) -> dict[str, float | int]:
    """Mean token NLL and perplexity over tokenized rows (a list of dicts or a ``datasets.Dataset``)."""
    sums, counts = sequence_nll(model, rows, batch_size=batch_size, pad_token_id=pad_token_id)
    return {**summarize_nll(sums, counts), "n_sequences": len(rows)}


def text_windows(tokenizer: Any, texts: Sequence[str], max_length: int) -> tuple[list[dict], list[int]]:
    """Split each tokenized text into non-overlapping windows of ``max_length`` tokens.

    Each text is encoded as the pretraining stream holds a document (:func:`strata.data.encoding.document_ids`:
    its tokens, then EOS, no BOS). Returns the window rows and, per window, the index of its text. The
    first token of each window has no context and is not scored; windows of one token are dropped.
    """
    if max_length < 2:
        raise StrataError(f"max_length must be at least 2 to score a token, got {max_length}")
    rows: list[dict] = []
    owners: list[int] = []
    specials = special_tokens(tokenizer)
    for i, text_ids in enumerate(encode_texts(tokenizer, [str(t) for t in texts])):
        ids = document_ids(specials, text_ids)
        for start in range(0, len(ids), max_length):
            window = ids[start : start + max_length]
            if len(window) >= 2:
                rows.append({"input_ids": window, "labels": window})
                owners.append(i)
    return rows, owners


def perplexity_from_texts(
    model: Any, tokenizer: Any, texts: Sequence[str], *, batch_size: int = 8, max_length: int = 512
) -> dict[str, float | int]:
    """Mean token NLL and perplexity of raw texts, each cut into ``max_length``-token windows."""
    if is_encoder_decoder(model):
        raise StrataError(
            "text perplexity needs a decoder-only model; for encoder-decoder pass input_ids/labels rows"
        )
    rows, _ = text_windows(tokenizer, texts, max_length)
    sums, counts = sequence_nll(model, rows, batch_size=batch_size, pad_token_id=pad_id(tokenizer, model))
    return {**summarize_nll(sums, counts), "n_sequences": len(texts)}
