"""Every flag of ``strata train`` / ``train.py`` / ``strata eval``, as dataclasses.

Flags are parsed with transformers' ``HfArgumentParser``; ``--config run.yaml`` (or ``.json``)
supplies defaults that command-line flags override. An unknown key in a config file is an error.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from strata.config_file import load_config_file
from strata.errors import StrataError
from strata.flag_aliases import add_alias_help, expand_argv
from strata.flag_usage import MODES, check_flags_for_mode
from strata.models.arguments import ModelArguments

DEFAULT_DATASET = "strata/synthetic-strata"
__all__ = ["MODES", "DataArguments", "ModelArguments", "RunConfig", "TrainArguments", "parse_run_config"]


@dataclass
class DataArguments:
    """Which data, how it is split, formatted, mixed, tokenized and packed."""

    dataset: str = field(
        default=DEFAULT_DATASET,
        metadata={"help": "Dataset id or alias (see `strata datasets`), or a local jsonl/csv/parquet file or folder."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset config, e.g. sst2 for glue."})
    datasets: list[str] | None = field(
        default=None, metadata={"help": "Several datasets to mix (with --mixture_rates); overrides --dataset."}
    )
    dataset_configs: list[str] | None = field(
        default=None, metadata={"help": "One config per --datasets entry; write None for no config."}
    )
    mixture_rates: list[float] | None = field(
        default=None, metadata={"help": "Sampling rate per --datasets entry; positive, summing to 1."}
    )
    train_split: str | None = field(
        default=None, metadata={"help": "Training split in datasets' split syntax, e.g. 'train[:90%%]', 'test[:10000]'."}
    )
    eval_split: str | None = field(
        default=None, metadata={"help": "Evaluation split, e.g. 'validation' or 'train[90%%:]'. Default: from the spec."}
    )
    train_splits: list[str] | None = field(
        default=None,
        metadata={"help": "One training split per --datasets entry (None: --train_split or the spec's), "
                  "e.g. for TweetEval 'test[:10000]'."},
    )
    eval_splits: list[str] | None = field(
        default=None,
        metadata={"help": "One evaluation split per --datasets entry (None: --eval_split or the spec's)."},
    )
    text_column: str | None = field(default=None, metadata={"help": "Text column of a local dataset."})
    label_column: str | None = field(default=None, metadata={"help": "Label column of a local dataset."})
    label_names: list[str] | None = field(
        default=None, metadata={"help": "Label words of a local dataset, in label-id order."}
    )
    prompt_template: str | None = field(
        default=None, metadata={"help": "Prompt template with {text} (and {text2} for pairs) placeholders."}
    )
    task: str = field(
        default="auto",
        metadata={"help": "Task family: auto (from the spec), classification, multiple_choice, qa, math, code, "
                  "instruction, pretrain."},
    )
    hub_mirror: str | None = field(
        default=None, metadata={"help": "Local mirror folder in the hub's layout (default: $STRATA_HUB_MIRROR)."}
    )
    max_length: int = field(default=256, metadata={"help": "Maximum tokens per training row."})
    max_train_examples: int | None = field(default=None, metadata={"help": "Cap the training examples."})
    max_eval_examples: int | None = field(default=300, metadata={"help": "Cap the evaluation examples."})
    use_packing: bool = field(
        default=False, metadata={"help": "Pack several examples per row (position ids restart, no cross-attention)."}
    )
    streaming: str = field(
        default="auto",
        metadata={"help": "Read the training data as a stream (datasets' IterableDataset), tokenized and packed on "
                  "the fly: auto (on for corpora too large to download) | true (also just --streaming) | false. "
                  "Needs --max_steps; pretraining only.",
                  "nargs": "?", "const": "true"},
    )


@dataclass
class TrainArguments:
    """How training runs, logs, evaluates and checkpoints."""

    mode: str = field(default="sft", metadata={"help": "sft | pretrain | rl."})
    output_dir: str | None = field(
        default=None, metadata={"help": "Run folder (default: runs/<date>_<time>_<model>_<data>_<mode>_...)."}
    )
    runs_dir: str = field(default="runs", metadata={"help": "Parent folder of named run folders."})
    seed: int = field(default=42, metadata={"help": "Seed for data order, initialisation and sampling."})
    data_seed: int | None = field(
        default=None,
        metadata={"help": "Seed for data order, mixing and evaluation subsets only (default: --seed); --seed "
                  "then seeds initialisation and dropout, so runs can share data but not init."},
    )
    max_steps: int = field(default=600, metadata={"help": "Optimizer steps (-1: use --num_train_epochs)."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "Epochs when --max_steps is -1."})
    per_device_train_batch_size: int = field(
        default=16,
        metadata={"aliases": ["--batch_size"],
                  "help": "Batch size per device (--batch_size: the same, and it also sets "
                          "--per_device_eval_batch_size unless that is given)."},
    )
    per_device_eval_batch_size: int = field(default=16, metadata={"help": "Evaluation batch size per device."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-batches per optimizer step."})
    learning_rate: float | None = field(
        default=None,
        metadata={"help": "Peak learning rate (sft/pretrain); default 3e-3 for models built from scratch, "
                  "5e-5 for pretrained weights."},
    )
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    warmup_steps: int = field(default=20, metadata={"help": "Linear warm-up steps."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "transformers scheduler name."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm."})
    dropout: float | None = field(default=None, metadata={"help": "Override the model's dropout (scratch models)."})
    logging_steps: int | None = field(default=None, metadata={"help": "Log every N steps (default: --eval_steps)."})
    eval_steps: int = field(
        default=200,
        metadata={"help": "Evaluate every N steps and at the end (0: only at the end; in --mode rl, where evaluation "
                  "generates, 0 means no evaluation)."},
    )
    eval_method: str = field(default="loglik", metadata={"help": "loglik (label likelihood) | generate."})
    eval_loss: bool = field(
        default=False,
        metadata={"help": "Also run the token-loss pass (eval_loss, eval_perplexity) when evaluating with task metrics; "
                  "on by itself for a loss --metric_for_best_model."},
    )
    save_steps: int = field(default=0, metadata={"help": "Checkpoint every N steps (0: no checkpoints)."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Keep at most N checkpoints."})
    resume_from_checkpoint: str | None = field(
        default=None, metadata={"help": "'latest' or a checkpoint path: restores model, optimizer, RNG, data position."}
    )
    load_best_model_at_end: bool = field(default=False, metadata={"help": "Reload the best checkpoint at the end."})
    metric_for_best_model: str | None = field(default=None, metadata={"help": "e.g. eval_accuracy or eval_loss."})
    early_stopping_patience: int | None = field(
        default=None, metadata={"help": "Stop after N evaluations without improvement."}
    )
    dataloader_num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes."})
    nan_policy: str = field(
        default="stop",
        metadata={"help": "A non-finite loss or gradient: stop (drop that update, end the run, exit 1, no final/) "
                  "| skip_step (drop that update and go on; stop after --nan_skip_limit in a row)."},
    )
    nan_skip_limit: int = field(
        default=3, metadata={"help": "With --nan_policy skip_step: non-finite steps in a row that end the run."}
    )
    sparse_lm_head: str = field(
        default="auto",
        metadata={"help": "auto: in training, run the LM head and cross-entropy only at positions with a label "
                  "(same loss; chunked when there are many, so [tokens x vocab] logits are never held whole), "
                  "where that is exact for the model, else the full head | off: always the full head."},
    )
    # Several processes (docs/distributed.md).
    multi_gpu: bool = field(
        default=False,
        metadata={"help": "Train on every visible GPU: without a launcher, re-run this command as one worker per GPU "
                  "through torch.distributed.run; under torchrun, check there are at least 2 processes."},
    )
    nproc_per_node: int | None = field(
        default=None,
        metadata={"help": "With --multi_gpu and no launcher: how many workers (default: one per visible GPU; with "
                  "--device cpu, N gloo workers)."},
    )
    ddp_backend: str | None = field(
        default=None,
        metadata={"help": "Process-group backend of a multi-process run: nccl (CUDA) | gloo (default: nccl on CUDA, "
                  "gloo on CPU)."},
    )
    # Reinforcement learning (GRPO through TRL).
    reward_funcs: list[str] | None = field(
        default=None, metadata={"help": "Comma or space separated reward names (default: by task family)."}
    )
    reward_weights: list[float] | None = field(default=None, metadata={"help": "One weight per reward."})
    reward_model: str | None = field(default=None, metadata={"help": "Sequence-classification reward model."})
    grpo_beta: float = field(default=0.1, metadata={"help": "KL coefficient."})
    grpo_group_size: int = field(default=2, metadata={"help": "Generations per prompt."})
    max_prompt_length: int = field(default=512, metadata={"help": "Prompt tokens kept for RL."})
    max_completion_length: int = field(default=512, metadata={"help": "Generated tokens per completion in RL."})
    rl_learning_rate: float = field(default=1e-6, metadata={"help": "Learning rate in RL mode."})
    rl_warmup_steps: int = field(default=100, metadata={"help": "Warm-up steps in RL mode."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature for RL generations."})
    code_execution: bool = field(
        default=False, metadata={"help": "Let the code reward run completions in a bubblewrap sandbox (no network, no host files; see docs/rl.md)."}
    )

    def data_order_seed(self) -> int:
        """The seed of everything data-side: --data_seed when given, else --seed."""
        return self.seed if self.data_seed is None else self.data_seed


ALL_ARGUMENT_CLASSES = (DataArguments, ModelArguments, TrainArguments)


@dataclass
class RunConfig:
    """All parsed arguments of one run."""

    data: DataArguments
    model: ModelArguments
    train: TrainArguments

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self.data), **asdict(self.model), **asdict(self.train)}


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


def build_parser(classes: tuple[type, ...] = ALL_ARGUMENT_CLASSES, prog: str = "strata train"):
    from transformers import HfArgumentParser

    parser = HfArgumentParser(classes, prog=prog)
    parser.add_argument("--config", default=None, help="YAML or JSON file of flag values (flags given here win).")
    add_alias_help(parser)
    return parser


def parse_run_config(argv: list[str] | None = None, prog: str = "strata train") -> RunConfig:
    """Parse flags (and an optional --config file) into a validated ``RunConfig``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    config_path, rest = _split_config_flag(argv)
    parser = build_parser(prog=prog)
    from_file = load_config_file(config_path, ALL_ARGUMENT_CLASSES) if config_path is not None else {}
    rest = expand_argv(rest, file_keys=set(from_file))
    given = given_flags(rest) | set(from_file)
    if from_file:
        parser.set_defaults(**from_file)
    outputs = parser.parse_args_into_dataclasses(args=rest, return_remaining_strings=True)
    data, model, train, _extra = outputs[0], outputs[1], outputs[2], outputs[-1]
    if _extra:
        raise StrataError(f"unrecognised argument(s): {' '.join(_extra)}; see `{prog} --help`")
    merged = normalise_lists({**asdict(data), **asdict(model), **asdict(train)})
    config = RunConfig(
        data=DataArguments(**{f.name: merged[f.name] for f in fields(DataArguments)}),
        model=ModelArguments(**{f.name: merged[f.name] for f in fields(ModelArguments)}),
        train=TrainArguments(**{f.name: merged[f.name] for f in fields(TrainArguments)}),
    )
    if config.train.mode in MODES:  # an unknown mode is validate()'s to report
        check_flags_for_mode(config.train.mode, given)
    validate(config)
    from strata.data.streaming import check_streaming_flags

    check_streaming_flags(config, given)
    return config


