"""How training runs: transformers' ``TrainingArguments`` (TRL's ``GRPOConfig`` for ``--mode rl``) plus Strata's fields.

The parsed object *is* what ``Trainer``/``GRPOTrainer`` receive: every ``TrainingArguments`` field is a flag and a
``--config`` key that reaches the trainer untouched, except the few Strata derives itself (``DERIVED``: the
checkpoint folder, precision, evaluation and save strategies, ...), which are refused when given. Strata's own
fields live in :class:`StrataArgumentsMixin`, grouped as TRL documents its configs; defaults Strata chooses
differently from transformers are redefined there as fields, so ``--help`` shows the value a run uses.

Parsing builds the objects *raw* (:func:`raw_arguments`): ``TrainingArguments.__post_init__`` sets up
accelerate's device state, which must wait for the process group (``--ddp_backend``) and for ``--device``
(``use_cpu``). :func:`finish` fills the derived fields and runs it once (``dataclasses.replace``).
"""

from __future__ import annotations

import contextlib
import dataclasses
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from typing import Any

from transformers import TrainingArguments
from trl import GRPOConfig

from strata.errors import StrataError

_RAW: ContextVar[bool] = ContextVar("strata_raw_arguments", default=False)

# TrainingArguments fields Strata sets itself -> the Strata flag to use instead (given explicitly: refused).
DERIVED: dict[str, str] = {
    "use_cpu": "use --device cpu",
    "eval_strategy": "use --eval_steps N (0: evaluate only at the end)",
    "save_strategy": "use --save_steps N (0: no checkpoints)",
    "report_to": "it writes TensorBoard events to RUN/tensorboard; drop it",
    "run_name": "the run folder names the run; use --output_dir",
    "activation_checkpointing": "use --gradient_checkpointing",
    "remove_unused_columns": "its collators and GRPO's rewards read every column; drop it",
    "do_train": "strata train always trains; drop it",
    "do_eval": "use --eval_steps",
    "do_predict": "use strata eval RUN",
}

# TrainingArguments fields that would run, but not as asked (given explicitly: refused).
NOT_WIRED: dict[str, str] = {
    # Passed through they would run, but not as asked: the run's final/ is saved by Strata (unwrapped), so a
    # sharded engine would save one rank's shard, and a hub push would upload checkpoints/, not final/.
    "fsdp": "Trainer's FSDP runs as DDP on CPU and final/ would hold one rank's shard; use --parallelism fsdp "
            "(or hsdp) with --fsdp_cpu_offload (docs/distributed.md)",
    "fsdp_config": "use --parallelism fsdp|hsdp, --fsdp_cpu_offload, --gradient_checkpointing",
    "deepspeed": "DeepSpeed is not wired into Strata's saving yet; use DDP: torchrun or --multi_gpu",
    "parallelism_config": "tensor/context parallelism is not wired into Strata's saving yet; use DDP",
    "push_to_hub": "the Trainer would push RUN/checkpoints, not the model in final/; after the run, upload it "
                   "with `hf upload REPO_ID RUN/final`",
    "project": "it only names a trackio project, and strata reports to TensorBoard only; drop it",
    "trackio_space_id": "strata reports to TensorBoard only; drop it",
    "trackio_bucket_id": "strata reports to TensorBoard only; drop it",
    "trackio_static_space_id": "strata reports to TensorBoard only; drop it",
}


@contextlib.contextmanager
def raw_arguments():
    """Inside: argument objects are built without ``__post_init__`` (no device set-up, no trainer checks)."""
    token = _RAW.set(True)
    try:
        yield
    finally:
        _RAW.reset(token)


