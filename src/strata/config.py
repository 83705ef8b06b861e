"""The command-line layer of ``strata train`` / ``train.py`` / ``strata eval``: parsing and cross-field checks.

Flags are parsed with transformers' ``HfArgumentParser`` over (DataArguments, ModelArguments, the mode's
arguments class: ``strata.training.arguments``); ``--config run.yaml`` (or ``.json``) supplies defaults that
command-line flags override. An unknown key in a config file is an error. Everything below this layer receives
the parsed values (a ``RunConfig``) and never parses again.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from strata.config_file import check_config_values, read_config_file
from strata.data.arguments import DataArguments
from strata.errors import StrataError
from strata.flag_aliases import ALIASES, add_alias_help, expand_argv
from strata.flag_usage import MODES, check_derived, check_flags_for_mode
from strata.models.arguments import ModelArguments

if TYPE_CHECKING:
    from strata.training.arguments import RunConfig

__all__ = ["MODES", "DataArguments", "ModelArguments", "argument_classes", "parse_run_config"]


def argument_classes(mode: str = "sft") -> tuple[type, ...]:
    """The dataclasses one ``--mode`` parses into: data, model, and the mode's trainer arguments."""
    from strata.training.arguments import arguments_class

    return (DataArguments, ModelArguments, arguments_class(mode))


def _split_config_flag(argv: list[str]) -> tuple[str | None, list[str]]:
    """Pull ``--config FILE`` out of argv (the remaining flags override the file)."""
    rest: list[str] = []
    config_path = None
    it = iter(range(len(argv)))
    for i in it:
        arg = argv[i]
        if arg == "--config":
            if i + 1 >= len(argv):
                raise StrataError("--config needs a file path, e.g. --config run.yaml")
            config_path = argv[i + 1]
            next(it, None)
        elif arg.startswith("--config="):
            config_path = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    return config_path, rest


def normalise_lists(values: dict[str, Any]) -> dict[str, Any]:
    """Accept ``--reward_funcs a,b`` as well as ``a b``, and 'None' inside config lists."""
    out = dict(values)
    for key in ("reward_funcs", "lora_target_modules", "datasets", "label_names"):
        if out.get(key):
            items: list[str] = []
            for item in out[key]:
                items.extend(part for part in str(item).split(",") if part)
            out[key] = items
    for key in ("dataset_configs", "train_splits", "eval_splits"):
        if out.get(key):
            out[key] = [None if str(c) in ("None", "none", "") else str(c) for c in out[key]]
    return out


def build_parser(classes: tuple[type, ...] | None = None, prog: str = "strata train", mode: str = "sft"):
    from transformers import HfArgumentParser

    parser = HfArgumentParser(classes or argument_classes(mode), prog=prog)
    parser.add_argument("--config", default=None, help="YAML or JSON file of flag values (flags given here win).")
    add_alias_help(parser, mode)

    def one_line(message: str) -> None:  # argparse would print the whole usage (150+ TrainingArguments flags)
        raise StrataError(f"{' '.join(message.split())[:400]}; see `{prog} --help`")

    parser.error = one_line  # type: ignore[method-assign]
    return parser


def _mode_of(argv: list[str], from_file: dict[str, Any]) -> str:
    """--mode as the command line (last one wins) or else the config file gives it; sft by default."""
    mode = from_file.get("mode", "sft")
    for i, arg in enumerate(argv):
        if arg == "--mode" and i + 1 < len(argv):
            mode = argv[i + 1]
        elif arg.startswith("--mode="):
            mode = arg.split("=", 1)[1]
    return str(mode)


def parse_run_config(argv: list[str] | None = None, prog: str = "strata train") -> RunConfig:
    """Parse flags (and an optional --config file) into a validated ``RunConfig``."""
    from strata.training.arguments import (
        DERIVED,
        NOT_WIRED,
        RunConfig,
        check_enum_values,
        check_grpo_arguments,
        grpo_only_fields,
        raw_arguments,
    )

    argv = list(sys.argv[1:] if argv is None else argv)
    config_path, rest = _split_config_flag(argv)
    raw_file = read_config_file(config_path) if config_path is not None else {}
    mode = _mode_of(rest, raw_file)
    given = given_flags(rest) | set(raw_file)
    if mode in MODES:  # an unknown mode is validate()'s to report
        check_flags_for_mode(mode, given, grpo_only_fields)
    check_derived(given - set(ALIASES), DERIVED)
    check_derived(given, NOT_WIRED, why="is not wired into strata train")
    classes = argument_classes(mode if mode in MODES else "sft")
    from_file = check_config_values(raw_file, classes, config_path) if config_path is not None else {}
    rest = expand_argv(rest, file_keys=set(from_file))
    parser = build_parser(classes, prog=prog, mode=mode)
    if from_file:
        parser.set_defaults(**from_file)
    with raw_arguments():  # TrainingArguments.__post_init__ runs once the derived fields are known
        outputs = parser.parse_args_into_dataclasses(args=rest, return_remaining_strings=True)
    data, model, train, _extra = outputs[0], outputs[1], outputs[2], outputs[-1]
    if _extra:
        raise StrataError(f"unrecognised argument(s): {' '.join(_extra)}; see `{prog} --help`")
    for obj in (data, model, train):
        for key, value in normalise_lists(vars(obj)).items():
            setattr(obj, key, value)
    config = RunConfig(data=data, model=model, train=train)
    validate(config)
    check_enum_values(train)
    if mode == "rl":
        check_grpo_arguments(train)
    from strata.data.streaming import check_streaming_flags

    check_streaming_flags(config, given)
    return config