def given_flags(argv: list[str]) -> set[str]:
    """Names of the flags written in ``argv`` (``--a_b x``, ``--a-b=x``), as dataclass field names."""
    return {arg[2:].split("=", 1)[0].replace("-", "_") for arg in argv if arg.startswith("--") and len(arg) > 2}


def validate(config: RunConfig) -> None:
    """Cheap checks that need no data or model, so bad flags fail before anything loads."""
    t, m, d = config.train, config.model, config.data
    if t.mode not in MODES:
        raise StrataError(f"--mode {t.mode!r} is not one of {', '.join(MODES)}")
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
    if t.ddp_backend not in (None, "nccl", "gloo"):
        raise StrataError(f"--ddp_backend {t.ddp_backend!r} is not one of nccl, gloo")
    if sum([m.load_in_4bit, m.load_in_8bit, m.moe_load_in_4bit, m.moe_load_in_8bit]) > 1:
        raise StrataError("choose at most one of --load_in_4bit, --load_in_8bit, --moe_load_in_4bit, --moe_load_in_8bit")
    if t.eval_method not in ("loglik", "generate"):
        raise StrataError(f"--eval_method {t.eval_method!r} is not one of loglik, generate")
    if d.max_length < 8:
        raise StrataError(f"--max_length {d.max_length} is too small; use at least 8")
    if t.per_device_train_batch_size < 1 or t.gradient_accumulation_steps < 1:
        raise StrataError("--per_device_train_batch_size and --gradient_accumulation_steps must be at least 1")
    if t.max_steps == 0 or t.max_steps < -1:
        raise StrataError(f"--max_steps {t.max_steps} is not a step count; pass a positive number, or -1 to use "
                          "--num_train_epochs")
    if t.max_steps == -1 and t.num_train_epochs <= 0:
        raise StrataError(f"--num_train_epochs {t.num_train_epochs} trains nothing; pass a positive number")
    for flag in ("max_train_examples", "max_eval_examples"):
        value = getattr(d, flag)
        if value is not None and value < 1:
            raise StrataError(f"--{flag} {value} keeps no examples; pass a positive number, or leave it out for the "
                              "whole split")
    if m.use_lora and m.lora_r < 1:
        raise StrataError(f"--lora_r {m.lora_r} must be a positive rank (e.g. 8, 16 or 64)")
    if m.merge_lora and not m.use_lora:
        raise StrataError("--merge_lora needs --use_lora")
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
    if d.datasets is not None:
        from strata.data.mixture import validate_mixture

        configs = d.dataset_configs if d.dataset_configs is not None else [None] * len(d.datasets)
        if d.mixture_rates is None:
            raise StrataError("--datasets needs --mixture_rates, one positive rate per dataset, summing to 1")
        validate_mixture(d.datasets, configs, d.mixture_rates)
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
