"""Benchmark: issue 14's SFT comparison table in one run (Trainer, TRL SFTTrainer, Strata).

Five systems train the same 16.3M-parameter GPT-2 (built from a config, GPT-2 tokenizer, 50,257 vocab) on
the same SST-2 prompts/completions (``strata.data.formatting.load_formatted``), fp32, batch 16, max_length
128, AdamW at one learning rate, no evaluation, no checkpoints:

1. ``trainer_pad_max``: transformers ``Trainer``, rows padded to max_length, completion-only labels
   (ids from Strata's encoding contract, so the loss-bearing tokens are the ones Strata trains on);
2. ``trl_default``: TRL ``SFTTrainer`` with its defaults for a {"prompt","completion"} dataset (dynamic
   padding, completion-only loss, gradient checkpointing on, as TRL ships it; bf16 off to keep fp32);
3. ``trl_packing``: the same with ``packing=True`` (TRL's bfd packing, padding-free rows);
4. ``strata_dynamic``: ``strata train`` (the CLI entry, in-process in a subprocess) with dynamic padding;
5. ``strata_packing``: ``strata train --use_packing``.

Strata runs through ``strata.cli.main(["train", ...])``; the only hook is a wrapper around
``strata.training.run.build_trainer`` that adds a timing callback and counts the batches, so whatever the
recipe does (e.g. the LM head only at loss positions) is what gets measured. Each measurement runs in its
own subprocess, so ``ru_maxrss`` is that system's peak; rounds are interleaved with the order rotated and
the table reports medians over rounds. Step 1 of every run is a warm-up and is not timed; a step's time is
the gap between consecutive ``on_step_end`` callbacks (batch fetch + forward + backward + optimizer).

Loss-bearing tokens are counted in the batches each system actually trains on, as the model's loss sees
them: ``labels[:, 1:] != -100`` (HF causal LMs shift labels by one), or ``shift_labels != -100``.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_sft.py              # 3 rounds x 20 steps
    .venv/bin/python benchmarks/bench_sft.py --quick --out /tmp/sft.md      # 1 round x 3 steps (smoke)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SYSTEMS = ("trainer_pad_max", "trl_default", "trl_packing", "strata_dynamic", "strata_packing")
LABELS = {
    "trainer_pad_max": "transformers Trainer, pad to max_length",
    "trl_default": "TRL SFTTrainer defaults",
    "trl_packing": "TRL SFTTrainer packing=True",
    "strata_dynamic": "Strata dynamic padding",
    "strata_packing": "Strata --use_packing",
}
BASELINE = "trainer_pad_max"
# 4 x 256 GPT-2 with 1024 positions and the 50,257 vocabulary: 16,287,488 parameters (tied head).
MODEL_CONFIG = {"n_layer": 4, "n_embd": 256, "n_head": 4, "n_positions": 1024, "vocab_size": 50257}


# ---------------------------------------------------------------------------- worker (one subprocess)
class BatchCounter:
    """Wraps a data collator and records, per batch, loss-bearing, real and computed token counts."""

    def __init__(self, collator: Any) -> None:
        self.collator = collator
        self.batches: list[dict[str, int]] = []

    def __call__(self, features):
        batch = self.collator(features)
        self.batches.append(count_tokens(batch))
        return batch


def count_tokens(batch: dict[str, Any]) -> dict[str, int]:
    """loss = labels the shifted loss uses; real = non-padding tokens; computed = positions the model runs."""
    if "shift_labels" in batch:
        loss = int((batch["shift_labels"] != -100).sum())
    else:
        loss = int((batch["labels"][..., 1:] != -100).sum())
    ids = batch["input_ids"]
    if "attention_mask" in batch:
        real = int(batch["attention_mask"].sum())
    elif "position_ids" in batch:
        # Packed rows: blocks start where position_ids == 0; a padding block is one with no label at all
        # (every real example has at least its completion + EOS as labels).
        real = 0
        for pos, lab in zip(batch["position_ids"], batch["labels"]):
            starts = (pos == 0).nonzero().flatten().tolist() + [pos.numel()]
            for a, b in zip(starts[:-1], starts[1:]):
                if bool((lab[a:b] != -100).any()):
                    real += b - a
    else:
        real = int(ids.numel())
    return {"loss": loss, "real": real, "computed": int(ids.numel())}


def timing_callback(counter_ref: dict[str, BatchCounter], out: dict[str, Any]):
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Step end times; at train end writes step times, token counts and ru_maxrss to ``out``."""

        def on_train_begin(self, args, state, control, **kwargs):
            out["ends"] = [time.perf_counter()]

        def on_step_end(self, args, state, control, **kwargs):
            out["ends"].append(time.perf_counter())

        def on_train_end(self, args, state, control, **kwargs):
            out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            out["batches"] = counter_ref["counter"].batches
            out["global_step"] = state.global_step

    return StepTimer()


