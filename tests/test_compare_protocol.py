"""`strata compare`'s protocol around the runs: per-variant controls, lr sweep, baseline gate, held-out transfer,
parallel workers. Numbers are checked by hand or against a second code path (in-process vs subprocess training)."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pytest
from helpers import run_strata
from safetensors.numpy import load_file

from strata.config import parse_run_config
from strata.errors import StrataError
from strata.experiments import compare
from strata.experiments.compare_protocol import choose_learning_rate, gate
from strata.experiments.multidomain import SOURCES, without

TINY = ["--dataset", "synthetic", "--max_length", "64", "--per_device_train_batch_size", "4",
        "--max_eval_examples", "15", "--eval_steps", "0", "--warmup_steps", "0", "--precision", "fp32",
        "--logging_steps", "1"]


def _plan(argv: list[str]):
    args, forwarded = compare.build_parser().parse_known_args(argv)
    return compare.plan(args, forwarded)


def test_every_variant_gets_its_parameter_matched_control(tmp_path):
    from strata.models.stratified import STRATIFIED_PRESETS
    from strata.models.stratified.parameters import count_parameters

    _, runs, info = _plan(["--variants", "none,attention,moe", "--seeds", "1", "--controls", "dense_matched",
                           "--max_steps", "2", "--output_dir", str(tmp_path), *TINY])
    assert [r.arm.name for r in runs] == ["none", "attention", "moe", "dense_matched_attention", "dense_matched_moe"]
    for run in runs[3:]:
        variant = run.arm.name.removeprefix("dense_matched_")
        config = parse_run_config(run.argv)
        assert config.model.match_params and config.model.match_params_to == variant
    # the widened width reaches the variant's count (computed here from the preset, not by the harness)
    target = count_parameters(STRATIFIED_PRESETS["stratified-moe-tiny"](300))["total"]
    dense = STRATIFIED_PRESETS["stratified-none-tiny"](300)
    per_unit = 3 * dense.hidden_size * dense.num_hidden_layers
    assert target - count_parameters(dense)["total"] > 10 * per_unit  # moe adds real capacity


def test_controls_that_would_duplicate_a_model_are_not_trained(tmp_path):
    """With a 4,096-token vocabulary, attention adds 1.4% parameters: the baseline is its parameter match. Every
    parameter match computes its variant's FLOPs within 5% (all paths are dense), so no FLOPs control is trained."""
    from strata.models.stratified import STRATIFIED_PRESETS
    from strata.models.stratified.parameters import count_parameters

    _, runs, info = _plan(["--variants", "none,attention,routing", "--seeds", "1", "--controls",
                           "dense_matched,flops_matched", "--train_tokenizer", "bpe:4096", "--max_length", "128",
                           "--max_steps", "2", "--output_dir", str(tmp_path), "--dataset", "synthetic"])
    assert [r.arm.name for r in runs] == ["none", "attention", "routing", "dense_matched_routing"]
    matching = info["setup"]["matching"]
    none, attention = (count_parameters(STRATIFIED_PRESETS[f"stratified-{v}-tiny"](4096))["total"]
                       for v in ("none", "attention"))
    assert matching["attention"]["parameter_gap"] == pytest.approx((attention - none) / none)
    assert 0 < matching["attention"]["parameter_gap"] < 0.02 and not matching["attention"]["dense_matched_trained"]
    assert matching["routing"]["dense_matched_trained"] and not matching["routing"]["flops_control_trained"]


def test_gate_by_hand():
    floor = {"per_source": {"a": {"accuracy": 0.50}, "b": {"accuracy": 0.70}}}
    runs = [{"per_source": {"a": {"accuracy": 0.60}, "b": {"accuracy": 0.74}}},
            {"per_source": {"a": {"accuracy": 0.58}, "b": {"accuracy": 0.78}}}]
    verdict = gate(runs, floor, 5.0)
    # a: mean 0.59 >= 0.55; b: mean 0.76 >= 0.75
    assert verdict["passed"] and verdict["per_source"]["a"]["margin_points"] == pytest.approx(9.0)
    verdict = gate(runs, floor, 7.0)  # b needs 0.77
    assert not verdict["passed"] and verdict["failed"] == ["b"]


