"""The vision-language branch of ``strata train``: image datasets with a LLaVA-family model.

Same run folder, same TrainingArguments and the same transformers ``Trainer`` as the text recipe
(``training/run.py``), with its tokens/s and device telemetry; what differs is the data (one example per Q/A pair,
the image kept), the collator (the processor makes ``pixel_values`` and expands ``<image>``) and evaluation (greedy
generation with the image, scored by exact match and token F1 against the answer). The flags this path cannot
honour are refused here, one line each.
"""

from __future__ import annotations

import dataclasses
from dataclasses import MISSING
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer

from strata.data.vision import VisionCollator, VisionSplit, load_vision_split
from strata.errors import RunFailed, StrataError
from strata.evaluation.vision import evaluate_generation
from strata.models import vision as vision_models
from strata.training.arguments import RunConfig
from strata.training.telemetry import MeteredTraining

# Flags the vision path does not use: a value other than the default is refused with the reason.
UNUSED_FLAGS: dict[str, str] = {
    "datasets": "mixtures of image and text datasets are not built; train on one --dataset",
    "use_packing": "packed rows would split an image from its tokens; drop --use_packing",
    "use_lora": "LoRA on a vision-language model is not wired (peft would wrap the vision tower too); drop it",
    "merge_lora": "there are no LoRA adapters on this path",
    "load_in_4bit": "the vision path builds the model in full precision; drop --load_in_4bit",
    "load_in_8bit": "the vision path builds the model in full precision; drop --load_in_8bit",
    "moe_load_in_4bit": "the vision models here have no experts",
    "moe_load_in_8bit": "the vision models here have no experts",
    "tokenizer": "the processor's tokenizer is the preset's trained BPE or the model folder's own",
    "gradient_checkpointing": "not wired for the vision tower; drop it",
    "use_flash_attention": "the vision path uses transformers' default attention",
    "attn_implementation": "the vision path uses transformers' default attention",
    "dropout": "dropout is set per sub-config (vision/text) and is not exposed",
    "stratified_type": "applies to stratified-* presets",
    "stratum_source": "applies to stratified-* presets",
    "match_params": "applies to stratified-* presets",
    "text_column": "the columns of an image dataset are fixed (image, qa_pairs)",
    "label_column": "the columns of an image dataset are fixed (image, qa_pairs)",
    "label_names": "an image QA dataset has no labels",
    "prompt_template": "the prompt is the spec's (<image>, the question)",
    "dataset_config": "the image dataset has one config",
    "resume_from_checkpoint": "resuming is not wired for the vision path; start a new run",
    "load_best_model_at_end": "the vision path keeps the last weights",
    "metric_for_best_model": "the vision path keeps the last weights",
    "early_stopping_patience": "the vision path keeps the last weights",
    "multi_gpu": "the vision path runs in one process",
    "nproc_per_node": "the vision path runs in one process",
    "ddp_backend": "the vision path runs in one process",
}


def _spec(dataset_id: str):
    from strata.data.registry import REGISTRY
    from strata.data.sources import canonical_dataset_id
    from strata.hub import looks_like_path

    return None if looks_like_path(dataset_id) else REGISTRY.get(canonical_dataset_id(dataset_id))


def vision_requested(config: RunConfig) -> bool:
    """An image dataset or a vision-language model was asked for (after ``preflight`` refused a text model)."""
    from strata.models.plan import config_from_flags

    ids = config.data.datasets or [config.data.dataset]
    if any(getattr(_spec(i), "requires_vision", False) for i in ids):
        return True
    return vision_models.is_vision_config(config_from_flags(config.model, config.data.hub_mirror))


def check_vision_flags(config: RunConfig) -> None:
    """Refuse what the vision path cannot do, one line each, before any data or weights are read."""
    spec = _spec(config.data.dataset)
    if config.data.datasets or spec is None or not spec.requires_vision:
        raise StrataError(f"--model {config.model.model} is a vision-language model: it trains on an image dataset "
                          "(--dataset sujet-ai/Sujet-Finance-QA-Vision-100k); for text use a text model "
                          "(strata-tiny, llama-tiny, gpt2)")
    if config.train.mode != "sft":
        raise StrataError(f"--mode {config.train.mode} is not available for images: the vision path trains "
                          "--mode sft (question -> answer with the image)")
    if config.data.streaming not in ("auto", "false"):
        raise StrataError("--streaming is not available for images (rows need their image decoded); drop it")
    for args in (config.data, config.model, config.train):
        for field in dataclasses.fields(args):
            reason = UNUSED_FLAGS.get(field.name)
            default = field.default if field.default is not MISSING else field.default_factory()  # type: ignore[misc]
            if reason and getattr(args, field.name) != default:
                raise StrataError(f"--{field.name} is not used by the vision path: {reason}")
    if config.train.eval_method not in ("loglik", "generate"):
        raise StrataError(f"--eval_method {config.train.eval_method}: the vision path evaluates by generation")


