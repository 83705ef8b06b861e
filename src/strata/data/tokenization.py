"""Tokenization for causal-LM fine-tuning, seq2seq fine-tuning and pretraining, over whole datasets.

How one example becomes ids (special tokens, the prompt/completion split, truncation) is decided in
:mod:`strata.data.encoding`, the contract evaluation, generation and RL share; this module applies it
with ``datasets.map`` and turns rows that do not fit into one error message (see docs/packing.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from datasets import Dataset

from strata.data.encoding import (
    IGNORE_INDEX,
    causal_row,
    completion_target,
    encode_texts,
    encoder_input,
    row_needs,
    special_tokens,
)
from strata.errors import StrataError

__all__ = ["IGNORE_INDEX", "tokenize_completions", "tokenize_pretraining", "tokenize_seq2seq"]


def _require_columns(dataset: Dataset, columns: tuple[str, ...], what: str) -> None:
    missing = [c for c in columns if c not in dataset.column_names]
    if missing:
        raise StrataError(
            f"{what} needs column(s) {missing} but the dataset has {dataset.column_names}; "
            "rename or format the dataset first"
        )


def _too_long_error(
    needed: list[int], limit: int, what: str, total: int, name: str = "max_length"
) -> StrataError:
    worst = max(needed)
    return StrataError(
        f"{len(needed)} of {total} examples have a {what} that does not fit {name}={limit} "
        f"(the longest needs {worst} tokens); use {name} >= {worst} or shorten those examples"
    )


def tokenize_completions(
    dataset: Dataset,
    tokenizer: Any,
    max_length: int,
    add_eos: bool = True,
    num_proc: int | None = None,
) -> Dataset:
    """Tokenize ``prompt``/``completion`` pairs for completion-only causal-LM loss.

    Returns a dataset with exactly ``input_ids`` and ``labels`` (context positions are -100; the completion
    and its EOS are labelled). Other columns are dropped so collators and ``Trainer`` see only tensors.
    A row needs its BOS (if any), at least one prompt token, its completion and EOS within ``max_length``.
    """
    _require_columns(dataset, ("prompt", "completion"), "tokenize_completions")
    if max_length < 2:
        raise StrataError(f"max_length={max_length} is too small; use at least 2")
    specials = special_tokens(tokenizer)
    if add_eos:
        specials.require_eos(tokenizer)

    def encode(batch: dict[str, list]) -> dict[str, list]:
        prompts = encode_texts(tokenizer, batch["prompt"])
        completions = encode_texts(tokenizer, batch["completion"])
        input_ids, labels, needs = [], [], []
        for p, c in zip(prompts, completions):
            row = causal_row(specials, p, c, max_length, add_eos)
            if row is None:
                # -1 marks "fits"; -2 marks "nothing to learn"; a length marks "does not fit"; reported once.
                empty = not completion_target(specials, c, add_eos)
                needs.append(-2 if empty else row_needs(specials, c, add_eos))
                input_ids.append([])
                labels.append([])
                continue
            needs.append(-1)
            input_ids.append(row[0])
            labels.append(row[1])
        return {"input_ids": input_ids, "labels": labels, "_needs": needs}

    out = dataset.map(
        encode,
        batched=True,
        num_proc=num_proc,
        remove_columns=dataset.column_names,
        desc="Tokenizing prompt/completion",
    )
    needs = np.asarray(out["_needs"], dtype=np.int64)
    empty = int((needs == -2).sum())
    if empty:
        raise StrataError(
            f"{empty} of {len(needs)} examples have an empty completion and add_eos=False, so they carry no "
            "loss; drop them or use add_eos=True"
        )
    too_long = needs[needs >= 0]
    if too_long.size:
        raise _too_long_error(
            too_long.tolist(), max_length, "completion (+BOS/EOS, +1 prompt token)", len(needs)
        )
    return out.remove_columns("_needs")


def tokenize_seq2seq(
    dataset: Dataset,
    tokenizer: Any,
    max_length: int,
    max_target_length: int,
) -> Dataset:
    """Tokenize for encoder-decoder models: prompt -> ``input_ids`` (encoder), completion + EOS -> ``labels``.

    The encoder input keeps the tokenizer's own special tokens (T5 ends it with ``</s>``, BART wraps it in
    ``<s> … </s>``) and is cut from the left, like the causal case. Targets are never cut: a completion
    that does not fit ``max_target_length`` is an error.
    """
    _require_columns(dataset, ("prompt", "completion"), "tokenize_seq2seq")
    specials = special_tokens(tokenizer)
    specials.require_eos(tokenizer)
    encoder_input(specials, [], max_length)  # fails early when max_length leaves no room for a prompt

    def encode(batch: dict[str, list]) -> dict[str, list]:
        prompts = encode_texts(tokenizer, batch["prompt"])
        completions = encode_texts(tokenizer, batch["completion"])
        return {"input_ids": [encoder_input(specials, p, max_length) for p in prompts],
                "labels": [completion_target(specials, c) for c in completions]}

    out = dataset.map(encode, batched=True, remove_columns=dataset.column_names, desc="Tokenizing seq2seq")
    lengths = np.fromiter((len(x) for x in out["labels"]), dtype=np.int64, count=len(out))
    bad = lengths[lengths > max_target_length]
    if bad.size:
        raise _too_long_error(
            bad.tolist(), max_target_length, "completion (+EOS) as target", len(out), "max_target_length"
        )
    return out


def tokenize_pretraining(
    dataset: Dataset,
    tokenizer: Any,
    max_length: int,
    num_proc: int | None = None,
    batch_size: int = 1000,
) -> Dataset:
    """Tokenize ``text``, join documents with EOS and cut the stream into rows of ``max_length`` tokens.

    Each whole text is encoded in one fast-tokenizer call (a 1M-character row takes about 2 s with GPT-2)
    and chunked with numpy, never with a per-token Python loop. Streams are joined within each ``map``
    batch of ``batch_size`` rows; the last, shorter chunk of each batch is kept (only a final 1-token chunk, which predicts nothing, is dropped), so
    use ``PaddingCollator`` or drop it if you need fixed shapes. ``labels`` equal ``input_ids``.
    """
    _require_columns(dataset, ("text",), "tokenize_pretraining")
    encode = pretraining_encoder(tokenizer, max_length)
    return dataset.map(
        encode,
        batched=True,
        batch_size=batch_size,
        num_proc=num_proc,
        remove_columns=dataset.column_names,
        desc="Tokenizing and chunking text",
    )


def pretraining_encoder(tokenizer: Any, max_length: int) -> Callable[[dict[str, list]], dict[str, list]]:
    """The batched ``map`` function of :func:`tokenize_pretraining`: documents of one batch joined with EOS
    and cut into ``max_length`` rows. Shared with the streaming path (``strata.data.streaming``) so a
    streamed corpus is cut into exactly the rows a loaded one is, batch by batch."""
    if max_length < 2:
        raise StrataError(f"max_length={max_length} is too small; use at least 2")
    eos = special_tokens(tokenizer).require_eos(tokenizer)

    def encode(batch: dict[str, list]) -> dict[str, list]:
        docs = encode_texts(tokenizer, batch["text"])
        pieces: list[np.ndarray] = []
        for d in docs:
            if len(d):
                pieces.append(np.asarray(d, dtype=np.int64))
                pieces.append(np.asarray([eos], dtype=np.int64))
        if not pieces:
            return {"input_ids": [], "labels": []}
        stream = np.concatenate(pieces)
        chunks = [c.tolist() for c in np.array_split(stream, range(max_length, len(stream), max_length))]
        chunks = [c for c in chunks if len(c) >= 2]  # a 1-token row predicts nothing
        return {"input_ids": chunks, "labels": [list(c) for c in chunks]}

    return encode
