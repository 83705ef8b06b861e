"""Which attention implementation to ask transformers for, and why it may differ from what the flags asked.

``--use_flash_attention`` is a wish: where flash-attention cannot run (no CUDA, flash-attn not installed) the run
warns in one line and uses standard attention (sdpa; eager on MPS), and the run records both. An explicit
``--attn_implementation flash_attention_2`` is a promise: the same conditions are a one-line error.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from transformers import PreTrainedModel

from strata.errors import StrataError
from strata.models.arguments import ModelArguments


@dataclass(frozen=True)
class AttentionChoice:
    """The attention implementation to *request* from transformers, and why it differs from the flags' ask."""

    requested: str  # what the flags asked for: auto | eager | sdpa | flash_attention_2
    implementation: str  # what transformers is asked for (the model reports what it actually uses)
    fallback: str | None = None  # why --use_flash_attention could not be honoured here


def resolve_attention(args: ModelArguments, device: str) -> AttentionChoice:
    """--use_flash_attention falls back (sdpa; eager on MPS) where flash-attention cannot run; an explicit
    --attn_implementation flash_attention_2 is a promise, so there the same conditions are errors."""
    requested = "flash_attention_2" if args.use_flash_attention else args.attn_implementation
    has_flash = _flash_attn_installed()
    standard = "eager" if device == "mps" else "sdpa"
    if requested == "flash_attention_2":
        problem = (f"flash_attention_2 needs a CUDA GPU (device is {device})" if device != "cuda"
                   else None if has_flash else "flash_attention_2 needs the flash-attn package (not installed)")
        if problem is None:
            return AttentionChoice(requested, requested)
        if args.attn_implementation == "flash_attention_2":
            fix = "use --attn_implementation sdpa" if device != "cuda" else \
                "pip install flash-attn or use --attn_implementation sdpa"
            raise StrataError(f"{problem}; {fix}")
        return AttentionChoice(requested, standard, fallback=problem)
    if requested == "auto":
        return AttentionChoice(requested, "flash_attention_2" if device == "cuda" and has_flash else standard)
    return AttentionChoice(requested, requested)


def _flash_attn_installed() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def actual_attention(model: PreTrainedModel) -> str:
    """What the model runs (transformers may have changed the request, e.g. sdpa -> eager).

    transformers 5.24 has a public setter (set_attn_implementation) but no public getter; its own docs read
    ``config._attn_implementation``.
    """
    impl = getattr(model.config, "_attn_implementation", None)
    return str(impl) if impl else "none"
