"""The protocol steps of a comparison around the runs: learning-rate sweep, baseline gate, transfer, workers.

Why these exist: a comparison of mechanisms means something only when the baseline has learned the tasks
(otherwise every arm sits at the label prior and differences are noise), when the shared learning rate was
chosen for the baseline rather than for a variant, and when domain generalisation is measured on a source no
arm trained on. The order is fixed by ``compare.compare``: sweep -> baseline seeds -> gate -> other arms.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from strata.errors import StrataError
from strata.experiments.compare_arms import PlannedRun

__all__ = ["GATE_POINTS", "choose_learning_rate", "gate", "run_all", "share_tokenizer", "transfer_flags",
           "transfer_metrics"]

GATE_POINTS = 5.0  # the baseline must beat the domain-only floor by this many accuracy points on every source


# ----------------------------------------------------------------------------------------------- sweep
def choose_learning_rate(records: dict[float, dict[str, Any]]) -> tuple[float, str]:
    """The swept rate with the best overall (mean over sources) accuracy; ties go to the smaller rate."""
    finite = {lr: r for lr, r in records.items() if r["overall"]["accuracy"] == r["overall"]["accuracy"]}
    if not finite:
        raise StrataError("every learning rate of --lr_sweep ended without a finite accuracy; lower the rates")
    best = min(finite, key=lambda lr: (-finite[lr]["overall"]["accuracy"], lr))
    why = ", ".join(f"{lr:g}: {finite[lr]['overall']['accuracy'] * 100:.1f}" for lr in sorted(finite))
    return best, f"overall accuracy of the baseline per rate ({why}); best {best:g}"


# ----------------------------------------------------------------------------------------------- gate
def gate(baseline_runs: list[dict[str, Any]], floor: dict[str, Any], points: float) -> dict[str, Any]:
    """Does the baseline's mean accuracy over seeds clear the floor by ``points`` on every trained source?"""
    per_source: dict[str, Any] = {}
    for tag, entry in floor.get("per_source", {}).items():
        values = [r["per_source"][tag]["accuracy"] for r in baseline_runs if tag in r["per_source"]]
        mean = sum(values) / len(values) if values else float("nan")
        need = entry["accuracy"] + points / 100.0
        per_source[tag] = {"baseline_mean": mean, "floor": entry["accuracy"], "needed": need,
                           "margin_points": (mean - entry["accuracy"]) * 100.0, "passed": bool(mean >= need)}
    failed = [tag for tag, v in per_source.items() if not v["passed"]]
    return {"points": points, "seeds": len(baseline_runs), "per_source": per_source, "passed": not failed,
            "failed": failed}


# ----------------------------------------------------------------------------------------------- tokenizer
def share_tokenizer(forwarded: list[str], base: Any, output: Path) -> tuple[list[str], str | None]:
    """``--train_tokenizer bpe:N``: train it once here, on the training rows every run reads, and give each run
    ``--tokenizer <output>/tokenizer`` instead. Every arm then has the same vocabulary by construction (not by
    BPE training happening to be deterministic), and no run pays for training it again."""
    spec = base.model.train_tokenizer
    if not spec:
        return forwarded, None
    folder = output / "tokenizer"
    if not (folder / "tokenizer.json").is_file():
        from strata.data.pipeline import load_examples
        from strata.models.tokenizers import train_bpe_tokenizer

        data = base.data
        data.hub_mirror = data.hub_mirror or os.environ.get("STRATA_HUB_MIRROR")
        examples = load_examples(data, "sft", base.train.data_order_seed())
        train_bpe_tokenizer(spec, examples.training_texts(), folder)
        print(f"[compare] trained {spec} once on the {len(examples.train):,} training rows: {folder}", flush=True)
    kept, skip = [], False
    for arg in forwarded:
        if skip:
            skip = False
        elif arg == "--train_tokenizer":
            skip = True
        elif not arg.startswith("--train_tokenizer="):
            kept.append(arg)
    return [*kept, "--tokenizer", str(folder)], f"{spec}, trained once on the training rows and shared: {folder}"


