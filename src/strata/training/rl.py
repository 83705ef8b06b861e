"""GRPO mode: Strata's flags, data and rewards wired onto TRL's ``GRPOTrainer``.

GRPO itself is TRL's; this module only maps ``--grpo_beta``/``--grpo_group_size``/... onto
``GRPOConfig``, prepares the prompts (TRL 1.16 has no ``max_prompt_length``, so prompts are
truncated here), loads an optional sequence-classification reward model, and writes a few
sample completions to TensorBoard (TRL's own ``log_completions`` only prints them, writes
parquet and logs to wandb/trackio). See docs/rl.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from datasets import Dataset
from transformers import TrainerCallback
from transformers.integrations import TensorBoardCallback

from strata.errors import StrataError
from strata.training.rl_samples import CompletionSamplesCallback, SampleRecorder
from strata.training.rl_tokenizer import prompt_tokenizer

# Dataset columns the built-in rewards read (TRL passes every kept column to every reward).
REWARD_COLUMNS = ("reference", "label", "label_words", "domain", "entry_point", "test", "code_prompt")

# Metrics worth carrying into a run summary (TRL's names; eval ones carry an "eval_" prefix).
RL_METRIC_PREFIXES = ("reward", "rewards/", "kl", "entropy", "completions/", "frac_reward_zero_std")


# --------------------------------------------------------------------------------------------- data


def _truncate_text_left(text: str, tokenizer: Any, max_tokens: int) -> str:
    """Keep the last ``max_tokens`` tokens of ``text`` (the end holds the question and the answer cue)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= max_tokens:
        return text
    return tokenizer.decode(ids[-max_tokens:], skip_special_tokens=True)


def _truncate_messages(
    messages: list[dict[str, Any]], tokenizer: Any, max_tokens: int
) -> list[dict[str, Any]]:
    """Shorten the last user message of a conversational prompt until the rendered prompt fits."""
    messages = [dict(m) for m in messages]

    def length() -> int:
        if getattr(tokenizer, "chat_template", None):
            rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            return len(tokenizer(rendered, add_special_tokens=False)["input_ids"])
        return sum(
            len(tokenizer(str(m.get("content", "")), add_special_tokens=False)["input_ids"]) for m in messages
        )

    excess = length() - max_tokens
    if excess <= 0:
        return messages
    users = [
        i for i, m in enumerate(messages) if m.get("role") == "user" and isinstance(m.get("content"), str)
    ]
    if not users:
        return messages
    last = users[-1]
    content_len = len(tokenizer(messages[last]["content"], add_special_tokens=False)["input_ids"])
    messages[last]["content"] = _truncate_text_left(
        messages[last]["content"], tokenizer, max(1, content_len - excess)
    )
    return messages


def prepare_rl_dataset(
    formatted: Dataset,
    tokenizer: Any,
    max_prompt_length: int | None,
    *,
    label_words: Sequence[str] | None = None,
) -> Dataset:
    """A GRPO-ready dataset: ``prompt`` (left-truncated to ``max_prompt_length`` tokens) and the reward columns.

    ``completion`` and other training-only columns are dropped; ``reference``, ``label``,
    ``label_words``, ``domain``, ``entry_point``, ``test`` and ``code_prompt`` are kept when present, because TRL
    hands every kept column to the reward functions. ``label_words`` adds that column to every
    row when the dataset lacks it (useful for mixtures; the closure in ``make_reward`` covers
    single datasets). Idempotent, so preparing twice is harmless.
    """
    if "prompt" not in formatted.column_names:
        raise StrataError(
            f"RL needs a 'prompt' column but the dataset has {formatted.column_names}; "
            "use a formatted (prompt/completion) dataset for --mode rl"
        )
    if max_prompt_length is not None and max_prompt_length < 1:
        raise StrataError(f"--max_prompt_length {max_prompt_length} must be at least 1")
    keep = ["prompt"] + [c for c in REWARD_COLUMNS if c in formatted.column_names]
    dataset = formatted.select_columns(keep)
    dataset = dataset.filter(lambda row: bool(row["prompt"]), desc="drop empty prompts")
    if len(dataset) == 0:
        raise StrataError(
            "every prompt of the RL dataset is empty; check --prompt_template and the text column"
        )

    if max_prompt_length is not None:

        def truncate(row: dict[str, Any]) -> dict[str, Any]:
            prompt = row["prompt"]
            if isinstance(prompt, str):
                return {"prompt": _truncate_text_left(prompt, tokenizer, max_prompt_length)}
            return {"prompt": _truncate_messages(prompt, tokenizer, max_prompt_length)}

        dataset = dataset.map(truncate, desc="truncate prompts")

    if label_words and "label_words" not in dataset.column_names:
        words = [str(w) for w in label_words]
        dataset = dataset.map(lambda _: {"label_words": words}, desc="add label words")
    return dataset