def test_learning_rate_choice_by_hand():
    def rec(acc):
        return {"overall": {"accuracy": acc, "macro_f1": 0.0}}

    assert choose_learning_rate({1e-3: rec(0.6), 3e-3: rec(0.7), 1e-2: rec(0.65)})[0] == 3e-3
    assert choose_learning_rate({1e-3: rec(0.7), 3e-3: rec(0.7)})[0] == 1e-3  # a tie goes to the smaller rate
    assert choose_learning_rate({1e-3: rec(float("nan")), 3e-3: rec(0.5)})[0] == 3e-3
    with pytest.raises(StrataError, match="finite accuracy"):
        choose_learning_rate({1e-3: rec(float("nan"))})


def test_holdout_leaves_the_source_out_of_training(tmp_path, hub_mirror):
    _, runs, info = _plan(["--mixture", "multidomain", "--holdout", "takala/financial_phrasebank", "--variants",
                           "none", "--seeds", "1", "--controls", "none", "--max_steps", "2",
                           "--hub_mirror", str(hub_mirror), "--output_dir", str(tmp_path)])
    config = parse_run_config(runs[0].argv)
    assert "takala/financial_phrasebank" not in config.data.datasets
    assert len(config.data.datasets) == len(SOURCES) - 1
    assert sum(config.data.mixture_rates) == pytest.approx(1.0)
    assert runs[0].transfer[:4] == ["--dataset", "takala/financial_phrasebank", "--dataset_config",
                                    "sentences_50agree"]
    assert without("financial_phrasebank")[1].dataset == "takala/financial_phrasebank"


@pytest.mark.parametrize("flags, message", [
    (["--holdout", "takala/financial_phrasebank"], "add --mixture multidomain"),
    (["--lr_sweep", "1e-3", "--learning_rate", "1e-3"], "drop --learning_rate"),
    (["--lr_sweep", "1e-3,abc"], "give learning rates"),
    (["--lr_sweep", "1e-3,1e-3"], "distinct positive"),
    (["--lr_sweep", "1e-3", "--sweep_seed", "0"], "also a compared seed"),
    (["--jobs", "0"], "at least 1"),
    (["--match_params_to", "moe"], "compare sets --match_params_to itself"),
])
def test_protocol_flags_refused(tmp_path, flags, message):
    with pytest.raises(StrataError, match=message):
        _plan(["--max_steps", "2", "--output_dir", str(tmp_path), *TINY, *flags])


def test_unknown_holdout_is_refused(tmp_path):
    with pytest.raises(StrataError, match="is not one source of the multidomain mixture"):
        _plan(["--mixture", "multidomain", "--holdout", "glue/mnli", "--max_steps", "2", "--output_dir",
               str(tmp_path)])


def _weights(folder):
    return load_file(str(folder / "final" / "model.safetensors"))


