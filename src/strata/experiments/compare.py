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
from strata.experiments.compare_controls import keep_needed_controls
from strata.experiments.compare_floor import compute_floor, domain_floor
from strata.experiments.compare_protocol import (
    GATE_POINTS,
    choose_learning_rate,
    gate,
    run_all,
    share_tokenizer,
    transfer_flags,
)
from strata.experiments.compare_results import (
    heldout_floor,
    run_diagnostics,
    run_summary,
    summarise_diagnostics,
)
from strata.experiments.report_sections import arm_flops

# The harness in modules: arms and shared flags (compare_arms), which matched controls to train
# (compare_controls), sweep / gate / tokenizer / transfer / workers (compare_protocol), the floor (compare_floor),
# what is read back from a finished run (compare_results); planning and the command are here. Names importable from here:
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
    parser.add_argument("--holdout", default=None,
                        help="With --mixture: leave this source (dataset id) out of training and score every run "
                             "on its evaluation split (transfer to an unseen domain).")
    parser.add_argument("--lr_sweep", default=None,
                        help="Comma list of learning rates: train the baseline once per rate (seed --sweep_seed) "
                             "first, then run every arm at the best one (overall accuracy).")
    parser.add_argument("--sweep_seed", type=int, default=1000,
                        help="Initialisation seed of the sweep runs (kept apart from the compared seeds).")
    parser.add_argument("--gate_points", type=float, default=GATE_POINTS,
                        help="Train the baseline's seeds first; compare the arms only if its mean accuracy beats "
                             "the domain-only floor by this many points on every trained source.")
    parser.add_argument("--no_gate", action="store_true",
                        help="Compare the arms even when the baseline does not clear the gate (reported).")
    parser.add_argument("--jobs", type=int, default=1,
                        help="Runs trained at once, each in its own process with cores/jobs threads.")
    return parser




# ----------------------------------------------------------------------------------------------- planning
def plan(args: argparse.Namespace, forwarded: list[str]) -> tuple[Any, list[PlannedRun], dict[str, Any]]:
    """Validate everything once, before any training: the base config, steps, arms, seeds, run folders."""
    from strata.config import parse_run_config

    check_forwarded(forwarded)
    if args.jobs < 1:
        raise StrataError(f"--jobs {args.jobs}: give at least 1 run at a time")
    if args.lr_sweep is not None:
        if has_flag(forwarded, "--learning_rate"):
            raise StrataError("--lr_sweep chooses the learning rate; drop --learning_rate")
        sweep_rates(args.lr_sweep)
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
    if args.lr_sweep is not None and args.sweep_seed in seeds:
        raise StrataError(f"--sweep_seed {args.sweep_seed} is also a compared seed; choose one outside {seeds}")
    controls = [] if args.controls.strip().lower() in ("", "none") else split_list(args.controls)
    arms = make_arms(split_list(args.variants), controls, args.model_size)
    arms, matching = keep_needed_controls(arms, args.model_size, base)
    output = Path(args.output_dir or default_output_dir(args, base))
    transfer: list[str] = []
    if args.holdout:
        from strata.experiments.multidomain import without

        transfer = transfer_flags(without(args.holdout)[1], None)
    runs = []
    for seed in seeds:  # seed-major: a stopped comparison still has complete pairs
        for arm in arms:
            folder = output / "runs" / f"{arm.name}_seed{seed}"
            argv = [*base_flags, *arm.flags, "--seed", str(seed), "--data_seed", str(args.data_seed),
                    "--output_dir", str(folder)]
            parse_run_config(argv)  # fail now, not after an hour of training
            runs.append(PlannedRun(arm, seed, folder, argv, transfer))
    setup = _setup(args, base, seeds, forwarded, output)
    setup["matching"] = matching
    return base, runs, {"arms": arms, "setup": setup, "output": output, "base_flags": base_flags,
                        "transfer": transfer}


def sweep_rates(text: str) -> list[float]:
    try:
        rates = [float(x) for x in split_list(text)]
    except ValueError:
        raise StrataError(f"--lr_sweep {text!r}: give learning rates, e.g. 1e-3,3e-3") from None
    if not rates or any(not (r > 0) for r in rates) or len(set(rates)) != len(rates):
        raise StrataError(f"--lr_sweep {text!r}: give distinct positive learning rates, e.g. 1e-3,3e-3")
    return rates


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
        "holdout": args.holdout,
        "jobs": args.jobs,
        "forwarded_flags": forwarded,
        "output_dir": str(output),
    }


def default_output_dir(args: argparse.Namespace, base: Any) -> str:
    data = args.mixture or ("mix" if base.data.datasets else Path(base.data.dataset).name)
    return str(Path(base.train.runs_dir) / f"compare_{datetime.now():%Y-%m-%d_%Hh%Mm}_{args.model_size}_{data}")


# ----------------------------------------------------------------------------------------------- main
def train_in_process(run: PlannedRun) -> None:
    """One run in this process: `strata train`, then `strata eval` on the held-out source when there is one."""
    from strata.experiments.compare_worker import train_in_process as train_and_score

    train_and_score(run.argv, run.transfer, run.folder)


def machine() -> dict[str, Any]:
    """Where the numbers came from: devices and package versions (as `strata env` prints them)."""
    import platform

    from strata.cli_env import device_lines, package_versions

    return {"devices": [line.strip() for line in device_lines()], "python": platform.python_version(),
            "versions": package_versions(), "date": datetime.now().strftime("%Y-%m-%d")}