# --------------------------------------------------------------------------------------------- reward model


def resolve_reward_model_path(path: str, mirror: str | None = None) -> str:
    """A local folder, else the mirror's ``models/<id>`` (``--hub_mirror``, else $STRATA_HUB_MIRROR), else the hub id.

    The same order as ``--model`` (``strata.hub.resolve_model_path``), with errors that name ``--reward_model``.
    """
    from strata.hub import canonical_model_id, hub_offline, looks_like_path, mirror_root

    local = Path(path).expanduser()
    if local.is_dir():
        return str(local)
    if looks_like_path(path):
        raise StrataError(
            f"--reward_model {path}: no such folder; pass a local folder or mirror id of a "
            "sequence-classification model with its tokenizer"
        )
    hub_id = canonical_model_id(path)
    root = mirror_root(mirror)
    if root is not None and (root / "models" / hub_id).is_dir():
        return str(root / "models" / hub_id)
    if not hub_offline():
        return hub_id
    where = f"mirror {root / 'models' / hub_id}" if root is not None else "no mirror (--hub_mirror not set)"
    raise StrataError(
        f"--reward_model '{hub_id}' not found offline: tried local folder '{path}' and {where}; pass a local "
        f"folder, or mirror it with `hf download {hub_id} --local-dir <mirror>/models/{hub_id}`"
    )


