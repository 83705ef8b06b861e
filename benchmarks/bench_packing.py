"""Benchmark: dynamic padding vs Strata packing (vs TRL-style one-row flattening) on SST-2 prompts.

A ~5M-parameter GPT-2 built from a config trains (forward + backward + AdamW step) on SST-2 train prompts in
the Strata template, with completion-only loss. Every mode gets the same number of real tokens per step and
the modes take turns step by step, so background load hits them alike. Writes a markdown table to --out.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_packing.py --steps 6 --out benchmarks/results/packing.md
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

from strata.data.collate import PackingCollator, PaddingCollator
from strata.data.packing import pack_examples
from strata.data.tokenization import tokenize_completions
from strata.training.throughput import device_name

PROMPT = (
    "Classify the sentiment of this movie review as either 'positive' or 'negative'.\n\n"
    "Review: {sentence}\nSentiment:"
)
REPO = Path(__file__).resolve().parents[1]


def load_sst2(hub: Path, n: int, seed: int) -> Dataset:
    rows = [json.loads(x) for x in (hub / "datasets/nyu-mll/glue/sst2/train.jsonl").read_text().splitlines()]
    random.Random(seed).shuffle(rows)
    rows = rows[:n]
    return Dataset.from_dict(
        {
            "prompt": [PROMPT.format(sentence=r["sentence"]) for r in rows],
            "completion": [" positive" if r["label"] == 1 else " negative" for r in rows],
        }
    )


def take_batches(features: list[dict], tokens_per_step: int, n_batches: int) -> list[list[dict]]:
    """Consecutive groups of features holding >= tokens_per_step real tokens each (cycling if needed)."""
    batches, cur, cur_tokens, i = [], [], 0, 0
    while len(batches) < n_batches:
        f = features[i % len(features)]
        i += 1
        cur.append(f)
        cur_tokens += len(f["input_ids"])
        if cur_tokens >= tokens_per_step:
            batches.append(cur)
            cur, cur_tokens = [], 0
    return batches


def step_fn(model, optimizer, batch: dict, dtype: str) -> float:
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bf16" else nullcontext()
    with ctx:
        loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--hub", type=Path, default=Path(os.environ.get("STRATA_HUB_MIRROR", REPO.parent / "shared/hub"))
    )
    ap.add_argument("--n-examples", type=int, default=6000)
    ap.add_argument("--max-length", type=int, default=256, help="tokenization max_length")
    ap.add_argument("--pack-length", type=int, default=256, help="packed row length")
    ap.add_argument("--tokens-per-step", type=int, default=8192, help="real (non-pad) tokens per step")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per mode")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--modes", default="padded,packed,flattened")
    ap.add_argument("--flattened-steps", type=int, default=1, help="timed steps for the slow TRL-style mode")
    ap.add_argument("--flattened-dtypes", default="fp32", help="dtypes that run the slow TRL-style mode")
    ap.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "0")) or None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks/results/packing.md")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    tok = AutoTokenizer.from_pretrained(str(args.hub / "models/openai-community/gpt2"))
    ds = tokenize_completions(load_sst2(args.hub, args.n_examples, args.seed), tok, args.max_length)
    examples = list(ds)
    packed_rows = list(pack_examples(ds, args.pack_length, seed=args.seed))
    modes = args.modes.split(",")
    n_batches = args.warmup + args.steps
    sources = {
        "padded": (take_batches(examples, args.tokens_per_step, n_batches), PaddingCollator(tok)),
        "packed": (take_batches(packed_rows, args.tokens_per_step, n_batches), PackingCollator(tok)),
        "flattened": (  # no warm-up step: one flattened step is slow enough to dwarf warm-up effects
            [None] * args.warmup + take_batches(packed_rows, args.tokens_per_step, args.flattened_steps),
            PackingCollator(tok, flatten=True),
        ),
    }

    cfg = GPT2Config(n_embd=96, n_layer=4, n_head=4, n_positions=1024, vocab_size=len(tok))
    torch.manual_seed(args.seed)
    base = GPT2LMHeadModel(cfg)
    base.set_attn_implementation(args.attn)
    n_params = sum(p.numel() for p in base.parameters())
    results = []
    for dtype in args.dtypes.split(","):
        state = {}
        for mode in modes:
            model = GPT2LMHeadModel(cfg)
            model.load_state_dict(base.state_dict())
            model.set_attn_implementation(args.attn)
            model.config.use_cache = False  # as Trainer does
            model.train()
            state[mode] = {"model": model, "opt": torch.optim.AdamW(model.parameters(), lr=1e-4), "times": []}
            state[mode].update(tokens=0, loss_tokens=0, slots=0, rows=0)
        for i in range(n_batches):
            for mode in modes:  # take turns so background load hits every mode alike
                batches, collate = sources[mode]
                if i >= len(batches) or batches[i] is None:
                    continue
                if mode == "flattened" and dtype not in args.flattened_dtypes.split(","):
                    continue
                s = state[mode]
                t0 = time.perf_counter()
                batch = collate(batches[i])
                step_fn(s["model"], s["opt"], batch, dtype)
                dt = time.perf_counter() - t0
                if i < args.warmup:
                    continue
                s["times"].append(dt)
                s["tokens"] += sum(len(f["input_ids"]) for f in batches[i])
                s["loss_tokens"] += int((batch["labels"][:, 1:] != -100).sum())
                s["slots"] += batch["input_ids"].numel()
                s["rows"] += batch["input_ids"].shape[0]
                print(
                    f"{dtype} {mode:9s} step {i} {dt:7.2f}s shape {tuple(batch['input_ids'].shape)}",
                    flush=True,
                )
        for mode in modes:
            s = state[mode]
            if not s["times"]:
                continue
            total = sum(s["times"])
            results.append(
                {
                    "dtype": dtype,
                    "mode": mode,
                    "steps": len(s["times"]),
                    "median_step_s": statistics.median(s["times"]),
                    "tokens_per_s": s["tokens"] / total,
                    "loss_tokens_per_s": s["loss_tokens"] / total,
                    "pad_fraction": 1 - s["tokens"] / s["slots"],
                    "rows_per_step": s["rows"] / len(s["times"]),
                    "width": s["slots"] / s["rows"],
                }
            )

        write_report(args, argv, results, tok, n_params)
    return 0


def write_report(
    args: argparse.Namespace, argv: list[str] | None, results: list[dict], tok, n_params: int
) -> None:
    """Write the markdown table (called after each dtype, so partial runs keep their numbers)."""
    lines = [
        "# Packing benchmark",
        "",
        f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {device_name(torch.device('cpu'))}, {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}",
        f"- torch {torch.__version__}, python {sys.version.split()[0]}, attention {args.attn}",
        f"- model: GPT-2 from config (n_embd 96, 4 layers, 4 heads, vocab {len(tok)}), {n_params / 1e6:.2f}M params,"
        " AdamW, forward+backward+step; bf16 = torch.autocast(cpu, bfloat16)",
        f"- data: {args.n_examples} SST-2 train prompts (Strata template, GPT-2 tokenizer), completion-only loss;"
        f" ~{args.tokens_per_step} real tokens per step; packed rows of <= {args.pack_length} tokens;"
        f" {args.warmup} warm-up step(s) not timed",
        "- modes: padded = PaddingCollator (dynamic right padding); packed = pack_examples + PackingCollator"
        " (rows kept separate); flattened = the same rows in ONE row per step (TRL bfd + padding_free style)",
        f"- command: `{' '.join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])])}`",
        "",
        "| dtype | mode | steps | median s/step | rows x width | pad % | tokens/s | loss tokens/s | vs padded |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ref = next((x for x in results if x["dtype"] == r["dtype"] and x["mode"] == "padded"), None)
        ratio = f"{r['loss_tokens_per_s'] / ref['loss_tokens_per_s']:.2f}x" if ref else "-"
        lines.append(
            f"| {r['dtype']} | {r['mode']} | {r['steps']} | {r['median_step_s']:.2f} | "
            f"{r['rows_per_step']:.1f} x {r['width']:.0f} | {100 * r['pad_fraction']:.1f} | "
            f"{r['tokens_per_s']:.0f} | {r['loss_tokens_per_s']:.1f} | {ratio} |"
        )
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    raise SystemExit(main())
