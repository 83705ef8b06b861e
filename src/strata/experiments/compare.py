"""`strata compare`: every stratified variant x seed from a fresh model, on one data order and token budget.

Why a harness: a single run per variant (the old prototypes) cannot separate a mechanism from seed noise,
extra parameters or a lucky data order. Here each *arm* (a variant, or a control) is trained once per seed
with ``strata.training.run.train``, and the arms of one seed share everything except the mechanism:

- the same data order and evaluation rows: ``--data_seed`` is fixed for the whole comparison, while the
  seed index sets ``--seed`` (initialisation, dropout). Stratum modules start from their own generator, so
  arms with the same seed even share bit-identical backbone weights at step 0 (docs/stratified.md);
- the same token budget (``--token_budget`` -> ``max_steps = budget / (batch x length x accumulation)``),
  the same flags otherwise (every unknown flag is forwarded to ``strata train``);
- two controls beside the ``none`` baseline: ``dense_matched`` (the baseline widened with ``--match_params``
  to the routing variant's parameter count) and ``hash`` (routing with the token-hash stratum source, the
  negative control), plus a model-free floor: per domain, the majority label of that domain's training rows.

Paired tests pair runs by seed. Finished runs (a ``metrics.json`` written with the same flags) are skipped,
so an interrupted comparison resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from strata.errors import StrataError
from strata.experiments.compare_arms import (
    ALL_CONTROLS,
    ALL_VARIANTS,
    BASELINE,
    SIZES,
    Arm,
    PlannedRun,
    check_forwarded,
    data_flags,
    has_flag,
    make_arms,
    split_list,
)
from strata.experiments.compare_floor import compute_floor, domain_floor
from strata.experiments.compare_results import run_diagnostics, run_summary, summarise_diagnostics

# The harness in modules: arms and shared flags (compare_arms), the floor (compare_floor), what is read back
# from a finished run (compare_results); planning, running and the command are here. Names importable from here:
__all__ = [
    "ALL_CONTROLS",
    "ALL_VARIANTS",
    "BASELINE",
    "SIZES",
    "Arm",
    "PlannedRun",
    "build_parser",
    "compare",
    "compute_floor",
    "data_flags",
    "domain_floor",
    "main",
    "make_arms",
    "plan",
    "run_diagnostics",
    "run_one",
    "run_summary",
    "summarise_diagnostics",
]


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad compare flag as a one-line StrataError instead of exiting."""

    def error(self, message: str):  # type: ignore[override]
        raise StrataError(f"strata compare: {message}; see `strata compare --help`")


def build_parser() -> argparse.ArgumentParser:
    # allow_abbrev=False: forwarded training flags (--model, --seed) must not match --model_size, --seeds.
    parser = _Parser(
        prog="strata compare",
        allow_abbrev=False,
        description="Train every stratified variant x seed on the same data and budget, then report. "
        "Unknown flags are passed to `strata train` (see `strata train --help`).",
    )
    parser.add_argument("--variants", default=",".join(ALL_VARIANTS),
                        help="Comma list of stratified types; 'none' is the baseline tests are paired against.")
    seeds = parser.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", type=int, default=3, help="Number of initialisation seeds: 0..N-1.")
    seeds.add_argument("--seed_list", type=int, nargs="+", default=None, help="Explicit initialisation seeds.")
    parser.add_argument("--data_seed", type=int, default=0,
                        help="Seed of data order, mixing and eval subsets, shared by every run.")
    parser.add_argument("--output_dir", default=None,
                        help="Comparison folder (default runs/compare_<date>_<time>_<size>_<data>).")
    parser.add_argument("--report_dir", default=None,
                        help="Where results.json/results.md/plots go (default: --output_dir).")
    parser.add_argument("--token_budget", type=int, default=None,
                        help="Training tokens per run (batch x max_length x steps x accumulation); sets --max_steps.")
    parser.add_argument("--model_size", choices=SIZES, default="tiny", help="Stratified preset size.")
    parser.add_argument("--controls", default=",".join(ALL_CONTROLS),
                        help="Comma list of controls: dense_matched, hash; 'none' for no controls.")
    parser.add_argument("--mixture", choices=("multidomain",), default=None,
                        help="Named data definition (strata.experiments.multidomain) instead of --datasets flags.")
    parser.add_argument("--diagnostics", action="store_true",
                        help="Router diagnostics (purity/NMI vs domain, k-means, LID) on each model's eval states.")
    parser.add_argument("--diagnostic_examples", type=int, default=24,
                        help="Evaluation examples per source fed to the diagnostics.")
    return parser