def _model_and_processor(config: RunConfig, train: VisionSplit, tokenizer_dir: Path):
    from strata.models.loading import resolve_model_source
    from strata.models.tokenizers import train_bpe_tokenizer

    preset, path, _init = resolve_model_source(config.model, config.data.hub_mirror)
    torch.manual_seed(config.train.seed)
    if preset is not None:
        texts = [p + c for p, c in zip(train.examples["prompt"], train.examples["completion"])]
        tokenizer = train_bpe_tokenizer(config.model.train_tokenizer or vision_models.DEFAULT_TOKENIZER, texts,
                                        tokenizer_dir)
        model, processor = vision_models.build_preset(preset.name, tokenizer)
        return model, processor, f"preset:{preset.name}", "scratch"
    if config.model.train_tokenizer:
        raise StrataError("--train_tokenizer builds a new vocabulary; a trained model folder keeps its own")
    if config.model.init == "scratch":
        raise StrataError(f"--init scratch: rebuilding {path} from its config is not wired for vision-language "
                          "models; train the llava-tiny preset, or drop --init to continue from the weights")
    model, processor = vision_models.load_folder(str(path))
    return model, processor, f"local:{path}", "pretrained"


def train_vision(config: RunConfig, dist, say) -> Any:
    """Train and evaluate a vision-language model on an image dataset; writes the usual run folder."""
    from strata.training.finalize import RunResult
    from strata.training.run_folder import choose_run_folder, detach_log_file, run_key

    check_vision_flags(config)
    if dist.world_size > 1:
        raise StrataError("the vision path runs in one process; launch it without torchrun")
    data, spec = config.data, _spec(config.data.dataset)
    seed = config.train.data_order_seed()
    train = load_vision_split(spec, data.train_split or spec.train_split, data.hub_mirror,
                              max_examples=data.max_train_examples, seed=seed, shuffle=True)
    evaluation = load_vision_split(spec, data.eval_split or spec.eval_split, data.hub_mirror,
                                   max_examples=data.max_eval_examples, seed=seed)
    say(f"data {spec.tag}: {len(train.examples):,} training Q/A pairs on {len(train.images):,} images; "
        f"eval {len(evaluation.examples):,} pairs")
    key = run_key(config.model.model, spec.tag, "sft", config.train.per_device_train_batch_size, data.max_length,
                  config.train.gradient_accumulation_steps, False, False, 1, False)
    args_record = {**config.to_dict(), "run_key": key, "world_size": 1}
    folder, _checkpoint, created = choose_run_folder(config.train, key, dist, args_record)
    folder.create(fresh=True)
    folder.write_args(args_record)
    handler = folder.attach_log_file()
    progress = {"training": False}
    try:
        say(f"run folder {folder.root}")
        return RunResult(folder=folder, metrics=_train_in(config, spec.tag, train, evaluation, folder, say, progress))
    except BaseException:
        if not progress["training"]:  # failed before training began: leave nothing behind (as run.py does)
            detach_log_file(handler)
            handler = None
            folder.remove_unstarted(created)
        raise
    finally:
        if handler is not None:
            detach_log_file(handler)


def _run_board(config: RunConfig, loaded, folder, tag: str):
    """TensorBoard as the text recipe writes it (one event file): run metadata at step 0, Trainer's logs, and
    the HParams summaries at the end."""
    from strata.training.tensorboard import RunBoard

    scalars = {"total_parameters": float(loaded.total_params), "trainable_parameters": float(loaded.trainable_params),
               "world_size": 1.0}
    texts = {"config": config.to_dict(), "model": {"source": loaded.source, "init": loaded.init, "kind": loaded.kind,
                                                   "model_type": loaded.model.config.model_type},
             "device": f"{loaded.device} x1", "precision": loaded.precision_description,
             "datasets": {"tag": tag, "family": "qa (vision)", "sources": [config.data.dataset]}}
    board = RunBoard.open(folder.tensorboard, True)
    return board, board.callbacks(scalars, texts)