@pytest.mark.slow
def test_sweep_gate_transfer_and_workers_end_to_end(tmp_path, capsys, hub_mirror):
    """Sweep two rates, train the baseline's 2 seeds in 2 worker processes, stop at the gate (exit 1, report
    says so); then --no_gate finishes the other arm in-process, reusing every finished run."""
    out, report = tmp_path / "cmp", tmp_path / "report"
    argv = ["compare", "--mixture", "multidomain", "--holdout", "takala/financial_phrasebank",
            "--variants", "none,routing", "--seeds", "2", "--controls", "none", "--max_steps", "2",
            "--lr_sweep", "1e-3,2e-3", "--jobs", "2", "--train_tokenizer", "bpe:400", "--max_length", "48", "--per_device_train_batch_size", "4",
            "--max_eval_examples", "12", "--eval_steps", "0", "--warmup_steps", "0", "--precision", "fp32",
            "--hub_mirror", str(hub_mirror), "--output_dir", str(out), "--report_dir", str(report)]
    assert run_strata(*argv) == 1  # two steps teach nothing: the baseline cannot clear floor + 5
    first = capsys.readouterr().out
    assert "lr sweep:" in first and "stopped at the gate" in first
    results = json.loads((report / "results.json").read_text())
    assert results["stopped_at_gate"] and not results["gate"]["passed"]
    assert set(results["summary"]) == {"none"} and set(results["lr_sweep"]["rates"]) == {"0.001", "0.002"}
    chosen = results["lr_sweep"]["chosen"]
    assert parse_run_config(json.loads((out / "runs" / "none_seed0" / "compare_run.json").read_text())["argv"]
                            ).train.learning_rate == chosen
    assert (out / "logs" / "none_seed1.log").is_file()  # trained by a worker process
    assert "Stopped at the gate" in (report / "results.md").read_text()
    # One tokenizer, trained once by the harness, in every run (sweep runs too)
    shared = (out / "tokenizer" / "tokenizer.json").read_bytes()
    for folder in [*out.glob("runs/*"), *out.glob("sweep/*")]:
        assert json.loads((folder / "args.json").read_text())["tokenizer"] == str(out / "tokenizer")
        assert (folder / "final" / "tokenizer.json").read_bytes() == shared, folder

    # The held-out source: scored on its own evaluation split, which no run trained on. Its floor is the majority
    # share of that split's labels, counted here from the mirror's files with datasets alone.
    held = "fpb-50agree (held out)"
    assert held in results["domains"]
    transfer = json.loads((out / "runs" / "none_seed0" / "transfer.json").read_text())
    (tag, metrics), = transfer["task_eval"].items()
    assert tag == "fpb-50agree" and metrics["n"] == results["floor"]["per_source"][held]["n"]
    from strata.data.pipeline import load_eval_sources

    fpb = parse_run_config(["--dataset", "takala/financial_phrasebank", "--dataset_config", "sentences_50agree",
                            "--hub_mirror", str(hub_mirror), "--max_eval_examples", "12"])
    (source, _split), = load_eval_sources(fpb.data, "sft", 0)
    labels = np.asarray(source.dataset["label"])
    assert results["floor"]["per_source"][held]["accuracy"] == pytest.approx(
        np.bincount(labels).max() / len(labels))
    assert isinstance(source.dataset, datasets.Dataset)

    # Worker process == in-process training: the same run trained again here gives the same weights.
    record = json.loads((out / "runs" / "none_seed1" / "compare_run.json").read_text())
    again = tmp_path / "again"
    from strata.training.run import train

    argv_again = [a if a != str(out / "runs" / "none_seed1") else str(again) for a in record["argv"]]
    train(parse_run_config(argv_again))
    ref, got = _weights(out / "runs" / "none_seed1"), _weights(again)
    assert ref.keys() == got.keys()
    for key in ref:
        np.testing.assert_allclose(got[key], ref[key], atol=1e-5, rtol=0)

    # --no_gate: the routing arm is trained, the finished baseline and sweep runs are skipped.
    in_process = list(argv)
    in_process[argv.index("--jobs") + 1] = "1"
    assert run_strata(*in_process, "--no_gate") == 0
    second = capsys.readouterr().out
    assert second.count(" skip ") == 4 and "train routing seed 0" in second and "train none" not in second
    results = json.loads((report / "results.json").read_text())
    assert set(results["summary"]) == {"none", "routing"}
    assert held in results["tests"]["routing"] and results["tests"]["routing"][held]["accuracy"]["n"] == 2
    assert results["flops"]["routing"]["total"] > results["flops"]["none"]["total"] > 0
    md = (report / "results.md").read_text()
    assert "overridden with --no_gate" in md and "Transfer to fpb-50agree (held out)" in md