# ----------------------------------------------------------------------------------------------- planning
def plan(args: argparse.Namespace, forwarded: list[str]) -> tuple[Any, list[PlannedRun], dict[str, Any]]:
    """Validate everything once, before any training: the base config, steps, arms, seeds, run folders."""
    from strata.config import parse_run_config

    check_forwarded(forwarded)
    base_flags = data_flags(args, forwarded)
    if args.token_budget is not None:
        if has_flag(forwarded, "--max_steps"):
            raise StrataError("pass either --token_budget or --max_steps, not both")
        probe = parse_run_config([*base_flags, "--data_seed", str(args.data_seed)])
        per_step = (probe.train.per_device_train_batch_size * probe.data.max_length
                    * probe.train.gradient_accumulation_steps)
        steps = args.token_budget // per_step
        if steps < 1:
            raise StrataError(f"--token_budget {args.token_budget} is less than one step ({per_step} tokens); "
                              "raise it or lower --per_device_train_batch_size/--max_length")
        base_flags = [*base_flags, "--max_steps", str(steps)]
    base = parse_run_config([*base_flags, "--data_seed", str(args.data_seed)], prog="strata compare")
    if base.train.mode != "sft":
        raise StrataError("strata compare scores classification: use --mode sft (the default)")
    if base.train.max_steps <= 0:
        raise StrataError("strata compare needs a fixed budget: pass --max_steps N or --token_budget T")
    seeds = list(args.seed_list) if args.seed_list else list(range(args.seeds))
    if not seeds or len(set(seeds)) != len(seeds):
        raise StrataError("give at least one seed, each once (--seeds N or --seed_list a b c)")
    controls = [] if args.controls.strip().lower() in ("", "none") else split_list(args.controls)
    arms = make_arms(split_list(args.variants), controls, args.model_size)
    output = Path(args.output_dir or default_output_dir(args, base))
    runs = []
    for seed in seeds:  # seed-major: a stopped comparison still has complete pairs
        for arm in arms:
            folder = output / "runs" / f"{arm.name}_seed{seed}"
            argv = [*base_flags, *arm.flags, "--seed", str(seed), "--data_seed", str(args.data_seed),
                    "--output_dir", str(folder)]
            parse_run_config(argv)  # fail now, not after an hour of training
            runs.append(PlannedRun(arm, seed, folder, argv))
    setup = _setup(args, base, seeds, forwarded, output)
    return base, runs, {"arms": arms, "setup": setup, "output": output}


def _setup(args: argparse.Namespace, base: Any, seeds: list[int], forwarded: list[str], output: Path) -> dict[str, Any]:
    """The shared settings every run of the comparison trains with, as results.json records them."""
    t = base.train
    return {
        "model_size": args.model_size,
        "seeds": seeds,
        "data_seed": args.data_seed,
        "max_steps": t.max_steps,
        "per_device_train_batch_size": t.per_device_train_batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "max_length": base.data.max_length,
        "token_budget": t.max_steps * t.per_device_train_batch_size * base.data.max_length
        * t.gradient_accumulation_steps,
        "learning_rate": t.learning_rate,
        "max_eval_examples": base.data.max_eval_examples,
        "mixture": args.mixture,
        "forwarded_flags": forwarded,
        "output_dir": str(output),
    }


