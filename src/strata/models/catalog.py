"""``strata models``: every preset with its exact parameter count and weight memory; ``--fit MEMORY``: the
largest batch per training mode (models/memory.py)."""

from __future__ import annotations

from strata.models.memory import MODES, assumptions, largest_batch, model_shape
from strata.models.plan import architecture_kind, count_parameters_from_config, memory_estimate, meta_model
from strata.models.presets import all_presets
from strata.models.vision import count_parameters as count_vision_parameters
from strata.models.vision import is_vision_config

BYTE_VOCAB = 384  # len(ByT5Tokenizer()): 256 bytes + 3 specials + 125 extra ids
GPT2_VOCAB = 50257


def preset_config(preset):
    """The preset's config at its tokenizer's vocabulary size."""
    vocab = GPT2_VOCAB if preset.tokenizer == "gpt2" else BYTE_VOCAB
    if preset.tokenizer.startswith("bpe:"):
        vocab = int(preset.tokenizer.split(":")[1])
    return preset.make_config(vocab)


def format_presets() -> str:
    rows = ["preset                        params      fp32 GiB  bf16 GiB  tokenizer  description"]
    for preset in all_presets().values():
        config = preset_config(preset)
        if is_vision_config(config):  # LLaVA is an image-text-to-text model, not a causal LM class
            params = count_vision_parameters(config)
        else:
            params = count_parameters_from_config(config, architecture_kind(config))
        mem = memory_estimate(params or 0)
        count = f"{params / 1e6:9.2f}M" if params else "        ?"
        rows.append(f"{preset.name:<28} {count}  {mem['fp32']:8.3f}  {mem['bf16']:8.3f}  "
                    f"{preset.tokenizer:<9}  {preset.description}")
    rows.append("\nParameter counts use the preset's tokenizer vocabulary (bytes: 384, GPT-2: 50,257); "
                "--model PATH|ID loads any transformers decoder or encoder-decoder.")
    return "\n".join(rows)


def format_fit(memory: float, length: int, gradient_checkpointing: bool = False, lora_r: int = 16) -> str:
    """Per preset and mode, the largest per-device batch of ``length``-token rows in ``memory`` bytes."""
    rows = [f"preset                        params     {'full':>6} {'lora':>6} {'qlora':>6}   (largest batch of "
            f"{length}-token rows; -: does not fit)"]
    for preset in all_presets().values():
        config = preset_config(preset)
        model = None if is_vision_config(config) else meta_model(config, architecture_kind(config))
        if model is None:  # LLaVA: image tokens and a vision tower the text formula does not cover
            rows.append(f"{preset.name:<28} {'?':>9}  {'?':>6} {'?':>6} {'?':>6}   (not estimated: not a text LM)")
            continue
        shape = model_shape(model, config, lora_r)
        cells = [largest_batch(shape, mode, memory, length, gradient_checkpointing) for mode in MODES]
        rows.append(f"{preset.name:<28} {shape.total / 1e6:8.2f}M  "
                    + " ".join(f"{cell if cell else '-':>6}" for cell in cells))
    rows.append("")
    rows.append(assumptions(memory, length, gradient_checkpointing, lora_r))
    return "\n".join(rows)