def _sweep(args: argparse.Namespace, forwarded: list[str], info: dict[str, Any]) -> dict[str, Any]:
    """Train the baseline once per swept rate (seed --sweep_seed) and choose the rate every arm then uses."""
    baseline = next((a for a in info["arms"] if a.name == BASELINE), None)
    if baseline is None:
        raise StrataError("--lr_sweep tunes the `none` baseline; add none to --variants")
    runs = []
    for lr in sweep_rates(args.lr_sweep):
        folder = info["output"] / "sweep" / f"none_lr{lr:g}_seed{args.sweep_seed}"
        argv = [*info["base_flags"], *baseline.flags, "--learning_rate", repr(lr), "--seed", str(args.sweep_seed),
                "--data_seed", str(args.data_seed), "--output_dir", str(folder)]
        runs.append((lr, PlannedRun(baseline, args.sweep_seed, folder, argv)))
    run_all([r for _, r in runs], args.jobs, info["output"] / "logs", train_in_process, " (lr sweep)")
    records = {lr: {**run_summary(r.folder), "folder": str(r.folder)} for lr, r in runs}
    best, why = choose_learning_rate(records)
    print(f"[compare] lr sweep: {why}", flush=True)
    return {"rates": {repr(lr): rec for lr, rec in records.items()}, "chosen": best, "why": why,
            "seed": args.sweep_seed}


def _summaries(runs: list[PlannedRun], records: list[dict[str, Any]], args: argparse.Namespace, base: Any,
               examples: Any) -> list[dict[str, Any]]:
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
    return summaries


def compare(argv: list[str]) -> dict[str, Any]:
    """Sweep, train the baseline, gate, train the other arms (skipping finished runs), report."""
    from strata.experiments.report import build_results, write_report

    args, forwarded = build_parser().parse_known_args(argv)
    base, runs, info = plan(args, forwarded)
    output: Path = info["output"]
    output.mkdir(parents=True, exist_ok=True)
    command = "strata compare " + " ".join(_quote(a) for a in argv)
    (output / "command.txt").write_text(command + "\n")
    started = time.perf_counter()
    forwarded, tokenizer = share_tokenizer(forwarded, base, output)
    if tokenizer:
        base, runs, info = plan(args, forwarded)
    sweep = None
    if args.lr_sweep is not None:
        sweep = _sweep(args, forwarded, info)
        forwarded = [*forwarded, "--learning_rate", repr(sweep["chosen"])]
        base, runs, info = plan(argparse.Namespace(**{**vars(args), "lr_sweep": None}), forwarded)
    print(f"[compare] {len(runs)} runs ({len(info['arms'])} arms x {len(info['setup']['seeds'])} seeds), "
          f"{base.train.max_steps} steps each, {args.jobs} at a time, in {output}", flush=True)
    first = [r for r in runs if r.arm.name == BASELINE]
    rest = [r for r in runs if r.arm.name != BASELINE]
    records = dict(zip(map(id, first), run_all(first, args.jobs, output / "logs", train_in_process)))
    floor, examples = compute_floor(base)
    verdict = None
    if first:
        verdict = gate([run_summary(r.folder) for r in first], floor, args.gate_points)
        verdict["enforced"] = not args.no_gate
        state = "passed" if verdict["passed"] else f"failed on {', '.join(verdict['failed'])}"
        print(f"[compare] gate (baseline >= floor + {args.gate_points:g} points on every source): {state}", flush=True)
    stopped = verdict is not None and not verdict["passed"] and not args.no_gate
    if not stopped:
        records.update(zip(map(id, rest), run_all(rest, args.jobs, output / "logs", train_in_process)))
    done = [r for r in runs if id(r) in records]
    summaries = _summaries(done, [records[id(r)] for r in done], args, base, examples)
    if first and info["transfer"]:
        floor["per_source"].update(heldout_floor(first[0].folder))
    if tokenizer:
        info["setup"]["tokenizer"] = tokenizer
    walls = [s["wall_seconds"] for s in summaries if isinstance(s.get("wall_seconds"), (int, float))]
    setup = {**info["setup"], "harness_seconds_this_invocation": time.perf_counter() - started, "machine": machine(),
             "run_seconds_summed": sum(walls),  # over every run, as first trained (skipped ones keep theirs)
             "eval_examples": {e.name: len(e.dataset) for e in examples.evals}}
    arms = info["arms"] if not stopped else [a for a in info["arms"] if a.name == BASELINE]
    results = build_results(command, setup, arms, summaries, floor)
    results.update(lr_sweep=sweep, gate=verdict, stopped_at_gate=stopped)
    firsts = {s["arm"]: s["folder"] for s in reversed(summaries)}  # every arm is a stratified preset
    results["flops"] = arm_flops(firsts, base.data.max_length)
    report_dir = Path(args.report_dir) if args.report_dir else output
    paths = write_report(results, report_dir)
    print(f"[compare] wrote {', '.join(str(p) for p in paths)}", flush=True)
    if stopped:
        print(f"[compare] stopped at the gate: the baseline does not beat the floor by {args.gate_points:g} points "
              f"on {', '.join(verdict['failed'])}; no arm was compared (raise the budget, or --no_gate)", flush=True)
    return results


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


def main(argv: list[str] | None = None) -> int:
    """Exit 0 when the arms were compared, 1 when the comparison stopped at the baseline gate."""
    import sys

    results = compare(list(sys.argv[1:] if argv is None else argv))
    return 1 if results.get("stopped_at_gate") else 0
