"""Collators: dynamic padding, seq2seq padding, and packed rows with restarting ``position_ids``.

All three are plain callables over lists of feature dicts, usable as ``Trainer(data_collator=...)`` or in
a ``DataLoader``. They never look at token ids to decide what is padding: GPT-2 has no pad token and
reuses EOS for it, so masking "labels == pad id" would also drop the real, labelled EOS.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from strata.errors import StrataError

IGNORE_INDEX = -100


def _pad_id(tokenizer: Any | None, pad_token_id: int | None) -> int:
    """Pick a padding id; its value is irrelevant to the loss because padding is masked by position."""
    if pad_token_id is not None:
        return int(pad_token_id)
    if tokenizer is not None:
        for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
            if candidate is not None:
                return int(candidate)
    return 0


def _as_list(x: Any) -> list[int]:
    return x.tolist() if hasattr(x, "tolist") else list(x)


def _right_pad(rows: Sequence[list[int]], width: int, value: int) -> torch.Tensor:
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            out[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
    return out


def _width(lengths: Sequence[int], multiple: int | None) -> int:
    width = max(lengths) if lengths else 0
    if multiple:
        width = -(-width // multiple) * multiple
    return width


class PaddingCollator:
    """Right-pad to the longest example in the batch; labels are -100 wherever ``attention_mask`` is 0.

    Features need ``input_ids`` and optionally ``labels`` (without labels, labels = input_ids on real
    tokens, for plain LM data). Returns ``input_ids``, ``attention_mask``, ``labels`` as int64 tensors, plus
    ``stratum_ids`` [B] when the features carry one (a stratified model's ``domain`` source).
    """

    def __init__(
        self,
        tokenizer: Any | None = None,
        pad_token_id: int | None = None,
        pad_to_multiple_of: int | None = None,
    ) -> None:
        self.pad_token_id = _pad_id(tokenizer, pad_token_id)
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not features:
            raise StrataError("PaddingCollator got an empty batch; check the dataset is not empty")
        ids = [_as_list(f["input_ids"]) for f in features]
        lengths = [len(x) for x in ids]
        width = _width(lengths, self.pad_to_multiple_of)
        input_ids = _right_pad(ids, width, self.pad_token_id)
        attention_mask = (torch.arange(width)[None, :] < torch.as_tensor(lengths)[:, None]).long()
        if "labels" in features[0]:
            labels = _right_pad([_as_list(f["labels"]) for f in features], width, IGNORE_INDEX)
        else:
            labels = input_ids.clone()
        labels = labels.masked_fill(attention_mask == 0, IGNORE_INDEX)
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        if "stratum_ids" in features[0]:  # one domain tag per example, for stratum_source="domain"
            batch["stratum_ids"] = torch.as_tensor([int(f["stratum_ids"]) for f in features], dtype=torch.long)
        return batch


class Seq2SeqCollator:
    """Pad encoder ``input_ids`` (with ``attention_mask``) and decoder ``labels`` (with -100) separately.

    T5 and BART build ``decoder_input_ids`` from ``labels`` themselves (shift right, -100 -> pad), so none
    are returned here. Equivalent to ``DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)``
    without a model, minus its dependency on ``tokenizer.pad``.
    """

    def __init__(self, tokenizer: Any | None = None, pad_token_id: int | None = None) -> None:
        self.pad_token_id = _pad_id(tokenizer, pad_token_id)

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not features:
            raise StrataError("Seq2SeqCollator got an empty batch; check the dataset is not empty")
        ids = [_as_list(f["input_ids"]) for f in features]
        lengths = [len(x) for x in ids]
        width = _width(lengths, None)
        batch = {
            "input_ids": _right_pad(ids, width, self.pad_token_id),
            "attention_mask": (torch.arange(width)[None, :] < torch.as_tensor(lengths)[:, None]).long(),
        }
        if "labels" in features[0]:
            labels = [_as_list(f["labels"]) for f in features]
            batch["labels"] = _right_pad(labels, _width([len(x) for x in labels], None), IGNORE_INDEX)
        return batch


class PackingCollator:
    """Batch packed rows for attention that stays inside each example.

    Features are rows from ``pack_examples`` (``input_ids``, ``labels``, ``position_ids``) or single
    examples without ``position_ids`` (each then counts as one example). Output: ``input_ids``, ``labels``,
    ``position_ids`` and deliberately **no** ``attention_mask``: transformers only detects packing from
    ``position_ids`` when the mask is absent (``masking_utils._preprocess_mask_arguments``).

    * ``flatten=False`` (default; sdpa, eager, flex): one packed row per batch row, right-padded. Padding gets
      its own positions 0..p-1, so it forms a separate block that real tokens never see. Attention costs
      ``rows * row_length**2``, which stays small because rows stay short.
    * ``flatten=True`` (flash_attention_2/3 only): everything in one row plus ``cu_seq_lens_q/k`` and
      ``max_length_q/k``, because transformers' flash path detects packing only at batch size 1. Do not
      use it with sdpa/eager: they would build a dense (total x total) mask, which is what makes TRL's
      packing slow on CPU (docs/packing.md).

    ``use_cache=False`` is added to the batch (``disable_cache``): with ``config.use_cache=True`` (the default
    outside ``Trainer``, which sets it False) the model creates an empty ``DynamicCache`` and masking_utils
    then skips packed-sequence detection, silently letting examples attend to each other.

    Each example's first label is set to -100: the model shifts labels inside the row, so that label
    would otherwise be predicted from the previous example's last token.
    """

    def __init__(
        self,
        tokenizer: Any | None = None,
        pad_token_id: int | None = None,
        flatten: bool = False,
        pad_to_multiple_of: int | None = None,
        disable_cache: bool = True,
    ) -> None:
        self.pad_token_id = _pad_id(tokenizer, pad_token_id)
        self.flatten = flatten
        self.disable_cache = disable_cache
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, Any]:
        if not features:
            raise StrataError("PackingCollator got an empty batch; check the dataset is not empty")
        ids = [_as_list(f["input_ids"]) for f in features]
        labels = [_as_list(f["labels"]) if "labels" in f else list(x) for f, x in zip(features, ids)]
        if "position_ids" in features[0]:
            pos = [_as_list(f["position_ids"]) for f in features]
        else:
            pos = [list(range(len(x))) for x in ids]
        for x, y, p in zip(ids, labels, pos):
            if not (len(x) == len(y) == len(p)):
                raise StrataError(
                    "PackingCollator got a row whose input_ids, labels and position_ids differ in length"
                )
        if self.flatten:
            ids = [[t for row in ids for t in row]]
            labels = [[t for row in labels for t in row]]
            pos = [[t for row in pos for t in row]]
        lengths = [len(x) for x in ids]
        width = _width(lengths, self.pad_to_multiple_of)
        input_ids = _right_pad(ids, width, self.pad_token_id)
        label_t = _right_pad(labels, width, IGNORE_INDEX)
        # Padding positions restart at 0: padding becomes its own block, never attended by real tokens.
        pad_pos = [p + list(range(width - len(p))) for p in pos]
        position_ids = torch.as_tensor(pad_pos, dtype=torch.long)
        label_t = label_t.masked_fill(position_ids == 0, IGNORE_INDEX)
        pad = torch.arange(width)[None, :] >= torch.as_tensor(lengths)[:, None]
        label_t = label_t.masked_fill(pad, IGNORE_INDEX)
        batch: dict[str, Any] = {"input_ids": input_ids, "labels": label_t, "position_ids": position_ids}
        if self.disable_cache:
            batch["use_cache"] = False
        if self.flatten:
            starts = (position_ids[0] == 0).nonzero().flatten()
            cu = torch.cat([starts, torch.tensor([width])]).to(torch.int32)
            batch["cu_seq_lens_q"] = batch["cu_seq_lens_k"] = cu
            batch["max_length_q"] = batch["max_length_k"] = int(cu.diff().max())
        return batch


def example_spans(position_ids: torch.Tensor) -> list[list[tuple[int, int]]]:
    """Return ``[(start, end), ...]`` per row: the examples (and padding blocks) that a packed row holds."""
    spans: list[list[tuple[int, int]]] = []
    for row in position_ids.tolist():
        starts = [i for i, p in enumerate(row) if p == 0]
        spans.append(list(zip(starts, starts[1:] + [len(row)])))
    return spans
