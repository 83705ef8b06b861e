"""Tokenization for causal-LM fine-tuning, seq2seq fine-tuning and pretraining.

Conventions (see docs/packing.md for the reasoning):

* Prompt and completion are tokenized **separately and concatenated**. The loss mask and Strata's
  label-likelihood evaluation (score ``prompt_ids + candidate_ids``) both assume this split, so training
  and evaluation see the same token sequence even where a BPE would merge across the boundary.
* Special tokens come from probing the tokenizer once: whatever it puts *before* the text
  (a Llama-style BOS) is kept in front of the prompt; whatever it puts *after* the text (T5/ByT5's
  ``</s>``) is dropped from the prompt, because EOS belongs after the completion, not in the middle.
* Truncation never cuts the completion: the prompt loses tokens from the *left*, keeping its end, which
  holds the task cue (``Sentiment:``) that the completion is conditioned on.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from datasets import Dataset

from strata.errors import StrataError

IGNORE_INDEX = -100


def special_token_affixes(tokenizer: Any) -> tuple[list[int], list[int]]:
    """Return the ids the tokenizer adds before and after a text with ``add_special_tokens=True``.

    Probing beats reading flags (``add_bos_token`` and friends differ between tokenizer classes and
    transformers versions); what the tokenizer actually does is what the model was trained with.
    """
    probe = "a"
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return list(full[:start]), list(full[start + len(plain) :])
    return [], []


def _eos_id(tokenizer: Any) -> int:
    eos = tokenizer.eos_token_id
    if eos is None:
        raise StrataError(
            f"{type(tokenizer).__name__} has no eos_token_id; set tokenizer.eos_token or pass add_eos=False"
        )
    return int(eos)


def _require_columns(dataset: Dataset, columns: tuple[str, ...], what: str) -> None:
    missing = [c for c in columns if c not in dataset.column_names]
    if missing:
        raise StrataError(
            f"{what} needs column(s) {missing} but the dataset has {dataset.column_names}; "
            "rename or format the dataset first"
        )


def _encode(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Batch-encode without special tokens and without the tokenizer's own (right-side) truncation."""
    return tokenizer(list(texts), add_special_tokens=False, truncation=False)["input_ids"]


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

    Returns a dataset with exactly ``input_ids`` and ``labels`` (prompt positions are -100; the completion
    and its EOS are labelled). Other columns are dropped so collators and ``Trainer`` see only tensors.
    A row needs its BOS (if any), at least one prompt token, its completion and EOS within ``max_length``.
    """
    _require_columns(dataset, ("prompt", "completion"), "tokenize_completions")
    if max_length < 2:
        raise StrataError(f"max_length={max_length} is too small; use at least 2")
    prefix, _ = special_token_affixes(tokenizer)
    eos = [_eos_id(tokenizer)] if add_eos else []

    def encode(batch: dict[str, list]) -> dict[str, list]:
        prompts = _encode(tokenizer, batch["prompt"])
        completions = _encode(tokenizer, batch["completion"])
        input_ids, labels, needs = [], [], []
        for p, c in zip(prompts, completions):
            target = list(c) + eos
            budget = max_length - len(prefix) - len(target)
            if budget < 1 or not target:
                # -1 marks "does not fit"; -2 marks "nothing to learn"; reported once, after map.
                needs.append(len(prefix) + len(target) + 1 if target else -2)
                input_ids.append([])
                labels.append([])
                continue
            needs.append(-1)
            p = list(p[-budget:]) if len(p) > budget else list(p)
            ids = prefix + p + target
            input_ids.append(ids)
            labels.append([IGNORE_INDEX] * (len(prefix) + len(p)) + target)
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
    prefix, suffix = special_token_affixes(tokenizer)
    eos = _eos_id(tokenizer)
    budget = max_length - len(prefix) - len(suffix)
    if budget < 1:
        raise StrataError(
            f"max_length={max_length} leaves no room for the prompt; use at least {len(prefix) + len(suffix) + 1}"
        )

    def encode(batch: dict[str, list]) -> dict[str, list]:
        prompts = _encode(tokenizer, batch["prompt"])
        completions = _encode(tokenizer, batch["completion"])
        input_ids = [prefix + list(p[-budget:] if len(p) > budget else p) + suffix for p in prompts]
        labels = [list(c) + [eos] for c in completions]
        return {"input_ids": input_ids, "labels": labels}

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
    if max_length < 2:
        raise StrataError(f"max_length={max_length} is too small; use at least 2")
    eos = _eos_id(tokenizer)

    def encode(batch: dict[str, list]) -> dict[str, list]:
        docs = _encode(tokenizer, batch["text"])
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

    return dataset.map(
        encode,
        batched=True,
        batch_size=batch_size,
        num_proc=num_proc,
        remove_columns=dataset.column_names,
        desc="Tokenizing and chunking text",
    )
