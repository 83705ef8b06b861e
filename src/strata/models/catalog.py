"""``strata models``: every preset with its exact parameter count and weight memory."""

from __future__ import annotations

from strata.models.plan import architecture_kind, count_parameters_from_config, memory_estimate
from strata.models.presets import all_presets
from strata.models.vision import count_parameters as count_vision_parameters
from strata.models.vision import is_vision_config

BYTE_VOCAB = 384  # len(ByT5Tokenizer()): 256 bytes + 3 specials + 125 extra ids
GPT2_VOCAB = 50257


def format_presets() -> str:
    rows = ["preset                        params      fp32 GiB  bf16 GiB  tokenizer  description"]
    for preset in all_presets().values():
        vocab = GPT2_VOCAB if preset.tokenizer == "gpt2" else BYTE_VOCAB
        if preset.tokenizer.startswith("bpe:"):
            vocab = int(preset.tokenizer.split(":")[1])
        config = preset.make_config(vocab)
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
