"""Which ``strata train`` flags each ``--mode`` uses: one table, so no flag is accepted and ignored.

A flag given explicitly (on the command line or in ``--config``) that its mode does not use fails
with one line before anything is read or written. Every Strata field has a row, and so have the
``TrainingArguments``/``GRPOConfig`` fields a mode does not use; any other ``TrainingArguments`` field is
used by every mode (it reaches the trainer untouched), and a ``GRPOConfig``-only field by ``--mode rl``
only. The fields Strata derives itself are refused in every mode (``strata.training.arguments.DERIVED``).
``tests/test_flag_usage.py`` checks the table against the parsers, and ``docs/flags.md`` is this
table printed by :func:`markdown_table`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from strata.errors import StrataError

MODES = ("sft", "pretrain", "rl")
ALL = frozenset(MODES)
TRAINER = frozenset({"sft", "pretrain"})  # transformers' Trainer recipes
RL = frozenset({"rl"})
SFT = frozenset({"sft"})

# flag -> (modes that use it, what to do instead where it is unused)
FLAG_MODES: dict[str, tuple[frozenset[str], str]] = {
    # --- data
    "dataset": (ALL, ""),
    "dataset_config": (ALL, ""),
    "datasets": (ALL, ""),
    "dataset_configs": (ALL, ""),
    "mixture_rates": (ALL, ""),
    "mixture_size": (ALL, ""),
    "train_split": (ALL, ""),
    "eval_split": (ALL, ""),
    "train_splits": (ALL, ""),
    "eval_splits": (ALL, ""),
    "text_column": (ALL, ""),
    "label_column": (ALL, ""),
    "label_names": (ALL, ""),
    "prompt_template": (ALL, ""),
    "task": (ALL, ""),
    "hub_mirror": (ALL, ""),
    "max_length": (TRAINER, "RL bounds prompts and completions with --max_prompt_length/--max_completion_length"),
    "max_train_examples": (ALL, ""),
    "max_eval_examples": (ALL, ""),
    "use_packing": (TRAINER, "GRPO generates its rows; there is nothing to pack"),
    "streaming": (frozenset({"pretrain"}), "fine-tuning splits are loaded whole; cap them with --max_train_examples"),
    # --- model
    "model": (ALL, ""),
    "init": (ALL, ""),
    "tokenizer": (ALL, ""),
    "train_tokenizer": (ALL, ""),
    "use_lora": (ALL, ""),
    "lora_r": (ALL, ""),
    "lora_alpha": (ALL, ""),
    "lora_dropout": (ALL, ""),
    "lora_target_modules": (ALL, ""),
    "merge_lora": (ALL, ""),
    "attn_implementation": (ALL, ""),
    "use_flash_attention": (ALL, ""),
    "precision": (ALL, ""),
    "gradient_checkpointing": (ALL, ""),  # ModelArguments'; TrainingArguments' deprecated twin is hidden
    "load_in_4bit": (ALL, ""),
    "load_in_8bit": (ALL, ""),
    "moe_load_in_4bit": (ALL, ""),
    "moe_load_in_8bit": (ALL, ""),
    "device": (ALL, ""),
    "stratified_type": (ALL, ""),
    "stratum_source": (ALL, ""),
    "match_params": (ALL, ""),
    "match_params_to": (ALL, ""),
    "match_flops_of": (TRAINER, "RL has no single --max_length to match FLOPs per token at; use --match_params"),
    # --- training
    "mode": (ALL, ""),
    "output_dir": (ALL, ""),
    "runs_dir": (ALL, ""),
    "seed": (ALL, ""),
    "data_seed": (ALL, ""),
    "max_steps": (ALL, ""),
    "num_train_epochs": (ALL, ""),
    "per_device_train_batch_size": (ALL, ""),
    "per_device_eval_batch_size": (ALL, ""),
    "gradient_accumulation_steps": (ALL, ""),
    "learning_rate": (ALL, ""),
    "weight_decay": (ALL, ""),
    "warmup_steps": (ALL, ""),
    "lr_scheduler_type": (ALL, ""),
    "max_grad_norm": (ALL, ""),
    "dropout": (ALL, ""),
    "logging_steps": (ALL, ""),
    "eval_steps": (ALL, ""),
    "eval_method": (SFT, "pretraining is evaluated by perplexity, RL by its rewards"),
    "eval_loss": (SFT, "pretraining always reports eval_loss; RL is evaluated by its rewards"),
    "save_steps": (ALL, ""),
    "save_total_limit": (ALL, ""),
    "resume_from_checkpoint": (ALL, ""),
    "load_best_model_at_end": (TRAINER, "GRPO keeps the last policy; pick a checkpoint by its logged reward"),
    "metric_for_best_model": (TRAINER, "GRPO keeps the last policy; pick a checkpoint by its logged reward"),
    "early_stopping_patience": (TRAINER, "GRPO runs its --max_steps; lower them to stop earlier"),
    "dataloader_num_workers": (ALL, ""),
    "nan_policy": (ALL, ""),
    "nan_skip_limit": (ALL, ""),
    "sparse_lm_head": (TRAINER, "GRPO computes its completions' log-probs itself"),
    "multi_gpu": (ALL, ""),
    "nproc_per_node": (ALL, ""),
    "ddp_backend": (ALL, ""),
    "parallelism": (ALL, ""),
    "fsdp_cpu_offload": (TRAINER, "FSDP is not wired into the GRPO trainer; use --parallelism ddp"),
    "hsdp_replicas": (TRAINER, "FSDP is not wired into the GRPO trainer; use --parallelism ddp"),
    "logging_first_step": (ALL, ""),
    "logging_nan_inf_filter": (ALL, ""),
    "train_sampling_strategy": (ALL, ""),
    "include_num_input_tokens_seen": (ALL, ""),
    "disable_tqdm": (ALL, ""),
    "ddp_find_unused_parameters": (ALL, ""),
    # --- reinforcement learning
    "reward_funcs": (RL, "rewards are for --mode rl"),
    "reward_weights": (RL, "rewards are for --mode rl"),  # GRPOConfig's
    "reward_model": (RL, "rewards are for --mode rl"),
    "beta": (RL, "GRPO flags are for --mode rl"),  # GRPOConfig's; --grpo_beta
    "num_generations": (RL, "GRPO flags are for --mode rl"),  # GRPOConfig's; --grpo_group_size
    "max_prompt_length": (RL, "use --max_length"),
    "max_completion_length": (RL, "use --max_length"),  # GRPOConfig's
    "temperature": (RL, "sampling temperature is for RL generations"),  # GRPOConfig's
    "code_execution": (RL, "completions are only executed by the RL code reward"),
    # the seed pipeline's RL spellings (strata.flag_aliases.RENAMED)
    "grpo_beta": (RL, "GRPO flags are for --mode rl"),
    "grpo_group_size": (RL, "GRPO flags are for --mode rl"),
    "rl_learning_rate": (RL, "use --learning_rate"),
    "rl_warmup_steps": (RL, "use --warmup_steps"),
}
GRPO_ONLY = "GRPOConfig options are for --mode rl"


def check_flags_for_mode(mode: str, given: Iterable[str], grpo_only: Callable[[], set[str]] | None = None) -> None:
    """Refuse the first explicitly given flag that ``mode`` does not use (one line, exit 2).

    ``grpo_only`` names GRPOConfig's own fields; it is asked only when a flag has no row (it imports TRL)."""
    for flag in sorted(set(given)):
        row = FLAG_MODES.get(flag)
        if row is None and mode != "rl" and grpo_only is not None and flag in grpo_only():
            row = (RL, GRPO_ONLY)
        if row is None or mode in row[0]:
            continue
        modes, instead = row
        raise StrataError(f"--{flag} is not used by --mode {mode} (only by --mode {'/'.join(m for m in MODES if m in modes)})"
                          f"; {instead}, or drop it")


def check_derived(given: Iterable[str], derived: dict[str, str], why: str = "is set by strata itself") -> None:
    """Refuse a TrainingArguments field that Strata sets itself (or does not wire), naming what to do instead."""
    for flag in sorted(set(given) & set(derived)):
        raise StrataError(f"--{flag} {why}; {derived[flag]}")


def markdown_table() -> str:
    """The table as docs/flags.md prints it."""
    lines = ["| flag | " + " | ".join(MODES) + " | where unused |", "|---|" + "---|" * len(MODES) + "---|"]
    for flag, (modes, instead) in FLAG_MODES.items():
        marks = " | ".join("yes" if m in modes else "refused" for m in MODES)
        lines.append(f"| `--{flag}` | {marks} | {instead} |")
    return "\n".join(lines) + "\n"
