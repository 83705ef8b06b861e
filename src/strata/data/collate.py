"""Collators: dynamic padding (TRL's), seq2seq padding (transformers'), and packed rows with restarting
``position_ids`` (ours).

All three are callables over lists of feature dicts, usable as ``Trainer(data_collator=...)`` or in a
``DataLoader``. None looks at token ids to decide what is padding: GPT-2 has no pad token and reuses EOS
for it, so masking "labels == pad id" would also drop the real, labelled EOS.
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
    """Right-pad to the longest example in the batch; labels are -100 on padding (decided by position).

    Features need ``input_ids`` and optionally ``labels`` (without labels, labels = input_ids on real
    tokens, for plain LM data). Returns ``input_ids``, ``attention_mask``, ``labels`` as int64 tensors, plus
    ``stratum_ids`` [B] when the features carry one (a stratified model's ``domain`` source).

    The padding is TRL's ``DataCollatorForLanguageModeling`` (``trl.trainer.sft_trainer``, in TRL's SFT
    reference), tensor for tensor (tests/test_collate.py, also against transformers' DataCollatorForSeq2Seq).
    This wrapper keeps what the library loses: ``stratum_ids`` (it returns only the three tensors), a pad id
    taken from a tokenizer that has none (GPT-2: EOS), and a one-line error for an empty batch.
    transformers' own DataCollatorForLanguageModeling(mlm=False) is not equivalent: it rebuilds labels from
    ``input_ids`` and masks ``labels == pad id``, which drops completion-only labels and GPT-2's real EOS.
    """

    def __init__(
        self,
        tokenizer: Any | None = None,
        pad_token_id: int | None = None,
        pad_to_multiple_of: int | None = None,
    ) -> None:
        # Lazy: trl's SFT module costs ~7 s to import alone (0.2 s once transformers' Trainer is imported).
        from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

        self.pad_token_id = _pad_id(tokenizer, pad_token_id)
        self.pad_to_multiple_of = pad_to_multiple_of
        self._library = DataCollatorForLanguageModeling(
            pad_token_id=self.pad_token_id, pad_to_multiple_of=pad_to_multiple_of
        )

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not features:
            raise StrataError("PaddingCollator got an empty batch; check the dataset is not empty")
        keys = [k for k in ("input_ids", "labels") if k in features[0]]
        batch = self._library([{k: _as_list(f[k]) for k in keys} for f in features])
        if "stratum_ids" in features[0]:  # one domain tag per example, for stratum_source="domain"
            batch["stratum_ids"] = torch.as_tensor([int(f["stratum_ids"]) for f in features], dtype=torch.long)
        return batch


def seq2seq_collator(tokenizer: Any):
    """Encoder ``input_ids`` (with ``attention_mask``) and decoder ``labels`` (with -100) padded apart.

    transformers' ``DataCollatorForSeq2Seq`` without a model: T5 and BART build ``decoder_input_ids`` from
    ``labels`` themselves (shift right, -100 -> pad). It pads with the tokenizer (``tokenizer.pad``, on its
    ``padding_side``), so the tokenizer needs a pad token; strata.models.tokenizers always sets one.
    """
    from transformers import DataCollatorForSeq2Seq

    if getattr(tokenizer, "pad_token_id", None) is None:
        raise StrataError("an encoder-decoder batch needs a tokenizer with a pad token; set tokenizer.pad_token")
    return DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE_INDEX)


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

    Ours rather than TRL's ``padding_free`` collator, which always flattens the whole batch into one row
    (what ``flatten=True`` does; sdpa/eager then pay total**2), derives positions from ``seq_lengths`` rather
    than taking ``pack_examples``' ``position_ids``, and leaves the cache on.
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
