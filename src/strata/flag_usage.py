"""Which ``strata train`` flags each ``--mode`` uses: one table, so no flag is accepted and ignored.

A flag given explicitly (on the command line or in ``--config``) that its mode does not use fails
with one line before anything is read or written. Every field of the argument dataclasses has a row
(``tests/test_flag_usage.py`` checks the table against the parser), and ``docs/flags.md`` is this
table printed by :func:`markdown_table`.
"""

from __future__ import annotations

from collections.abc import Iterable

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
    "gradient_checkpointing": (ALL, ""),
    "load_in_4bit": (ALL, ""),
    "load_in_8bit": (ALL, ""),
    "moe_load_in_4bit": (ALL, ""),
    "moe_load_in_8bit": (ALL, ""),
    "device": (ALL, ""),
    "stratified_type": (ALL, ""),
    "stratum_source": (ALL, ""),
    "match_params": (ALL, ""),
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
    "learning_rate": (TRAINER, "use --rl_learning_rate"),
    "weight_decay": (ALL, ""),
    "warmup_steps": (TRAINER, "use --rl_warmup_steps"),
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
    # --- reinforcement learning
    "reward_funcs": (RL, "rewards are for --mode rl"),
    "reward_weights": (RL, "rewards are for --mode rl"),
    "reward_model": (RL, "rewards are for --mode rl"),
    "grpo_beta": (RL, "GRPO flags are for --mode rl"),
    "grpo_group_size": (RL, "GRPO flags are for --mode rl"),
    "max_prompt_length": (RL, "use --max_length"),
    "max_completion_length": (RL, "use --max_length"),
    "rl_learning_rate": (RL, "use --learning_rate"),
    "rl_warmup_steps": (RL, "use --warmup_steps"),
    "temperature": (RL, "sampling temperature is for RL generations"),
    "code_execution": (RL, "completions are only executed by the RL code reward"),
}


def check_flags_for_mode(mode: str, given: Iterable[str]) -> None:
    """Refuse the first explicitly given flag that ``mode`` does not use (one line, exit 2)."""
    for flag in sorted(set(given)):
        row = FLAG_MODES.get(flag)
        if row is None or mode in row[0]:
            continue
        modes, instead = row
        raise StrataError(f"--{flag} is not used by --mode {mode} (only by --mode {'/'.join(m for m in MODES if m in modes)})"
                          f"; {instead}, or drop it")


def markdown_table() -> str:
    """The table as docs/flags.md prints it."""
    lines = ["| flag | " + " | ".join(MODES) + " | where unused |", "|---|" + "---|" * len(MODES) + "---|"]
    for flag, (modes, instead) in FLAG_MODES.items():
        marks = " | ".join("yes" if m in modes else "refused" for m in MODES)
        lines.append(f"| `--{flag}` | {marks} | {instead} |")
    return "\n".join(lines) + "\n"
