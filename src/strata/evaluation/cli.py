"""``strata eval RUN_DIR|MODEL --dataset ...``: score a trained model the way training scored it."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from strata.config import DataArguments
from strata.errors import StrataError


@dataclass
class EvalArguments:
    """Flags of ``strata eval`` besides the dataset ones (which default to the run's args.json)."""

    eval_method: str = field(default="loglik", metadata={"help": "loglik | generate."})
    batch_size: int = field(default=16, metadata={"help": "Evaluation batch size."})
    device: str = field(default="auto", metadata={"help": "auto | cuda | mps | cpu."})
    max_new_tokens: int = field(default=256, metadata={"help": "Generation length for math/qa."})
    seed: int | None = field(default=None, metadata={"help": "Seed of seeded eval carves (default: the run's)."})
    output: str | None = field(default=None, metadata={"help": "Write the metrics JSON here."})


def _model_folder(target: Path) -> Path:
    """A run folder's final/ (a model, or LoRA adapters that name their base), else the folder itself."""
    return target / "final" if (target / "final").is_dir() else target


def run_eval(argv: list[str]) -> int:
    from transformers import HfArgumentParser

    from strata.data.formatting import load_formatted
    from strata.evaluation import evaluate_dataset
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
    parser.set_defaults(**{k: v for k, v in run_args.items() if k in _data_fields() and k not in given})
    data, options, extra = parser.parse_args_into_dataclasses(args=rest, return_remaining_strings=True)
    if extra:
        raise StrataError(f"unrecognised argument(s) for strata eval: {' '.join(extra)}; see `strata eval --help`")
    seed = options.seed if options.seed is not None else int(run_args.get("seed", 0))
    mirror = data.hub_mirror or os.environ.get("STRATA_HUB_MIRROR")
    mode = run_args.get("mode", "sft")
    if mode == "rl":
        mode = "sft"
    # The model first: a folder without one fails before any data loads.
    model, tokenizer = load_trained(str(_model_folder(Path(target))), mirror, options.device)
    formatted = load_formatted(data.dataset, data.dataset_config, data.eval_split, mode, mirror, purpose="eval",
                               text_column=data.text_column, label_column=data.label_column,
                               label_names=data.label_names, prompt_template=data.prompt_template,
                               task=data.task, max_examples=data.max_eval_examples, seed=seed)
    metrics = evaluate_dataset(model, tokenizer, formatted.dataset, formatted.family, formatted.label_words,
                               method=options.eval_method, batch_size=options.batch_size,
                               max_length=data.max_length, max_new_tokens=options.max_new_tokens)
    result = {"dataset": formatted.tag, "split": formatted.split, "examples": len(formatted.dataset),
              "metrics": metrics, "args": {**asdict(data), **asdict(options)}}
    text = json.dumps(result, indent=2, sort_keys=True, default=str)
    out = options.output or (str(Path(target) / f"eval_{formatted.tag}.json") if run_args else None)
    if out:
        Path(out).write_text(text + "\n")
    summary = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    print(json.dumps({"dataset": formatted.tag, "split": formatted.split, **summary}, indent=2))
    return 0


def _data_fields() -> set[str]:
    return set(DataArguments.__dataclass_fields__)


def _run_args(target: Path) -> dict[str, Any]:
    file = target / "args.json"
    if not file.is_file():
        return {}
    values = json.loads(file.read_text())
    if values.get("datasets"):  # a mixture run: evaluate its first source unless --dataset says otherwise
        values["dataset"] = values["datasets"][0]
        configs = values.get("dataset_configs") or [None]
        values["dataset_config"] = configs[0]
    for key in ("datasets", "dataset_configs", "mixture_rates"):
        values.pop(key, None)
    return values
