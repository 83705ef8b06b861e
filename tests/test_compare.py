"""`strata compare`: planning, the domain-only floor, per-source splits, and a tiny resumable end-to-end run."""

from __future__ import annotations

import json
from collections import Counter

import datasets
import pytest
from helpers import run_strata

from strata.config import parse_run_config
from strata.errors import StrataError
from strata.experiments import compare
from strata.experiments.multidomain import SOURCES, mixture_flags
from strata.training.run import token_budget

TINY = ["--dataset", "synthetic", "--max_length", "64", "--per_device_train_batch_size", "4",
        "--max_eval_examples", "15", "--eval_steps", "0", "--warmup_steps", "0", "--precision", "fp32",
        "--logging_steps", "1"]
# 3 steps x 16 rows: every synthetic domain occurs in the training rows, so the floor needs no fallback.
E2E = [*TINY, "--per_device_train_batch_size", "16"]


def _plan(argv: list[str]):
    args, forwarded = compare.build_parser().parse_known_args(argv)
    return compare.plan(args, forwarded)


def test_plan_arms_seeds_and_token_budget(tmp_path):
    base, runs, info = _plan(["--variants", "none,routing", "--seeds", "2", "--token_budget", "2600",
                              "--output_dir", str(tmp_path), *TINY])
    assert base.train.max_steps == 2600 // (4 * 64)  # budget / (batch x length x accumulation) = 10
    assert token_budget(base, 1) <= 2600
    names = [(r.arm.name, r.seed) for r in runs]
    # flops_matched_routing is dropped: dense_matched_routing is within 5% of routing's FLOPs (info records why)
    assert names == [("none", 0), ("routing", 0), ("dense_matched_routing", 0), ("hash", 0),
                     ("none", 1), ("routing", 1), ("dense_matched_routing", 1), ("hash", 1)]
    gap = info["setup"]["matching"]["routing"]
    assert abs(gap["relative_gap"]) <= 0.05 and not gap["flops_control_trained"]
    hash_run = parse_run_config(runs[3].argv)
    assert hash_run.model.model == "stratified-routing-tiny" and hash_run.model.stratum_source == "hash"
    dense = parse_run_config(runs[2].argv)
    assert dense.model.match_params and dense.model.model == "stratified-none-tiny"
    assert dense.model.match_params_to == "routing"
    # every run shares the data seed; the seed index sets initialisation
    configs = [parse_run_config(r.argv) for r in runs]
    assert {c.train.data_order_seed() for c in configs} == {0}
    assert [c.train.seed for c in configs] == [0] * 4 + [1] * 4


@pytest.mark.parametrize("flags, message", [
    (["--model", "llama-tiny"], "--model_size"),
    (["--seed", "3"], "--seed_list"),
    (["--variants", "none,bogus"], "unknown variant"),
    (["--controls", "oracle"], "unknown control"),
    (["--token_budget", "10"], "less than one step"),
    (["--token_budget", "5000", "--max_steps", "3"], "not both"),
])
def test_plan_rejects_bad_flags(tmp_path, flags, message):
    with pytest.raises(StrataError, match=message):
        _plan(["--output_dir", str(tmp_path), *TINY, *flags])


def test_domain_floor_by_hand():
    train_domains = ["a", "a", "a", "b", "b", "b", "b"]
    train_labels = [0, 0, 1, 2, 2, 1, 2]

    class Source:
        def __init__(self, name, labels, domains, words):
            self.name, self.label_words = name, words
            self.dataset = datasets.Dataset.from_dict({"label": labels, "domain": domains})

    evals = [Source("A", [0, 1, 0, 0], ["a"] * 4, ["neg", "pos"]),
             Source("B", [2, 0, 2], ["b", "b", "c"], ["neg", "neu", "pos"])]
    floor = compare.domain_floor(train_domains, train_labels, evals)
    # a -> 0 (2 of 3), b -> 2 (3 of 4); unseen domain c -> its source's majority prediction (2)
    assert floor["per_source"]["A"]["accuracy"] == pytest.approx(3 / 4)
    assert floor["per_source"]["B"]["accuracy"] == pytest.approx(2 / 3)
    assert floor["accuracy"] == pytest.approx((3 / 4 + 2 / 3) / 2)
    assert floor["per_source"]["B"]["predicted"] == {"b": "pos", "c": "pos"}