def load_reward_model(path: str, mirror: str | None = None) -> tuple[Any, Any]:
    """Load a sequence-classification reward model (one output logit = the reward) and its tokenizer."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    resolved = resolve_reward_model_path(path, mirror)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(resolved, num_labels=1)
        tokenizer = AutoTokenizer.from_pretrained(resolved)
    except (OSError, ValueError) as exc:
        raise StrataError(
            f"cannot load --reward_model {path!r} ({type(exc).__name__}); pass a local folder or mirror id "
            "of a sequence-classification model with its tokenizer"
        ) from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    return model, tokenizer


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


def _default_bf16() -> bool:
    """bf16 only where it is fast and supported (TRL's GRPOConfig would default it to True everywhere)."""
    import torch

    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def build_grpo_trainer(
    model: Any,
    tokenizer: Any,
    train_dataset: Dataset,
    eval_dataset: Dataset | dict[str, Dataset] | None,
    *,
    reward_funcs: Sequence[Any],
    reward_weights: Sequence[float] | None,
    reward_model: str | None,
    output_dir: str,
    beta: float = 0.1,
    group_size: int = 2,
    max_prompt_length: int | None = 512,
    max_completion_length: int = 512,
    learning_rate: float = 1e-6,
    warmup_steps: int = 100,
    max_steps: int = 300,
    temperature: float = 1.0,
    per_device_train_batch_size: int = 16,
    seed: int = 42,
    logging_steps: int = 10,
    report_to: Sequence[str] | str = ("tensorboard",),
    peft_config: Any = None,
    callbacks: Sequence[TrainerCallback] | None = None,
    num_samples_to_log: int = 4,
    samples_writer: Any = None,
    data_seed: int | None = None,
    num_train_epochs: float = 1.0,
    hub_mirror: str | None = None,
    **extra_args: Any,
) -> Any:
    """A TRL ``GRPOTrainer`` configured from Strata's RL flags.

    ``reward_funcs`` are callables (see ``strata.training.rewards.resolve_rewards``); a
    ``reward_model`` path adds a sequence-classification model as one more reward, last, whose
    weight is the last of ``reward_weights`` (1.0 when only the functions' weights are given).
    ``per_device_train_batch_size`` counts completions, not prompts: each step sees
    ``batch / group_size`` prompts. ``extra_args`` go to ``GRPOConfig`` unchanged (eval_strategy,
    gradient_accumulation_steps, use_cpu, bf16, ...). The returned trainer's
    ``strata_samples_callback`` holds the sample completions it logged. With ``beta > 0`` and no
    PEFT, the KL reference is a frozen in-memory copy of ``model`` as passed (see
    ``strata.training.grpo_trainer``). ``data_seed`` (default ``seed``) orders the prompts;
    ``num_train_epochs`` counts when ``max_steps`` is -1; ``hub_mirror`` is where a
    ``reward_model`` id is looked up (default ``$STRATA_HUB_MIRROR``).
    """
    from trl import GRPOConfig

    from strata.training.grpo_trainer import frozen_copy, grpo_trainer_class, reference_is

    recorder = SampleRecorder()  # the sample completions: what the reward functions are given
    funcs: list[Any] = [recorder.wrap(f) for f in reward_funcs]
    processing: list[Any] = [None] * len(funcs)
    if reward_model:
        rm, rm_tokenizer = load_reward_model(reward_model, hub_mirror)
        funcs.append(rm)
        processing.append(rm_tokenizer)
    if not funcs:
        raise StrataError(
            "GRPO needs at least one reward: pass --reward_funcs NAME[,NAME] or --reward_model PATH"
        )

    weights = None if reward_weights is None else [float(w) for w in reward_weights]
    if weights is not None and reward_model and len(weights) == len(funcs) - 1:
        weights.append(1.0)
    if weights is not None and len(weights) != len(funcs):
        raise StrataError(
            f"--reward_weights has {len(weights)} value(s) for {len(funcs)} reward(s); pass one weight per reward"
        )

    if group_size < 2:
        raise StrataError(
            f"--grpo_group_size {group_size} is too small; GRPO compares at least 2 completions per prompt"
        )
    if temperature <= 0:
        raise StrataError(f"--temperature {temperature} must be positive; GRPO samples its completions")
    if max_completion_length < 1:
        raise StrataError(f"--max_completion_length {max_completion_length} must be at least 1")
    if not extra_args.get("generation_batch_size") and not extra_args.get("steps_per_generation"):
        accumulation = int(extra_args.get("gradient_accumulation_steps", 1))
        generation_batch = per_device_train_batch_size * accumulation
        if generation_batch % group_size:
            raise StrataError(
                f"the generation batch (--per_device_train_batch_size {per_device_train_batch_size} x "
                f"--gradient_accumulation_steps {accumulation} = {generation_batch}) must be divisible by "
                f"--grpo_group_size {group_size}; change one of them"
            )

    report = [report_to] if isinstance(report_to, str) else list(report_to)
    config_kwargs: dict[str, Any] = {
        "bf16": _default_bf16(),
        "activation_checkpointing": False,  # TRL defaults it on; Strata's --gradient_checkpointing decides
        "save_strategy": "no",
    }
    config_kwargs.update(extra_args)
    if "gradient_checkpointing" in config_kwargs:  # the deprecated alias must not lose to our default
        config_kwargs["activation_checkpointing"] = bool(config_kwargs.pop("gradient_checkpointing"))
    if eval_dataset is not None and config_kwargs.get("eval_strategy", "no") != "no":
        eval_batch = int(config_kwargs.get("per_device_eval_batch_size", 8))
        eval_groups = int(config_kwargs.get("num_generations_eval") or group_size)
        if eval_batch % eval_groups:
            config_kwargs["per_device_eval_batch_size"] = max(
                eval_groups, eval_batch - eval_batch % eval_groups
            )
    try:
        args = GRPOConfig(
            output_dir=output_dir,
            beta=beta,
            num_generations=group_size,
            max_completion_length=max_completion_length,
            learning_rate=learning_rate,
            warmup_steps=warmup_steps,
            max_steps=max_steps,
            num_train_epochs=num_train_epochs,
            temperature=temperature,
            per_device_train_batch_size=per_device_train_batch_size,
            seed=seed,
            data_seed=data_seed,
            logging_steps=logging_steps,
            report_to=report,
            reward_weights=weights,
            **config_kwargs,
        )
    except ValueError as exc:
        raise StrataError(f"invalid GRPO settings: {' '.join(str(exc).split())}") from exc

    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    train = prepare_rl_dataset(train_dataset, tokenizer, max_prompt_length)
    evals: Dataset | dict[str, Dataset] | None = None
    if isinstance(eval_dataset, dict):  # several eval sets: TRL reports eval_<name>_reward, ...
        evals = {k: prepare_rl_dataset(v, tokenizer, max_prompt_length) for k, v in eval_dataset.items()}
    elif eval_dataset is not None:
        evals = prepare_rl_dataset(eval_dataset, tokenizer, max_prompt_length)

    samples = CompletionSamplesCallback(recorder, num_samples=num_samples_to_log, writer=samples_writer)
    needs_reference = beta != 0.0 and peft_config is None and not _is_peft_model(model)
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


def _families(examples: Any) -> list[str]:
    """The task families of the run (a mixture has one per source), in order, without repeats."""
    families = (
        [source.family for source in examples.evals] or _families_from_sources(examples) or [examples.family]
    )
    return list(dict.fromkeys(f for f in families if f))


def _label_words(examples: Any) -> list[str] | None:
    """The run's label words: from its eval sources, else read off the training rows.

    Formatted classification rows carry ``reference == label_words[label]``, so the distinct
    references of labelled rows are the label words (a mixture gets the union, which works
    because the classification reward takes the gold word from the reference).
    """
    words: list[str] = []
    for source in examples.evals:
        words.extend(w for w in (source.label_words or []) if w not in words)
    if words:
        return words
    if examples.label_words:
        return list(examples.label_words)
    train = examples.train
    if "classification" not in _families(examples) and examples.family != "mixed":
        return None
    if not {"label", "reference"} <= set(train.column_names):
        return None
    mixed = examples.family == "mixed"
    by_label: dict[int, str] = {}
    for label, reference in zip(train["label"], train["reference"]):
        if not (isinstance(label, int) and label >= 0 and reference) or reference in by_label.values():
            continue
        by_label.setdefault(len(by_label) if mixed else label, reference)
    return [by_label[k] for k in sorted(by_label)] or None


def _families_from_sources(examples: Any) -> list[str]:
    return [s.get("family") for s in examples.sources if isinstance(s, dict) and s.get("family")]


def rewards_for_run(config: Any, examples: Any) -> tuple[list[Any], list[float]]:
    """Reward callables and weights for ``strata train --mode rl`` (defaults: by each source's family)."""
    t = config.train
    families = _families(examples)
    names = t.reward_funcs
    if not names and not t.reward_model:
        from strata.training.rewards import default_rewards_for_family

        names = list(dict.fromkeys(n for f in families for n in default_rewards_for_family(f))) or None
    from strata.training.rewards import resolve_rewards

    return resolve_rewards(
        names,
        t.reward_weights,
        families[0] if families else examples.family,
        _label_words(examples),
        code_execution=t.code_execution,
        has_reward_model=bool(t.reward_model),
    )


def run_rl(config: Any, examples: Any, loaded: Any, folder: Any, checkpoint: Any, say: Any,
           progress: dict[str, bool] | None = None) -> Any:
    """``strata train --mode rl``: GRPO from the loaded model, then save, evaluate and write metrics."""
    from strata.training.distributed import dist_info, process_group_backend
    from strata.training.guards import NonFiniteGuard, stop_diverged
    from strata.training.run import RunResult, _metadata, save_final
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

    eval_steps = t.eval_steps if t.eval_steps and t.eval_steps > 0 else None
    evals = [e for e in examples.evals if len(e.dataset)]
    eval_dataset: Any = None
    if eval_steps and evals:
        eval_dataset = evals[0].dataset if len(evals) == 1 else {e.name: e.dataset for e in evals}
    logging_steps = (
        t.logging_steps or eval_steps or max(1, min(50, t.max_steps // 10 if t.max_steps > 0 else 50))
    )

    guard = NonFiniteGuard(policy=t.nan_policy, skip_limit=t.nan_skip_limit)
    board = RunBoard.open(folder.tensorboard, dist.is_main)  # one event file; closed by board.finish
    callbacks: list[TrainerCallback] = [guard, *(board.callbacks(*_metadata(config, examples, loaded, dist))
                                                 if dist.is_main else [])]

    trainer = build_grpo_trainer(
        loaded.model,
        loaded.tokenizer,
        examples.train,
        eval_dataset,
        reward_funcs=funcs,
        reward_weights=weights,
        reward_model=t.reward_model,
        output_dir=str(folder.checkpoints),
        beta=t.grpo_beta,
        group_size=t.grpo_group_size,
        max_prompt_length=t.max_prompt_length,
        max_completion_length=t.max_completion_length,
        learning_rate=t.rl_learning_rate,
        warmup_steps=t.rl_warmup_steps,
        max_steps=t.max_steps,
        temperature=t.temperature,
        per_device_train_batch_size=t.per_device_train_batch_size,
        seed=t.seed,
        data_seed=t.data_order_seed(),
        num_train_epochs=t.num_train_epochs,
        hub_mirror=config.data.hub_mirror,
        logging_steps=logging_steps,
        report_to=[],
        callbacks=callbacks,
        samples_writer=board.writer,
        per_device_eval_batch_size=t.per_device_eval_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        weight_decay=t.weight_decay,
        lr_scheduler_type=t.lr_scheduler_type,
        max_grad_norm=t.max_grad_norm,
        eval_strategy="steps" if eval_dataset is not None else "no",
        eval_steps=eval_steps,
        save_strategy="steps" if t.save_steps else "no",
        save_steps=t.save_steps or 500,
        save_total_limit=t.save_total_limit,
        bf16=loaded.precision == "bf16",
        fp16=loaded.precision == "fp16",
        use_cpu=loaded.device == "cpu",
        ddp_backend=t.ddp_backend,
        activation_checkpointing=config.model.gradient_checkpointing,
        dataloader_num_workers=t.dataloader_num_workers,
        logging_first_step=True,
        logging_nan_inf_filter=False,  # a NaN loss is logged as NaN
    )
    if progress is not None:
        progress["training"] = True
    train_output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    if guard.divergence is not None:
        board.close()
        stop_diverged(guard, folder, dist.is_main, train_output.metrics)
    final_eval = trainer.evaluate() if eval_dataset is not None else {}
    samples = trainer.strata_samples_callback.history
    metrics: dict[str, Any] = {
        "status": "completed",
        "nonfinite_skips": guard.skipped,
        "train": dict(train_output.metrics),
        "eval": final_eval,
        "rl": summarise_rl_logs(trainer.state.log_history),
        "rewards": {"names": names, "weights": weights, "reward_model": t.reward_model},
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
        },
    }
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
