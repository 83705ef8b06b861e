"""Pack several tokenized examples into each row of at most ``max_length`` tokens (best-fit decreasing).

A packed row carries ``position_ids`` that restart at 0 for every example. With no ``attention_mask`` in
the batch, transformers' ``masking_utils`` turns those restarts into a block-diagonal causal mask (sdpa,
eager, flex) and flash-attention uses them as varlen boundaries, so examples never attend to each other.
``strata.data.collate.PackingCollator`` batches the rows; docs/packing.md explains the choice of row length.
"""

from __future__ import annotations

import bisect
import random
from collections import defaultdict

import numpy as np
from datasets import Dataset

from strata.errors import StrataError


def best_fit_decreasing(lengths: list[int] | np.ndarray, capacity: int, seed: int = 0) -> list[list[int]]:
    """Assign example indices to bins of ``capacity`` tokens; deterministic for a given ``seed``.

    Items are taken longest first (ties in a seeded random order) and each goes to the fullest bin it fits,
    which leaves little padding per row. Runs in O(n log n) with a sorted list of remaining capacities.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.size and int(lengths.max()) > capacity:
        n = int((lengths > capacity).sum())
        raise StrataError(
            f"{n} examples are longer than the packing length {capacity} (longest {int(lengths.max())}); "
            f"tokenize with max_length <= {capacity} or pack with max_length >= {int(lengths.max())}"
        )
    rng = np.random.default_rng(seed)
    tiebreak = rng.permutation(lengths.size)
    order = np.lexsort((tiebreak, -lengths))  # primary: length descending; secondary: seeded shuffle
    bins: list[list[int]] = []
    free_sorted: list[int] = []  # remaining capacities of open bins, sorted ascending (with duplicates)
    bins_by_free: dict[int, list[int]] = defaultdict(list)
    for idx in order.tolist():
        length = int(lengths[idx])
        pos = bisect.bisect_left(free_sorted, length)
        if pos < len(free_sorted):
            free = free_sorted.pop(pos)
            b = bins_by_free[free].pop()
        else:
            free, b = capacity, len(bins)
            bins.append([])
        bins[b].append(idx)
        left = free - length
        if left > 0:
            bisect.insort(free_sorted, left)
            bins_by_free[left].append(b)
    return bins


def pack_examples(dataset: Dataset, max_length: int, seed: int = 0, shuffle: bool = True) -> Dataset:
    """Pack rows of ``input_ids``/``labels`` into rows of at most ``max_length`` tokens.

    Returns ``input_ids``, ``labels`` and ``position_ids`` (restarting at 0 per example). Labels are kept
    as tokenized; ``PackingCollator`` masks each example's first label so no example is predicted from its
    neighbour. Without ``labels`` (plain LM data) labels are ``input_ids``. Rows are shuffled with ``seed``
    (BFD otherwise orders them by their longest member). Keep ``max_length`` modest (a few times the
    longest example): sdpa/eager attention costs grow with the square of the row length.
    """
    if "input_ids" not in dataset.column_names:
        raise StrataError(
            f"pack_examples needs an input_ids column, got {dataset.column_names}; tokenize first"
        )
    if max_length < 1:
        raise StrataError(f"max_length={max_length} must be positive")
    input_ids = dataset["input_ids"]
    labels = dataset["labels"] if "labels" in dataset.column_names else input_ids
    lengths = np.fromiter((len(x) for x in input_ids), dtype=np.int64, count=len(input_ids))
    if lengths.size and int(lengths.min()) == 0:
        raise StrataError(f"{int((lengths == 0).sum())} examples are empty; filter them out before packing")
    bins = best_fit_decreasing(lengths, max_length, seed=seed)
    if shuffle:
        random.Random(seed).shuffle(bins)
    out_ids, out_labels, out_pos = [], [], []
    for members in bins:
        row_ids: list[int] = []
        row_labels: list[int] = []
        row_pos: list[int] = []
        for i in members:
            row_ids.extend(input_ids[i])
            row_labels.extend(labels[i])
            row_pos.extend(range(int(lengths[i])))
        out_ids.append(row_ids)
        out_labels.append(row_labels)
        out_pos.append(row_pos)
    return Dataset.from_dict({"input_ids": out_ids, "labels": out_labels, "position_ids": out_pos})


def packing_efficiency(dataset: Dataset, max_length: int) -> float:
    """Fraction of the ``rows * max_length`` slots that hold real tokens (1.0 = no padding at all)."""
    total = sum(len(x) for x in dataset["input_ids"])
    return total / max(1, len(dataset) * max_length)
