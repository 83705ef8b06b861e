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
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from strata.errors import StrataError

ALL_VARIANTS = ("none", "attention", "routing", "layers", "moe")
ALL_CONTROLS = ("dense_matched", "hash")
BASELINE = "none"
SIZES = ("tiny", "small")
# Flags the harness sets per run; forwarding them would silently break the design.
_RESERVED = {
    "--model": "use --model_size (the harness picks stratified-<variant>-<size>)",
    "--stratified_type": "use --variants",
    "--stratum_source": "the hash control sets it; use --controls",
    "--match_params": "the dense_matched control sets it; use --controls",
    "--seed": "use --seeds N or --seed_list (initialisation seeds) and --data_seed (data order)",
    "--output_dir": "is the comparison folder here; run folders are <output_dir>/runs/<arm>_seed<k>",
    "--resume_from_checkpoint": "finished runs are skipped and unfinished ones restart from scratch",
}


@dataclass
class Arm:
    """One trained configuration: a stratified variant or a control."""

    name: str
    flags: list[str]
    kind: str  # "variant" | "control"
    description: str


@dataclass
class PlannedRun:
    arm: Arm
    seed: int
    folder: Path
    argv: list[str] = field(default_factory=list)


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
def _split_list(text: str) -> list[str]:
    return [item.strip() for item in text.replace(" ", ",").split(",") if item.strip()]


def make_arms(variants: list[str], controls: list[str], size: str) -> list[Arm]:
    """The arms in report order: the variants as given, then the controls."""
    unknown = [v for v in variants if v not in ALL_VARIANTS]
    if unknown:
        raise StrataError(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(ALL_VARIANTS)}")
    unknown = [c for c in controls if c not in ALL_CONTROLS]
    if unknown:
        raise StrataError(f"unknown control(s) {', '.join(unknown)}; choose from {', '.join(ALL_CONTROLS)} or none")
    if len(set(variants)) != len(variants) or not variants:
        raise StrataError("--variants must list each variant once, e.g. none,routing")
    arms = [
        Arm(v, ["--model", f"stratified-{v}-{size}"], "variant",
            "dense baseline" if v == BASELINE else f"{v} mechanism, learned router")
        for v in variants
    ]
    if "dense_matched" in controls:
        arms.append(Arm("dense_matched", ["--model", f"stratified-none-{size}", "--match_params"], "control",
                        "dense baseline widened to the routing variant's parameter count"))
    if "hash" in controls:
        arms.append(Arm("hash", ["--model", f"stratified-routing-{size}", "--stratum_source", "hash"], "control",
                        "routing with token-hash strata (negative control)"))
    return arms


def _check_forwarded(forwarded: list[str]) -> None:
    for arg in forwarded:
        name = arg.split("=", 1)[0]
        if name in _RESERVED:
            raise StrataError(f"strata compare sets {name} itself: {_RESERVED[name]}")


def _has_flag(argv: list[str], name: str) -> bool:
    return any(a == name or a.startswith(name + "=") for a in argv)


def data_flags(args: argparse.Namespace, forwarded: list[str]) -> list[str]:
    """The forwarded flags plus the named mixture, or equal rates when --datasets has none."""
    if args.mixture:
        if _has_flag(forwarded, "--datasets") or _has_flag(forwarded, "--dataset"):
            raise StrataError("--mixture multidomain defines the data; drop --dataset/--datasets")
        from strata.experiments.multidomain import mixture_flags

        return [*forwarded, *mixture_flags()]
    if _has_flag(forwarded, "--datasets") and not _has_flag(forwarded, "--mixture_rates"):
        n = _count_datasets(forwarded)
        return [*forwarded, "--mixture_rates", *[repr(1.0 / n)] * n]
    return list(forwarded)


def _count_datasets(argv: list[str]) -> int:
    """How many values follow --datasets (space- or comma-separated)."""
    for i, arg in enumerate(argv):
        if arg.startswith("--datasets="):
            return len(_split_list(arg.split("=", 1)[1]))
        if arg == "--datasets":
            values = []
            for value in argv[i + 1:]:
                if value.startswith("--"):
                    break
                values.extend(_split_list(value))
            return len(values)
    return 0


