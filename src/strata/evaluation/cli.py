"""``strata eval RUN_DIR|MODEL --dataset ...``: score a trained model the way training scored it.

On a run folder every default comes from its args.json, and the examples are chosen by the code
training uses (``load_eval_sources``, the evaluation half of ``load_examples``): the same sources
(every source of a mixture, each capped like training capped it), the --data_seed subset in the same
order, the same max_length, eval_method and batch size. So with no flags it reproduces the run's final
task metrics exactly; any flag given makes it a different evaluation, on purpose.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from strata.data.arguments import DataArguments
from strata.errors import StrataError

# Flags that say which data is evaluated: naming another source drops all of the run's.
SOURCE_FLAGS = ("dataset", "dataset_config", "datasets", "dataset_configs", "mixture_rates", "train_split",
                "eval_split", "train_splits", "eval_splits")
CHOOSES_SOURCE = ("dataset", "dataset_config", "datasets", "dataset_configs")
OTHER_MODEL_MAX_NEW_TOKENS = 256  # generation length when the target is a model folder, not a run


@dataclass
class EvalArguments:
    """Flags of ``strata eval`` besides the dataset ones (which default to the run's args.json)."""

    eval_method: str | None = field(default=None, metadata={"help": "loglik | generate (default: the run's)."})
    batch_size: int | None = field(
        default=None, metadata={"help": "Evaluation batch size (default: the run's per_device_eval_batch_size)."}
    )
    device: str = field(default="auto", metadata={"help": "auto | cuda | mps | cpu."})
    max_new_tokens: int | None = field(
        default=None, metadata={"help": "Generation length for math/qa (default: training's, 256 for a model)."}
    )
    seed: int | None = field(
        default=None, metadata={"help": "Seed of the eval subset (default: the run's --data_seed, else --seed)."}
    )
    output: str | None = field(default=None, metadata={"help": "Write the metrics JSON here."})


def _model_folder(target: Path) -> Path:
    """A run folder's final/ (a model, or LoRA adapters that name their base), else the folder itself."""
    return target / "final" if (target / "final").is_dir() else target


def run_eval(argv: list[str]) -> int:
    from transformers import HfArgumentParser

    from strata.config import normalise_lists
    from strata.data.pipeline import load_eval_sources
    from strata.evaluation import evaluate_dataset
    from strata.evaluation.evaluate import DEFAULT_MAX_NEW_TOKENS
    from strata.evaluation.task_metrics import task_metric_names
    from strata.models.loading import load_trained

    if not argv or argv[0].startswith("-"):
        if argv and argv[0] in ("-h", "--help"):
            HfArgumentParser((DataArguments, EvalArguments), prog="strata eval RUN_DIR|MODEL").print_help()
            return 0
        raise StrataError("usage: strata eval RUN_DIR|MODEL [--dataset ID ...]; see `strata eval --help`")
    target, rest = argv[0], argv[1:]
    parser = HfArgumentParser((DataArguments, EvalArguments), prog="strata eval RUN_DIR|MODEL")
    run_args = _run_args(Path(target))
    given = {a.split("=", 1)[0].lstrip("-") for a in rest if a.startswith("--")}
    parser.set_defaults(**_data_defaults(run_args, given))
    parsed, options, extra = parser.parse_args_into_dataclasses(args=rest, return_remaining_strings=True)
    if extra:
        raise StrataError(f"unrecognised argument(s) for strata eval: {' '.join(extra)}; see `strata eval --help`")
    data = DataArguments(**normalise_lists(asdict(parsed)))
    _check_sources(data)
    is_run = bool(run_args)
    seed = options.seed if options.seed is not None else _run_data_seed(run_args)
    method = options.eval_method or run_args.get("eval_method", "loglik")
    batch_size = options.batch_size if options.batch_size is not None else int(run_args.get("per_device_eval_batch_size", 16))
    max_new_tokens = options.max_new_tokens if options.max_new_tokens is not None else (
        DEFAULT_MAX_NEW_TOKENS if is_run else OTHER_MODEL_MAX_NEW_TOKENS)
    data.hub_mirror = data.hub_mirror or os.environ.get("STRATA_HUB_MIRROR")
    mode = run_args.get("mode", "sft")
    if mode == "rl":
        mode = "sft"
    from strata.evaluation.vision import is_vision_folder

    if is_vision_folder(_model_folder(Path(target))):  # images through the processor (evaluation/vision.py)
        return _eval_vision(Path(target), data, seed, options, is_run)
    # The model first: a folder without one fails before any data loads.
    model, tokenizer = load_trained(str(_model_folder(Path(target))), data.hub_mirror, options.device,
                                    quantization=_run_quantization(run_args, _model_folder(Path(target)),
                                                                   options.device))
    sources = load_eval_sources(data, mode, seed)
    per_source: dict[str, dict[str, Any]] = {}
    for source, _split in sources:
        per_source[source.name] = evaluate_dataset(model, tokenizer, source.dataset, source.family,
                                                   source.label_words, method=method, batch_size=batch_size,
                                                   max_length=data.max_length, max_new_tokens=max_new_tokens)
    settings = {"seed": seed, "eval_method": method, "batch_size": batch_size, "max_new_tokens": max_new_tokens}
    result = _text_result(sources, per_source, data, options, settings)
    out = options.output or (str(Path(target) / f"eval_{result['dataset']}.json") if is_run else None)
    if out:
        Path(out).write_text(json.dumps(result, indent=2, sort_keys=True, default=str) + "\n")
    print(json.dumps({"dataset": result["dataset"], "split": result["split"],
                      **task_metric_names(per_source, prefix="")}, indent=2))
    return 0


def _eval_vision(target: Path, data: DataArguments, seed: int, options: Any, is_run: bool) -> int:
    """`strata eval` of a vision-language run or model folder: generation scored against the answers."""
    from strata.evaluation.vision import eval_vision_folder

    result = eval_vision_folder(_model_folder(target), data, seed, options.device, options.max_new_tokens)
    out = options.output or (str(target / f"eval_{result['dataset']}.json") if is_run else None)
    if out:
        Path(out).write_text(json.dumps(result, indent=2, sort_keys=True, default=str) + "\n")
    print(json.dumps({"dataset": result["dataset"], "split": result["split"], **result["metrics"]}, indent=2))
    return 0


def _text_result(sources: list, per_source: dict[str, dict[str, Any]], data: DataArguments, options: Any,
                 settings: dict[str, Any]) -> dict[str, Any]:
    """The eval_<tag>.json record, laid out like metrics.json (task_eval per source, eval_* names)."""
    from strata.data.mixture import mixture_tag
    from strata.evaluation.task_metrics import task_metric_names

    names = [source.name for source, _ in sources]
    splits = [split for _, split in sources]
    single = len(sources) == 1
    if single:
        tag = names[0]
    else:
        tag = mixture_tag(names, data.mixture_rates) if data.mixture_rates else "+".join(names)
    return {
        "dataset": tag, "split": splits[0] if single else splits,
        "examples": sum(len(source.dataset) for source, _ in sources),
        "metrics": per_source[names[0]] if single else task_metric_names(per_source, prefix=""),
        "task_eval": per_source,  # laid out like metrics.json's task_eval
        "eval": task_metric_names(per_source, prefix="eval"),  # the names of metrics.json's eval
        "args": {**asdict(data), **asdict(options), **settings},
    }


def _run_quantization(run_args: dict[str, Any], folder: Path, device: str):
    """A run trained with --load_in_4bit/8bit: its adapters are scored on the base quantized the same way."""
    from strata.models.device import resolve_device, resolve_precision
    from strata.models.quantization import QUANT_FLAGS, plan_for_flag

    flag = next((name for name in QUANT_FLAGS if run_args.get(name)), None)
    if flag is None or not (folder / "adapter_config.json").is_file():
        return None
    return plan_for_flag(flag, resolve_precision(run_args.get("precision", "auto"), resolve_device(device)))


def _run_args(target: Path) -> dict[str, Any]:
    file = target / "args.json"
    return json.loads(file.read_text()) if file.is_file() else {}


def _data_defaults(run_args: dict[str, Any], given: set[str]) -> dict[str, Any]:
    """The run's data flags as defaults; naming another source on the command line drops the run's sources."""
    names = {f.name for f in fields(DataArguments)}
    other_source = bool(given & set(CHOOSES_SOURCE))
    return {k: v for k, v in run_args.items()
            if k in names and k not in given and not (other_source and k in SOURCE_FLAGS)}


def _run_data_seed(run_args: dict[str, Any]) -> int:
    """The seed training drew its eval subset with: StrataArgumentsMixin.data_order_seed() of the run."""
    if run_args.get("data_seed") is not None:
        return int(run_args["data_seed"])
    return int(run_args.get("seed", 0))


def _check_sources(data: DataArguments) -> None:
    if not data.datasets:
        return
    for flag in ("dataset_configs", "eval_splits"):
        values = getattr(data, flag)
        if values is not None and len(values) != len(data.datasets):
            raise StrataError(f"--{flag} has {len(values)} entries but --datasets has {len(data.datasets)}; "
                              "give one per dataset")