# ----------------------------------------------------------------------------------------------- transfer
def transfer_flags(source: Any, max_eval_examples: int | None) -> list[str]:
    """`strata eval` flags that score a run on a held-out mixture source (its own evaluation split)."""
    flags = ["--dataset", source.dataset]
    if source.config:
        flags += ["--dataset_config", source.config]
    if source.eval_split:
        flags += ["--eval_split", source.eval_split]
    if max_eval_examples:
        flags += ["--max_eval_examples", str(max_eval_examples)]
    return flags


def transfer_metrics(folder: Path) -> dict[str, Any] | None:
    """The held-out source's metrics of one run (``transfer.json``), or None when it was not evaluated."""
    path = folder / "transfer.json"
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    return {tag: {k: m.get(k) for k in ("accuracy", "macro_f1", "n", "majority_baseline")}
            for tag, m in record.get("task_eval", {}).items()}


# ----------------------------------------------------------------------------------------------- running
def _marker(folder: Path) -> Path:
    return folder / "compare_run.json"


def finished(run: PlannedRun) -> dict[str, Any] | None:
    """The record of an identical finished run (metrics, marker and, when asked, the transfer score)."""
    marker = _marker(run.folder)
    if not ((run.folder / "metrics.json").is_file() and marker.is_file()):
        return None
    record = json.loads(marker.read_text())
    if record.get("argv") != run.argv or record.get("transfer") != run.transfer:
        raise StrataError(f"{run.folder} was trained with other flags; use a new --output_dir or delete it")
    if run.transfer and not (run.folder / "transfer.json").is_file():
        return None
    return record


def _train_subprocess(run: PlannedRun, log: Path, threads: int) -> None:
    """One run in its own interpreter (its own torch thread pool), its output in ``log``."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    log.parent.mkdir(parents=True, exist_ok=True)
    spec = log.with_suffix(".json")
    spec.write_text(json.dumps({"argv": run.argv, "transfer": run.transfer, "folder": str(run.folder)}))
    with log.open("w") as out:
        code = subprocess.call([sys.executable, "-m", "strata.experiments.compare_worker", str(spec)], stdout=out,
                               stderr=subprocess.STDOUT, env=env)
    if code != 0:
        tail = log.read_text().strip().splitlines()[-1:] or ["(no output)"]
        raise StrataError(f"run {run.folder.name} exited {code}: {tail[0]} (log: {log})")


def run_all(runs: list[PlannedRun], jobs: int, logs: Path, in_process: Callable[[PlannedRun], None],
            label: str = "") -> list[dict[str, Any]]:
    """Train every run not already finished, ``jobs`` at a time; return their records in order.

    With one job each run trains in this process (``in_process``: train, then the transfer evaluation); with
    several, each in its own interpreter (``python -m strata.experiments.compare_worker``) with cores / jobs
    threads.
    """
    import shutil

    todo = []
    records: list[dict[str, Any] | None] = []
    for run in runs:
        record = finished(run)
        if record is not None:
            print(f"[compare] skip {run.arm.name} seed {run.seed}{label}: finished run in {run.folder}", flush=True)
            records.append({**record, "skipped": True})
            continue
        if run.folder.exists():  # started but never finished: its partial state is not trustworthy
            print(f"[compare] removing unfinished {run.folder}", flush=True)
            shutil.rmtree(run.folder)
        todo.append(len(records))
        records.append(None)
    threads = max(1, (os.cpu_count() or 1) // max(1, jobs))

    def one(index: int) -> dict[str, Any]:
        run = runs[index]
        print(f"[compare] train {run.arm.name} seed {run.seed}{label}", flush=True)
        start = time.perf_counter()
        if jobs == 1:
            in_process(run)
        else:
            _train_subprocess(run, logs / f"{run.folder.name}.log", threads)
        record = {"arm": run.arm.name, "seed": run.seed, "argv": run.argv, "transfer": run.transfer,
                  "wall_seconds": time.perf_counter() - start, "threads": threads if jobs > 1 else None}
        _marker(run.folder).write_text(json.dumps(record, indent=2) + "\n")
        return {**record, "skipped": False}

    if jobs == 1:
        for index in todo:
            records[index] = one(index)
    else:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            for index, record in zip(todo, pool.map(one, todo)):
                records[index] = record
    return [r for r in records if r is not None]
