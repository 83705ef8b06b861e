"""GRPO mode: Strata's flags, data and rewards wired onto TRL's ``GRPOTrainer``.

GRPO itself is TRL's; the parsed ``StrataGRPOConfig`` (training/arguments.py) is the GRPOConfig the trainer
receives, with the fields Strata derives filled in. Prompts are prepared in training/rl_data.py, rewards wired
in training/rl_rewards.py; this module builds the trainer, runs the recipe, and writes a few sample completions
to TensorBoard (TRL's own ``log_completions`` only prints them, writes parquet and logs to wandb/trackio).
See docs/rl.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from datasets import Dataset
from transformers import TrainerCallback
from transformers.integrations import TensorBoardCallback

from strata.errors import StrataError
from strata.training.arguments import check_grpo_arguments, derived_fields, finish
from strata.training.finalize import RunResult, run_metadata, save_final
from strata.training.rl_data import REWARD_COLUMNS, prepare_rl_dataset  # noqa: F401  (re-exported)
from strata.training.rl_rewards import load_reward_model, resolve_reward_model_path, rewards_for_run  # noqa: F401
from strata.training.rl_samples import CompletionSamplesCallback, SampleRecorder
from strata.training.rl_tokenizer import prompt_tokenizer

# Metrics worth carrying into a run summary (TRL's names; eval ones carry an "eval_" prefix).
RL_METRIC_PREFIXES = ("reward", "rewards/", "kl", "entropy", "completions/", "frac_reward_zero_std")


# --------------------------------------------------------------------------------------------- logging


def summarise_rl_logs(log_history: list[dict[str, Any]]) -> dict[str, float]:
    """The last logged value of each reward/KL/length metric, plus ``first_reward`` to see the trend."""
    summary: dict[str, float] = {}
    for entry in log_history:
        for key, value in entry.items():
            bare = key[len("eval_") :] if key.startswith("eval_") else key
            if isinstance(value, (int, float)) and bare.startswith(RL_METRIC_PREFIXES):
                if key == "reward" and "first_reward" not in summary:
                    summary["first_reward"] = float(value)
                summary[key] = float(value)
    return summary


# --------------------------------------------------------------------------------------------- trainer


def _is_peft_model(model: Any) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(model, PeftModel)


def grpo_fields(args: Any, *, evaluates: bool) -> dict[str, Any]:
    """GRPO's part of the derived fields: checkpointing from --gradient_checkpointing is set by the caller;
    an eval batch that holds whole groups (GRPOConfig refuses one that does not)."""
    out: dict[str, Any] = {}
    if evaluates:
        eval_batch = args.per_device_eval_batch_size
        groups = args.num_generations_eval or args.num_generations
        if eval_batch % groups:
            out["per_device_eval_batch_size"] = max(groups, eval_batch - eval_batch % groups)
    return out


def _reward_models(funcs: Sequence[Any], args: Any, hub_mirror: str | None) -> tuple[list[Any], list[Any]]:
    """The reward callables plus ``args.reward_model`` (last), and the processing class of each."""
    funcs = list(funcs)
    processing: list[Any] = [None] * len(funcs)
    if args.reward_model:
        rm, rm_tokenizer = load_reward_model(args.reward_model, hub_mirror)
        funcs.append(rm)
        processing.append(rm_tokenizer)
    if not funcs:
        raise StrataError(
            "GRPO needs at least one reward: pass --reward_funcs NAME[,NAME] or --reward_model PATH"
        )
    weights = None if args.reward_weights is None else [float(w) for w in args.reward_weights]
    if weights is not None and args.reward_model and len(weights) == len(funcs) - 1:
        weights.append(1.0)
    if weights is not None and len(weights) != len(funcs):
        raise StrataError(
            f"--reward_weights has {len(weights)} value(s) for {len(funcs)} reward(s); pass one weight per reward"
        )
    args.reward_weights = weights  # read by GRPOTrainer at construction
    return funcs, processing


def build_grpo_trainer(
    model: Any,
    tokenizer: Any,
    train_dataset: Dataset,
    eval_dataset: Dataset | dict[str, Dataset] | None,
    args: Any,
    *,
    reward_funcs: Sequence[Any],
    peft_config: Any = None,
    callbacks: Sequence[TrainerCallback] | None = None,
    num_samples_to_log: int = 4,
    samples_writer: Any = None,
    hub_mirror: str | None = None,
) -> Any:
    """A TRL ``GRPOTrainer`` over ``args``, a finished ``StrataGRPOConfig`` (what ``strata train --mode rl`` parsed).

    ``reward_funcs`` are callables (see ``strata.training.rewards.resolve_rewards``); ``args.reward_model`` adds a
    sequence-classification model as one more reward, last, whose weight is the last of ``args.reward_weights``
    (1.0 when only the functions' weights are given), looked up in ``hub_mirror`` (default $STRATA_HUB_MIRROR).
    ``per_device_train_batch_size`` counts completions, not prompts: each step sees ``batch / num_generations``
    prompts. The returned trainer's ``strata_samples_callback`` holds the sample completions it logged. With
    ``beta > 0`` and no PEFT, the KL reference is a frozen in-memory copy of ``model`` as passed (see
    ``strata.training.grpo_trainer``); ``data_seed`` orders the prompts.
    """
    from strata.training.grpo_trainer import frozen_copy, grpo_trainer_class, reference_is

    check_grpo_arguments(args)
    recorder = SampleRecorder()  # the sample completions: what the reward functions are given
    funcs, processing = _reward_models([recorder.wrap(f) for f in reward_funcs], args, hub_mirror)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    train = prepare_rl_dataset(train_dataset, tokenizer, args.max_prompt_length)
    evals: Dataset | dict[str, Dataset] | None = None
    if isinstance(eval_dataset, dict):  # several eval sets: TRL reports eval_<name>_reward, ...
        evals = {k: prepare_rl_dataset(v, tokenizer, args.max_prompt_length) for k, v in eval_dataset.items()}
    elif eval_dataset is not None:
        evals = prepare_rl_dataset(eval_dataset, tokenizer, args.max_prompt_length)

    samples = CompletionSamplesCallback(recorder, num_samples=num_samples_to_log, writer=samples_writer)
    needs_reference = args.beta != 0.0 and peft_config is None and not _is_peft_model(model)
    reference = frozen_copy(model) if needs_reference else None  # before TRL touches the policy
    with reference_is(reference) as asked:
        trainer = grpo_trainer_class()(
            model=model,
            reward_funcs=funcs,
            args=args,
            train_dataset=train,
            eval_dataset=evals,
            processing_class=prompt_tokenizer(tokenizer),
            reward_processing_classes=processing,
            callbacks=[samples, *(callbacks or [])],  # first: it writes before a TensorBoardCallback closes
            peft_config=peft_config,
        )
    reported = trainer.pop_callback(TensorBoardCallback)  # report_to's own one: after the samples, too
    if reported is not None:
        trainer.add_callback(reported)
    if reference is not None and not asked:
        raise RuntimeError(
            "TRL's GRPOTrainer built its KL reference without create_model_from_path; this TRL release is not "
            "supported by strata's RL mode (see strata/training/grpo_trainer.py)"
        )
    samples.attach(trainer)
    trainer.strata_samples_callback = samples
    return trainer


# --------------------------------------------------------------------------------------------- strata train --mode rl


def _eval_dataset(examples: Any, args: Any) -> Any:
    """The RL eval set(s): only with periodic evaluation (--eval_steps N), since evaluating generates."""
    evals = [e for e in examples.evals if len(e.dataset)]
    if not (args.eval_steps and args.eval_steps > 0 and evals):
        return None
    return evals[0].dataset if len(evals) == 1 else {e.name: e.dataset for e in evals}


def grpo_arguments(config: Any, loaded: Any, folder: Any, evaluates: bool) -> Any:
    """The run's parsed StrataGRPOConfig with the fields Strata derives filled in: what GRPOTrainer receives."""
    t = config.train
    check_grpo_arguments(t)
    derived = derived_fields(t, output_dir=str(folder.checkpoints), precision=loaded.precision,
                             device=loaded.device, evaluates=evaluates)
    derived["activation_checkpointing"] = config.model.gradient_checkpointing
    return finish(t, **derived, **grpo_fields(t, evaluates=evaluates))


def run_rl(config: Any, examples: Any, loaded: Any, folder: Any, checkpoint: Any, say: Any,
           progress: dict[str, bool] | None = None) -> Any:
    """``strata train --mode rl``: GRPO from the loaded model, then save, evaluate and write metrics."""
    from strata.training.distributed import dist_info
    from strata.training.guards import NonFiniteGuard, stop_diverged
    from strata.training.tensorboard import RunBoard, hparams_metrics, run_hparams

    t = config.train
    dist = dist_info()
    funcs, weights = rewards_for_run(config, examples)
    names = [getattr(getattr(f, "func", f), "__name__", "reward") for f in funcs]
    say(
        "GRPO rewards: "
        + ", ".join(
            f"{n}x{w:g}" for n, w in zip(names + (["reward_model"] if t.reward_model else []), weights)
        )
    )
    eval_dataset = _eval_dataset(examples, t)
    args = grpo_arguments(config, loaded, folder, evaluates=eval_dataset is not None)
    args.reward_weights = weights

    guard = NonFiniteGuard(policy=t.nan_policy, skip_limit=t.nan_skip_limit)
    board = RunBoard.open(folder.tensorboard, dist.is_main)  # one event file; closed by board.finish
    callbacks: list[TrainerCallback] = [guard, *(board.callbacks(*run_metadata(config, examples, loaded, dist))
                                                 if dist.is_main else [])]

    trainer = build_grpo_trainer(loaded.model, loaded.tokenizer, examples.train, eval_dataset, args,
                                 reward_funcs=funcs, callbacks=callbacks, samples_writer=board.writer,
                                 hub_mirror=config.data.hub_mirror)
    if progress is not None:
        progress["training"] = True
    train_output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    if guard.divergence is not None:
        board.close()
        stop_diverged(guard, folder, dist.is_main, train_output.metrics)
    final_eval = trainer.evaluate() if eval_dataset is not None else {}
    metrics = _rl_metrics(trainer, guard, train_output, final_eval, names, weights, config, examples, loaded, dist)
    if dist.is_main:
        save_final(trainer, loaded, folder, config.model)
        folder.write_metrics(metrics)
        board.finish(run_hparams(config, metrics["run"]), hparams_metrics(metrics), trainer.state.global_step)
        rl = metrics["rl"]
        say(
            "GRPO done: reward "
            + (
                f"{rl['first_reward']:.3f} -> {rl['reward']:.3f}"
                if "reward" in rl and "first_reward" in rl
                else "n/a"
            )
        )
        say(f"saved model to {folder.final} and metrics to {folder.metrics}")
    return RunResult(folder=folder, metrics=metrics)


def _rl_metrics(trainer: Any, guard: Any, train_output: Any, final_eval: dict[str, Any], names: list[str],
                weights: list[float], config: Any, examples: Any, loaded: Any, dist: Any) -> dict[str, Any]:
    """metrics.json of an RL run."""
    from strata.training.distributed import process_group_backend

    samples = trainer.strata_samples_callback.history
    return {
        "status": "completed",
        "nonfinite_skips": guard.skipped,
        "train": dict(train_output.metrics),
        "eval": final_eval,
        "rl": summarise_rl_logs(trainer.state.log_history),
        "rewards": {"names": names, "weights": weights, "reward_model": config.train.reward_model},
        "samples": samples[-1][2] if samples else [],
        "run": {
            "tag": examples.tag,
            "family": examples.family,
            "sources": examples.sources,
            "model_source": loaded.source,
            "total_parameters": loaded.total_params,
            "trainable_parameters": loaded.trainable_params,
            "device": loaded.device,
            "precision": loaded.precision,
            "precision_as_run": loaded.precision_description,
            "world_size": dist.world_size,
            "process_group_backend": process_group_backend(),
            "train_rows": len(examples.train),
            # all ranks call (collectives); throughput first: it counts the steps after the last log
            "throughput": trainer.throughput_summary(),
            "telemetry": trainer.telemetry_summary(),
        },
    }
