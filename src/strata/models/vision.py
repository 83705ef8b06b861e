"""Vision-language models built offline: the ``llava-tiny`` preset and the processor that feeds it images.

No pretrained VLM weights exist here, so the preset is transformers' LLaVA (a CLIP vision tower, a projector and a
Llama decoder) built from its config, with a processor made locally: a CLIP image processor sized to the tower and
the run's tokenizer with an ``<image>`` token. Both are saved in ``final/`` and reload with plain transformers
(``AutoModelForImageTextToText`` / ``AutoProcessor``), as a pretrained LLaVA checkpoint would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PretrainedConfig,
    PreTrainedModel,
)

from strata.errors import StrataError

IMAGE_TOKEN = "<image>"
IMAGE_SIZE = 32  # pixels per side after resize + center crop (real pages are ~700x1000; a test tower sees 32x32)
PATCH_SIZE = 8  # (32 / 8)^2 = 16 image tokens per example
SELECT_STRATEGY = "default"  # drop CLIP's CLS feature: the processor must agree (num_additional_image_tokens=1)
DEFAULT_TOKENIZER = "bpe:1024"  # a byte-level BPE trained on the run's prompts and answers (no files needed)


def _llava_tiny(vocab_size: int, image_token_index: int | None = None, **overrides: Any) -> PretrainedConfig:
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                              image_size=IMAGE_SIZE, patch_size=PATCH_SIZE)
    text = LlamaConfig(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, intermediate_size=128, max_position_embeddings=2048,
                       tie_word_embeddings=True, rms_norm_eps=1e-6)
    values: dict[str, Any] = dict(vision_config=vision, text_config=text, vision_feature_select_strategy=SELECT_STRATEGY,
                                  vision_feature_layer=-1, projector_hidden_act="gelu")
    if image_token_index is not None:
        values["image_token_index"] = image_token_index
    values.update(overrides)
    return LlavaConfig(**values)


VISION_PRESETS = {"llava-tiny": _llava_tiny}
VISION_DESCRIPTIONS = {"llava-tiny": "LLaVA: CLIP 1x32 tower (32px, 8px patches) + Llama 2x64 decoder, images "
                                     "through a processor (sujet-ai/Sujet-Finance-QA-Vision-100k)"}


def is_vision_config(config: Any) -> bool:
    """A config that takes images (LLaVA and other image-text-to-text families name a vision config)."""
    return any(getattr(config, attr, None) is not None for attr in ("vision_config", "vision_tower"))


def count_parameters(config: PretrainedConfig) -> int:
    """Exact parameter count of a LLaVA config, built on the meta device (no memory)."""
    import torch

    with torch.device("meta"):
        return sum(p.numel() for p in LlavaForConditionalGeneration(config).parameters())


def make_processor(tokenizer: Any, config: PretrainedConfig) -> LlavaProcessor:
    """The processor for a LLaVA config: a CLIP image processor at the tower's size and the tokenizer with
    ``<image>``. The PIL backend, because transformers' default CLIP image processor needs torchvision."""
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    side = config.vision_config.image_size
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer,
                          patch_size=config.vision_config.patch_size,
                          vision_feature_select_strategy=config.vision_feature_select_strategy,
                          num_additional_image_tokens=1, image_token=IMAGE_TOKEN)


def build_preset(name: str, tokenizer: Any) -> tuple[PreTrainedModel, LlavaProcessor]:
    """A scratch LLaVA from the preset, sized to ``tokenizer`` (``<image>`` added first)."""
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    config = VISION_PRESETS[name](len(tokenizer), image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN))
    config.text_config.pad_token_id = tokenizer.pad_token_id
    config.text_config.eos_token_id = tokenizer.eos_token_id
    return LlavaForConditionalGeneration(config), make_processor(tokenizer, config)


def load_folder(path: str) -> tuple[PreTrainedModel, Any]:
    """A LLaVA-family model folder with its processor (a run's ``final/``): trained on further."""
    folder = Path(path)
    if not (folder / "processor_config.json").is_file() and not (folder / "preprocessor_config.json").is_file():
        raise StrataError(f"{path} is a vision-language model without a saved processor (processor_config.json); "
                          "save its processor beside the weights, or train the llava-tiny preset")
    try:
        return AutoModelForImageTextToText.from_pretrained(path), AutoProcessor.from_pretrained(path)
    except OSError as error:
        raise StrataError(f"could not load {path} ({str(error).splitlines()[0]}); pass a folder with weights "
                          "or the llava-tiny preset") from error