class VisionTrainer(MeteredTraining, Trainer):
    """transformers' Trainer with the text recipe's tokens/s and device telemetry. A step's tokens are its
    attention mask's ones: the question and answer tokens and the ``<image>`` placeholders the processor expanded
    (the language model's sequence; the vision tower's patches are not counted), padding not."""

    mfu_not_reported = ("MFU is not reported on the vision path: the vision tower's FLOPs per image are not in "
                        "the per-token count (tokens/s still are)")


def _train_in(config: RunConfig, tag: str, train: VisionSplit, evaluation: VisionSplit, folder, say,
              progress: dict[str, bool]) -> dict:
    from strata.models.device import resolve_device, resolve_precision
    from strata.models.loading import LoadedModel, count_parameters
    from strata.training.arguments import derived_fields, finish, resolved_learning_rate
    from strata.training.guards import NonFiniteGuard, all_finite, stop_diverged
    from strata.training.tensorboard import hparams_metrics, run_hparams

    model, processor, source, init = _model_and_processor(config, train, folder.root / "tokenizer")
    device = resolve_device(config.model.device)
    total, trainable = count_parameters(model)
    loaded = LoadedModel(model=model, tokenizer=processor.tokenizer, kind="image-text-to-text", source=source,
                         init=init, device=device, precision=resolve_precision(config.model.precision, device),
                         attn_requested="auto", attn_implementation=str(model.config._attn_implementation),
                         is_moe=False, total_params=total, trainable_params=trainable)
    crop = processor.image_processor.crop_size
    say(f"model {source} ({model.config.model_type}, init {init}); parameters: {total:,}; images cropped to "
        f"{crop['height']}x{crop['width']}, {processor.patch_size}px patches")
    collator = VisionCollator(processor, {train.split: train.images, evaluation.split: evaluation.images},
                              config.data.max_length)
    t = config.train
    args = finish(t, **derived_fields(t, output_dir=str(folder.checkpoints), precision=loaded.precision,
                                      device=device, evaluates=True),
                  learning_rate=resolved_learning_rate(t.learning_rate, init))
    board, callbacks = _run_board(config, loaded, folder, tag)
    guard = NonFiniteGuard(policy=t.nan_policy, skip_limit=t.nan_skip_limit)  # a NaN loss stops (or skips)
    trainer = VisionTrainer(model=model, args=args,
                            train_dataset=train.examples.map(lambda _: {"image_split": train.split}),
                            eval_dataset=evaluation.examples.map(lambda _: {"image_split": evaluation.split}),
                            data_collator=collator, processing_class=processor,
                            callbacks=[guard, *callbacks])
    collator.check_lengths(train)
    collator.check_lengths(evaluation)
    progress["training"] = True
    output = trainer.train()
    if guard.divergence is not None:
        board.close()
        stop_diverged(guard, folder, True, output.metrics)
    eval_metrics = dict(trainer.evaluate())
    generation = evaluate_generation(model, collator, evaluation, config.data.max_length)
    eval_metrics.update({f"eval_{k}": v for k, v in generation.items() if k in ("exact_match", "token_f1")})
    if not all_finite(model):
        board.close()
        raise RunFailed(f"the trained weights contain NaN/inf; nothing was written to {folder.final}")
    model.save_pretrained(folder.final)
    processor.save_pretrained(folder.final)
    throughput = trainer.throughput_summary()  # before telemetry_summary: it counts the steps after the last log
    metrics = {"status": "completed", "train": dict(output.metrics), "eval": eval_metrics, "task_eval": generation,
               "run": {"tag": tag, "family": "qa (vision)",
                       "model_source": source, "total_parameters": total, "trainable_parameters": trainable,
                       "device": device, "precision": loaded.precision, "train_rows": len(train.examples),
                       "eval_rows": len(evaluation.examples), "images_train": len(train.images),
                       "throughput": throughput, "telemetry": trainer.telemetry_summary()}}
    folder.write_metrics(metrics)
    board.finish(run_hparams(config, metrics["run"]), hparams_metrics(metrics), trainer.state.global_step)
    say(f"final evaluation: eval_loss={eval_metrics.get('eval_loss', float('nan')):.4f}, "
        f"exact_match={generation['exact_match']:.4f}, token_f1={generation['token_f1']:.4f}")
    say(f"saved model and processor to {folder.final} and metrics to {folder.metrics}")
    return metrics
