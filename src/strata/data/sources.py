"""Dataset ids to loaded splits: what the registry knows, decided here and passed down to ``strata.hub``.

An alias (``imdb``, ``glue``) becomes its hub id, ``strata/synthetic-strata`` is generated in memory, and a
registered script or gated repo gets its one-line refusal and its Parquet revision; ``strata.hub`` then finds
the files (local path ▸ mirror ▸ hub) without importing anything of the data layer.
"""

from __future__ import annotations

from pathlib import Path

import datasets

from strata import hub
from strata.data import synthetic
from strata.data.registry import REGISTRY, alias_table, hub_refusal
from strata.hub import DataSource


def canonical_dataset_id(name: str) -> str:
    """Map an alias (``imdb``, ``glue``, ``synthetic``) to its hub id; other names pass through unchanged."""
    return alias_table().get(name.strip().lower(), name.strip())


def resolve_dataset(dataset_id: str, config: str | None = None, mirror: str | Path | None = None) -> DataSource:
    """Where a dataset lives: local path, built-in, mirror, then (if allowed) the hub."""
    hub_id = canonical_dataset_id(dataset_id)
    if hub_id == synthetic.SYNTHETIC_ID and hub.local_source(dataset_id, config) is None:
        return DataSource("builtin", hub_id)
    spec = REGISTRY.get(hub_id)
    return hub.resolve_dataset(dataset_id, config, mirror, hub_id=hub_id, refusal=hub_refusal(hub_id, config),
                               revision=spec.revision if spec else None)


def available_splits(dataset_id: str, config: str | None = None, mirror: str | Path | None = None) -> list[str]:
    """Split names a dataset has where it was found (mirror/local files, the built-in generator, or the hub)."""
    source = resolve_dataset(dataset_id, config, mirror)
    if source.kind == "builtin":
        return list(synthetic.SPLIT_SIZES)
    return hub.source_splits(source, config)


def load_split(
    dataset_id: str, config: str | None, split: str, mirror: str | Path | None = None
) -> datasets.Dataset:
    """Load one split (datasets split syntax: ``test[:10000]``, ``train[:90%]``, ``train[90%:]``).

    A split that isn't there raises a StrataError naming the splits that are.
    """
    hub.split_names(split)  # a malformed expression fails before anything is resolved
    source = resolve_dataset(dataset_id, config, mirror)
    if source.kind == "builtin":
        return hub.select_split(synthetic.build_splits(), split, dataset_id=source.location)
    return hub.load_source(source, split, dataset_id, config)
