"""Benchmark: one SFT evaluation of the 872 SST-2 validation examples, before vs after issue 14 item 2.

* before: what ``StrataTrainer.evaluate`` did: Trainer's token-loss loop over the tokenized eval rows,
  then label-likelihood scoring with one ``context + label`` row per (example, label word)
  (``score_choices(..., reuse_context=False)``, the reference path).
* after: the default now: scoring each context once (one forward per example, logits at its last
  position) and no loss pass (task metrics exist and no ``--eval_loss``).

A 16.3M-parameter GPT-2 (50,257 vocab) built from its config, fp32, batch 16, max_length 128, the
prompts and label words strata's glue/sst2 spec builds. The two variants alternate; medians of
``--repeats``. The metrics of both must be identical (accuracy to the last digit, every nested number).

    OMP_NUM_THREADS=2 PYTHONPATH=src .venv/bin/python benchmarks/bench_eval.py --repeats 3
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, TrainingArguments

import strata.evaluation.evaluate as evaluate_module
from strata.config import DataArguments
from strata.data.collate import PaddingCollator
from strata.data.encoding import causal_row, encode_texts, special_tokens
from strata.data.pipeline import load_eval_sources
from strata.evaluation.scoring import score_choices
from strata.training.trainer import StrataTrainer

REPO = Path(__file__).resolve().parents[1]
MIRROR = REPO.parents[0] / "shared" / "hub"


def machine_record() -> dict:
    """Machine, versions and date, as every results file carries (shared with bench_sft.py)."""
    import sys as _sys
    from datetime import datetime, timezone

    _sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_sft import cpu_facts, versions

    return {"machine": cpu_facts(), "versions": versions(),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hub_mirror", default=str(MIRROR))
    parser.add_argument("--max_examples", type=int, default=None)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()

    data = DataArguments(dataset="glue", dataset_config="sst2", hub_mirror=args.hub_mirror, max_eval_examples=None)
    (source, split), = load_eval_sources(data, "sft", seed=0)
    dataset = source.dataset
    if args.max_examples is not None:
        dataset = dataset.select(range(args.max_examples))
    tokenizer = AutoTokenizer.from_pretrained(str(Path(args.hub_mirror) / "models" / "openai-community" / "gpt2"))
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_embd=256, n_layer=4, n_head=4, n_positions=1024,
                                       vocab_size=len(tokenizer))).eval()
    n_params = sum(p.numel() for p in model.parameters())
    specials = special_tokens(tokenizer)
    rows = [causal_row(specials, p, c, 128) for p, c in zip(encode_texts(tokenizer, list(dataset["prompt"])),
                                                            encode_texts(tokenizer, list(dataset["completion"])))]
    token_rows = Dataset.from_dict({"input_ids": [r[0] for r in rows], "labels": [r[1] for r in rows]})
    spec = {"name": source.name, "dataset": dataset, "family": source.family, "label_words": source.label_words,
            "method": "loglik", "batch_size": 16, "max_length": 128, "max_examples": None}

    def trainer(eval_loss: bool, out: str) -> StrataTrainer:
        targs = TrainingArguments(output_dir=out, use_cpu=True, report_to=[], per_device_eval_batch_size=16,
                                  remove_unused_columns=False, disable_tqdm=True)
        return StrataTrainer(model=model, args=targs, processing_class=tokenizer, eval_dataset=token_rows,
                             data_collator=PaddingCollator(tokenizer), task_eval=[spec], eval_loss=eval_loss)

    times: dict[str, list[float]] = {"before": [], "after": []}
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as out:
        for _ in range(args.repeats):
            for variant in ("before", "after"):
                t = trainer(eval_loss=variant == "before", out=out)
                original = evaluate_module.score_choices
                if variant == "before":
                    evaluate_module.score_choices = functools.partial(score_choices, reuse_context=False)
                try:
                    start = time.perf_counter()
                    metrics = t.evaluate()
                    times[variant].append(time.perf_counter() - start)
                finally:
                    evaluate_module.score_choices = original
                results[variant] = {"metrics": metrics, "task_eval": t.task_eval_details()}
                print(variant, f"{times[variant][-1]:.2f}s", f"accuracy={metrics['eval_accuracy']!r}", flush=True)
    before, after = (statistics.median(times[v]) for v in ("before", "after"))
    same = results["before"]["task_eval"] == results["after"]["task_eval"]
    summary = {
        "examples": len(dataset), "split": split, "params": n_params, "threads": torch.get_num_threads(),
        "seconds_before": times["before"], "seconds_after": times["after"],
        "median_before": before, "median_after": after, "speedup": before / after,
        "accuracy_before": results["before"]["metrics"]["eval_accuracy"],
        "accuracy_after": results["after"]["metrics"]["eval_accuracy"],
        "eval_loss_before": results["before"]["metrics"].get("eval_loss"),
        "identical_task_metrics": same,
        **machine_record(),
    }
    print(json.dumps(summary, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=1) + "\n")
    if not same:
        raise SystemExit("the task metrics differ between the two paths")


if __name__ == "__main__":
    main()
