"""Mix several formatted datasets at given rates, reproducibly.

Each output row is drawn from source ``i`` with probability ``rates[i]`` (i.i.d. draws from a seeded
generator), so the realised shares match the rates up to sampling noise. Within a source, rows are
taken in a seeded random order without replacement; when a source is exhausted its rows are reshuffled
and reused (a new "epoch" of that source) rather than stopping the mixture, so a small high-rate source
is oversampled instead of silently truncating the others. With ``num_examples=None`` the mixture is as
long as the sources allow at the given rates without expecting repeats: ``min(len_i / rate_i)``.
"""

from __future__ import annotations

import math

import datasets
import numpy as np

from strata.errors import StrataError

RATE_TOLERANCE = 1e-6


def validate_mixture(ids: list[str], configs: list[str | None], rates: list[float]) -> None:
    """Check a mixture's flags before anything is loaded; each problem is one clear error."""
    if not ids:
        raise StrataError("a mixture needs at least one dataset; pass --datasets a,b --mixture_rates 0.5,0.5")
    if len(configs) != len(ids):
        raise StrataError(
            f"--dataset_configs has {len(configs)} entries but --datasets has {len(ids)}; give one config per "
            "dataset (use 'none' for a dataset without configs)"
        )
    if len(rates) != len(ids):
        raise StrataError(
            f"--mixture_rates has {len(rates)} entries but --datasets has {len(ids)}; give one rate per dataset"
        )
    bad = [r for r in rates if not (isinstance(r, (int, float)) and math.isfinite(r) and r > 0)]
    if bad:
        raise StrataError(f"mixture rates must be positive numbers, got {bad}; e.g. --mixture_rates 0.7,0.3")
    total = sum(rates)
    if abs(total - 1.0) > RATE_TOLERANCE:
        raise StrataError(f"mixture rates must sum to 1, got {total:g} from {list(rates)}; e.g. 0.7,0.3")


def default_length(sizes: list[int], rates: list[float]) -> int:
    """The longest mixture in which, in expectation, no source has to repeat a row."""
    return int(min(size / rate for size, rate in zip(sizes, rates)))


def mix(
    datasets_: list[datasets.Dataset], rates: list[float], seed: int, num_examples: int | None = None
) -> datasets.Dataset:
    """Interleave ``datasets_`` by ``rates``; the same seed gives the same rows in the same order.

    Written by hand rather than with ``datasets.interleave_datasets`` because that function cannot return a
    requested number of rows: "first_exhausted" stops at the smallest source and "all_exhausted" runs
    until the largest one is used up.
    """
    if len(datasets_) != len(rates):
        raise StrataError(f"mix got {len(datasets_)} datasets but {len(rates)} rates; give one rate per dataset")
    validate_mixture([str(i) for i in range(len(rates))], [None] * len(rates), list(rates))
    sizes = [len(ds) for ds in datasets_]
    empty = [i for i, size in enumerate(sizes) if size == 0]
    if empty:
        raise StrataError(f"mixture source(s) {empty} are empty; drop them or pick another split")
    columns = [sorted(ds.column_names) for ds in datasets_]
    if any(cols != columns[0] for cols in columns):
        raise StrataError(
            f"mixture sources have different columns {columns}; mix datasets formatted with the same --mode"
        )
    length = default_length(sizes, rates) if num_examples is None else num_examples
    if length <= 0:
        raise StrataError(f"a mixture needs at least one example, got num_examples={num_examples}")

    rng = np.random.default_rng(seed)
    source_of_row = rng.choice(len(rates), size=length, p=np.asarray(rates, dtype=float) / sum(rates))
    offsets = np.cumsum([0, *sizes[:-1]])
    global_index = np.empty(length, dtype=np.int64)
    for source, size in enumerate(sizes):
        positions = np.flatnonzero(source_of_row == source)
        epochs = -(-len(positions) // size)  # ceil: how many passes over this source are needed
        order = np.concatenate([rng.permutation(size) for _ in range(epochs)]) if epochs else np.empty(0, int)
        global_index[positions] = offsets[source] + order[: len(positions)]

    aligned = [ds.select_columns(datasets_[0].column_names) for ds in datasets_]
    combined = datasets.concatenate_datasets(aligned)
    return combined.select(global_index.tolist())


def mixture_tag(tags: list[str], rates: list[float]) -> str:
    """A readable run tag such as ``mix_imdb-sentiment-70_glue-sst2-30`` (rates in percent)."""
    if len(tags) != len(rates):
        raise StrataError(f"mixture_tag got {len(tags)} tags but {len(rates)} rates")
    return "mix_" + "_".join(f"{tag}-{round(rate * 100):d}" for tag, rate in zip(tags, rates))