def test_multidomain_flags_and_per_source_splits(hub_mirror):
    flags = mixture_flags()
    config = parse_run_config(flags)
    assert len(config.data.datasets) == len(SOURCES) == 7
    assert config.data.train_splits[3] == "test[:10000]" and config.data.eval_splits[3] == "test[10000:]"
    assert config.data.train_splits[5] is None  # FPB: the spec's seeded carve
    assert sum(config.data.mixture_rates) == pytest.approx(1.0)
    with pytest.raises(StrataError, match="one split per dataset"):
        parse_run_config(["--datasets", "synthetic", "tweet_eval", "--mixture_rates", "0.5", "0.5",
                          "--train_splits", "train"])
    with pytest.raises(StrataError, match="needs --datasets"):
        parse_run_config(["--train_splits", "train"])

    from strata.data.pipeline import load_examples

    small = parse_run_config(["--datasets", "synthetic", "tweet_eval", "--dataset_configs", "None", "sentiment",
                              "--mixture_rates", "0.5", "0.5", "--train_splits", "None", "test[:40]",
                              "--eval_splits", "test", "validation", "--max_eval_examples", "10",
                              "--hub_mirror", str(hub_mirror)])
    examples = load_examples(small.data, "sft", seed=0)
    splits = {s["tag"]: (s["train_split"], s["eval_split"], s["train_examples"]) for s in examples.sources}
    assert splits["synthetic-strata"] == ("train", "test", 4000)
    assert splits["tweet-eval-sentiment"] == ("test[:40]", "validation", 40)


@pytest.mark.slow
def test_compare_end_to_end_resumable(tmp_path, capsys):
    out, report = tmp_path / "cmp", tmp_path / "report"
    argv = ["compare", "--variants", "none,routing", "--seeds", "2", "--controls", "none", "--max_steps", "3",
            "--no_gate", "--output_dir", str(out), "--report_dir", str(report), *E2E]
    assert run_strata(*argv) == 0
    first = capsys.readouterr().out
    assert first.count("[compare]") >= 5 and " skip " not in first
    for name in ("results.json", "results.md", "bars_accuracy.png", "bars_macro_f1.png", "learning_curves.png"):
        assert (report / name).is_file() and (report / name).stat().st_size > 0, name
    results = json.loads((report / "results.json").read_text())
    assert [(r["arm"], r["seed"]) for r in results["runs"]] == [("none", 0), ("routing", 0), ("none", 1),
                                                                ("routing", 1)]
    assert set(results["summary"]) == {"none", "routing"}
    assert results["tests"]["routing"]["overall"]["accuracy"]["n"] == 2
    md = (report / "results.md").read_text()
    assert "domain-only floor" in md and "strata compare --variants none,routing" in md

    # Same data order for every run of the comparison: args.json records one data seed, and seeds 0/1.
    args = [json.loads((out / "runs" / f"{a}_seed{s}" / "args.json").read_text())
            for a in ("none", "routing") for s in (0, 1)]
    assert {a["data_seed"] for a in args} == {0} and sorted(a["seed"] for a in args) == [0, 0, 1, 1]

    # The floor by hand: majority label per domain over the 3 x 16 training rows a run consumes.
    from strata.data.pipeline import load_examples

    cfg = parse_run_config([*E2E, "--data_seed", "0", "--max_steps", "3"])
    examples = load_examples(cfg.data, "sft", seed=0)
    head = examples.train.select(range(48))
    by_domain: dict[str, Counter] = {}
    for d, y in zip(head["domain"], head["label"]):
        by_domain.setdefault(d, Counter())[y] += 1
    evaluation = examples.evals[0].dataset
    assert set(evaluation["domain"]) <= set(by_domain)
    correct = sum(
        y == max(by_domain[d].items(), key=lambda kv: (kv[1], -kv[0]))[0]
        for d, y in zip(evaluation["domain"], evaluation["label"])
    )
    assert results["floor"]["accuracy"] == pytest.approx(correct / len(evaluation))

    # Resumable: a second invocation trains nothing and leaves every finished run untouched.
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/metrics.json")}
    assert run_strata(*argv) == 0
    second = capsys.readouterr().out
    assert second.count(" skip ") == 4 and " train " not in second
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/metrics.json")} == stamps