def load_rows(mirror: Path, n: int, seed: int):
    from datasets import Dataset

    from strata.data.formatting import load_formatted

    formatted = load_formatted("glue", "sst2", mirror=mirror, max_examples=n, seed=seed)
    data = formatted.dataset
    return Dataset.from_dict({"prompt": list(data["prompt"]), "completion": list(data["completion"])})


def build_gpt2(model_dir: Path, seed: int):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))


def pad_to_max(rows, tokenizer, max_length: int):
    """Trainer baseline rows: Strata's encoding contract, then right padding to max_length."""
    from strata.data.encoding import IGNORE_INDEX, causal_row, encode_texts, special_tokens

    specials = special_tokens(tokenizer)
    prompts = encode_texts(tokenizer, rows["prompt"])
    completions = encode_texts(tokenizer, rows["completion"])
    out: dict[str, list[list[int]]] = {"input_ids": [], "attention_mask": [], "labels": []}
    for p, c in zip(prompts, completions):
        row = causal_row(specials, p, c, max_length)
        if row is None:
            continue
        ids, labels = row
        pad = max_length - len(ids)
        out["input_ids"].append(ids + [tokenizer.pad_token_id] * pad)
        out["attention_mask"].append([1] * len(ids) + [0] * pad)
        out["labels"].append(labels + [IGNORE_INDEX] * pad)
    return out


def run_hf(system: str, a: argparse.Namespace, out: dict[str, Any]) -> None:
    from datasets import Dataset
    from transformers import AutoTokenizer, Trainer, TrainingArguments, default_data_collator

    tokenizer = AutoTokenizer.from_pretrained(a.model_dir)
    tokenizer.pad_token = tokenizer.eos_token
    model = build_gpt2(a.model_dir, a.seed)
    steps = a.steps + a.warmup
    n = steps * a.batch * (8 if system == "trl_packing" else 1)
    rows = load_rows(a.mirror, n, a.seed)
    counter_ref: dict[str, BatchCounter] = {}
    common = dict(output_dir=str(a.workdir / f"out-{system}"), max_steps=steps, per_device_train_batch_size=a.batch,
                  learning_rate=a.lr, lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0,
                  max_grad_norm=1.0, seed=a.seed, use_cpu=True, report_to=[], save_strategy="no",
                  eval_strategy="no", disable_tqdm=True, logging_steps=max(1, steps // 10))
    if system == BASELINE:
        trainer = Trainer(model=model, args=TrainingArguments(**common),
                          train_dataset=Dataset.from_dict(pad_to_max(rows, tokenizer, a.max_length)),
                          data_collator=default_data_collator)
    else:
        from trl import SFTConfig, SFTTrainer

        config = SFTConfig(**common, max_length=a.max_length, packing=system == "trl_packing", bf16=False)
        out["trl_config"] = {"gradient_checkpointing": config.gradient_checkpointing,
                             "completion_only_loss": config.completion_only_loss, "packing": config.packing,
                             "packing_strategy": config.packing_strategy, "padding_free": config.padding_free}
        trainer = SFTTrainer(model=model, args=config, train_dataset=rows, processing_class=tokenizer)
    counter_ref["counter"] = BatchCounter(trainer.data_collator)
    trainer.data_collator = counter_ref["counter"]
    trainer.add_callback(timing_callback(counter_ref, out))
    trainer.train()


def strata_flags(system: str, a: argparse.Namespace) -> list[str]:
    flags = ["train", "--model", str(a.model_dir), "--init", "scratch", "--dataset", "glue", "--dataset_config",
             "sst2", "--hub_mirror", str(a.mirror), "--max_length", str(a.max_length),
             "--per_device_train_batch_size", str(a.batch), "--max_steps", str(a.steps + a.warmup),
             "--learning_rate", str(a.lr), "--lr_scheduler_type", "linear", "--warmup_steps", "0",
             "--weight_decay", "0.0", "--max_grad_norm", "1.0", "--precision", "fp32", "--device", "cpu",
             "--eval_steps", "0", "--max_eval_examples", "1", "--seed", str(a.seed),
             "--runs_dir", str(a.workdir / f"runs-{system}")]
    return flags + (["--use_packing"] if system == "strata_packing" else [])


def run_strata(system: str, a: argparse.Namespace, out: dict[str, Any]) -> None:
    import strata.training.run as recipe
    from strata.cli import main

    counter_ref: dict[str, BatchCounter] = {}
    original = recipe.build_trainer

    def build_and_time(*args, **kwargs):
        trainer = original(*args, **kwargs)
        counter_ref["counter"] = BatchCounter(trainer.data_collator)
        trainer.data_collator = counter_ref["counter"]
        trainer.add_callback(timing_callback(counter_ref, out))
        return trainer

    recipe.build_trainer = build_and_time
    rc = main(strata_flags(system, a))
    if rc != 0:
        raise SystemExit(f"strata train exited {rc}")


def worker(a: argparse.Namespace) -> None:
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    out: dict[str, Any] = {"system": a.worker, "threads": torch.get_num_threads()}
    (run_strata if a.worker.startswith("strata") else run_hf)(a.worker, a, out)
    ends, batches = out.pop("ends"), out.pop("batches")
    step_s = [b - e for e, b in zip(ends[:-1], ends[1:])][a.warmup:]
    timed = batches[a.warmup : a.warmup + len(step_s)]  # batch i feeds step i (accelerate may fetch one ahead)
    total = sum(step_s)
    loss, real, computed = (sum(b[k] for b in timed) for k in ("loss", "real", "computed"))
    out.update(timed_steps=len(step_s), step_s=step_s, step_median_s=statistics.median(step_s), total_s=total,
               loss_tokens=loss, real_tokens=real, computed_tokens=computed,
               loss_tok_s=loss / total, all_tok_s=real / total)
    a.result.write_text(json.dumps(out, indent=1))


# ---------------------------------------------------------------------------- driver
def write_model_dir(path: Path, mirror: Path) -> int:
    """A config-only GPT-2 folder (plus the GPT-2 tokenizer files) that every system builds from."""
    from transformers import AutoModelForCausalLM, GPT2Config

    path.mkdir(parents=True, exist_ok=True)
    config = GPT2Config(**MODEL_CONFIG)
    config.save_pretrained(path)
    tokenizer_dir = mirror / "models/openai-community/gpt2"
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "tokenizer.json"):
        if (tokenizer_dir / name).exists():
            shutil.copy(tokenizer_dir / name, path / name)
    return sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())


