"""Named configurations of the stratified family.

Naming scheme: ``stratified-{size}`` (type chosen by the ``stratified_type`` override, default the ``"none"``
baseline) and the explicit aliases ``stratified-{type}-{size}`` for every type, so the baseline and each variant
of a size share every backbone setting and differ only in the stratum mechanism.

    sizes: tiny  = hidden 64,  2 layers, 4 heads, FFN 176, S=4   (tests, CPU smoke runs)
           small = hidden 128, 4 layers, 4 heads, FFN 352, S=4   (CPU / single-GPU studies)

Each preset is a callable ``preset(vocab_size, **overrides) -> StratifiedConfig``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from .configuration_stratified import STRATIFIED_TYPES, StratifiedConfig

_SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_strata=4,
        max_position_embeddings=512,
    ),
    "small": dict(
        hidden_size=128,
        intermediate_size=352,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_strata=4,
        max_position_embeddings=1024,
    ),
}


def _build(size: str, default_type: str, vocab_size: int, **overrides: Any) -> StratifiedConfig:
    kwargs: dict[str, Any] = {**_SIZES[size], "stratified_type": default_type}
    kwargs.update(overrides)
    return StratifiedConfig(vocab_size=vocab_size, **kwargs)


STRATIFIED_PRESETS: dict[str, Callable[..., StratifiedConfig]] = {}
for _size in _SIZES:
    STRATIFIED_PRESETS[f"stratified-{_size}"] = partial(_build, _size, "none")
    for _type in STRATIFIED_TYPES:
        STRATIFIED_PRESETS[f"stratified-{_type}-{_size}"] = partial(_build, _size, _type)


def stratified_preset(name: str, vocab_size: int, **overrides: Any) -> StratifiedConfig:
    """Look up a preset by name with a helpful error."""
    if name not in STRATIFIED_PRESETS:
        raise KeyError(f"unknown stratified preset {name!r}; known: {sorted(STRATIFIED_PRESETS)}")
    return STRATIFIED_PRESETS[name](vocab_size, **overrides)


__all__ = ["STRATIFIED_PRESETS", "stratified_preset"]
