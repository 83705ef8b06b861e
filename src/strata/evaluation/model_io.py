"""What every evaluation forward needs: device, eval mode, padding, positions, special ids, accepted kwargs.

Shared by scoring, shared-context scoring, generation and perplexity. It imports none of them, so the
scorers can import each other's pieces without a cycle (scoring -> shared_context -> here).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from strata.errors import StrataError

__all__ = [
    "decoder_start_id",
    "eos_ids",
    "eval_context",
    "forward_accepts",
    "is_encoder_decoder",
    "model_device",
    "pad_batch",
    "pad_id",
    "position_ids_from_mask",
]


def model_device(model: Any) -> torch.device:
    """The device inputs must go to (the first parameter's, for models without ``.device``)."""
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    for param in model.parameters():
        return param.device
    return torch.device("cpu")


def is_encoder_decoder(model: Any) -> bool:
    """Whether the prompt is the encoder input and the completion the decoder target."""
    return bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))


@contextlib.contextmanager
def eval_context(model: Any) -> Iterator[None]:
    """Eval mode, no grad, no ambient autocast; restores training mode (the trainer calls us mid-run)."""
    was_training = bool(getattr(model, "training", False))
    model.eval()
    device = model_device(model)
    try:
        autocast_off: contextlib.AbstractContextManager = torch.autocast(
            device_type=device.type, enabled=False
        )
    except (RuntimeError, ValueError):  # device types without autocast support
        autocast_off = contextlib.nullcontext()
    try:
        with torch.no_grad(), autocast_off:
            yield
    finally:
        if was_training:
            model.train()


def forward_accepts(model: Any, name: str, strict: bool = False) -> bool:
    """Whether ``model.forward`` takes keyword ``name``; unless ``strict``, ``**kwargs`` counts (PEFT
    wrappers forward them), so only pass non-strict names every causal LM understands."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
    if name in params:
        return True
    return not strict and any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _first_id(value: Any) -> int | None:
    if isinstance(value, (list, tuple)):
        return int(value[0]) if value else None
    return None if value is None else int(value)


def pad_id(tokenizer: Any, model: Any | None = None) -> int:
    """A padding id that never changes results (padded positions are masked); pad, else eos, else 0."""
    for candidate in (
        getattr(tokenizer, "pad_token_id", None),
        getattr(getattr(model, "config", None), "pad_token_id", None),
        getattr(tokenizer, "eos_token_id", None),
    ):
        found = _first_id(candidate)
        if found is not None:
            return found
    return 0


def eos_ids(tokenizer: Any, model: Any | None = None) -> set[int]:
    """Every id that ends a generation: the tokenizer's eos and the model's generation eos ids."""
    found: set[int] = set()
    sources = [getattr(tokenizer, "eos_token_id", None)]
    if model is not None:
        sources.append(getattr(getattr(model, "generation_config", None), "eos_token_id", None))
        sources.append(getattr(getattr(model, "config", None), "eos_token_id", None))
    for value in sources:
        if isinstance(value, (list, tuple)):
            found.update(int(v) for v in value)
        elif value is not None:
            found.add(int(value))
    return found


def decoder_start_id(model: Any) -> int:
    """The encoder-decoder decoder start token, resolved as ``generate`` does (T5 falls back to pad)."""
    gen = getattr(model, "generation_config", None)
    cfg = getattr(model, "config", None)
    for source, name in (
        (gen, "decoder_start_token_id"),
        (cfg, "decoder_start_token_id"),
        (gen, "bos_token_id"),
        (cfg, "bos_token_id"),
        (cfg, "pad_token_id"),
    ):
        found = _first_id(getattr(source, name, None))
        if found is not None:
            return found
    raise StrataError("the encoder-decoder model has no decoder_start_token_id; set it in its config")


def pad_batch(
    rows: Sequence[Sequence[int]], pad_value: int, side: str = "right"
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Pad to a rectangle; returns ids, attention mask and each row's offset (left padding shifts)."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_value, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    offsets = []
    for i, row in enumerate(rows):
        offset = width - len(row) if side == "left" else 0
        if row:
            ids[i, offset : offset + len(row)] = torch.tensor(list(row), dtype=torch.long)
            mask[i, offset : offset + len(row)] = 1
        offsets.append(offset)
    return ids, mask, offsets


def position_ids_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Positions counting only real tokens, so left padding does not shift absolute positions."""
    return (mask.cumsum(-1) - 1).clamp(min=0)