def cpu_facts() -> dict[str, str]:
    model, flags = platform.processor() or "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")
    return {"model": model, "flags": ", ".join(f for f in wanted if f in flags) or "none of " + "/".join(wanted),
            "cores": str(os.cpu_count())}


def versions() -> dict[str, str]:
    import torch
    import transformers
    import trl

    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.strip()
        rev += " (with uncommitted changes)" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        rev = "unknown"
    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "trl": trl.__version__, "strata": rev}


def measure(system: str, a: argparse.Namespace, round_no: int) -> dict[str, Any]:
    result = a.workdir / f"{system}-{round_no}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", system, "--result", str(result),
           "--model-dir", str(a.model_dir), "--workdir", str(a.workdir), "--mirror", str(a.mirror),
           "--steps", str(a.steps), "--warmup", str(a.warmup), "--batch", str(a.batch),
           "--max-length", str(a.max_length), "--lr", str(a.lr), "--seed", str(a.seed)]
    cmd += ["--threads", str(a.threads)] if a.threads else []
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(
        [str(REPO / "src")] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0 or not result.exists():
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise SystemExit(f"{system} (round {round_no + 1}) failed with exit code {proc.returncode}")
    data = json.loads(result.read_text())
    data["wall_s"] = time.perf_counter() - start
    print(f"round {round_no + 1} {system}: {data['loss_tok_s']:.1f} loss tok/s, {data['all_tok_s']:.0f} tok/s, "
          f"median step {data['step_median_s']:.2f} s, peak RSS {data['peak_rss_mb']:.0f} MB, "
          f"wall {data['wall_s']:.0f} s", flush=True)
    return data


def table(results: dict[str, list[dict[str, Any]]]) -> list[str]:
    med = {s: {k: statistics.median(r[k] for r in runs) for k in
               ("loss_tok_s", "all_tok_s", "step_median_s", "peak_rss_mb")} for s, runs in results.items()}
    base = med[BASELINE]["loss_tok_s"] if BASELINE in med else None
    lines = ["| system | loss tok/s | all tok/s | step median s | vs Trainer pad-to-max | peak RSS MB | "
             "loss tok/step | real tok/step | computed pos/step |",
             "|---|---|---|---|---|---|---|---|---|"]
    for s, runs in results.items():
        m, r0 = med[s], runs[0]
        ratio = f"{m['loss_tok_s'] / base:.2f}x" if base else "n/a"
        per = r0["timed_steps"]
        lines.append(f"| {LABELS[s]} | {m['loss_tok_s']:.1f} | {m['all_tok_s']:.0f} | {m['step_median_s']:.3f} | "
                     f"{ratio} | {m['peak_rss_mb']:.0f} | {r0['loss_tokens'] / per:.1f} | "
                     f"{r0['real_tokens'] / per:.0f} | {r0['computed_tokens'] / per:.0f} |")
    return lines


def report(a: argparse.Namespace, results, params: int, started: str, command: str, wall: float) -> str:
    cpu, ver = cpu_facts(), versions()
    threads = sorted({r["threads"] for runs in results.values() for r in runs})
    trl_cfg = next((r.get("trl_config") for runs in results.values() for r in runs if r.get("trl_config")), None)
    bullets = [
        f"- {a.note}" if a.note else "",
        f"- date: {started}; whole run {wall / 60:.1f} min",
        f"- machine: {cpu['model']}, {cpu['cores']} logical cores, flags: {cpu['flags']}; torch threads "
        f"{', '.join(map(str, threads))}",
        f"- versions: python {ver['python']}, torch {ver['torch']}, transformers {ver['transformers']}, "
        f"trl {ver['trl']}, strata git {ver['strata']}",
        f"- model: GPT-2 from config {MODEL_CONFIG}, {params:,} parameters, fp32, sdpa where the library picks it",
        "- data: SST-2 train via strata.data.formatting.load_formatted('glue', 'sst2') (Strata's prompt "
        "template and ' positive'/' negative' completions + EOS), completion-only loss everywhere",
        f"- training: batch {a.batch}, max_length {a.max_length}, AdamW lr {a.lr} linear decay, no warm-up, "
        f"weight decay 0, clip 1.0; {a.steps} timed optimizer steps after {a.warmup} warm-up step(s); "
        f"no evaluation, no checkpoints; {a.rounds} interleaved round(s), order rotated per round; medians",
        f"- TRL config as run: {trl_cfg}" if trl_cfg else "",
        "- loss tok/s = labels the (shifted) loss uses / timed seconds; all tok/s = non-padding tokens / timed "
        "seconds; computed pos/step = rows x width the model runs (padding included); peak RSS = ru_maxrss of "
        "that system's own subprocess at train end",
        f"- command: `{command}`",
    ]
    lines = ["# SFT throughput: Trainer vs TRL SFTTrainer vs Strata (issue 14)", ""]
    lines += [b for b in bullets if b] + [""] + table(results) + [""]
    lines += ["Per round (loss tok/s):", ""]
    for s, runs in results.items():
        lines.append(f"- {LABELS[s]}: " + ", ".join(f"{r['loss_tok_s']:.1f}" for r in runs))
    return "\n".join(lines) + "\n"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=20, help="timed optimizer steps per measurement")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up steps before them")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated subset of " + ",".join(SYSTEMS))
    p.add_argument("--quick", action="store_true", help="1 round of 3 steps (a smoke run, not a measurement)")
    p.add_argument("--mirror", type=Path, default=Path(os.environ.get("STRATA_HUB_MIRROR", "/work/shared/hub")))
    p.add_argument("--out", type=Path, default=REPO / "benchmarks/results/sft.md")
    p.add_argument("--note", default="", help="a line for the results file, e.g. 'preliminary, machine shared'")
    p.add_argument("--worker", choices=SYSTEMS, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.quick:
        a.rounds, a.steps = 1, 3
    systems = [s.strip() for s in a.systems.split(",") if s.strip()]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown or not systems:
        p.error(f"--systems {a.systems!r}: unknown {unknown}; choose from {', '.join(SYSTEMS)}")
    if a.steps < 1 or a.rounds < 1 or a.warmup < 0:
        p.error("--steps and --rounds must be at least 1, --warmup at least 0")
    a.systems = systems
    return a


def main(argv: list[str] | None = None) -> None:
    a = parse(argv)
    if a.worker:
        worker(a)
        return
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = shlex.join(["python", "benchmarks/bench_sft.py", *(argv if argv is not None else sys.argv[1:])])
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_sft_") as tmp:
        a.workdir = Path(tmp)
        a.model_dir = a.workdir / "gpt2-16m"
        params = write_model_dir(a.model_dir, a.mirror)
        results: dict[str, list[dict[str, Any]]] = {s: [] for s in a.systems}
        for r in range(a.rounds):
            k = r % len(a.systems)
            for system in a.systems[k:] + a.systems[:k]:
                results[system].append(measure(system, a, r))
    text = report(a, results, params, started, command, time.perf_counter() - t0)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