def given_flags(argv: list[str]) -> set[str]:
    """Names of the flags written in ``argv`` (``--a_b x``, ``--a-b=x``), as dataclass field names."""
    return {arg[2:].split("=", 1)[0].replace("-", "_") for arg in argv if arg.startswith("--") and len(arg) > 2}


def validate(config: Any) -> None:
    """Cheap checks that need no data or model, so bad flags fail before anything loads."""
    if config.train.mode not in MODES:
        raise StrataError(f"--mode {config.train.mode!r} is not one of {', '.join(MODES)}")
    _validate_model(config.model)
    _validate_train(config.train)
    _validate_data(config.data)


def _validate_model(m: ModelArguments) -> None:
    if m.init not in ("auto", "pretrained", "scratch"):
        raise StrataError(f"--init {m.init!r} is not one of auto, pretrained, scratch")
    if m.precision not in ("auto", "bf16", "fp16", "fp32"):
        raise StrataError(f"--precision {m.precision!r} is not one of auto, bf16, fp16, fp32")
    if m.attn_implementation not in ("auto", "eager", "sdpa", "flash_attention_2"):
        raise StrataError(
            f"--attn_implementation {m.attn_implementation!r} is not one of auto, eager, sdpa, flash_attention_2"
        )
    if m.use_flash_attention and m.attn_implementation not in ("auto", "flash_attention_2"):
        raise StrataError("--use_flash_attention conflicts with --attn_implementation "
                          f"{m.attn_implementation}; pass only one of them")
    if m.device not in ("auto", "cuda", "mps", "cpu"):
        raise StrataError(f"--device {m.device!r} is not one of auto, cuda, mps, cpu")
    if sum([m.load_in_4bit, m.load_in_8bit, m.moe_load_in_4bit, m.moe_load_in_8bit]) > 1:
        raise StrataError("choose at most one of --load_in_4bit, --load_in_8bit, --moe_load_in_4bit, --moe_load_in_8bit")
    if m.use_lora and m.lora_r < 1:
        raise StrataError(f"--lora_r {m.lora_r} must be a positive rank (e.g. 8, 16 or 64)")
    if m.merge_lora and not m.use_lora:
        raise StrataError("--merge_lora needs --use_lora")


def _validate_train(t: Any) -> None:
    if t.ddp_backend not in (None, "nccl", "gloo"):
        raise StrataError(f"--ddp_backend {t.ddp_backend!r} is not one of nccl, gloo")
    if t.eval_method not in ("loglik", "generate"):
        raise StrataError(f"--eval_method {t.eval_method!r} is not one of loglik, generate")
    if t.per_device_train_batch_size < 1 or t.gradient_accumulation_steps < 1:
        raise StrataError("--per_device_train_batch_size and --gradient_accumulation_steps must be at least 1")
    if t.max_steps == 0 or t.max_steps < -1:
        raise StrataError(f"--max_steps {t.max_steps} is not a step count; pass a positive number, or -1 to use "
                          "--num_train_epochs")
    if t.max_steps == -1 and t.num_train_epochs <= 0:
        raise StrataError(f"--num_train_epochs {t.num_train_epochs} trains nothing; pass a positive number")
    if t.load_best_model_at_end and not t.save_steps:
        raise StrataError("--load_best_model_at_end needs checkpoints: pass --save_steps (a multiple of --eval_steps)")
    if t.nan_policy not in ("stop", "skip_step"):
        raise StrataError(f"--nan_policy {t.nan_policy!r} is not one of stop, skip_step")
    if t.sparse_lm_head not in ("auto", "off"):
        raise StrataError(f"--sparse_lm_head {t.sparse_lm_head!r} is not one of auto, off")
    if t.nan_skip_limit < 1:
        raise StrataError(f"--nan_skip_limit {t.nan_skip_limit} must be at least 1")
    if t.early_stopping_patience is not None and not t.eval_steps:
        raise StrataError("--early_stopping_patience needs periodic evaluation: pass --eval_steps N")


def _validate_data(d: DataArguments) -> None:
    if d.max_length < 8:
        raise StrataError(f"--max_length {d.max_length} is too small; use at least 8")
    for flag in ("max_train_examples", "max_eval_examples"):
        value = getattr(d, flag)
        if value is not None and value < 1:
            raise StrataError(f"--{flag} {value} keeps no examples; pass a positive number, or leave it out for the "
                              "whole split")
    if d.datasets is not None:
        from strata.data.mixture import validate_mixture

        configs = d.dataset_configs if d.dataset_configs is not None else [None] * len(d.datasets)
        if d.mixture_rates is None:
            raise StrataError("--datasets needs --mixture_rates, one positive rate per dataset, summing to 1")
        validate_mixture(d.datasets, configs, d.mixture_rates)
        if d.mixture_size is not None and d.mixture_size < 1:
            raise StrataError(f"--mixture_size {d.mixture_size} must be a positive number of rows")
    elif d.mixture_size is not None:
        raise StrataError("--mixture_size sizes a mixture of --datasets; for one dataset use --max_train_examples")
    elif d.mixture_rates is not None or d.dataset_configs is not None:
        raise StrataError("--mixture_rates/--dataset_configs need --datasets (use --dataset_config for one dataset)")
    for flag in ("train_splits", "eval_splits"):
        values = getattr(d, flag)
        if values is None:
            continue
        if d.datasets is None:
            raise StrataError(f"--{flag} needs --datasets (use --{flag[:-1]} for one dataset)")
        if len(values) != len(d.datasets):
            raise StrataError(f"--{flag} has {len(values)} entries but --datasets has {len(d.datasets)}; give one "
                              "split per dataset (None for the default)")
