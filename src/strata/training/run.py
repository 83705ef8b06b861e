"""The ``strata train`` recipe: builders in order, the loop itself is transformers' Trainer (or TRL's).

Read top to bottom: resolve the run folder, load examples, build model + tokenizer, tokenize,
build the trainer, train, save, evaluate, write metrics. Each step is a builder you can call alone.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from transformers import EarlyStoppingCallback

from strata.data.pipeline import Examples, load_examples, tokenize_examples
from strata.errors import StrataError
from strata.models.attention import resolve_attention
from strata.models.device import resolve_device, resolve_precision
from strata.models.loading import LoadedModel, load_for_training
from strata.models.plan import check_architecture, config_from_flags, is_moe, resolve_model_source
from strata.models.quantization import check_quantization_flags, quantization_record, requested_flag
from strata.training.arguments import RunConfig, derived_fields, finish, resolved_learning_rate
from strata.training.distributed import (
    DistInfo,
    check_shared_folder,
    dist_info,
    process_group_backend,
    start_process_group,
    watch_launcher,
)
from strata.training.finalize import RunResult, run_metadata, save_final, token_budget
from strata.training.fsdp_checkpoint import check_resume
from strata.training.guards import NonFiniteGuard, stop_diverged
from strata.training.launch import plan_launch
from strata.training.parallel import SHARDED, Parallelism, full_state_dict, planned_parallelism, shard_model
from strata.training.run_folder import (
    RunFolder,
    choose_run_folder,
    detach_log_file,
    explicit_run_folder,
    run_key,
)
from strata.training.stratum_sources import check_stratum_sources, planned_config, prepare_stratum_sources
from strata.training.tensorboard import RunBoard, hparams_metrics, run_hparams
from strata.training.trainer import StrataTrainer, scalar_metrics

logger = logging.getLogger("strata.train")


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
    parallelism = planned_parallelism(config, dist.world_size)  # refuses what would run as something else
    from strata.training.vision import train_vision, vision_requested  # images through a processor

    if vision_requested(config):
        if parallelism.choice in SHARDED:
            raise StrataError(f"--parallelism {parallelism.choice} is not wired into the vision recipe; use ddp")
        return train_vision(config, dist, say)
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
    folder, checkpoint, created_root = choose_run_folder(config.train, key, dist, args_record)
    check_resume(checkpoint, parallelism.choice, parallelism.mesh_shape)  # before args.json is rewritten
    fresh = checkpoint is None
    log_handler = None
    if dist.is_main:
        folder.create(fresh=fresh)
        folder.write_args(args_record)
        log_handler = folder.attach_log_file()
    progress = {"training": False}
    try:
        check_shared_folder(folder.root, dist)
        return _train_in_folder(config, examples, folder, checkpoint, dist, say, mirror, progress, parallelism)
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
                     dist: DistInfo, say, mirror: str | None, progress: dict[str, bool],
                     parallelism: Parallelism) -> RunResult:
    data_args, model_args, train_args = config.data, config.model, config.train
    say(f"run folder {folder.root}")
    say(f"parallelism {parallelism.choice}: {parallelism.reason}")

    loaded = load_for_training(model_args, mirror, train_texts=examples.training_texts(),
                               tokenizer_dir=folder.root / "tokenizer", dropout=train_args.dropout,
                               seed=train_args.seed, max_length=data_args.max_length, log=say)
    check_stratum_sources(loaded.model, examples, config)
    if train_args.mode == "rl":
        from strata.training.rl import run_rl

        return run_rl(config, examples, loaded, folder, checkpoint, say, progress)

    tokenized = tokenize_examples(examples, loaded.tokenizer, loaded.kind, data_args, train_args.mode,
                                  train_args.data_order_seed(), rows_needed=_rows_needed(config, dist))
    tokenized = prepare_stratum_sources(loaded.model, examples, tokenized, loaded.tokenizer, loaded.kind, config,
                                        fit=checkpoint is None, say=say)
    if parallelism.choice in SHARDED:  # before the Trainer, which then leaves the sharded model alone
        shard_model(loaded.model, parallelism, loaded.device, train_args.fsdp_cpu_offload)
    trainer = build_trainer(config, examples, loaded, tokenized, folder, dist, parallelism.record())
    progress["training"] = True
    train_output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    if trainer.nan_guard.divergence is not None:
        trainer.run_board.close()
        stop_diverged(trainer.nan_guard, folder, dist.is_main, train_output.metrics)
    final_metrics = trainer.evaluate() if (tokenized.eval is not None or trainer.task_eval) else {}

    metrics: dict[str, Any] = {
        "status": "completed",
        "nonfinite_skips": trainer.nan_guard.skipped,
        "train": dict(train_output.metrics),
        "eval": final_metrics,
        "task_eval": trainer.task_eval_details(),
        "run": {**_run_summary(config, examples, loaded, tokenized, dist),
                "throughput": trainer.throughput_summary(), "telemetry": trainer.telemetry_summary(),
                "parallelism": parallelism.record(trainer.model_wrapped)},
    }
    state_dict = full_state_dict(trainer.model)  # every rank: gathering a sharded model's weights is a collective
    if dist.is_main:
        save_final(trainer, loaded, folder, model_args, state_dict=state_dict)
        folder.write_metrics(metrics)
        trainer.run_board.finish(run_hparams(config, metrics["run"]), hparams_metrics(metrics), trainer.state.global_step)
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
    """An image dataset with a text-only model fails here, before any data is read (a vision-language model
    goes on to training/vision.py)."""
    from strata.data.registry import REGISTRY, check_model_supports, unsupported_refusal
    from strata.data.sources import canonical_dataset_id
    from strata.hub import looks_like_path

    for dataset_id in config.data.datasets or [config.data.dataset]:
        spec = None if looks_like_path(dataset_id) else REGISTRY.get(canonical_dataset_id(dataset_id))
        if spec is not None and spec.requires_vision:
            model_config = config_from_flags(config.model, config.data.hub_mirror)
            if model_config is None:  # a hub id not here: only the vision path's models are known to take images
                raise StrataError(unsupported_refusal(spec) or f"dataset '{spec.hub_id}' is not supported")
            check_model_supports(spec, model_config)


def build_trainer(config: RunConfig, examples: Examples, loaded: LoadedModel, tokenized, folder: RunFolder,
                  dist: DistInfo, parallelism: dict[str, Any] | None = None) -> StrataTrainer:
    t = config.train
    has_eval = tokenized.eval is not None and len(tokenized.eval) > 0
    derived = derived_fields(t, output_dir=str(folder.checkpoints), precision=loaded.precision, device=loaded.device,
                             evaluates=has_eval)
    args = finish(t, **derived, learning_rate=resolved_learning_rate(t.learning_rate, loaded.init))
    task_eval = None
    if config.train.mode == "sft" and examples.evals:
        task_eval = [
            {"name": source.name, "dataset": source.dataset, "family": source.family,
             "label_words": source.label_words, "method": t.eval_method,
             "batch_size": t.per_device_eval_batch_size, "max_length": config.data.max_length,
             "max_examples": None}
            for source in examples.evals
        ]
    board = RunBoard.open(folder.tensorboard, dist.is_main)  # one event file; closed by board.finish
    callbacks = board.callbacks(*run_metadata(config, examples, loaded, dist, parallelism)) if dist.is_main else []
    if t.early_stopping_patience is not None:
        if t.metric_for_best_model is None:
            raise StrataError("--early_stopping_patience needs --metric_for_best_model (e.g. eval_accuracy)")
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=t.early_stopping_patience))
    trainer = StrataTrainer(
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
    trainer.run_board = board
    return trainer


def _rows_needed(config: RunConfig, dist: DistInfo) -> int | None:
    t = config.train
    if t.max_steps <= 0:
        return None
    return t.max_steps * t.per_device_train_batch_size * t.gradient_accumulation_steps * dist.world_size


def _run_summary(config: RunConfig, examples: Examples, loaded: LoadedModel, tokenized, dist: DistInfo) -> dict:
    return {
        "tag": examples.tag, "family": examples.family, "sources": examples.sources,
        "model_source": loaded.source, "total_parameters": loaded.total_params,
        "learning_rate": resolved_learning_rate(config.train.learning_rate, loaded.init),
        "trainable_parameters": loaded.trainable_params, "attention": loaded.attn_implementation,
        "attention_requested": loaded.attn_requested, "attention_fallback": loaded.attn_fallback,
        "quantization": quantization_record(loaded.quantization),
        "device": loaded.device, "precision": loaded.precision, "precision_as_run": loaded.precision_description,
        "world_size": dist.world_size, "nodes": dist.nodes, "process_group_backend": process_group_backend(),
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