@dataclass
class StrataArgumentsMixin:
    """Strata's training fields, and the defaults it chooses differently from transformers."""

    # --- what to train and where the run lives
    mode: str = field(default="sft", metadata={"help": "sft | pretrain | rl."})
    output_dir: str | None = field(
        default=None, metadata={"help": "Run folder (default: runs/<date>_<time>_<model>_<data>_<mode>_...); "
                                "checkpoints go to its checkpoints/."}
    )
    runs_dir: str = field(default="runs", metadata={"help": "Parent folder of named run folders."})
    data_seed: int | None = field(
        default=None,
        metadata={"help": "Seed for data order, mixing and evaluation subsets only (default: --seed); --seed "
                  "then seeds initialisation and dropout, so runs can share data but not init."},
    )
    dropout: float | None = field(default=None, metadata={"help": "Override the model's dropout (scratch models)."})

    # --- the schedule (transformers' fields, Strata's defaults)
    max_steps: int = field(default=600, metadata={"help": "Optimizer steps (-1: use --num_train_epochs)."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "Epochs when --max_steps is -1."})
    per_device_train_batch_size: int = field(
        default=16,
        metadata={"aliases": ["--batch_size"],
                  "help": "Batch size per device (--batch_size: the same, and it also sets "
                          "--per_device_eval_batch_size unless that is given)."},
    )
    per_device_eval_batch_size: int = field(default=16, metadata={"help": "Evaluation batch size per device."})
    warmup_steps: float = field(default=20, metadata={"help": "Linear warm-up steps."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "transformers scheduler name."})
    logging_steps: float | None = field(default=None, metadata={"help": "Log every N steps (default: --eval_steps)."})
    logging_first_step: bool = field(default=True, metadata={"help": "Log the first step's loss too."})
    logging_nan_inf_filter: bool = field(
        default=False, metadata={"help": "Replace a NaN/inf loss by the running average in the logs (Strata: off, "
                                 "a NaN loss is logged as NaN)."})
    eval_steps: int = field(
        default=200,
        metadata={"help": "Evaluate every N steps and at the end (0: only at the end; in --mode rl, where evaluation "
                  "generates, 0 means no evaluation)."},
    )
    save_steps: int = field(default=0, metadata={"help": "Checkpoint every N steps (0: no checkpoints)."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Keep at most N checkpoints."})
    resume_from_checkpoint: str | None = field(
        default=None, metadata={"help": "'latest' or a checkpoint path: restores model, optimizer, RNG, data position."}
    )
    # The data set is shuffled once with --seed; sequential sampling keeps one order for every world size, so
    # 2-process DDP sees exactly the batches a 1-process run with 2x batch sees.
    train_sampling_strategy: str = field(
        default="sequential", metadata={"help": "sequential (Strata: rows are shuffled once by the data pipeline) | "
                                        "random | group_by_length."})
    include_num_input_tokens_seen: str = field(  # str: argparse would run "non_padding" through str2bool
        default="non_padding", metadata={"help": "Count input tokens seen: no | all | non_padding."})
    disable_tqdm: bool | None = field(default=False, metadata={"help": "Hide the progress bar."})
    ddp_find_unused_parameters: bool | None = field(
        default=False, metadata={"help": "DDP's find_unused_parameters (Strata: off; every parameter gets a gradient)."})

    # --- evaluation and stopping
    eval_method: str = field(default="loglik", metadata={"help": "loglik (label likelihood) | generate."})
    eval_loss: bool = field(
        default=False,
        metadata={"help": "Also run the token-loss pass (eval_loss, eval_perplexity) when evaluating with task metrics; "
                  "on by itself for a loss --metric_for_best_model."},
    )
    early_stopping_patience: int | None = field(
        default=None, metadata={"help": "Stop after N evaluations without improvement."}
    )

    # --- numerical guards and the LM head
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

    # --- several processes (docs/distributed.md)
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
    parallelism: str = field(
        default="auto",
        metadata={"help": "How the model is spread over devices: auto (one device: none; several processes on one "
                  "node: ddp when weights + grads + AdamW fit in one GPU, else fsdp; on CPU ddp; several nodes: "
                  "hsdp) | none | dp (DataParallel: one process, several GPUs) | ddp | fsdp (FSDP2 fully_shard per "
                  "transformer block) | hsdp (shard within a node, replicate across nodes). The choice and its "
                  "reason are logged and in metrics.json run.parallelism."},
    )
    fsdp_cpu_offload: bool = field(
        default=False, metadata={"help": "With --parallelism fsdp|hsdp on CUDA: keep the shards, their gradients and "
                                 "the optimizer step in CPU memory (FSDP2 CPUOffloadPolicy)."})
    hsdp_replicas: int | None = field(
        default=None, metadata={"help": "With --parallelism hsdp: replicas of the 2-D (replicate, shard) mesh "
                                "(default: the number of nodes); processes / replicas shard each copy."})
    local_rank: int = field(
        default=-1, metadata={"help": "set by `python -m torch.distributed.launch`; checked against $LOCAL_RANK, "
                              "otherwise unused"})

    # --- precision: --precision decides; these are its older spellings
    fp16: bool = field(default=False, metadata={"help": "same as --precision fp16"})
    bf16: bool = field(default=False, metadata={"help": "same as --precision bf16"})

    # --- reinforcement learning (GRPO through TRL); kept in every mode so args.json always has them
    reward_funcs: list[str] | None = field(
        default=None, metadata={"help": "Comma or space separated reward names (default: by task family)."}
    )
    reward_model: str | None = field(default=None, metadata={"help": "Sequence-classification reward model."})
    max_prompt_length: int = field(default=512, metadata={"help": "Prompt tokens kept for RL (TRL 1.16 has no "
                                                                   "such field; Strata truncates from the left)."})
    code_execution: bool = field(
        default=False, metadata={"help": "Let the code reward run completions in a bubblewrap sandbox (no network, "
                                 "no host files; see docs/rl.md)."}
    )

    # --- hidden: same names as ModelArguments/DataArguments flags (Strata's meaning wins; Trainer's defaults)
    label_names: list[str] | None = field(default=None, init=False, metadata={"help": "(--label_names is the data's)"})
    gradient_checkpointing: bool | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if _RAW.get():
            return
        super().__post_init__()  # type: ignore[misc]

    def data_order_seed(self) -> int:
        """The seed of everything data-side: --data_seed when given, else --seed."""
        return self.seed if self.data_seed is None else self.data_seed  # type: ignore[attr-defined]


@dataclass
class StrataTrainingArguments(StrataArgumentsMixin, TrainingArguments):
    """``--mode sft`` / ``pretrain``: transformers' ``TrainingArguments`` with Strata's fields."""

    learning_rate: float | None = field(
        default=None,
        metadata={"help": "Peak learning rate; default 3e-3 for models built from scratch, 5e-5 for pretrained "
                  "weights (--mode rl: 1e-6)."},
    )


@dataclass
class StrataGRPOConfig(StrataArgumentsMixin, GRPOConfig):
    """``--mode rl``: TRL's ``GRPOConfig`` with Strata's fields and RL defaults."""

    learning_rate: float = field(
        default=1e-6, metadata={"help": "Peak learning rate in RL mode (--rl_learning_rate: the same)."})
    warmup_steps: float = field(default=100, metadata={"help": "Warm-up steps (--rl_warmup_steps: the same)."})
    beta: float = field(default=0.1, metadata={"help": "KL coefficient (--grpo_beta: the same)."})
    num_generations: int | None = field(
        default=2, metadata={"help": "Generations per prompt (--grpo_group_size: the same)."})
    max_completion_length: int | None = field(
        default=512, metadata={"help": "Generated tokens per completion."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature for RL generations."})
    include_num_input_tokens_seen: str = field(  # GRPO's batches have no input_ids: Trainer would warn each step
        default="no", metadata={"help": "Count input tokens seen: no | all | non_padding (GRPO logs num_tokens)."})
    ddp_find_unused_parameters: bool | None = field(
        default=None, metadata={"help": "DDP's find_unused_parameters (default: transformers' choice)."})
    pad_to_multiple_of: int | str | None = field(
        default=None, metadata={"help": "Pad prompts to a multiple of N (TRL's 'auto' asks for the device at parse "
                                "time; only Neuron uses it)."})


def arguments_class(mode: str) -> type:
    """The arguments class of ``--mode`` (TRL's config for rl, transformers' for the Trainer recipes)."""
    return StrataGRPOConfig if mode == "rl" else StrataTrainingArguments


def native_fields(mode: str) -> set[str]:
    """Flags the mode's library class defines (transformers' or TRL's), whatever Strata does with them."""
    base = GRPOConfig if mode == "rl" else TrainingArguments
    return {f.name for f in dataclasses.fields(base) if f.init}


def grpo_only_fields() -> set[str]:
    """GRPOConfig's own fields: flags only --mode rl has."""
    return native_fields("rl") - native_fields("sft") - {f.name for f in dataclasses.fields(StrataArgumentsMixin)}


def derived_fields(args: Any, *, output_dir: str, precision: str, device: str, evaluates: bool) -> dict[str, Any]:
    """The TrainingArguments fields Strata decides, from its own flags and what the model loader chose."""
    eval_steps = args.eval_steps if args.eval_steps and args.eval_steps > 0 else None
    steps = args.max_steps // 10 if args.max_steps > 0 else 50
    return {
        "output_dir": output_dir,  # --output_dir is the run folder; the Trainer writes checkpoints below it
        "data_seed": args.data_order_seed(),
        "logging_steps": args.logging_steps or eval_steps or max(1, min(50, steps)),
        "eval_strategy": "steps" if (eval_steps and evaluates) else "no",
        "eval_steps": eval_steps,
        "save_strategy": "steps" if args.save_steps else "no",
        "save_steps": args.save_steps or 500,
        "bf16": precision == "bf16",
        "fp16": precision == "fp16",
        "use_cpu": device == "cpu",
        "report_to": [],  # the run's own TensorBoardCallback writes to RUN/tensorboard
        "remove_unused_columns": False,
    }


def resolved_learning_rate(requested: float | None, init: str) -> float:
    """From-scratch tiny models want a large step; pretrained weights a fine-tuning one."""
    if requested is not None:
        return requested
    return 3e-3 if init == "scratch" else 5e-5


def finish(args: Any, **derived: Any) -> Any:
    """``args`` with Strata's derived fields filled, ``__post_init__`` run: what the trainer receives."""
    try:
        return dataclasses.replace(args, **derived)
    except (ValueError, TypeError, NotImplementedError) as exc:
        raise StrataError(f"invalid training settings: {' '.join(str(exc).split())}") from None


def check_grpo_arguments(args: Any) -> None:
    """Strata's one-line versions of GRPOConfig's own checks (its ValueErrors name no flag)."""
    group_size = args.num_generations
    if group_size is None or group_size < 2:
        raise StrataError(
            f"--grpo_group_size {group_size} is too small; GRPO compares at least 2 completions per prompt"
        )
    if args.temperature <= 0:
        raise StrataError(f"--temperature {args.temperature} must be positive; GRPO samples its completions")
    if args.max_completion_length is None or args.max_completion_length < 1:
        raise StrataError(f"--max_completion_length {args.max_completion_length} must be at least 1")
    if args.max_prompt_length is not None and args.max_prompt_length < 1:
        raise StrataError(f"--max_prompt_length {args.max_prompt_length} must be at least 1")
    if not args.generation_batch_size and not args.steps_per_generation:
        batch, accumulation = args.per_device_train_batch_size, args.gradient_accumulation_steps
        if (batch * accumulation) % group_size:
            raise StrataError(
                f"the generation batch (--per_device_train_batch_size {batch} x --gradient_accumulation_steps "
                f"{accumulation} = {batch * accumulation}) must be divisible by --grpo_group_size {group_size}; "
                "change one of them"
            )


def check_enum_values(args: Any) -> None:
    """The choice-valued TrainingArguments fields, checked at parse time (``__post_init__`` runs later)."""
    from transformers.trainer_utils import IntervalStrategy, SchedulerType
    from transformers.training_args import OptimizerNames

    for name, kind in (("lr_scheduler_type", SchedulerType), ("optim", OptimizerNames),
                       ("logging_strategy", IntervalStrategy)):
        value = getattr(args, name)
        try:
            kind(value)
        except ValueError:
            choices = ", ".join(str(v.value) for v in kind)
            raise StrataError(f"--{name} {value!r} is not one of {choices}") from None


@dataclass
class RunConfig:
    """All parsed arguments of one run: values handed down to the recipes, never re-parsed below the CLI."""

    data: Any
    model: Any
    train: StrataTrainingArguments | StrataGRPOConfig

    def to_dict(self) -> dict[str, Any]:
        train = {f.name: getattr(self.train, f.name) for f in dataclasses.fields(self.train) if f.init}
        for key in [k for k in train if k.endswith("_token") and train[k] is not None]:  # hub_token: never on disk
            train[key] = f"<{key.upper()}>"  # as TrainingArguments.to_dict() writes it
        return {**asdict(self.data), **asdict(self.model), **train}
