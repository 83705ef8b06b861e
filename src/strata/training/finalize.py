"""What every recipe does at the end: the run's metadata, the final/ folder, the result (sft, pretrain and rl).

Both recipes (training/run.py, training/rl.py) import this module; neither imports the other's internals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from strata.data.pipeline import Examples
from strata.errors import RunFailed
from strata.models.artifacts import (
    BASE_MODEL_DIR,
    BASE_REFERENCE,
    point_adapter_at,
    pretrained_base_reference,
    save_unwrapped_base,
)
from strata.models.loading import LoadedModel
from strata.models.quantization import quantization_record
from strata.training.arguments import RunConfig
from strata.training.distributed import DistInfo
from strata.training.guards import all_finite
from strata.training.run_folder import RunFolder


@dataclass
class RunResult:
    folder: RunFolder
    metrics: dict[str, Any]


def token_budget(config: RunConfig, world_size: int) -> int:
    """Tokens the run may process at most (rows x row length x steps); RL rows are prompt + completion."""
    t = config.train
    length = t.max_prompt_length + t.max_completion_length if t.mode == "rl" else config.data.max_length
    return (t.per_device_train_batch_size * length * max(t.max_steps, 0)
            * t.gradient_accumulation_steps * world_size)


def run_metadata(config: RunConfig, examples: Examples, loaded: LoadedModel, dist: DistInfo,
                 parallelism: dict[str, Any] | None = None) -> tuple[dict[str, float], dict[str, Any]]:
    """The run's scalars and texts for TensorBoard at step 0 (RunMetadataCallback), in every mode;
    ``parallelism``: the --parallelism choice and its reason (training/parallel.py)."""
    scalars = {
        "token_budget": float(token_budget(config, dist.world_size)),
        "total_parameters": float(loaded.total_params),
        "trainable_parameters": float(loaded.trainable_params),
        "trainable_percent": loaded.trainable_percent,
        "world_size": float(dist.world_size),
    }
    texts = {
        "config": config.to_dict(),
        "model": {"source": loaded.source, "init": loaded.init, "kind": loaded.kind,
                  "model_type": loaded.model.config.model_type, "moe": loaded.is_moe, "notes": loaded.notes},
        "attention": loaded.attention_description,
        "quantization": quantization_record(loaded.quantization) or "none (full-precision weights)",
        "device": f"{loaded.device} x{dist.world_size}",
        "precision": loaded.precision_description,
        "datasets": {"tag": examples.tag, "family": examples.family, "sources": examples.sources},
    }
    if parallelism is not None:
        texts["parallelism"] = parallelism
    return scalars, texts


def save_final(trainer: Any, loaded: LoadedModel, folder: RunFolder, model_args,
               state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """final/: the model (or LoRA adapters) + tokenizer; merged/: the merged LoRA model when asked.

    Every folder reloads with transformers/peft alone. A LoRA run on a scratch base keeps that base, unwrapped
    and unmerged, in base_model/, and its adapters name it relative to final/ (``../base_model``).
    ``state_dict``: a sharded (FSDP) model's full weights, gathered on this rank by every rank
    (parallel.full_state_dict); its own parameters would be this rank's shards.
    """
    model = trainer.accelerator.unwrap_model(trainer.model)
    if not (all_finite(model) if state_dict is None else all(bool(torch.isfinite(t).all()) for t in state_dict.values())):
        raise RunFailed(f"the trained weights contain NaN/inf; nothing was written to {folder.final} "
                        "(lower --learning_rate and train again)")
    reference = None
    if model_args.use_lora and loaded.init == "scratch":
        # A scratch base exists only in memory: keep it beside the adapters so final/ can be reloaded.
        base_dir = folder.root / BASE_MODEL_DIR
        save_unwrapped_base(model, loaded.tokenizer, base_dir, state_dict=state_dict)
        model.peft_config[model.active_adapter].base_model_name_or_path = str(base_dir)
        reference = BASE_REFERENCE
    elif model_args.use_lora:
        reference = pretrained_base_reference(model_args.model)
    model.save_pretrained(folder.final, state_dict=state_dict)
    loaded.tokenizer.save_pretrained(folder.final)
    if reference is not None:
        point_adapter_at(folder.final, reference)
    if model_args.merge_lora:
        merged = model.merge_and_unload()
        merged.save_pretrained(folder.root / "merged")
        loaded.tokenizer.save_pretrained(folder.root / "merged")
