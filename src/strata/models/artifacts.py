"""LoRA run artifacts that reload exactly, with transformers/peft alone, from wherever the run folder is.

A LoRA run's final/ holds adapters that name their base in ``adapter_config.json``. peft rebuilds that base
with ``from_pretrained(base_model_name_or_path)``, so the reference must point at the *unwrapped* base weights
(plain names; a peft-wrapped state dict reloads its linear layers at random) and must survive a copied run
folder. peft resolves a relative reference against the current directory, so we store it relative to the
adapter folder (``../base_model``): it works for peft from inside final/, and our loader resolves it from
anywhere (``resolve_adapter_base``).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from strata.errors import StrataError
from strata.hub import canonical_model_id, looks_like_path, resolve_model_path

BASE_MODEL_DIR = "base_model"
BASE_REFERENCE = f"../{BASE_MODEL_DIR}"  # relative to final/ (the adapter folder), inside the run folder


def save_unwrapped_base(peft_model, tokenizer: PreTrainedTokenizerBase, out_dir: Path,
                        state_dict: dict[str, Any] | None = None) -> None:
    """Save the base weights the adapters were trained on, under their plain transformers names.

    ``unload()`` removes the LoRA layers *without* merging; it works on a copy so the trained model stays
    intact (the copy costs one base model of memory, and only scratch bases, which exist nowhere else, are saved).
    ``state_dict``: a sharded (FSDP) model's gathered weights (FSDP refuses deepcopy); the base is read off them
    under the names ``unload()`` would give.
    """
    if state_dict is not None:
        prefix = "base_model.model."
        base_state = {name[len(prefix):].replace(".base_layer.", "."): tensor for name, tensor in state_dict.items()
                      if name.startswith(prefix) and ".lora_" not in name}
        peft_model.get_base_model().save_pretrained(out_dir, state_dict=base_state)
        tokenizer.save_pretrained(out_dir)
        return
    base = copy.deepcopy(peft_model).unload()
    base.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    del base


def pretrained_base_reference(model: str) -> str:
    """How an adapter names a pretrained base: a local folder as an absolute path (it lives outside the run),
    a hub or mirror id as the id itself (a mirror path is machine-specific; the id resolves anywhere)."""
    local = Path(model).expanduser()
    if local.is_dir():
        return str(local.resolve())
    return canonical_model_id(model)


def point_adapter_at(adapter_dir: Path, reference: str) -> None:
    """Rewrite the saved adapter's base reference (config and model card) after peft saved it.

    Saving first with the resolvable base lets peft's own checks (e.g. whether the vocabulary was resized)
    see the real base; the stored reference is the portable one.
    """
    config_file = adapter_dir / "adapter_config.json"
    record = json.loads(config_file.read_text())
    record["base_model_name_or_path"] = reference
    config_file.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    card = adapter_dir / "README.md"
    if card.is_file():
        from huggingface_hub import ModelCard

        model_card = ModelCard.load(card)
        model_card.data.base_model = reference
        tags = model_card.data.tags or []
        model_card.data.tags = [f"base_model:adapter:{reference}" if str(tag).startswith("base_model:adapter:")
                                else tag for tag in tags]
        model_card.save(card)


def resolve_adapter_base(adapter_dir: Path, mirror: str | None = None) -> str:
    """The base folder or id an adapter folder names: a path relative to the adapter folder first (so a copied
    run folder loads from any working directory), then a local folder, the mirror or the hub."""
    config_file = adapter_dir / "adapter_config.json"
    try:
        reference = json.loads(config_file.read_text()).get("base_model_name_or_path")
    except (OSError, ValueError) as error:
        raise StrataError(f"{config_file} cannot be read ({error}); repair or replace the adapter folder") from error
    if not reference:
        raise StrataError(f"{config_file} names no base model (base_model_name_or_path); set it to the base "
                          "model's folder or hub id")
    beside = adapter_dir / Path(reference).expanduser()
    if beside.is_dir():
        refuse_wrapped_base(beside)
        return str(beside)
    if looks_like_path(reference):
        raise StrataError(f"{config_file} names base model {reference}, which is not a folder (looked at "
                          f"{beside}); copy the run's {BASE_MODEL_DIR}/ along with final/, or set "
                          "base_model_name_or_path to the base model's folder")
    return resolve_model_path(reference, mirror)


def refuse_wrapped_base(base_dir: Path) -> None:
    """Older runs saved base_model/ with peft's wrapped names (``q_proj.base_layer.weight``): transformers would
    rebuild those layers at random and report it only as missing keys, so such a folder is refused."""
    weights = base_dir / "model.safetensors"
    if not weights.is_file():
        return
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as handle:
        wrapped = [key for key in handle.keys() if ".base_layer." in key or ".lora_" in key]
    if wrapped:
        raise StrataError(f"{base_dir} holds peft-wrapped weights ({wrapped[0]}), written by an older strata; "
                          "its layers would load at random: train the run again to get a plain base_model/")
