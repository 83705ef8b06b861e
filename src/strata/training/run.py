"""The ``strata train`` recipe: builders in order, the loop itself is transformers' Trainer (or TRL's).

Read top to bottom: resolve the run folder, load examples, build model + tokenizer, tokenize,
build the trainer, train, save, evaluate, write metrics. Each step is a builder you can call alone.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import EarlyStoppingCallback, TrainingArguments
from transformers.integrations import TensorBoardCallback

from strata.config import RunConfig
from strata.data.pipeline import Examples, load_examples, tokenize_examples
from strata.errors import RunFailed, StrataError
from strata.models.artifacts import (
    BASE_MODEL_DIR,
    BASE_REFERENCE,
    point_adapter_at,
    pretrained_base_reference,
    save_unwrapped_base,
)
from strata.models.attention import resolve_attention
from strata.models.device import resolve_device, resolve_precision
from strata.models.loading import LoadedModel, load_for_training
from strata.models.plan import check_architecture, config_from_flags, is_moe, resolve_model_source
from strata.models.quantization import check_quantization_flags, quantization_record, requested_flag
from strata.training.callbacks import RunMetadataCallback
from strata.training.distributed import (
    DistInfo,
    broadcast_object,
    dist_info,
    process_group_backend,
    start_process_group,
    watch_launcher,
)
from strata.training.guards import NonFiniteGuard, all_finite, stop_diverged
from strata.training.launch import plan_launch
from strata.training.run_folder import (
    RunFolder,
    detach_log_file,
    explicit_run_folder,
    new_run_folder,
    resolve_resume,
    run_key,
)
from strata.training.stratum_sources import check_stratum_sources, planned_config, prepare_stratum_sources
from strata.training.trainer import StrataTrainer, scalar_metrics

logger = logging.getLogger("strata.train")


@dataclass
class RunResult:
    folder: RunFolder
    metrics: dict[str, Any]


def train(config: RunConfig) -> RunResult:
    """Run one training job end to end and return its folder and metrics."""
    dist = dist_info()
    watch_launcher()
    data_args, model_args, train_args = config.data, config.model, config.train
    say = _printer(dist)
    if plan_launch(config) is not None:  # checks --multi_gpu/--ddp_backend here too, for callers beside the CLI
        raise StrataError("--multi_gpu without a launcher is started by `strata train` / train.py, which runs the "
                          "workers; use those, or launch this call under torchrun")
    preflight(config)
    mirror = data_args.hub_mirror
    if dist.world_size > 1:  # before anything asks accelerate for its state (see start_process_group)
        start_process_group(train_args.ddp_backend, cpu=resolve_device(model_args.device) == "cpu")

    examples = load_examples(data_args, train_args.mode, train_args.data_order_seed())
    check_stratum_sources(planned_config(config), examples, config)  # before a run folder exists
    say(_data_line(examples))

    length = (f"{train_args.max_prompt_length}+{train_args.max_completion_length}" if train_args.mode == "rl"
              else data_args.max_length)  # RL does not use --max_length
    key = run_key(model_args.model, examples.tag, train_args.mode, train_args.per_device_train_batch_size,
                  length, train_args.gradient_accumulation_steps, model_args.use_lora,
                  data_args.use_packing, dist.world_size, train_args.multi_gpu)
    args_record = {**config.to_dict(), "run_key": key, "world_size": dist.world_size}
    folder, checkpoint, created_root = _choose_folder(config, key, dist, args_record)
    fresh = checkpoint is None
    log_handler = None
    if dist.is_main:
        folder.create(fresh=fresh)
        folder.write_args(args_record)
        log_handler = folder.attach_log_file()
    progress = {"training": False}
    try:
        return _train_in_folder(config, examples, folder, checkpoint, dist, say, mirror, progress)
    except BaseException:
        # Failed before training began (a bad flag found at model load, say): leave nothing behind, so the
        # same command can run again. A resumed run's folder, or one that trained, is never touched.
        if dist.is_main and fresh and not progress["training"]:
            if log_handler is not None:
                detach_log_file(log_handler)
                log_handler = None
            folder.remove_unstarted(created_root)
        raise
    finally:
        if log_handler is not None:
            detach_log_file(log_handler)


def _train_in_folder(config: RunConfig, examples: Examples, folder: RunFolder, checkpoint: Path | None,
                     dist: DistInfo, say, mirror: str | None, progress: dict[str, bool]) -> RunResult:
    data_args, model_args, train_args = config.data, config.model, config.train
    say(f"run folder {folder.root}")

    loaded = load_for_training(model_args, mirror, train_texts=examples.training_texts(),
                               tokenizer_dir=folder.root / "tokenizer", dropout=train_args.dropout,
                               seed=train_args.seed, log=say)
    check_stratum_sources(loaded.model, examples, config)
    if train_args.mode == "rl":
        from strata.training.rl import run_rl

        return run_rl(config, examples, loaded, folder, checkpoint, say, progress)

    tokenized = tokenize_examples(examples, loaded.tokenizer, loaded.kind, data_args, train_args.mode,
                                  train_args.data_order_seed(), rows_needed=_rows_needed(config, dist))
    tokenized = prepare_stratum_sources(loaded.model, examples, tokenized, loaded.tokenizer, loaded.kind, config,
                                        fit=checkpoint is None, say=say)
    trainer = build_trainer(config, examples, loaded, tokenized, folder, dist)
    progress["training"] = True
    train_output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    if trainer.nan_guard.divergence is not None:
        stop_diverged(trainer.nan_guard, folder, dist.is_main, train_output.metrics)
    final_metrics = trainer.evaluate() if (tokenized.eval is not None or trainer.task_eval) else {}

    metrics: dict[str, Any] = {
        "status": "completed",
        "nonfinite_skips": trainer.nan_guard.skipped,
        "train": dict(train_output.metrics),
        "eval": final_metrics,
        "task_eval": trainer.task_eval_details(),
        "run": {**_run_summary(config, examples, loaded, tokenized, dist),
                "throughput": trainer.throughput_summary()},
    }
    if dist.is_main:
        save_final(trainer, loaded, folder, model_args)
        folder.write_metrics(metrics)
        _report(say, metrics, folder)
    return RunResult(folder=folder, metrics=metrics)


# ---------------------------------------------------------------------------- builders
def preflight(config: RunConfig) -> None:
    """Checks that need neither data nor weights: an impossible device or attention fails in a second."""
    config.data.hub_mirror = config.data.hub_mirror or os.environ.get("STRATA_HUB_MIRROR")
    device = resolve_device(config.model.device)
    resolve_precision(config.model.precision, device)
    resolve_attention(config.model, device)  # its fallback warning is logged once, at load
    if requested_flag(config.model) is not None:
        _preset, _path, init = resolve_model_source(config.model, config.data.hub_mirror)
        model_config = config_from_flags(config.model, config.data.hub_mirror)
        check_quantization_flags(config.model, device, init, None if model_config is None else is_moe(model_config))
    if config.train.resume_from_checkpoint is None and config.train.output_dir:
        explicit_run_folder(config.train.output_dir, resuming=False)
    check_architecture(config.model, config.data.hub_mirror, use_packing=config.data.use_packing)
    refuse_vision_data(config)


def refuse_vision_data(config: RunConfig) -> None:
    """An image dataset fails here, before any data is read: a text-only model is told so, and a
    vision-language model too (Strata does not pass images through a processor yet)."""
    from strata.data.registry import REGISTRY, check_model_supports, unsupported_refusal
    from strata.hub import canonical_dataset_id, looks_like_path

    for dataset_id in config.data.datasets or [config.data.dataset]:
        spec = None if looks_like_path(dataset_id) else REGISTRY.get(canonical_dataset_id(dataset_id))
        if spec is not None and spec.requires_vision:
            model_config = config_from_flags(config.model, config.data.hub_mirror)
            if model_config is None:  # refused for every model: images never reach one yet
                raise StrataError(unsupported_refusal(spec) or f"dataset '{spec.hub_id}' is not supported")
            check_model_supports(spec, model_config)


def _choose_folder(config: RunConfig, key: str, dist: DistInfo,
                   args_record: dict[str, Any]) -> tuple[RunFolder, Path | None, bool]:
    """Decide the run folder once (on rank 0) and share it, so all ranks agree even across a minute tick.
    Also returns whether this call created the folder (what a failed start may remove)."""
    train_args = config.train
    choice = None
    if dist.is_main:
        folder, checkpoint = resolve_resume(train_args.resume_from_checkpoint, train_args.runs_dir, key,
                                            train_args.output_dir, args_record)
        created = False
        if folder is None and train_args.output_dir:
            folder = explicit_run_folder(train_args.output_dir, resuming=False)
            created = not folder.root.exists()
        elif folder is None:
            folder, created = new_run_folder(train_args.runs_dir, key), True
        choice = (str(folder.root), str(checkpoint) if checkpoint else None, created)
    root, checkpoint, created = broadcast_object(choice, dist)
    return RunFolder(Path(root)), Path(checkpoint) if checkpoint else None, created


def training_arguments(config: RunConfig, loaded: LoadedModel, folder: RunFolder, has_eval: bool) -> TrainingArguments:
    t = config.train
    eval_steps = t.eval_steps if t.eval_steps and t.eval_steps > 0 else None
    logging_steps = t.logging_steps or eval_steps or max(1, min(50, t.max_steps // 10 if t.max_steps > 0 else 50))
    return TrainingArguments(
        output_dir=str(folder.checkpoints),
        seed=t.seed,
        data_seed=t.data_order_seed(),
        max_steps=t.max_steps,
        num_train_epochs=t.num_train_epochs,
        per_device_train_batch_size=t.per_device_train_batch_size,
        per_device_eval_batch_size=t.per_device_eval_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=resolved_learning_rate(t.learning_rate, loaded.init),
        weight_decay=t.weight_decay,
        warmup_steps=t.warmup_steps,
        lr_scheduler_type=t.lr_scheduler_type,
        max_grad_norm=t.max_grad_norm,
        logging_steps=logging_steps,
        logging_first_step=True,
        logging_nan_inf_filter=False,  # a NaN loss is logged as NaN, not replaced by the running average
        eval_strategy="steps" if (eval_steps and has_eval) else "no",
        eval_steps=eval_steps,
        save_strategy="steps" if t.save_steps else "no",
        save_steps=t.save_steps or 500,
        save_total_limit=t.save_total_limit,
        load_best_model_at_end=t.load_best_model_at_end,
        metric_for_best_model=t.metric_for_best_model,
        greater_is_better=None if t.metric_for_best_model is None else not t.metric_for_best_model.endswith("loss"),
        bf16=loaded.precision == "bf16",
        fp16=loaded.precision == "fp16",
        use_cpu=loaded.device == "cpu",
        report_to=[],
        # The data set is shuffled once with --seed; sequential sampling keeps one order for every
        # world size, so 2-process DDP sees exactly the batches a 1-process run with 2x batch sees.
        train_sampling_strategy="sequential",
        include_num_input_tokens_seen="non_padding",
        dataloader_num_workers=t.dataloader_num_workers,
        remove_unused_columns=False,
        disable_tqdm=False,
        ddp_find_unused_parameters=False if torch.distributed.is_available() else None,
        ddp_backend=t.ddp_backend,
        save_only_model=False,
    )


def build_trainer(config: RunConfig, examples: Examples, loaded: LoadedModel, tokenized, folder: RunFolder,
                  dist: DistInfo) -> StrataTrainer:
    t = config.train
    has_eval = tokenized.eval is not None and len(tokenized.eval) > 0
    args = training_arguments(config, loaded, folder, has_eval)
    task_eval = None
    if config.train.mode == "sft" and examples.evals:
        task_eval = [
            {"name": source.name, "dataset": source.dataset, "family": source.family,
             "label_words": source.label_words, "method": t.eval_method,
             "batch_size": t.per_device_eval_batch_size, "max_length": config.data.max_length,
             "max_examples": None}
            for source in examples.evals
        ]
    callbacks = []
    if dist.is_main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(folder.tensorboard))
        callbacks.append(RunMetadataCallback(writer, *_metadata(config, examples, loaded, dist)))
        tensorboard = TensorBoardCallback(tb_writer=writer)
        # Trainer closes the writer at train end; the final evaluate() then re-opens one here, not in
        # checkpoints/runs/.
        tensorboard.logging_dir = str(folder.tensorboard)
        callbacks.append(tensorboard)
    if t.early_stopping_patience is not None:
        if t.metric_for_best_model is None:
            raise StrataError("--early_stopping_patience needs --metric_for_best_model (e.g. eval_accuracy)")
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=t.early_stopping_patience))
    return StrataTrainer(
        model=loaded.model,
        args=args,
        train_dataset=tokenized.train,
        eval_dataset=tokenized.eval if has_eval else None,
        data_collator=tokenized.collator,
        processing_class=loaded.tokenizer,
        callbacks=callbacks,
        task_eval=task_eval,
        nan_guard=NonFiniteGuard(policy=t.nan_policy, skip_limit=t.nan_skip_limit),
        loss_positions_only=t.sparse_lm_head == "auto",
        eval_loss=t.eval_loss,
    )


def resolved_learning_rate(requested: float | None, init: str) -> float:
    """From-scratch tiny models want a large step; pretrained weights a fine-tuning one."""
    if requested is not None:
        return requested
    return 3e-3 if init == "scratch" else 5e-5


def _rows_needed(config: RunConfig, dist: DistInfo) -> int | None:
    t = config.train
    if t.max_steps <= 0:
        return None
    return t.max_steps * t.per_device_train_batch_size * t.gradient_accumulation_steps * dist.world_size


def token_budget(config: RunConfig, world_size: int) -> int:
    """Tokens the run may process at most (rows x row length x steps); RL rows are prompt + completion."""
    t = config.train
    length = t.max_prompt_length + t.max_completion_length if t.mode == "rl" else config.data.max_length
    return (t.per_device_train_batch_size * length * max(t.max_steps, 0)
            * t.gradient_accumulation_steps * world_size)


def _metadata(config: RunConfig, examples: Examples, loaded: LoadedModel,
              dist: DistInfo) -> tuple[dict[str, float], dict[str, Any]]:
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
    return scalars, texts


def save_final(trainer: StrataTrainer, loaded: LoadedModel, folder: RunFolder, model_args) -> None:
    """final/: the model (or LoRA adapters) + tokenizer; merged/: the merged LoRA model when asked.

    Every folder reloads with transformers/peft alone. A LoRA run on a scratch base keeps that base, unwrapped
    and unmerged, in base_model/, and its adapters name it relative to final/ (``../base_model``).
    """
    model = trainer.accelerator.unwrap_model(trainer.model)
    if not all_finite(model):
        raise RunFailed(f"the trained weights contain NaN/inf; nothing was written to {folder.final} "
                        "(lower --learning_rate and train again)")
    reference = None
    if model_args.use_lora and loaded.init == "scratch":
        # A scratch base exists only in memory: keep it beside the adapters so final/ can be reloaded.
        base_dir = folder.root / BASE_MODEL_DIR
        save_unwrapped_base(model, loaded.tokenizer, base_dir)
        model.peft_config[model.active_adapter].base_model_name_or_path = str(base_dir)
        reference = BASE_REFERENCE
    elif model_args.use_lora:
        reference = pretrained_base_reference(model_args.model)
    model.save_pretrained(folder.final)
    loaded.tokenizer.save_pretrained(folder.final)
    if reference is not None:
        point_adapter_at(folder.final, reference)
    if model_args.merge_lora:
        merged = model.merge_and_unload()
        merged.save_pretrained(folder.root / "merged")
        loaded.tokenizer.save_pretrained(folder.root / "merged")


def _run_summary(config: RunConfig, examples: Examples, loaded: LoadedModel, tokenized, dist: DistInfo) -> dict:
    return {
        "tag": examples.tag, "family": examples.family, "sources": examples.sources,
        "model_source": loaded.source, "total_parameters": loaded.total_params,
        "learning_rate": resolved_learning_rate(config.train.learning_rate, loaded.init),
        "trainable_parameters": loaded.trainable_params, "attention": loaded.attn_implementation,
        "attention_requested": loaded.attn_requested, "attention_fallback": loaded.attn_fallback,
        "quantization": quantization_record(loaded.quantization),
        "device": loaded.device, "precision": loaded.precision, "precision_as_run": loaded.precision_description,
        "world_size": dist.world_size, "process_group_backend": process_group_backend(),
        "token_budget": token_budget(config, dist.world_size),
        # A stream's rows are the ones the steps read (max_steps x global batch); its loss tokens are not counted ahead.
        "train_rows": _rows_needed(config, dist) if examples.streaming else len(tokenized.train),
        "loss_bearing_tokens": tokenized.loss_tokens, "streaming": examples.streaming,
    }


def _data_line(examples: Examples) -> str:
    if examples.streaming:
        return (f"data {examples.tag}: streamed ({examples.family}; training rows made on the fly); "
                + ", ".join(f"{e.name} eval: the first {len(e.dataset):,} rows of its eval stream"
                            for e in examples.evals))
    return (f"data {examples.tag}: {len(examples.train):,} training examples ({examples.family}); "
            + ", ".join(f"{e.name} eval {len(e.dataset):,}" for e in examples.evals))


def _report(say, metrics: dict[str, Any], folder: RunFolder) -> None:
    flat = scalar_metrics(metrics.get("eval", {}))
    keys = [k for k in flat if k.split("_", 1)[-1] in ("accuracy", "macro_f1", "majority_baseline", "loss",
                                                       "perplexity", "exact_match")]
    summary = ", ".join(f"{k}={flat[k]:.4f}" for k in keys) or json.dumps(flat)[:300]
    say(f"final evaluation: {summary}")
    say(f"saved model to {folder.final} and metrics to {folder.metrics}")


def _printer(dist: DistInfo):
    def say(message: str) -> None:
        if dist.is_main:
            print(f"[strata] {message}", flush=True)
            logger.info(message)
    return say