def plan(args: argparse.Namespace, forwarded: list[str]) -> tuple[Any, list[PlannedRun], dict[str, Any]]:
    """Validate everything once, before any training: the base config, steps, arms, seeds, run folders."""
    from strata.config import parse_run_config

    _check_forwarded(forwarded)
    base_flags = data_flags(args, forwarded)
    if args.token_budget is not None:
        if _has_flag(forwarded, "--max_steps"):
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
    controls = [] if args.controls.strip().lower() in ("", "none") else _split_list(args.controls)
    arms = make_arms(_split_list(args.variants), controls, args.model_size)
    output = Path(args.output_dir or default_output_dir(args, base))
    runs = []
    for seed in seeds:  # seed-major: a stopped comparison still has complete pairs
        for arm in arms:
            folder = output / "runs" / f"{arm.name}_seed{seed}"
            argv = [*base_flags, *arm.flags, "--seed", str(seed), "--data_seed", str(args.data_seed),
                    "--output_dir", str(folder)]
            parse_run_config(argv)  # fail now, not after an hour of training
            runs.append(PlannedRun(arm, seed, folder, argv))
    t = base.train
    setup = {
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
    return base, runs, {"arms": arms, "setup": setup, "output": output}


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


# ----------------------------------------------------------------------------------------------- floor
def domain_floor(train_domains: list[str], train_labels: list[int], evals: list[Any]) -> dict[str, Any]:
    """Per-domain majority label of the training rows, scored like a model on every evaluation source.

    Ties go to the smallest label id; a domain absent from training falls back to its source's majority.
    Overall = unweighted mean over sources, like ``eval_accuracy`` of a mixture.
    """
    from strata.evaluation.metrics import classification_metrics

    counts: dict[str, Counter] = {}
    for domain, label in zip(train_domains, train_labels):
        if label >= 0:
            counts.setdefault(domain, Counter())[int(label)] += 1
    majority = {d: min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] for d, c in counts.items()}
    per_source: dict[str, Any] = {}
    for source in evals:
        domains = [str(d) for d in source.dataset["domain"]]
        labels = [int(x) for x in source.dataset["label"]]
        seen = Counter(majority[d] for d in domains if d in majority)
        fallback = seen.most_common(1)[0][0] if seen else 0
        predictions = [majority.get(d, fallback) for d in domains]
        metrics = classification_metrics(labels, predictions, list(source.label_words))
        per_source[source.name] = {
            "accuracy": metrics["accuracy"],
            "macro_f1": metrics["macro_f1"],
            "n": metrics["n"],
            "predicted": {d: source.label_words[majority.get(d, fallback)] for d in sorted(set(domains))},
        }
    return {
        "per_source": per_source,
        "accuracy": sum(v["accuracy"] for v in per_source.values()) / max(1, len(per_source)),
        "macro_f1": sum(v["macro_f1"] for v in per_source.values()) / max(1, len(per_source)),
        "train_rows": len(train_labels),
    }


def compute_floor(base: Any) -> tuple[dict[str, Any], Any]:
    """The floor over exactly the training rows a run consumes (the first max_steps x batch rows)."""
    import os

    from strata.data.pipeline import load_examples

    data = base.data
    data.hub_mirror = data.hub_mirror or os.environ.get("STRATA_HUB_MIRROR")
    examples = load_examples(data, "sft", base.train.data_order_seed())
    t = base.train
    rows = min(len(examples.train), t.max_steps * t.per_device_train_batch_size * t.gradient_accumulation_steps)
    head = examples.train.select(range(rows))
    return domain_floor(list(head["domain"]), list(head["label"]), examples.evals), examples


