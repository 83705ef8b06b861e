"""``strata`` command line: train, eval, datasets, models, env, compare, bench.

Subcommand flags are dataclasses parsed by transformers' HfArgumentParser (see strata.config);
this module only dispatches, and turns a ``StrataError`` into one line and its exit code (2 for bad input,
1 for a run that failed, e.g. diverged).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

from strata.errors import StrataError, parse_or_refuse

USAGE = """usage: strata <command> [flags]

commands:
  train      train a model (sft, pretrain or rl); `strata train --help` lists every flag
  eval       evaluate a run folder or model on a dataset
  datasets   list the dataset registry; `strata datasets show ID [--dataset_config C]`
  models     list model presets with parameter counts; `strata models --fit 24GB [--length L]`: largest batches
  env        devices, interconnect, bf16/AMX, library versions; with --model M --devices N, --parallelism auto
  compare    compare stratified variants over seeds (see docs/stratified.md)
  bench      run a benchmark from benchmarks/
"""


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is *now* (pytest and notebooks swap it between calls)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; we always use sys.stderr
        pass


def _setup_environment() -> None:
    """Console shows warnings and errors; INFO records go to the run's logs/training.log only."""
    import datasets
    from transformers.utils import logging as hf_logging

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_strata_console", False):  # re-bind to the current stderr on every call
            root.removeHandler(handler)
    console = _StderrHandler()
    console.setLevel(logging.WARNING)
    console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    console._strata_console = True  # type: ignore[attr-defined]
    root.addHandler(console)
    for handler in hf_logging.get_logger().handlers:  # transformers' own console handler
        handler.setLevel(logging.WARNING)
    # Per-map progress bars would bury the one-line errors and the training progress bar.
    datasets.disable_progress_bars()
    from strata.models.bnb_notices import quiet_bitsandbytes_notices

    quiet_bitsandbytes_notices()  # peft/transformers import bitsandbytes whenever it is installed


def cmd_train(argv: list[str]) -> int:
    from strata.config import parse_run_config
    from strata.training.launch import plan_launch, self_launch
    from strata.training.run import preflight, train

    config = parse_run_config(argv)
    workers = plan_launch(config)  # --multi_gpu without a launcher: re-run this command as N workers
    if workers is not None:
        preflight(config)  # the data-free checks once, here: one line, not one per worker
        return self_launch(workers, argv)
    train(config)
    return 0


def cmd_eval(argv: list[str]) -> int:
    from strata.evaluation.cli import run_eval

    return run_eval(argv)


def cmd_datasets(argv: list[str]) -> int:
    from strata.cli_datasets import main as datasets_main

    return datasets_main(argv)


MODELS_USAGE = "usage: strata models [--fit MEMORY [--length L] [--gradient_checkpointing] [--lora_r R]]"


def cmd_models(argv: list[str]) -> int:
    from strata.models.catalog import format_fit, format_presets

    if not argv:
        print(format_presets())
        return 0
    if argv[0] in ("-h", "--help"):
        print(MODELS_USAGE + "\n  --fit MEMORY  24GB (10^9 bytes) or 80GiB (2^30): the largest batch per preset and "
              "mode\n  --length L    tokens per row (2048)\n  --gradient_checkpointing  keep only layer inputs"
              "\n  --lora_r R    LoRA rank (16)")
        return 0
    fit = _models_fit_flags(argv)
    print(format_fit(**fit))
    return 0


def _models_fit_flags(argv: list[str]) -> dict:
    """``--fit MEMORY [--length L] [--gradient_checkpointing] [--lora_r R]``; anything else is refused."""
    import argparse

    from strata.models.memory import parse_memory

    usage = MODELS_USAGE
    parser = argparse.ArgumentParser(prog="strata models", add_help=False, exit_on_error=False)
    parser.add_argument("--fit")
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--gradient_checkpointing", action="store_true")
    parser.add_argument("--lora_r", type=int, default=16)
    args = parse_or_refuse(parser, argv, usage)
    if args.fit is None:
        raise StrataError(f"--length, --gradient_checkpointing and --lora_r go with --fit MEMORY; {usage}")
    if args.length < 1 or args.lora_r < 1:
        raise StrataError("--length and --lora_r must be at least 1")
    return {"memory": parse_memory(args.fit), "length": args.length,
            "gradient_checkpointing": args.gradient_checkpointing, "lora_r": args.lora_r}


def cmd_env(argv: list[str]) -> int:
    from strata.cli_env import main as env_main

    return env_main(argv)


def cmd_compare(argv: list[str]) -> int:
    from strata.experiments.compare import main as compare_main

    return compare_main(argv)


def cmd_bench(argv: list[str]) -> int:
    from strata.benchmarks import main as bench_main

    return bench_main(argv)


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "train": cmd_train,
    "eval": cmd_eval,
    "datasets": cmd_datasets,
    "models": cmd_models,
    "env": cmd_env,
    "compare": cmd_compare,
    "bench": cmd_bench,
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    _setup_environment()
    try:
        return COMMANDS[command](rest)
    except StrataError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code


def train_main() -> int:
    """``python train.py`` / ``python main.py``: exactly the flags of ``strata train``."""
    return main(["train", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