def default_output_dir(args: argparse.Namespace, base: Any) -> str:
    data = args.mixture or ("mix" if base.data.datasets else Path(base.data.dataset).name)
    return str(Path(base.train.runs_dir) / f"compare_{datetime.now():%Y-%m-%d_%Hh%Mm}_{args.model_size}_{data}")


# ----------------------------------------------------------------------------------------------- running
def _marker(folder: Path) -> Path:
    return folder / "compare_run.json"


def run_one(run: PlannedRun, index: int, total: int) -> dict[str, Any]:
    """Train one arm x seed unless an identical finished run is already there; return its record."""
    from strata.config import parse_run_config
    from strata.training.run import train

    label = f"{run.arm.name} seed {run.seed}"
    marker = _marker(run.folder)
    if (run.folder / "metrics.json").is_file() and marker.is_file():
        record = json.loads(marker.read_text())
        if record.get("argv") != run.argv:
            raise StrataError(f"{run.folder} was trained with other flags; use a new --output_dir or delete it")
        print(f"[compare] {index}/{total} skip {label}: finished run in {run.folder}", flush=True)
        return {**record, "skipped": True}
    if run.folder.exists():  # started but never finished: its partial state is not trustworthy
        print(f"[compare] {index}/{total} {label}: removing unfinished {run.folder}", flush=True)
        shutil.rmtree(run.folder)
    print(f"[compare] {index}/{total} train {label}", flush=True)
    start = time.perf_counter()
    train(parse_run_config(run.argv))
    record = {"arm": run.arm.name, "seed": run.seed, "argv": run.argv,
              "wall_seconds": time.perf_counter() - start}
    marker.write_text(json.dumps(record, indent=2) + "\n")
    return {**record, "skipped": False}




# ----------------------------------------------------------------------------------------------- main
def compare(argv: list[str]) -> dict[str, Any]:
    """Plan, train (skipping finished runs), compute the floor and diagnostics, and write the report."""
    from strata.experiments.report import build_results, write_report

    args, forwarded = build_parser().parse_known_args(argv)
    base, runs, info = plan(args, forwarded)
    output: Path = info["output"]
    output.mkdir(parents=True, exist_ok=True)
    command = "strata compare " + " ".join(_quote(a) for a in argv)
    (output / "command.txt").write_text(command + "\n")
    print(f"[compare] {len(runs)} runs ({len(info['arms'])} arms x {len(info['setup']['seeds'])} seeds), "
          f"{base.train.max_steps} steps each, in {output}", flush=True)
    started = time.perf_counter()
    records = [run_one(run, i + 1, len(runs)) for i, run in enumerate(runs)]
    floor, examples = compute_floor(base)
    summaries = []
    for run, record in zip(runs, records):
        summary = {"arm": run.arm.name, "seed": run.seed, "folder": str(run.folder),
                   "wall_seconds": record.get("wall_seconds"), "skipped": record.get("skipped", False),
                   **run_summary(run.folder)}
        if args.diagnostics:
            path = run.folder / "diagnostics.json"
            if not path.is_file():
                diag = run_diagnostics(run.folder, examples, args.diagnostic_examples, base.data.max_length,
                                       base.model.device)
                path.write_text(json.dumps(diag, indent=2, default=float) + "\n")
            summary["diagnostics"] = summarise_diagnostics(json.loads(path.read_text()))
        summaries.append(summary)
    setup = {**info["setup"], "harness_seconds_this_invocation": time.perf_counter() - started,
             "eval_examples": {e.name: len(e.dataset) for e in examples.evals}}
    results = build_results(command, setup, info["arms"], summaries, floor)
    report_dir = Path(args.report_dir) if args.report_dir else output
    paths = write_report(results, report_dir)
    print(f"[compare] wrote {', '.join(str(p) for p in paths)}", flush=True)
    return results


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


def main(argv: list[str] | None = None) -> int:
    import sys

    compare(list(sys.argv[1:] if argv is None else argv))
    return 0