# ----------------------------------------------------------------------------------------------- collection
def run_summary(folder: Path) -> dict[str, Any]:
    """The numbers the report needs from one run folder's metrics.json."""
    metrics = json.loads((folder / "metrics.json").read_text())
    task = metrics.get("task_eval", {})
    per_source = {tag: {"accuracy": m.get("accuracy"), "macro_f1": m.get("macro_f1"), "n": m.get("n")}
                  for tag, m in task.items()}
    subdomains = {f"{tag}/{d}": {"accuracy": v.get("accuracy"), "macro_f1": v.get("macro_f1"), "n": v.get("n")}
                  for tag, m in task.items() for d, v in (m.get("per_domain") or {}).items()}
    mean = {k: sum(v[k] for v in per_source.values()) / max(1, len(per_source)) for k in ("accuracy", "macro_f1")}
    train = metrics.get("train", {})
    runtime = float(train.get("train_runtime") or 0.0)
    tokens = float(train.get("num_input_tokens_seen") or metrics.get("run", {}).get("token_budget") or 0)
    return {
        "per_source": per_source,
        "overall": mean,
        "subdomains": subdomains,
        "parameters": int(metrics.get("run", {}).get("total_parameters", 0)),
        "train_runtime": runtime,
        "tokens_seen": tokens,
        "tokens_per_second": tokens / runtime if runtime > 0 else float("nan"),
        "train_loss": train.get("train_loss"),
        "eval_loss": metrics.get("eval", {}).get("eval_loss"),
    }


# ----------------------------------------------------------------------------------------------- diagnostics
def run_diagnostics(folder: Path, examples: Any, per_source: int, max_length: int, device: str) -> dict[str, Any]:
    """Router diagnostics of one trained model on the evaluation prompts (tokens labelled by domain)."""
    import torch

    from strata.data.encoding import causal_row, decoder_context, encode_texts, special_tokens
    from strata.evaluation.scoring import pad_batch, pad_id
    from strata.experiments.diagnostics import collect_router_stats, routing_diagnostics
    from strata.models.loading import load_trained

    model, tokenizer = load_trained(str(folder / "final"), device=device)
    if getattr(model.config, "model_type", "") != "stratified":
        return {}
    prompts, completions, domains = [], [], []
    for source in examples.evals:
        rows = source.dataset.select(range(min(per_source, len(source.dataset))))
        prompts += rows["prompt"]
        completions += rows["completion"]
        domains += [str(d) for d in rows["domain"]]
    names = sorted(set(domains))
    ids = [names.index(d) for d in domains]
    # The very rows training built (strata.data.encoding): prompt, completion, EOS; prompt cut from the left.
    specials = special_tokens(tokenizer)
    rows_ids = []
    for p, c in zip(encode_texts(tokenizer, prompts), encode_texts(tokenizer, completions)):
        row = causal_row(specials, p, c, max_length)
        rows_ids.append(row[0] if row is not None else decoder_context(specials, p, max_length))
    batches, domain_ids = [], []
    for start in range(0, len(rows_ids), 16):
        input_ids, mask, _ = pad_batch(rows_ids[start:start + 16], pad_id(tokenizer, model), "right")
        batches.append({"input_ids": input_ids, "attention_mask": mask})
        domain_ids.append(torch.tensor(ids[start:start + 16]))
    stats = collect_router_stats(model, batches, domain_ids=domain_ids)
    diag = routing_diagnostics(stats, n_permutations=100, max_points=1500)
    diag["domain_names"] = names
    return diag


def summarise_diagnostics(diag: dict[str, Any]) -> dict[str, float]:
    """Per run: router and k-means NMI / purity vs domain, averaged over layers, with the best layer's p."""
    import math

    layers = diag.get("layers") or []
    out: dict[str, float] = {}
    for key in ("router", "experts", "kmeans"):
        entries = [layer[key] for layer in layers if key in layer]
        if not entries:
            continue
        for metric in ("nmi", "purity"):
            values = [e.get(metric) for e in entries if isinstance(e.get(metric), (int, float))]
            nulls = [e.get(f"{metric}_null_mean") for e in entries if isinstance(e.get(f"{metric}_null_mean"), float)]
            if values:
                out[f"{key}_{metric}_mean"] = sum(values) / len(values)
                out[f"{key}_{metric}_max"] = max(values)
            if nulls:
                out[f"{key}_{metric}_null_mean"] = sum(nulls) / len(nulls)
        ps = [e.get("nmi_p_value") for e in entries if isinstance(e.get("nmi_p_value"), float)]
        if ps:
            out[f"{key}_nmi_p_min"] = min(ps)
        if key == "router":
            ent = [e.get("load_entropy_normalized") for e in entries]
            ent = [v for v in ent if isinstance(v, float) and math.isfinite(v)]
            if ent:
                out["router_load_entropy_mean"] = sum(ent) / len(ent)
    return out


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
